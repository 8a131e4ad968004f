//! Shared, read-mostly state of one server process. Nothing here is needed by another process:
//! everything that must be shared lives in the database.

use crate::config::Settings;
use mydata_core::{Catalog, Clock};
use mydata_store::Store;
use std::sync::Arc;

/// Handed to every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Catalog,
    store: Store,
    clock: Arc<dyn Clock>,
    settings: Settings,
    platform: crate::keys::PlatformKeyring,
    data: crate::agencies::DataPath,
    identity: crate::identity::Identity,
    /// Services' JWK sets fetched from their `jwks_uri` (public keys; per process by design).
    jwks: crate::oauth::assertion::JwksCache,
    job_wake: crate::background::JobWake,
    /// Fetch jobs this process runs in the request that enqueued them.
    starter: crate::background::Starter,
    /// Service registrations read recently (see [`crate::oauth::clients::ClientCache`]).
    clients: crate::oauth::clients::ClientCache,
    settled: crate::settled::Settled,
    /// Fetch jobs of this process waiting for a busy agency's call slot, by agency.
    slot_freed: crate::settled::Settled,
    /// The SMTP transport and its open connections.
    mailer: crate::identity::messages::Mailer,
}

impl AppState {
    pub fn new(
        catalog: Catalog,
        store: Store,
        clock: Arc<dyn Clock>,
        settings: Settings,
        platform: crate::keys::PlatformKeyring,
        data: crate::agencies::DataPath,
        identity: crate::identity::Identity,
    ) -> Self {
        let job_wake = crate::background::JobWake::new(settings.jobs.concurrency);
        let starter = crate::background::Starter::new(&settings.jobs);
        Self {
            inner: Arc::new(Inner {
                job_wake,
                starter,
                catalog,
                store,
                clock,
                settings,
                platform,
                data,
                identity,
                jwks: Default::default(),
                clients: Default::default(),
                settled: Default::default(),
                slot_freed: Default::default(),
                mailer: Default::default(),
            }),
        }
    }

    /// The data path: agency client, trust roots, blob storage, data key.
    pub fn data(&self) -> &crate::agencies::DataPath {
        &self.inner.data
    }

    /// The platform's signing key (receipts, tree heads).
    pub fn platform(&self) -> &mydata_package::PlatformSigner {
        &self.inner.platform.signer
    }
    /// The public keys the platform publishes: its signing key's, then those announced to replace
    /// it, then those it replaced.
    pub fn platform_keys(&self) -> &mydata_package::PlatformKeys {
        &self.inner.platform.published
    }
    /// The signing key with the kids of the keys listed as next and previous.
    pub fn platform_keyring(&self) -> &crate::keys::PlatformKeyring {
        &self.inner.platform
    }
    /// Identity services: pseudonyms, identity methods, the agency client.
    pub fn identity(&self) -> &crate::identity::Identity {
        &self.inner.identity
    }
    /// Wakes this process's job workers when it enqueues a job.
    pub fn job_wake(&self) -> &crate::background::JobWake {
        &self.inner.job_wake
    }
    /// Runs jobs this process enqueues leased to itself (see [`crate::background::Starter`]).
    pub fn starter(&self) -> &crate::background::Starter {
        &self.inner.starter
    }
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
    pub fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
    /// Pages of this process waiting for a transfer to settle.
    pub fn settled(&self) -> &crate::settled::Settled {
        &self.inner.settled
    }
    /// Fetch jobs of this process waiting for an agency's call slot (keyed by agency).
    pub fn slot_freed(&self) -> &crate::settled::Settled {
        &self.inner.slot_freed
    }
    /// Service registrations this process read recently.
    pub fn client_cache(&self) -> &crate::oauth::clients::ClientCache {
        &self.inner.clients
    }
    /// The SMTP transport, kept with its connections between messages.
    pub fn mailer(&self) -> &crate::identity::messages::Mailer {
        &self.inner.mailer
    }
    /// The cache of services' JWK sets fetched from their `jwks_uri`.
    pub fn jwks_cache(&self) -> &crate::oauth::assertion::JwksCache {
        &self.inner.jwks
    }
}
