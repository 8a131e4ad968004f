//! Blob storage for sealed packages and fetched datasets, through the `object_store` crate: a local
//! directory by default (`<data_dir>/objects`), any S3-compatible service by configuration. Only
//! ciphertext is ever written here; the keys stay in the database.

use crate::config::{Settings, StorageBackend};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

/// Why a blob operation failed (the message names the key, never content).
#[derive(Debug, thiserror::Error)]
#[error("object storage: {0}")]
pub struct BlobError(String);

/// The configured object store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// Opens the store the settings name (creating the local directory if needed).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = match settings.storage.backend {
            StorageBackend::Local => {
                let dir = settings.objects_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .with_context(|| format!("cannot use {} for objects", dir.display()))?,
                )
            }
            StorageBackend::S3 => {
                let s3 = &settings.storage.s3;
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_allow_http(s3.allow_http);
                for (value, set) in [
                    (&s3.region, object_store::aws::AmazonS3ConfigKey::Region),
                    (&s3.endpoint, object_store::aws::AmazonS3ConfigKey::Endpoint),
                    (
                        &s3.access_key_id,
                        object_store::aws::AmazonS3ConfigKey::AccessKeyId,
                    ),
                    (
                        &s3.secret_access_key,
                        object_store::aws::AmazonS3ConfigKey::SecretAccessKey,
                    ),
                ] {
                    if !value.is_empty() {
                        b = b.with_config(set, value);
                    }
                }
                Arc::new(b.build().context("cannot configure the S3 object store")?)
            }
        };
        Ok(Self { store })
    }

    fn path(key: &str) -> Result<ObjectPath, BlobError> {
        ObjectPath::parse(key).map_err(|e| BlobError(format!("bad key `{key}`: {e}")))
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.store
            .put(&Self::path(key)?, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| BlobError(format!("writing `{key}`: {e}")))
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let res = self
            .store
            .get(&Self::path(key)?)
            .await
            .map_err(|e| BlobError(format!("reading `{key}`: {e}")))?;
        res.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| BlobError(format!("reading `{key}`: {e}")))
    }

    /// Deletes a blob; one that is already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BlobError(format!("deleting `{key}`: {e}"))),
        }
    }

    /// Every key under `prefix` (operators and tests: what is left).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let p = Self::path(prefix)?;
        self.store
            .list(Some(&p))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .map_err(|e| BlobError(format!("listing `{prefix}`: {e}")))
    }

    /// Up to `limit` keys under `prefix`, each with the time it was last written (the store's own
    /// time: file modification time locally, `Last-Modified` on S3).
    pub async fn list_with_times(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, mydata_core::Timestamp)>, BlobError> {
        let p = Self::path(prefix)?;
        self.store
            .list(Some(&p))
            .take(limit)
            .map_ok(|m| {
                (
                    m.location.to_string(),
                    mydata_core::Timestamp::from_millis(m.last_modified.timestamp_millis()),
                )
            })
            .try_collect()
            .await
            .map_err(|e| BlobError(format!("listing `{prefix}`: {e}")))
    }
}
