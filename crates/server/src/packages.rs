//! Packages: assembled once every dataset of a transfer has settled (queue [`PACKAGE_QUEUE`]),
//! sealed with a fresh AES-256-GCM key, stored as a blob with the key (wrapped by the data key) in
//! the database apart from it; taken at most once ([`take_package`]), and destroyed at the latest
//! at the transfer's expiry ([`purge_expired_data`], run by the expiry sweep).
//!
//! Deleting a package means destroying its key first and the blob second: if the blob deletion
//! fails or a copy survives elsewhere (backups, replicas), it is ciphertext without a key.

use crate::agencies::fetched_key_context;
use crate::background::{BoxFuture, JobHandler, JobOutcome};
use crate::oauth::delivery::SealError;
use crate::state::AppState;
use mydata_connector::SignedDatasetBody;
use mydata_core::Timestamp;
use mydata_core::transfer::{TransferEvent, TransferState};
use mydata_package::{PackageBuilder, PackageKey, SignedDataset};
use mydata_store::{Job, NewAuditEvent, NewJob, PackageRecord, StoreError, Transfer, fetch_status};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The queue of package assembly jobs.
pub const PACKAGE_QUEUE: &str = "package-assemble";
/// Most packages (and stale fetched datasets) destroyed per sweep round.
const PURGE_BATCH: u32 = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PackageJob {
    transfer_id: String,
}

pub(crate) fn package_key_context(transfer_id: &str) -> String {
    format!("mydata:v1:package-key:{transfer_id}")
}

/// A fresh blob key for a package of the transfer: `packages/<transfer>.<random>`, so that two
/// runs building the same transfer's package (a retry while an earlier run lingers) never write
/// over each other's blob, and a run whose write lost can delete its own.
pub fn package_object(transfer_id: &str) -> String {
    format!(
        "packages/{transfer_id}.{}",
        hex::encode(rand::random::<[u8; 8]>())
    )
}

/// The packaging job of a transfer (one per transfer: a second is not enqueued).
pub(crate) fn assembly_job(transfer_id: &str, now: Timestamp) -> NewJob {
    NewJob {
        id: mydata_store::new_job_id(),
        queue: PACKAGE_QUEUE.into(),
        payload: serde_json::json!(PackageJob {
            transfer_id: transfer_id.to_owned(),
        }),
        run_at: now,
        max_attempts: 20,
        dedup_key: Some(format!("package:{transfer_id}")),
    }
}

/// Runs the jobs of [`PACKAGE_QUEUE`].
#[derive(Debug, Default)]
pub struct PackageHandler;

impl JobHandler for PackageHandler {
    fn queue(&self) -> &'static str {
        PACKAGE_QUEUE
    }

    fn run(&self, state: AppState, job: Job) -> BoxFuture<JobOutcome> {
        Box::pin(async move {
            let Ok(p) = serde_json::from_value::<PackageJob>(job.payload.clone()) else {
                return JobOutcome::Failed("payload is not a package job".into());
            };
            let retry = |e: String| JobOutcome::RetryAt {
                at: state.clock().now().plus(Duration::from_secs(
                    5u64.saturating_mul(u64::from(job.attempts)),
                )),
                error: e,
            };
            let lease = job.lease_owner.as_deref().map(|w| (job.id.as_str(), w));
            match assemble(&state, &p.transfer_id, lease).await {
                Ok(true) => JobOutcome::Recorded,
                Ok(false) => JobOutcome::Done,
                Err(AssembleError::Store(e)) => retry(format!("store: {e}")),
                Err(AssembleError::Blob(e)) => retry(e),
                // Ended by `assemble` (its data dropped): nothing left to retry.
                Err(AssembleError::NoRecipient(_)) => JobOutcome::Done,
                Err(AssembleError::Broken(e)) => {
                    tracing::error!(transfer = %p.transfer_id, error = %e, "package assembly failed");
                    JobOutcome::Failed(e)
                }
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum AssembleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Blob(String),
    /// Cannot succeed on a retry.
    #[error("{0}")]
    Broken(String),
    /// The transfer's service is gone (removed since the consent): no package can reach it.
    #[error("{0}")]
    NoRecipient(&'static str),
}

fn event(kind: &str, t: &Transfer, detail: serde_json::Value, now: Timestamp) -> NewAuditEvent {
    NewAuditEvent {
        at: now,
        kind: kind.into(),
        subject: Some(t.subject.clone()),
        transfer_id: Some(t.id.clone()),
        actor: "system".into(),
        detail,
    }
}

/// Builds, signs, seals and stores the package of a transfer whose fetches have all settled, then
/// marks the transfer ready. Idempotent: a run after a crash finishes what the last one started.
/// With `job` (the packaging job and the worker leasing it), the job is marked done in the run's
/// last write when nothing is left to do after it; true if it was.
async fn assemble(
    state: &AppState,
    transfer_id: &str,
    job: Option<(&str, &str)>,
) -> Result<bool, AssembleError> {
    let store = state.store();
    let now = state.clock().now();
    // One read: the transfer, its fetches and whether a package is stored already.
    let Some(work) = store.transfer_work(transfer_id).await? else {
        return Ok(false);
    };
    let (t, records) = (work.transfer, work.fetches);
    if t.state != TransferState::Fetching {
        // Ended meanwhile (expired, cancelled): its data goes, no package is made.
        drop_fetched(state, transfer_id).await;
        return Ok(false);
    }
    if records.iter().any(|r| !fetch_status::is_settled(&r.status)) {
        return Err(AssembleError::Blob(
            "some datasets are still being fetched".into(),
        ));
    }
    let mut package = None;
    if work.package.is_none() {
        let fetched: Vec<_> = records
            .iter()
            .filter(|r| r.status == fetch_status::SUCCEEDED)
            .collect();
        if fetched.is_empty() {
            store
                .append_audit(&event(
                    "package.none",
                    &t,
                    serde_json::json!({ "reason": "no dataset was fetched" }),
                    now,
                ))
                .await?;
        } else {
            let mut datasets = Vec::with_capacity(fetched.len());
            for r in fetched {
                datasets.push(load_fetched(state, &t.id, r).await?);
            }
            match build(state, &t, datasets, records.len(), now).await {
                Ok(built) => package = Some(built),
                Err(AssembleError::NoRecipient(why)) => {
                    end_undeliverable(state, &t, why, now).await?;
                    return Err(AssembleError::NoRecipient(why));
                }
                Err(e) => return Err(e),
            }
        }
    }
    // One write: the package stored, the fetched datasets and the sealed identity forgotten (a
    // failure retries the job, so neither outlives the packaging), and the transfer ready.
    // A self-download's notice still follows (below): its job stays open until that is done too.
    let self_download = t.kind == mydata_core::transfer::TransferKind::SelfDownload;
    let done = store
        .finish_packaging(
            &t,
            package.as_ref().map(|(p, e)| (p, e)),
            job.filter(|_| !self_download),
            now,
        )
        .await?;
    delete_blobs(state, done.leftovers).await;
    // Changed since the read at the start of this run: moved from a fresh read.
    if !done.moved {
        match store
            .apply_transfer_event(transfer_id, TransferEvent::Settled, "system", now)
            .await
        {
            Ok(_) | Err(StoreError::IllegalTransition(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    state.settled().settle(transfer_id);
    // A self-download's notice says the data is ready (counter and online flows notify on use).
    if self_download && let Some(settled) = store.transfer(transfer_id).await? {
        crate::notices::notify(state, &settled, &crate::notices::NoticeEvent::Ready).await?;
    }
    Ok(done.job_done)
}

/// Ends a transfer whose package can reach nobody (its service was removed): cancelled, and what
/// it fetched forgotten at once (the purge would otherwise wait for the next sweep).
async fn end_undeliverable(
    state: &AppState,
    t: &Transfer,
    why: &str,
    now: Timestamp,
) -> Result<(), AssembleError> {
    tracing::warn!(transfer = %t.id, reason = why, "transfer ended: its package has no recipient");
    match state
        .store()
        .apply_transfer_event_from(t, TransferEvent::Cancel, "system", now)
        .await
    {
        // Ended meanwhile by someone else: its data goes all the same.
        Ok(_) | Err(StoreError::IllegalTransition(_)) => {}
        Err(e) => return Err(e.into()),
    }
    drop_fetched(state, &t.id).await;
    state.settled().settle(&t.id);
    Ok(())
}

/// A fetched dataset of `transfer_id` as the fetch stored it: its key unwrapped, its blob read and
/// opened.
async fn load_fetched(
    state: &AppState,
    transfer_id: &str,
    r: &mydata_store::FetchRecord,
) -> Result<SignedDataset, AssembleError> {
    let (Some(object), Some(wrapped)) = (&r.data_object, &r.data_key) else {
        return Err(AssembleError::Broken(format!(
            "fetched dataset {} has no stored data",
            r.dataset_id
        )));
    };
    let data = state.data();
    let key = data
        .vault
        .open(&fetched_key_context(transfer_id, &r.dataset_id), wrapped)
        .map_err(|e| AssembleError::Broken(e.to_string()))?;
    let key = package_key(&key)
        .ok_or_else(|| AssembleError::Broken("a stored dataset key has the wrong length".into()))?;
    let blob = data
        .blobs
        .get(object)
        .await
        .map_err(|e| AssembleError::Blob(e.to_string()))?;
    let plain = zeroize::Zeroizing::new(
        mydata_package::open(&key, &blob).map_err(|e| AssembleError::Broken(e.to_string()))?,
    );
    let body: SignedDatasetBody =
        serde_json::from_slice(&plain).map_err(|e| AssembleError::Broken(e.to_string()))?;
    body.to_signed()
        .map_err(|e| AssembleError::Broken(e.to_string()))
}

/// Builds and signs the package of `t` from its fetched `datasets` (of `asked` datasets in all),
/// seals it (end to end to an online service, else under a fresh key wrapped by the data key) and
/// keeps it (in its record when small enough, else as a blob); returns its record and
/// `package.created` event, for the caller's write.
async fn build(
    state: &AppState,
    t: &Transfer,
    datasets: Vec<SignedDataset>,
    asked: usize,
    now: Timestamp,
) -> Result<(PackageRecord, NewAuditEvent), AssembleError> {
    let data = state.data();
    let names: Vec<String> = datasets.iter().map(|d| d.dataset_id.clone()).collect();
    let mut builder = PackageBuilder::new(&t.id, &t.subject, &t.purpose);
    for ds in datasets {
        builder
            .add_dataset(ds)
            .map_err(|e| AssembleError::Broken(e.to_string()))?;
    }
    let zip = zeroize::Zeroizing::new(
        builder
            .build(state.platform(), now)
            .map_err(|e| AssembleError::Broken(e.to_string()))?,
    );
    let digest = hex::encode(Sha256::digest(zip.as_slice()));
    // An online service's package is sealed end to end to the service right away.
    let e2e = crate::oauth::delivery::seal_for_recipient(state, t, &zip)
        .await
        .map_err(|e| match e {
            SealError::NoRecipient(why) => AssembleError::NoRecipient(why),
            SealError::Failed(e) => AssembleError::Blob(e),
        })?;
    let (sealed, wrapped) = match e2e {
        Some(done) => done,
        None => {
            let (key, sealed) =
                mydata_package::seal(&zip).map_err(|e| AssembleError::Broken(e.to_string()))?;
            let wrapped = data
                .vault
                .seal(&package_key_context(&t.id), key.as_bytes())
                .map_err(|e| AssembleError::Broken(e.to_string()))?;
            (sealed, wrapped)
        }
    };
    let object = package_object(&t.id);
    let body = if data.blobs.keeps_inline(sealed.len()) {
        Some(sealed)
    } else {
        data.blobs
            .put(&object, sealed)
            .await
            .map_err(|e| AssembleError::Blob(e.to_string()))?;
        None
    };
    let record = PackageRecord {
        transfer_id: t.id.clone(),
        object_key: object,
        sealed_key: Some(wrapped),
        digest: digest.clone(),
        size_bytes: zip.len() as u64,
        datasets: u32::try_from(asked).unwrap_or(u32::MAX),
        created_at: now,
        // The transfer's 8 hours bound the package too (created + 8 h is later).
        expires_at: t.expires_at,
        taken_at: None,
        deleted_at: None,
        body,
    };
    let created = event(
        "package.created",
        t,
        serde_json::json!({ "digest": digest, "size": record.size_bytes, "datasets": names }),
        now,
    );
    tracing::info!(transfer = %t.id, datasets = names.len(), "package built");
    Ok((record, created))
}

/// Whether the fetch that settles the last dataset of `t` may package it itself: not for a
/// self-download, whose notice rides on the packaging job.
pub(crate) fn packaged_by_last_fetch(t: &Transfer) -> bool {
    t.kind != mydata_core::transfer::TransferKind::SelfDownload
}

/// Packages a transfer right from the fetch that settles its last open dataset, in the same write
/// as the settlement ([`mydata_store::Store::settle_and_package`]): the fetched dataset `last` is
/// never stored, read back and deleted. `others` are the transfer's other fetches, all settled
/// when it was read. Returns whether the fetch's job was marked done, or None when the transfer
/// could not be packaged this way (changed meanwhile, or a self-download, whose notice rides on
/// the packaging job; anything failing): nothing but the agency slot was written, and the
/// caller settles the fetch the usual way.
pub(crate) async fn package_with_last_fetch(
    state: &AppState,
    t: &Transfer,
    others: &[mydata_store::FetchRecord],
    last: &SignedDataset,
    digest: &str,
    settled: &NewAuditEvent,
    also: &mydata_store::SettleAlso<'_>,
) -> Result<Option<bool>, StoreError> {
    if !packaged_by_last_fetch(t) {
        return Ok(None);
    }
    let now = state.clock().now();
    let mut datasets = Vec::with_capacity(others.len() + 1);
    for r in others
        .iter()
        .filter(|r| r.status == fetch_status::SUCCEEDED)
    {
        match load_fetched(state, &t.id, r).await {
            Ok(ds) => datasets.push(ds),
            // The packaging job meets (and reports) the same problem.
            Err(_) => return Ok(None),
        }
    }
    // Checked against the fetch's dataset by the connector.
    let dataset_id = last.dataset_id.clone();
    datasets.push(last.clone());
    let (record, created) = match build(state, t, datasets, others.len() + 1, now).await {
        Ok(built) => built,
        Err(e) => {
            tracing::debug!(transfer = %t.id, error = %e, "packaging with the last fetch failed");
            return Ok(None);
        }
    };
    let done = state
        .store()
        .settle_and_package(
            t,
            &dataset_id,
            digest,
            settled,
            (&record, &created),
            also,
            now,
        )
        .await;
    let moved = matches!(&done, Ok(d) if d.moved);
    if !moved && let Err(e) = state.data().blobs.delete_package(&record).await {
        tracing::warn!(error = %e, "deleting an unused package blob failed");
    }
    let done = done?;
    if !moved {
        return Ok(None);
    }
    delete_blobs(state, done.leftovers).await;
    state.settled().settle(&t.id);
    Ok(Some(done.job_done))
}

pub(crate) fn package_key(bytes: &[u8]) -> Option<PackageKey> {
    let arr: [u8; 32] = bytes.try_into().ok()?;
    Some(PackageKey::from_bytes(arr))
}

/// Forgets the fetched datasets of a transfer: keys first, then blobs.
async fn drop_fetched(state: &AppState, transfer_id: &str) {
    match state.store().clear_fetched_data(transfer_id).await {
        Ok(leftovers) => delete_blobs(state, leftovers).await,
        Err(e) => tracing::warn!(error = %e, "forgetting fetched datasets failed"),
    }
}

/// Deletes the blobs of fetched datasets whose keys are already gone.
async fn delete_blobs(state: &AppState, leftovers: Vec<mydata_store::Leftover>) {
    for l in leftovers {
        if let Err(e) = state.data().blobs.delete(&l.object_key).await {
            // The key is gone already: what is left cannot be read.
            tracing::warn!(error = %e, "deleting a fetched dataset blob failed");
        }
    }
}

/// Why a package could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("transfer `{0}` has no package")]
    NotFound(String),
    #[error("the package of transfer `{0}` was already retrieved or has expired, and is deleted")]
    Gone(String),
    #[error("the package cannot be read: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Returns the package of `transfer_id` exactly once: the first caller gets the zip, and in the
/// same step its key is destroyed, the blob deleted, and the transfer released and purged.
pub async fn take_package(
    state: &AppState,
    transfer_id: &str,
    actor: &str,
) -> Result<Vec<u8>, TakeError> {
    let store = state.store();
    let data = state.data();
    let now = state.clock().now();
    let rec = store
        .package(transfer_id)
        .await?
        .ok_or_else(|| TakeError::NotFound(transfer_id.to_owned()))?;
    let t = store
        .transfer(transfer_id)
        .await?
        .ok_or_else(|| TakeError::NotFound(transfer_id.to_owned()))?;
    if rec.sealed_key.is_none() || rec.expires_at <= now {
        return Err(TakeError::Gone(transfer_id.to_owned()));
    }
    let blob = data
        .blobs
        .package(&rec)
        .await
        .map_err(|e| TakeError::Internal(e.to_string()))?;
    let audit = NewAuditEvent {
        at: now,
        kind: "package.taken".into(),
        subject: Some(t.subject.clone()),
        transfer_id: Some(t.id.clone()),
        actor: actor.to_owned(),
        detail: serde_json::json!({ "digest": rec.digest }),
    };
    // Only one caller wins this: the key leaves the database here.
    let wrapped = store
        .take_package_key(transfer_id, &audit, now)
        .await?
        .ok_or_else(|| TakeError::Gone(transfer_id.to_owned()))?;
    let result = data
        .vault
        .open(&package_key_context(transfer_id), &wrapped)
        .ok()
        .and_then(|k| package_key(&k))
        .ok_or_else(|| TakeError::Internal("the package key does not open".into()))
        .and_then(|key| {
            mydata_package::open(&key, &blob).map_err(|e| TakeError::Internal(e.to_string()))
        });
    if let Err(e) = data.blobs.delete_package(&rec).await {
        tracing::warn!(error = %e, "deleting a taken package blob failed; its key is destroyed");
    }
    // Deleted at retrieval: the key went with `package.taken`, the blob just now.
    let deleted = event(
        "package.deleted",
        &t,
        serde_json::json!({ "reason": "retrieved", "digest": rec.digest }),
        state.clock().now(),
    );
    if let Err(e) = store.append_audit(&deleted).await {
        tracing::warn!(transfer = %transfer_id, error = %e, "deletion at retrieval not logged");
    }
    for event in [TransferEvent::Release, TransferEvent::Purge] {
        if let Err(e) = store
            .apply_transfer_event(transfer_id, event, actor, state.clock().now())
            .await
        {
            tracing::warn!(transfer = %transfer_id, error = %e, "transfer state after retrieval not recorded");
            break;
        }
    }
    result
}

/// Destroys what must not outlive its transfer: package keys and blobs past expiry or of ended
/// transfers, fetched datasets of ended transfers, and identities no fetch needs any more.
/// Returns how many packages were destroyed. Safe in several processes at once.
pub async fn purge_expired_data(state: &AppState) -> Result<usize, StoreError> {
    let store = state.store();
    let data = state.data();
    let now = state.clock().now();
    let mut destroyed = 0;
    for id in store.packages_to_destroy(now, PURGE_BATCH).await? {
        let Some(t) = store.transfer(&id).await? else {
            continue;
        };
        let audit = event(
            "package.deleted",
            &t,
            serde_json::json!({ "reason": if t.expires_at <= now { "expired" } else { "transfer_ended" } }),
            now,
        );
        if let Some(left) = store.destroy_package_key(&id, &audit, now).await? {
            destroyed += 1;
            if let Err(e) = data.blobs.delete(&left.object_key).await {
                tracing::warn!(error = %e, "deleting an expired package blob failed; its key is destroyed");
            }
        }
    }
    for id in store.transfers_with_stale_data(now, PURGE_BATCH).await? {
        drop_fetched(state, &id).await;
    }
    store.purge_transfer_secrets().await?;
    Ok(destroyed)
}

/// Opens the package of `transfer_id` for reading without releasing it (preview, saving one file
/// or the zip before the person confirms deletion). The plaintext lives only in the returned
/// buffer, wiped on drop; nothing is written anywhere. Callers must have checked that the
/// requester owns the transfer.
pub async fn read_package(
    state: &AppState,
    transfer_id: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, TakeError> {
    let store = state.store();
    let data = state.data();
    let now = state.clock().now();
    let rec = store
        .package(transfer_id)
        .await?
        .ok_or_else(|| TakeError::NotFound(transfer_id.to_owned()))?;
    let Some(wrapped) = rec.sealed_key.as_deref().filter(|_| rec.expires_at > now) else {
        return Err(TakeError::Gone(transfer_id.to_owned()));
    };
    let blob = data
        .blobs
        .package(&rec)
        .await
        .map_err(|e| TakeError::Internal(e.to_string()))?;
    let key = data
        .vault
        .open(&package_key_context(transfer_id), wrapped)
        .ok()
        .and_then(|k| package_key(&k))
        .ok_or_else(|| TakeError::Internal("the package key does not open".into()))?;
    mydata_package::open(&key, &blob)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| TakeError::Internal(e.to_string()))
}

/// Deletes a package its person has saved and asked to have deleted: the key is destroyed (the
/// one step only one caller wins), the blob deleted, and the transfer released and purged.
/// Returns false when it was gone already.
pub async fn delete_saved_package(
    state: &AppState,
    transfer_id: &str,
    actor: &str,
) -> Result<bool, TakeError> {
    let store = state.store();
    let now = state.clock().now();
    let rec = store
        .package(transfer_id)
        .await?
        .ok_or_else(|| TakeError::NotFound(transfer_id.to_owned()))?;
    let t = store
        .transfer(transfer_id)
        .await?
        .ok_or_else(|| TakeError::NotFound(transfer_id.to_owned()))?;
    let audit = NewAuditEvent {
        at: now,
        kind: "package.deleted".into(),
        subject: Some(t.subject.clone()),
        transfer_id: Some(t.id.clone()),
        actor: actor.to_owned(),
        detail: serde_json::json!({ "reason": "saved_by_person", "digest": rec.digest }),
    };
    // The wrapped key is dropped unread: nobody needs the package any more.
    if store
        .take_package_key(transfer_id, &audit, now)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    if let Err(e) = state.data().blobs.delete_package(&rec).await {
        tracing::warn!(error = %e, "deleting a saved package blob failed; its key is destroyed");
    }
    for event in [TransferEvent::Release, TransferEvent::Purge] {
        if let Err(e) = store
            .apply_transfer_event(transfer_id, event, actor, state.clock().now())
            .await
        {
            tracing::warn!(transfer = %transfer_id, error = %e, "transfer state after deletion not recorded");
            break;
        }
    }
    Ok(true)
}
