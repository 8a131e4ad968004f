//! Background work of a server process: job workers that run durable jobs from the database queue,
//! and the expiry sweep that ends transfers past their 8 hours and destroys their packages. All tasks are spawned here, each with
//! a name, and all stop when [`Background::shutdown`] is called.
//!
//! Nothing here keeps state another process needs: a job is claimed with a lease in the database, so
//! several processes share the queue, and a job whose worker died is taken over when its lease ends.

use crate::state::AppState;
use mydata_core::transfer::TransferEvent;
use mydata_store::{Job, JobState, StoreError};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most jobs one worker runs back to back before it checks for shutdown again.
const BURST: usize = 64;
/// Most transfers ended by one sweep round (the next round continues).
const SWEEP_BATCH: u32 = 500;

/// Settings of the background tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// Run job workers and sweeps in this process (turn off for API-only processes).
    pub enabled: bool,
    /// How often an idle worker looks for due jobs.
    pub poll_interval_ms: u64,
    /// How long a claimed job is reserved for its worker.
    pub lease_secs: u64,
    /// How often expired transfers are looked for.
    pub sweep_interval_secs: u64,
    /// How often new audit events are integrated into the Merkle tree and a tree head recorded.
    pub audit_interval_secs: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_ms: 500,
            lease_secs: 60,
            sweep_interval_secs: 30,
            audit_interval_secs: 10,
        }
    }
}

/// What became of one run of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Try again at the given time (the handler applies its retry policy).
    RetryAt {
        at: mydata_core::Timestamp,
        error: String,
    },
    /// Give up for good.
    Failed(String),
}

/// A boxed future, so handlers can be stored as trait objects.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs the jobs of one queue.
pub trait JobHandler: Send + Sync + std::fmt::Debug + 'static {
    /// The queue this handler serves.
    fn queue(&self) -> &'static str;
    /// Runs one job. Must not panic; every failure is an outcome.
    fn run(&self, state: AppState, job: Job) -> BoxFuture<JobOutcome>;
    /// Longest a single run may take before it counts as failed.
    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// The running background tasks of a process.
#[derive(Debug)]
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl Background {
    /// Starts one worker per handler and the expiry sweep.
    pub fn spawn(state: AppState, handlers: Vec<Arc<dyn JobHandler>>) -> Self {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let settings = state.settings().jobs.clone();
        if settings.enabled {
            let worker_id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            for h in handlers {
                let name = format!("worker:{}", h.queue());
                let task =
                    tokio::spawn(worker_loop(state.clone(), h, worker_id.clone(), rx.clone()));
                tasks.push((name, task));
            }
            tasks.push((
                "sweep:expiry".into(),
                tokio::spawn(sweep_loop(state.clone(), rx.clone())),
            ));
            tasks.push((
                "audit:integrate".into(),
                tokio::spawn(audit_loop(state, rx)),
            ));
        }
        Self { stop, tasks }
    }

    /// Names of the running tasks (for logs and tests).
    pub fn task_names(&self) -> Vec<&str> {
        self.tasks.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Asks every task to stop after its current step and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(task = %name, error = %e, "background task ended abnormally");
            }
        }
    }
}

/// Sleeps for `d` or until shutdown; returns true when it is time to stop.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

async fn worker_loop(
    state: AppState,
    handler: Arc<dyn JobHandler>,
    worker: String,
    mut stop: watch::Receiver<bool>,
) {
    let settings = state.settings().jobs.clone();
    let poll = Duration::from_millis(settings.poll_interval_ms.max(1));
    let lease = Duration::from_secs(settings.lease_secs.max(1));
    tracing::info!(queue = handler.queue(), "job worker started");
    loop {
        for _ in 0..BURST {
            if *stop.borrow() {
                break;
            }
            match run_one(&state, handler.as_ref(), &worker, lease).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(queue = handler.queue(), error = %e, "job queue unavailable");
                    break;
                }
            }
        }
        if pause(poll, &mut stop).await {
            break;
        }
    }
    tracing::info!(queue = handler.queue(), "job worker stopped");
}

/// Claims and runs one due job; returns whether there was one.
async fn run_one(
    state: &AppState,
    handler: &dyn JobHandler,
    worker: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let store = state.store();
    let Some(job) = store
        .claim_job(handler.queue(), worker, lease, state.clock().now())
        .await?
    else {
        return Ok(false);
    };
    let id = job.id.clone();
    let attempt = job.attempts;
    // The run may not outlive its lease, or another worker would take the job over meanwhile.
    let limit = handler.timeout().min(lease);
    let outcome = match tokio::time::timeout(limit, handler.run(state.clone(), job)).await {
        Ok(o) => o,
        Err(_) => JobOutcome::RetryAt {
            at: state.clock().now(),
            error: format!("timed out after {limit:?}"),
        },
    };
    let now = state.clock().now();
    let result = match &outcome {
        JobOutcome::Done => store
            .complete_job(&id, worker, now)
            .await
            .map(|()| JobState::Done),
        JobOutcome::RetryAt { at, error } => store.retry_job(&id, worker, error, *at, now).await,
        JobOutcome::Failed(error) => store
            .fail_job(&id, worker, error, now)
            .await
            .map(|()| JobState::Failed),
    };
    match result {
        Ok(s) => {
            tracing::debug!(queue = handler.queue(), job = %id, attempt, state = %s, "job run")
        }
        // Our lease ran out and another worker owns the job now: its outcome counts, not ours.
        Err(StoreError::LeaseLost(_)) => {
            tracing::warn!(queue = handler.queue(), job = %id, "job lease lost during run")
        }
        Err(e) => return Err(e),
    }
    Ok(true)
}

async fn sweep_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(state.settings().jobs.sweep_interval_secs.max(1));
    loop {
        match sweep_expired(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(transfers = n, "expired transfers ended"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
        match crate::packages::purge_expired_data(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(packages = n, "expired packages destroyed"),
            Err(e) => tracing::warn!(error = %e, "package purge failed"),
        }
        match crate::identity::session::sweep(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(sessions = n, "ended sessions removed"),
            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
        }
        if pause(every, &mut stop).await {
            break;
        }
    }
}

/// Most audit events integrated in one round.
const AUDIT_BATCH: u32 = 10_000;

async fn audit_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(state.settings().jobs.audit_interval_secs.max(1));
    loop {
        match integrate_and_sign(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(heads = n, "audit log integrated and tree heads signed"),
            Err(e) => tracing::warn!(error = %e, "audit integration failed"),
        }
        if pause(every, &mut stop).await {
            break;
        }
    }
}

/// Integrates new audit events into the tree and signs every tree head not signed yet (also heads
/// left unsigned by a process that stopped in between). Returns how many heads were signed.
pub async fn integrate_and_sign(state: &AppState) -> Result<usize, StoreError> {
    let store = state.store();
    store
        .integrate_audit(AUDIT_BATCH, state.clock().now())
        .await?;
    let mut signed = 0;
    for head in store.unsigned_tree_heads(1000).await? {
        let jws = state.platform().sign(&head.signing_payload());
        if store.set_tree_head_signature(head.tree_size, &jws).await? {
            signed += 1;
        }
    }
    Ok(signed)
}

/// Ends every transfer whose 8 hours have passed; returns how many. Safe to run in several
/// processes at once: a transfer another process ended first is skipped.
pub async fn sweep_expired(state: &AppState) -> Result<usize, StoreError> {
    let store = state.store();
    let mut ended = 0;
    let now = state.clock().now();
    for id in store.transfers_past_expiry(now, SWEEP_BATCH).await? {
        match store
            .apply_transfer_event(&id, TransferEvent::Expire, "system", now)
            .await
        {
            Ok(_) => ended += 1,
            Err(
                StoreError::Conflict(_)
                | StoreError::IllegalTransition(_)
                | StoreError::NotFound { .. },
            ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ended)
}
