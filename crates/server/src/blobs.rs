//! Blob storage for sealed packages and fetched datasets, through the `object_store` crate: a local
//! directory by default (`<data_dir>/objects`), any S3-compatible service by configuration. Only
//! ciphertext is ever written here; the keys stay in the database.
//!
//! In the local directory, putting, reading and deleting a blob (six times per transfer, each a
//! few kilobytes in the page cache) is done in the calling thread, in `object_store`'s own layout
//! (a staging file `<key>#<digits>` renamed into place), instead of through its blocking pool: a
//! hand-off to another thread and back for tens of microseconds of work.

use crate::config::{Settings, StorageBackend};
use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use mydata_store::PackageRecord;
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
    /// The directory of the local store, for the calling-thread fast path.
    local: Option<Arc<std::path::PathBuf>>,
    /// Sealed packages up to this size live in their database row (`storage.inline_max_bytes`).
    inline_max: usize,
}

impl Blobs {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            local: None,
            inline_max: 0,
        }
    }

    /// Opens the store the settings name (creating the local directory if needed).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let mut local = None;
        let store: Arc<dyn ObjectStore> = match settings.storage.backend {
            StorageBackend::Local => {
                let dir = settings.objects_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                local = Some(Arc::new(dir.canonicalize().with_context(|| {
                    format!("cannot use {} for objects", dir.display())
                })?));
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
        Ok(Self {
            store,
            local,
            inline_max: usize::try_from(settings.storage.inline_max_bytes).unwrap_or(usize::MAX),
        })
    }

    /// Whether a sealed package of `len` bytes is kept in its database row rather than here:
    /// one write with its record, no file or object to create and delete, no round trip.
    pub fn keeps_inline(&self, len: usize) -> bool {
        len <= self.inline_max
    }

    /// A sealed package's bytes: its row's body when it lives there, else its object.
    pub async fn package(&self, rec: &PackageRecord) -> Result<Vec<u8>, BlobError> {
        match &rec.body {
            Some(body) => Ok(body.clone()),
            None => self.get(&rec.object_key).await,
        }
    }

    /// Deletes a package's object; one that lived in its row has none (its body is cleared with
    /// its key, in the same write).
    pub async fn delete_package(&self, rec: &PackageRecord) -> Result<(), BlobError> {
        if rec.body.is_some() {
            return Ok(());
        }
        self.delete(&rec.object_key).await
    }

    /// Where `key` lives in the local directory (the key checked as `object_store` checks it: no
    /// empty, `.` or `..` segment, so it stays inside).
    fn local_file(&self, key: &str) -> Result<Option<std::path::PathBuf>, BlobError> {
        let Some(root) = &self.local else {
            return Ok(None);
        };
        let p = Self::path(key)?;
        let mut file = root.as_ref().clone();
        for part in p.parts() {
            file.push(part.as_ref());
        }
        Ok(Some(file))
    }

    fn path(key: &str) -> Result<ObjectPath, BlobError> {
        ObjectPath::parse(key).map_err(|e| BlobError(format!("bad key `{key}`: {e}")))
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        if let Some(file) = self.local_file(key)? {
            return put_file(&file, &bytes).map_err(|e| BlobError(format!("writing `{key}`: {e}")));
        }
        self.store
            .put(&Self::path(key)?, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| BlobError(format!("writing `{key}`: {e}")))
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        if let Some(file) = self.local_file(key)? {
            return std::fs::read(&file).map_err(|e| BlobError(format!("reading `{key}`: {e}")));
        }
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
        if let Some(file) = self.local_file(key)? {
            return match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(BlobError(format!("deleting `{key}`: {e}")))
                }
                _ => Ok(()),
            };
        }
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

    /// Local store only: deletes the staging files (`<key>#<digits>`, see [`put_file`]) under
    /// `prefix` last written at or before `cutoff`, which a crash (or a failed rename) left behind and
    /// which listings never show; returns how many went. At most `limit` files are looked at. Other
    /// stores stage nothing: 0.
    pub async fn remove_stale_staging(
        &self,
        prefix: &str,
        cutoff: mydata_core::Timestamp,
        limit: usize,
    ) -> Result<u64, BlobError> {
        let Some(dir) = self.local_file(prefix)? else {
            return Ok(0);
        };
        // A directory walk and deletions: on the blocking pool, not a runtime worker.
        tokio::task::spawn_blocking(move || remove_staging_under(&dir, cutoff, limit))
            .await
            .map_err(|e| BlobError(format!("sweeping staging files under `{prefix}`: {e}")))?
            .map_err(|e| BlobError(format!("sweeping staging files under `{prefix}`: {e}")))
    }
}

/// Writes `bytes` to `file` as `object_store`'s local store does: into a new staging file
/// `<file>#<digits>` (which its listings skip), then renamed into place, so a reader never sees
/// half a blob; missing parent directories are created.
fn put_file(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    for _ in 0..8 {
        let mut staging = file.as_os_str().to_owned();
        staging.push(format!("#{}", rand::random::<u64>()));
        let staging = std::path::PathBuf::from(staging);
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = f
            .write_all(bytes)
            .and_then(|()| std::fs::rename(&staging, file));
        if written.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        return written;
    }
    Err(std::io::Error::other("no staging file could be created"))
}

/// Whether a file name is a staging file's: `<name>#<digits>` (the name never holds a `#`: keys
/// are parsed as `object_store` paths, whose local layout reserves it).
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(key, n)| {
        !key.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Deletes the staging files under `dir` (its subdirectories too, a few levels deep) last modified
/// at or before `cutoff`, looking at no more than `limit` entries; a missing `dir` has none.
fn remove_staging_under(
    dir: &std::path::Path,
    cutoff: mydata_core::Timestamp,
    limit: usize,
) -> std::io::Result<u64> {
    let mut removed = 0;
    let mut seen = 0usize;
    let mut dirs = vec![(dir.to_path_buf(), 0u8)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            seen += 1;
            if seen > limit {
                return Ok(removed);
            }
            let entry = entry?;
            // Not followed: a link is neither walked nor deleted.
            let kind = entry.file_type()?;
            if kind.is_dir() && depth < 4 {
                dirs.push((entry.path(), depth + 1));
                continue;
            }
            if !kind.is_file() || !entry.file_name().to_str().is_some_and(is_staging) {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            let at = modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())
                .map_or(mydata_core::Timestamp::from_millis(0), |ms| {
                    mydata_core::Timestamp::from_millis(ms)
                });
            if at > cutoff {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Renamed into place or deleted meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn local(dir: &std::path::Path) -> Blobs {
        let settings = Settings {
            data_dir: dir.to_path_buf(),
            ..Settings::default()
        };
        Blobs::from_settings(&settings).unwrap()
    }

    #[tokio::test]
    async fn the_local_fast_path_keeps_object_stores_layout() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = local(dir.path());
        assert!(blobs.local.is_some());
        blobs
            .put("fetched/t1.d1", b"sealed".to_vec())
            .await
            .unwrap();
        // object_store itself finds it where it would have put it, and lists nothing else (no
        // staging file is left).
        let plain = Blobs::new(blobs.store.clone());
        assert_eq!(plain.get("fetched/t1.d1").await.unwrap(), b"sealed");
        assert_eq!(plain.list("fetched").await.unwrap(), ["fetched/t1.d1"]);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("objects/fetched"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["t1.d1"]);
        // And the other way round; a rewrite replaces the whole blob.
        plain.put("packages/t1", b"zip".to_vec()).await.unwrap();
        assert_eq!(blobs.get("packages/t1").await.unwrap(), b"zip");
        blobs.put("packages/t1", b"z".to_vec()).await.unwrap();
        assert_eq!(plain.get("packages/t1").await.unwrap(), b"z");
        // Deleting twice is fine; a deleted blob cannot be read.
        blobs.delete("packages/t1").await.unwrap();
        blobs.delete("packages/t1").await.unwrap();
        assert!(blobs.get("packages/t1").await.is_err());
        assert!(plain.get("packages/t1").await.is_err());
    }

    #[test]
    fn staging_files_are_told_by_their_digits() {
        for name in ["t1.d1#1", "t1.d1#18446744073709551615", "t-1#0"] {
            assert!(is_staging(name), "{name}");
        }
        for name in ["t1.d1", "t1.d1#", "#12", "notes#draft", "t1#12a"] {
            assert!(!is_staging(name), "{name}");
        }
    }

    #[tokio::test]
    async fn keys_cannot_leave_the_object_directory() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = local(dir.path());
        for key in ["../escape", "fetched/../../escape", "a//b", "./x"] {
            assert!(blobs.put(key, b"x".to_vec()).await.is_err(), "{key}");
            assert!(blobs.get(key).await.is_err(), "{key}");
            assert!(blobs.delete(key).await.is_err(), "{key}");
        }
        assert!(!dir.path().join("escape").exists());
    }
}
