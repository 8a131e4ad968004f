//! Starting and stopping a server: load the catalogue, connect and migrate the database, bind, serve
//! until told to stop, then finish the requests in flight.

use crate::app::router;
use crate::background::{Background, JobHandler};
use crate::config::Settings;
use crate::state::AppState;
use anyhow::Context;
use mydata_core::catalog::{CatalogFile, CatalogSources};
use mydata_core::{Catalog, Clock};
use mydata_store::{PoolSettings, Store};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long requests in flight may take to finish after a stop signal.
const DRAIN: Duration = Duration::from_secs(20);

/// Reads a catalogue folder (all five files), or returns the built-in catalogue when `dir` is None.
pub fn load_catalog(dir: Option<&Path>) -> anyhow::Result<Catalog> {
    let mut sources = CatalogSources::embedded();
    if let Some(dir) = dir {
        for kind in CatalogFile::ALL {
            read_catalog_file(&mut sources, kind, &dir.join(kind.file_name()))?;
        }
    }
    Ok(Catalog::parse(&sources)?)
}

/// Reads one catalogue file over the `kind` part of `sources` (also `mydata catalog check`).
pub fn read_catalog_file(
    sources: &mut CatalogSources,
    kind: CatalogFile,
    path: &Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read catalogue file {}", path.display()))?;
    *sources.get_mut(kind) = mydata_core::CatalogSource {
        file: path.display().to_string(),
        text,
    };
    Ok(())
}

/// The handlers of the platform's job queues (the periodic sweeps' run in [`Background`] itself).
/// `GET /metrics` reports the queues these serve: see `routes::metrics::QUEUES`.
pub(crate) fn platform_handlers(settings: &Settings) -> Vec<Arc<dyn JobHandler>> {
    // Several fetch workers, so one slow agency does not hold up the others.
    let mut handlers: Vec<Arc<dyn JobHandler>> = (0..settings.agencies.workers.max(1))
        .map(|_| Arc::new(crate::agencies::FetchHandler) as Arc<dyn JobHandler>)
        .collect();
    handlers.push(Arc::new(crate::packages::PackageHandler));
    handlers.push(Arc::new(crate::orphans::ObjectSweepHandler));
    handlers.push(Arc::new(crate::identity::messages::MessageSender));
    handlers
}

/// A server bound to its address and ready to run.
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    state: AppState,
    handlers: Vec<Arc<dyn JobHandler>>,
}

impl Server {
    /// Loads the catalogue, connects to and migrates the database, and binds the listening socket.
    pub async fn bind(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // The port first: a second process started on a taken port fails before it creates keys,
        // migrates or rewrites the configured registrations of the platform it shares a folder with.
        let listener = std::net::TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        listener.set_nonblocking(true)?;
        let catalog = load_catalog(settings.catalog_dir().as_deref())?;
        let platform = crate::keys::load_platform_keys(&settings)?;
        let identity = crate::identity::Identity::load(&settings)?;
        let data = crate::agencies::DataPath::from_settings(&settings)?;
        let handlers = platform_handlers(&settings);
        let url = settings.database_url();
        let store = Store::connect(
            &url,
            &PoolSettings {
                max_connections: settings.database.max_connections,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot open the database ({})", redact_url(&url)))?;
        store
            .migrate()
            .await
            .context("cannot bring the database schema up to date")?;
        let keys = identity.key_checks();
        crate::keys::check_shared(&store, clock.now(), &keys).await?;
        for key in [
            crate::keys::Switchable::data_key(&data.vault),
            crate::keys::Switchable::signing_key(&platform),
        ] {
            crate::keys::check_switchable(&store, clock.now(), key).await?;
        }
        // After a switch of data keys what outlives transfers moves to the new key; without a
        // previous key listed this only finds secrets no key opens (an old key dropped too early).
        let clerks = crate::counter::clerk::reseal_totp_secrets(&store, &data.vault)
            .await
            .context("cannot seal the clerks' TOTP secrets with the current data key")?;
        if clerks.resealed > 0 {
            tracing::info!(
                clerks = clerks.resealed,
                "clerk TOTP secrets sealed with the current data key"
            );
        }
        if clerks.unreadable > 0 {
            tracing::warn!(
                clerks = clerks.unreadable,
                "clerk TOTP secrets open with none of the data keys listed: list the key that sealed them in keys.previous_data_keys, or enrol those clerks again"
            );
        }
        crate::oauth::clients::load_configured(&store, &catalog, &settings.oauth, clock.now())
            .await?;
        tracing::info!(
            datasets = catalog.datasets().len(),
            services = catalog.services().len(),
            database = ?store.backend(),
            "catalogue loaded and database ready"
        );
        Ok(Self {
            listener,
            state: AppState::new(catalog, store, clock, settings, platform, data, identity),
            handlers,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// `http://host:port` or `https://host:port` of this server.
    pub fn base_url(&self) -> anyhow::Result<String> {
        let scheme = if self.state.settings().tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Registers the handler of a job queue; its worker starts with the server.
    pub fn add_job_handler(&mut self, handler: Arc<dyn JobHandler>) {
        self.handlers.push(handler);
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish (up to a limit).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = router(self.state.clone());
        let addr = self.local_addr()?;
        let background = Background::spawn(self.state.clone(), self.handlers);
        match self.state.settings().tls.clone() {
            None => {
                let listener = tokio::net::TcpListener::from_std(self.listener)?;
                tracing::info!(%addr, "listening (HTTP)");
                // The peer address is the client address for lockout unless a proxy header is set.
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(shutdown)
                .await?;
            }
            Some(tls) => {
                // Several crypto back-ends are linked (through dependencies); choose one explicitly.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let config = tls_config(&tls.cert, &tls.key).with_context(|| {
                    format!(
                        "cannot load TLS certificate {} and key {}",
                        tls.cert.display(),
                        tls.key.display()
                    )
                })?;
                let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    h.graceful_shutdown(Some(DRAIN));
                });
                tracing::info!(%addr, "listening (HTTPS)");
                axum_server::from_tcp_rustls(self.listener, config)
                    .handle(handle)
                    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                    .await?;
            }
        }
        // Requests have drained; let the background tasks finish their current step, and the
        // jobs the requests started here finish, then close.
        tokio::join!(background.shutdown(), self.state.starter().drain());
        self.state.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("stop signal received; finishing requests in flight");
}

/// A database URL with any password removed, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The cryptography of the platform's TLS: AWS-LC, TLS 1.3 with its suites, TLS 1.2 only with the
/// ECDHE AES-GCM suites BCP 195 recommends (RFC 9325 §4.2), as FAPI 2.0 Security Profile §5.2.2
/// requires (rustls would also offer ChaCha20-Poly1305 under TLS 1.2).
fn tls_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as C;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(_) => matches!(
            s.suite(),
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        ),
    });
    provider
}

/// The server's TLS configuration from PEM files (HTTP/2 and HTTP/1.1 by ALPN).
fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(tls_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn tls_1_2_offers_only_the_recommended_aead_suites() {
        let suites: Vec<_> = tls_provider()
            .cipher_suites
            .iter()
            .map(|s| (s.version().version, s.suite()))
            .collect();
        let tls12: Vec<_> = suites
            .iter()
            .filter(|(v, _)| *v == rustls::ProtocolVersion::TLSv1_2)
            .map(|(_, s)| format!("{s:?}"))
            .collect();
        assert_eq!(tls12.len(), 4, "{tls12:?}");
        assert!(tls12.iter().all(|s| s.contains("_GCM_")), "{tls12:?}");
        assert!(
            suites
                .iter()
                .any(|(v, _)| *v == rustls::ProtocolVersion::TLSv1_3),
            "TLS 1.3 stays"
        );
    }
}
