//! Where the trusted roots and CRLs for agency certificates come from, and a cache that re-reads
//! them periodically so that a rotated root or a fresh CRL is picked up without a restart.
//!
//! The cache holds public material only, so keeping it per process is harmless.

use mydata_core::Timestamp;
use mydata_package::{TrustStore, TrustStoreError};
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use url::Url;

/// Largest root or CRL document read.
const MAX_TRUST_DOC: usize = 4 * 1024 * 1024;

/// The configured sources of trust.
#[derive(Debug, Clone, Default)]
pub struct TrustSource {
    /// PEM files of root certificates.
    pub root_files: Vec<PathBuf>,
    /// PEM texts of roots given in memory (the in-process simulator of `demo` and tests).
    pub root_pems: Vec<String>,
    /// CRL files (PEM or DER).
    pub crl_files: Vec<PathBuf>,
    /// CRLs to download (PEM or DER), e.g. the CA's distribution point.
    pub crl_urls: Vec<Url>,
    /// Accept certificates whose issuer has no CRL configured (revocation unchecked).
    pub allow_missing_crl: bool,
}

/// Why the trust material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("no trusted root for agency certificates is configured")]
    NoRoots,
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("{0}: {1}")]
    Invalid(String, TrustStoreError),
    #[error("cannot download CRL {0}: {1}")]
    Download(String, String),
}

impl TrustSource {
    /// Reads and parses everything now.
    pub async fn load(&self, http: &reqwest::Client) -> Result<TrustStore, TrustError> {
        let mut store = TrustStore::new();
        store.allow_missing_crl(self.allow_missing_crl);
        let mut roots = 0;
        for path in &self.root_files {
            let name = path.display().to_string();
            let bytes = read_file(path).await?;
            store
                .add_roots_pem(&bytes)
                .map_err(|e| TrustError::Invalid(name, e))?;
            roots += 1;
        }
        for pem in &self.root_pems {
            store
                .add_roots_pem(pem.as_bytes())
                .map_err(|e| TrustError::Invalid("configured root".into(), e))?;
            roots += 1;
        }
        if roots == 0 {
            return Err(TrustError::NoRoots);
        }
        for path in &self.crl_files {
            let bytes = read_file(path).await?;
            add_crl(&mut store, &bytes, &path.display().to_string())?;
        }
        for url in &self.crl_urls {
            let bytes = download(http, url).await?;
            add_crl(&mut store, &bytes, url.as_str())?;
        }
        Ok(store)
    }
}

async fn read_file(path: &PathBuf) -> Result<Vec<u8>, TrustError> {
    let name = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| TrustError::Read(name.clone(), e.to_string()))?;
    if bytes.len() > MAX_TRUST_DOC {
        return Err(TrustError::Read(name, "file is too large".into()));
    }
    Ok(bytes)
}

async fn download(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, TrustError> {
    let fail = |e: &dyn std::fmt::Display| TrustError::Download(url.to_string(), e.to_string());
    let res = http.get(url.clone()).send().await.map_err(|e| fail(&e))?;
    if !res.status().is_success() {
        return Err(fail(&format!("HTTP {}", res.status())));
    }
    let bytes = res.bytes().await.map_err(|e| fail(&e))?;
    if bytes.len() > MAX_TRUST_DOC {
        return Err(fail(&"document is too large"));
    }
    Ok(bytes.to_vec())
}

/// Adds a CRL given as PEM (one or more) or DER.
fn add_crl(store: &mut TrustStore, bytes: &[u8], name: &str) -> Result<(), TrustError> {
    let invalid = |e| TrustError::Invalid(name.to_owned(), e);
    if bytes.starts_with(b"-----") || bytes.trim_ascii_start().starts_with(b"-----") {
        let mut n = 0;
        for der in CertificateRevocationListDer::pem_slice_iter(bytes) {
            let der = der.map_err(|e| invalid(TrustStoreError::Pem(e.to_string())))?;
            store.add_crl_der(&der).map_err(invalid)?;
            n += 1;
        }
        if n == 0 {
            return Err(invalid(TrustStoreError::EmptyPem("X509 CRL")));
        }
        Ok(())
    } else {
        store.add_crl_der(bytes).map_err(invalid)
    }
}

/// The trust store in use, re-loaded from its source every `refresh`.
#[derive(Debug)]
pub struct TrustCache {
    source: TrustSource,
    refresh: Duration,
    http: reqwest::Client,
    current: Mutex<Option<(Timestamp, Arc<TrustStore>)>>,
}

impl TrustCache {
    pub fn new(source: TrustSource, refresh: Duration, http: reqwest::Client) -> Self {
        Self {
            source,
            refresh,
            http,
            current: Mutex::new(None),
        }
    }

    /// The store, loading it if it is missing or older than the refresh interval. When a reload
    /// fails, the previous store keeps serving (its CRLs' own `next_update` still bounds it).
    pub async fn get(&self, now: Timestamp) -> Result<Arc<TrustStore>, TrustError> {
        let cached = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((at, store)) = &cached
            && at.plus(self.refresh) > now
        {
            return Ok(store.clone());
        }
        match self.source.load(&self.http).await {
            Ok(store) => {
                let store = Arc::new(store);
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((now, store.clone()));
                Ok(store)
            }
            Err(e) => match cached {
                Some((_, store)) => {
                    tracing::warn!(error = %e, "reloading agency trust roots failed; keeping the previous ones");
                    Ok(store)
                }
                None => Err(e),
            },
        }
    }

    /// Forget the cached store (the next `get` reloads).
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
