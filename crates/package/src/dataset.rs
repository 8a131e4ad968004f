//! One agency-signed dataset: data files, `manifest.json`, its signatures (`manifest.jws`,
//! `manifest.sig`) and `chain.pem`; signing by the agency and the four ordered verification checks.

use crate::ecdsa::{KeyPair, PublicKey};
use crate::jws::{self, Compact};
use crate::pem;
use crate::pki::{CertError, TrustStore, common_name};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mydata_core::Timestamp;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Names inside a dataset folder that the format itself uses; data files may not take them.
pub const RESERVED_NAMES: [&str; 4] =
    ["manifest.json", "manifest.jws", "manifest.sig", "chain.pem"];

/// The manifest format version this crate writes and accepts.
pub const MANIFEST_VERSION: u32 = 1;

/// One data file as the agency returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub name: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// `manifest.json`: what the agency vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub transfer_id: String,
    pub dataset_id: String,
    pub agency_id: String,
    pub issued_at_ms: i64,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub media_type: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

/// A dataset as stored in a package folder. `manifest_json` holds the exact signed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDataset {
    pub dataset_id: String,
    pub manifest_json: Vec<u8>,
    pub manifest_jws: Vec<u8>,
    pub manifest_sig: Vec<u8>,
    pub chain_pem: Vec<u8>,
    /// Data files by name.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Refusal to sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the leaf certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("the signing key does not match the leaf certificate")]
    KeyMismatch,
    #[error("the leaf certificate has no subject common name (the agency ID)")]
    NoAgencyId,
    #[error("unsafe name {0:?}: use letters, digits, '.', '_', '-', not starting with '.'")]
    UnsafeName(String),
    #[error("file name {0:?} is reserved by the package format")]
    ReservedName(String),
    #[error("file {0:?} appears twice")]
    DuplicateFile(String),
    #[error("a dataset needs at least one data file")]
    NoFiles,
    #[error("manifest serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the signing key cannot be used: {0}")]
    Key(String),
}

/// Why one verification check failed. Each check has its own variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    // check 1
    #[error("certificate: {0}")]
    Certificate(#[from] CertError),
    // check 2
    #[error("public key: the certificate's key is not an ECDSA P-256 key: {0}")]
    PublicKey(String),
    // check 3
    #[error("manifest.jws is malformed: {0}")]
    JwsMalformed(String),
    #[error("manifest.jws signature does not verify with the certificate's key")]
    JwsSignatureInvalid,
    #[error("manifest.jws x5c does not name the certificate in chain.pem")]
    JwsX5cMismatch,
    #[error("manifest.jws payload differs from manifest.json")]
    JwsPayloadMismatch,
    #[error("manifest.sig is not a DER ECDSA signature")]
    SigMalformed,
    #[error("manifest.sig does not verify with the certificate's key over manifest.json")]
    SigInvalid,
    #[error("manifest.json is malformed: {0}")]
    ManifestMalformed(String),
    #[error("manifest.json version {0} is not supported")]
    ManifestVersion(u32),
    #[error("manifest.json is for dataset {manifest:?} but sits in folder {folder:?}")]
    DatasetIdMismatch { manifest: String, folder: String },
    #[error("manifest.json names agency {manifest:?} but the certificate is for {certificate:?}")]
    AgencyMismatch {
        manifest: String,
        certificate: String,
    },
    // check 4
    #[error("file {0:?} listed in the manifest is missing")]
    FileMissing(String),
    #[error("file {0:?} is not listed in the manifest")]
    FileUnexpected(String),
    #[error("file {0:?} is listed twice in the manifest")]
    FileListedTwice(String),
    #[error("file {name:?} has {actual} bytes, manifest says {expected}")]
    FileSizeMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("file {0:?} SHA-256 differs from the manifest (file tampered)")]
    FileDigestMismatch(String),
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<E> {
    Passed,
    Failed(E),
    /// Not run because an earlier check failed.
    NotRun,
}

impl<E> Verdict<E> {
    pub fn is_passed(&self) -> bool {
        matches!(self, Self::Passed)
    }
    pub fn error(&self) -> Option<&E> {
        match self {
            Self::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// The four checks of one dataset, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetReport {
    pub dataset_id: String,
    /// The agency ID from the verified certificate, once check 1 passed.
    pub agency_id: Option<String>,
    /// The manifest, once check 3 passed.
    pub manifest: Option<Manifest>,
    pub certificate: Verdict<DatasetError>,
    pub public_key: Verdict<DatasetError>,
    pub manifest_signature: Verdict<DatasetError>,
    pub files: Verdict<DatasetError>,
}

impl DatasetReport {
    pub fn is_ok(&self) -> bool {
        self.steps().iter().all(|(_, v)| v.is_passed())
    }

    /// The checks with their names, in order.
    pub fn steps(&self) -> [(&'static str, &Verdict<DatasetError>); 4] {
        [
            ("certificate valid", &self.certificate),
            ("public key from certificate", &self.public_key),
            ("manifest not tampered", &self.manifest_signature),
            ("files not tampered", &self.files),
        ]
    }

    /// The first failure, if any.
    pub fn error(&self) -> Option<&DatasetError> {
        self.steps().into_iter().find_map(|(_, v)| v.error())
    }
}

/// An agency's signing key and certificate chain (leaf first), ready to sign many datasets.
pub struct AgencySigner {
    key: KeyPair,
    agency_id: String,
    chain_pem: Vec<u8>,
    /// The chain as JWS `x5c` (base64 DER).
    x5c: Vec<String>,
    /// base64url of the JWS protected header, computed once.
    jws_header_b64: String,
}

impl std::fmt::Debug for AgencySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgencySigner")
            .field("agency_id", &self.agency_id)
            .finish_non_exhaustive()
    }
}

impl AgencySigner {
    /// `chain` is the agency certificate then any intermediates. The agency ID is the leaf's
    /// subject CN, and the key must match the leaf.
    pub fn new(key: SigningKey, chain: Vec<CertificateDer<'static>>) -> Result<Self, SignError> {
        let leaf = chain.first().ok_or(SignError::EmptyChain)?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| SignError::BadCertificate(format!("{e:?}")))?;
        let cert_key = VerifyingKey::from_public_key_der(ee.subject_public_key_info().as_ref())
            .map_err(|e| SignError::BadCertificate(e.to_string()))?;
        if &cert_key != key.verifying_key() {
            return Err(SignError::KeyMismatch);
        }
        let key = KeyPair::new(key).map_err(SignError::Key)?;
        let agency_id = common_name(ee.subject()).ok_or(SignError::NoAgencyId)?;
        let x5c: Vec<String> = chain.iter().map(|c| STANDARD.encode(c)).collect();
        let header = serde_json::json!({"alg": "ES256", "typ": "JOSE", "x5c": &x5c});
        let jws_header_b64 = jws::b64url(&serde_json::to_vec(&header)?);
        let chain_pem = chain
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c))
            .collect::<String>()
            .into_bytes();
        Ok(Self {
            key,
            agency_id,
            chain_pem,
            x5c,
            jws_header_b64,
        })
    }

    pub(crate) fn chain_b64(&self) -> &[String] {
        &self.x5c
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.key
    }

    pub fn agency_id(&self) -> &str {
        &self.agency_id
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    /// Sign the files of dataset `dataset_id` for transfer `transfer_id`.
    pub fn sign_dataset(
        &self,
        transfer_id: &str,
        dataset_id: &str,
        issued_at: Timestamp,
        files: Vec<DataFile>,
    ) -> Result<SignedDataset, SignError> {
        check_name(dataset_id)?;
        if files.is_empty() {
            return Err(SignError::NoFiles);
        }
        let mut entries = Vec::with_capacity(files.len());
        let mut by_name = BTreeMap::new();
        for f in files {
            check_name(&f.name)?;
            if RESERVED_NAMES.contains(&f.name.as_str()) {
                return Err(SignError::ReservedName(f.name));
            }
            entries.push(FileEntry {
                name: f.name.clone(),
                media_type: f.media_type,
                size: f.bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&f.bytes)),
            });
            if by_name.insert(f.name.clone(), f.bytes).is_some() {
                return Err(SignError::DuplicateFile(f.name));
            }
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            transfer_id: transfer_id.to_owned(),
            dataset_id: dataset_id.to_owned(),
            agency_id: self.agency_id.clone(),
            issued_at_ms: issued_at.millis(),
            files: entries,
        };
        // Serialised once; these exact bytes are what both signatures cover.
        let manifest_json = serde_json::to_vec(&manifest)?;
        let manifest_jws = jws::sign_compact(&self.key, &self.jws_header_b64, &manifest_json);
        let manifest_sig = self.key.sign_der(&manifest_json);
        Ok(SignedDataset {
            dataset_id: dataset_id.to_owned(),
            manifest_json,
            manifest_jws: manifest_jws.into_bytes(),
            manifest_sig,
            chain_pem: self.chain_pem.clone(),
            files: by_name,
        })
    }
}

/// Dataset IDs and file names become zip paths: keep them to one safe path segment.
pub(crate) fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(name: &str) -> Result<(), SignError> {
    if is_safe_name(name) {
        Ok(())
    } else {
        Err(SignError::UnsafeName(name.to_owned()))
    }
}

/// Run the four checks in order; a failed check leaves the later ones [`Verdict::NotRun`].
pub fn verify_dataset(ds: &SignedDataset, trust: &TrustStore, now: Timestamp) -> DatasetReport {
    let mut report = DatasetReport {
        dataset_id: ds.dataset_id.clone(),
        agency_id: None,
        manifest: None,
        certificate: Verdict::NotRun,
        public_key: Verdict::NotRun,
        manifest_signature: Verdict::NotRun,
        files: Verdict::NotRun,
    };
    // 1. certificate valid
    let chain = match pem::certificates(&ds.chain_pem) {
        Ok(c) => c,
        Err(e) => {
            report.certificate = Verdict::Failed(CertError::Unparseable(e).into());
            return report;
        }
    };
    let ee = match trust.verify_agency_chain(&chain, now).and_then(|ee| {
        common_name(ee.subject())
            .map(|cn| (ee, cn))
            .ok_or(CertError::NoCommonName)
    }) {
        Ok((ee, cn)) => {
            report.agency_id = Some(cn);
            report.certificate = Verdict::Passed;
            ee
        }
        Err(e) => {
            report.certificate = Verdict::Failed(e.into());
            return report;
        }
    };
    // 2. public key from that certificate
    let key = match VerifyingKey::from_public_key_der(ee.subject_public_key_info().as_ref())
        .map_err(|e| e.to_string())
        .and_then(|k| PublicKey::new(&k))
    {
        Ok(k) => {
            report.public_key = Verdict::Passed;
            k
        }
        Err(e) => {
            report.public_key = Verdict::Failed(DatasetError::PublicKey(e));
            return report;
        }
    };
    // 3. manifest not tampered
    let leaf = chain.first().map(|c| c.as_ref()).unwrap_or_default();
    let cn = report.agency_id.as_deref().unwrap_or_default();
    match check_manifest(ds, &key, leaf, cn) {
        Ok(m) => {
            report.manifest_signature = Verdict::Passed;
            // 4. each file not tampered
            report.files = match check_files(&m, &ds.files) {
                Ok(()) => Verdict::Passed,
                Err(e) => Verdict::Failed(e),
            };
            report.manifest = Some(m);
        }
        Err(e) => report.manifest_signature = Verdict::Failed(e),
    }
    report
}

fn check_manifest(
    ds: &SignedDataset,
    key: &PublicKey,
    leaf_der: &[u8],
    cert_agency: &str,
) -> Result<Manifest, DatasetError> {
    let jws = Compact::parse(&ds.manifest_jws).map_err(DatasetError::JwsMalformed)?;
    if !jws.verify(key) {
        return Err(DatasetError::JwsSignatureInvalid);
    }
    // A JOSE library trusts x5c[0]; it must be the certificate we just validated.
    let x5c0 = jws
        .header
        .get("x5c")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .and_then(|s| STANDARD.decode(s).ok());
    if x5c0.as_deref() != Some(leaf_der) {
        return Err(DatasetError::JwsX5cMismatch);
    }
    if jws.payload != ds.manifest_json {
        return Err(DatasetError::JwsPayloadMismatch);
    }
    // Parsed apart from the check so that garbage and a wrong signature keep distinct errors.
    if p256::ecdsa::DerSignature::from_bytes(&ds.manifest_sig).is_err() {
        return Err(DatasetError::SigMalformed);
    }
    if !key.verify_der(&ds.manifest_json, &ds.manifest_sig) {
        return Err(DatasetError::SigInvalid);
    }
    let m: Manifest = serde_json::from_slice(&ds.manifest_json)
        .map_err(|e| DatasetError::ManifestMalformed(e.to_string()))?;
    if m.version != MANIFEST_VERSION {
        return Err(DatasetError::ManifestVersion(m.version));
    }
    if m.dataset_id != ds.dataset_id {
        return Err(DatasetError::DatasetIdMismatch {
            manifest: m.dataset_id,
            folder: ds.dataset_id.clone(),
        });
    }
    if m.agency_id != cert_agency {
        return Err(DatasetError::AgencyMismatch {
            manifest: m.agency_id,
            certificate: cert_agency.to_owned(),
        });
    }
    Ok(m)
}

fn check_files(m: &Manifest, files: &BTreeMap<String, Vec<u8>>) -> Result<(), DatasetError> {
    let mut seen = std::collections::BTreeSet::new();
    for entry in &m.files {
        if !seen.insert(entry.name.as_str()) {
            return Err(DatasetError::FileListedTwice(entry.name.clone()));
        }
        let bytes = files
            .get(&entry.name)
            .ok_or_else(|| DatasetError::FileMissing(entry.name.clone()))?;
        let actual = bytes.len() as u64;
        if actual != entry.size {
            return Err(DatasetError::FileSizeMismatch {
                name: entry.name.clone(),
                expected: entry.size,
                actual,
            });
        }
        let digest = Sha256::digest(bytes);
        let matches = hex::decode(&entry.sha256)
            .map(|want| want.as_slice() == digest.as_slice())
            .unwrap_or(false);
        if !matches {
            return Err(DatasetError::FileDigestMismatch(entry.name.clone()));
        }
    }
    if let Some(extra) = files.keys().find(|k| !seen.contains(k.as_str())) {
        return Err(DatasetError::FileUnexpected(extra.clone()));
    }
    Ok(())
}
