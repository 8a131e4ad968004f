//! Sweeps blobs nothing owns any more: a process that crashed between writing a blob and recording
//! its key leaves ciphertext without a key (unreadable, but it must not pile up or outlive the
//! 8-hour rule). A durable job (queue [`OBJECT_SWEEP_QUEUE`], one per period whoever enqueues it
//! first) lists the object store and deletes, once a blob is past a short grace period, each blob
//! no record references and each whose transfer's 8 hours are over. Whether a referenced blob may
//! live is decided by its transfer's expiry in the database, on the platform's clock: the object
//! store's own clock (a blob's time) only measures the grace period. In the local store it also
//! deletes, after the same grace period, the staging files (`<key>#<digits>`) of writes a crash
//! cut short, which the store's listings skip.

use crate::background::{BoxFuture, JobHandler, JobOutcome};
use crate::state::AppState;
use mydata_store::{Job, StoreError};
use serde::Serialize;
use std::time::Duration;

/// Queue of the orphaned-blob sweep.
pub const OBJECT_SWEEP_QUEUE: &str = "object-sweep";
/// How often a sweep is enqueued (per process it is only checked; one job per period runs).
pub const SWEEP_PERIOD: Duration = Duration::from_secs(3600);
/// An unreferenced blob younger than this is left alone: its writer may be between writing it and
/// recording its key (both happen within one job run, bounded by the 60-second lease).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(15 * 60);
/// Prefixes of the platform's blobs (packages, fetched datasets).
const PREFIXES: [&str; 2] = ["packages", "fetched"];
/// Most blobs looked at per prefix and run (the next run continues).
const LIST_LIMIT: usize = 10_000;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub examined: u64,
    /// Deleted because their transfer's 8 hours were over.
    pub deleted_expired: u64,
    /// Deleted because no record references them.
    pub deleted_unreferenced: u64,
    /// Staging files of the local store (`<key>#<digits>`) a crash left mid-write, which listings
    /// do not show, deleted after the grace period.
    pub deleted_staging: u64,
}

/// Why a sweep stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
}

/// The transfer a blob key belongs to (`packages/<transfer>.<random>`, `fetched/<transfer>.<dataset>`,
/// and `packages/<transfer>` and `fetched/<transfer>/<dataset>` as blobs were named before).
fn owner(key: &str) -> Option<&str> {
    let mut parts = key.split('/');
    let t = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("fetched"), Some(t), Some(_), None) => t,
        (Some("packages"), Some(name), None, None) => match name.split_once('.') {
            Some((t, suffix)) if !suffix.is_empty() => t,
            Some(_) => return None,
            None => name,
        },
        (Some("fetched"), Some(name), None, None) => match name.split_once('.') {
            Some((t, dataset)) if !dataset.is_empty() => t,
            _ => return None,
        },
        _ => return None,
    };
    (!t.is_empty()).then_some(t)
}

/// Lists the object store once and deletes what nothing may keep. Safe in several processes at
/// once (a blob deleted twice counts as deleted).
pub async fn sweep_orphaned_blobs(state: &AppState) -> Result<SweepReport, SweepError> {
    let now = state.clock().now();
    let blobs = &state.data().blobs;
    let mut report = SweepReport::default();
    let cutoff = mydata_core::Timestamp::from_millis(
        now.millis()
            .saturating_sub(i64::try_from(ORPHAN_GRACE.as_millis()).unwrap_or(i64::MAX)),
    );
    for prefix in PREFIXES {
        // A blob written halfway when its process stopped: never listed below, and as
        // unreadable and unwanted as an orphan.
        report.deleted_staging += blobs
            .remove_stale_staging(prefix, cutoff, LIST_LIMIT)
            .await?;
        for (key, written) in blobs.list_with_times(prefix, LIST_LIMIT).await? {
            report.examined += 1;
            if written.until(now) < ORPHAN_GRACE {
                continue;
            }
            let owner = owner(&key);
            let referenced = match owner {
                Some(transfer) => state.store().object_referenced(transfer, &key).await?,
                None => false,
            };
            if !referenced {
                blobs.delete(&key).await?;
                report.deleted_unreferenced += 1;
                continue;
            }
            // Referenced: kept for as long as its transfer is within its 8 hours (the expiry
            // sweep destroys it then; this is the backstop if that did not happen).
            let expired = match owner {
                Some(transfer) => state
                    .store()
                    .transfer(transfer)
                    .await?
                    .is_none_or(|t| t.expires_at <= now),
                None => true,
            };
            if expired {
                blobs.delete(&key).await?;
                report.deleted_expired += 1;
            }
        }
    }
    Ok(report)
}

/// Enqueues the sweep of the current period (one per [`SWEEP_PERIOD`], whoever enqueues it
/// first); returns whether this call enqueued it.
pub async fn schedule_object_sweep(state: &AppState) -> Result<bool, StoreError> {
    crate::background::enqueue_periodic(state, OBJECT_SWEEP_QUEUE, SWEEP_PERIOD).await
}

/// Runs the jobs of [`OBJECT_SWEEP_QUEUE`].
#[derive(Debug, Default)]
pub struct ObjectSweepHandler;

impl JobHandler for ObjectSweepHandler {
    fn queue(&self) -> &'static str {
        OBJECT_SWEEP_QUEUE
    }

    fn run(&self, state: AppState, _job: Job) -> BoxFuture<JobOutcome> {
        Box::pin(async move {
            match sweep_orphaned_blobs(&state).await {
                Ok(r) => {
                    if r.deleted_expired + r.deleted_unreferenced + r.deleted_staging > 0 {
                        tracing::info!(
                            examined = r.examined,
                            deleted_expired = r.deleted_expired,
                            deleted_unreferenced = r.deleted_unreferenced,
                            deleted_staging = r.deleted_staging,
                            "orphaned blobs deleted"
                        );
                    }
                    JobOutcome::Done
                }
                Err(e) => JobOutcome::RetryAt {
                    at: state.clock().now().plus(Duration::from_secs(60)),
                    error: e.to_string(),
                },
            }
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(55)
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn blob_keys_name_their_transfer() {
        assert_eq!(owner("packages/t-1"), Some("t-1"));
        assert_eq!(owner("packages/t-1.0a1b"), Some("t-1"));
        assert_eq!(owner("packages/t-1."), None);
        assert_eq!(owner("packages/.0a1b"), None);
        assert_eq!(owner("fetched/t-1/household"), Some("t-1"));
        assert_eq!(owner("packages/t-1/extra"), None);
        assert_eq!(owner("fetched/t-1"), None);
        assert_eq!(owner("fetched/t-1.household"), Some("t-1"));
        assert_eq!(owner("fetched/t-1."), None);
        assert_eq!(owner("fetched/.household"), None);
        assert_eq!(owner("packages/"), None);
        assert_eq!(owner("other/t-1"), None);
    }
}
