//! Background work of a server process: job workers that run durable jobs from the database queue,
//! the expiry sweep that ends transfers past their 8 hours and destroys their packages, audit integration
//! and head signing, and the retention job (scheduled through the queue, so one process runs each round).
//! All tasks are spawned here, each with
//! a name, and all stop when [`Background::shutdown`] is called.
//!
//! Nothing here keeps state another process needs: a job is claimed with a lease in the database, so
//! several processes share the queue, and a job whose worker died is taken over when its lease ends.

use crate::state::AppState;
use mydata_core::transfer::TransferEvent;
use mydata_store::{Backend, Job, JobState, NewJob, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
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
    /// How often an idle worker looks for due jobs. A job this process enqueues wakes a worker
    /// at once; the poll finds jobs of other processes and jobs whose retry time has come.
    pub poll_interval_ms: u64,
    /// Workers per queue in this process (jobs of one queue run this many at a time).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
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
            concurrency: default_concurrency(),
            lease_secs: 60,
            sweep_interval_secs: 30,
            audit_interval_secs: 10,
        }
    }
}

fn default_concurrency() -> u32 {
    8
}

/// Wakes this process's idle workers of a queue when the process enqueues a job there, so the job
/// does not wait for the next poll. Only a hint: a wake-up that finds nothing due costs one query.
/// Wake-ups are counted, one per job enqueued here, so a worker that finishes a job claims another
/// only while wake-ups are left: jobs enqueued while the workers are busy each still get a claim,
/// and a worker that has just emptied the queue does not pay an empty claim to find that out.
#[derive(Debug)]
pub struct JobWake {
    workers: usize,
    queues: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl JobWake {
    /// Wake-ups for `workers` workers per queue.
    pub fn new(workers: u32) -> Self {
        Self {
            workers: usize::try_from(workers.max(1)).unwrap_or(1),
            queues: Mutex::default(),
        }
    }

    /// The wake-ups the workers of `queue` wait on.
    fn signal(&self, queue: &str) -> Arc<Semaphore> {
        // A poisoned map is still a valid map (entries are only ever added).
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.entry(queue.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    /// Wakes one idle worker of `queue`, or the next one that goes idle.
    pub fn wake(&self, queue: &str) {
        self.signal(queue).add_permits(1);
    }
}

/// Runs jobs that a request enqueues leased to this process, straight after the request's write,
/// instead of waking a worker to claim them (one write fewer, no hand-off). At most
/// `jobs.concurrency` run this way at once; beyond that, and with the workers off, jobs are
/// enqueued for the workers as usual. A stopping process finishes its runs ([`Starter::drain`]);
/// one that dies leaves its jobs leased, and when the lease runs out any worker takes them over.
#[derive(Debug)]
pub struct Starter {
    /// `None` when this process runs no jobs (`jobs.enabled = false`).
    permits: Option<Arc<Semaphore>>,
    /// How many permits there are in all.
    size: u32,
    worker: String,
}

/// Leases of jobs a [`Starter`] will run: one permit each, and the end of their lease.
#[derive(Debug)]
pub struct StartPermits {
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    until: mydata_core::Timestamp,
}

impl StartPermits {
    /// How many jobs the permits cover.
    pub fn count(&self) -> usize {
        self.permits.len()
    }
}

impl Starter {
    pub fn new(settings: &JobSettings) -> Self {
        let size = settings.concurrency.max(1);
        let n = usize::try_from(size).unwrap_or(1);
        Self {
            permits: settings.enabled.then(|| Arc::new(Semaphore::new(n))),
            size,
            worker: format!(
                "{}-{}-start",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        }
    }

    /// The worker name that jobs run by this starter are leased to.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// How many more jobs it could run now.
    pub fn room(&self) -> usize {
        self.permits.as_ref().map_or(0, |s| s.available_permits())
    }

    /// Permits for up to `wanted` jobs, as many as are free now (none when jobs are off), leased
    /// until a lease from now.
    fn take(&self, state: &AppState, wanted: usize) -> StartPermits {
        let mut permits = Vec::new();
        if let Some(sem) = &self.permits {
            while permits.len() < wanted {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
        }
        StartPermits {
            permits,
            until: state.clock().now().plus(lease_of(state)),
        }
    }

    /// Leases the first of `jobs` to this process, as many as it has room for: the
    /// [`StartJobs`](mydata_store::StartJobs) for the write that enqueues them, and the permits to
    /// run them with once it has ([`Starter::run_enqueued`]).
    pub fn lease<'a>(
        &'a self,
        state: &AppState,
        jobs: &'a [NewJob],
    ) -> (mydata_store::StartJobs<'a>, StartPermits) {
        let permits = self.take(state, jobs.len());
        let start = mydata_store::StartJobs {
            jobs,
            leased: permits.count(),
            to: Some((self.worker.as_str(), permits.until)),
        };
        (start, permits)
    }

    /// After the write of `start` (from [`Starter::lease`]): runs its leased jobs here and wakes a
    /// worker of `handler`'s queue for each of the others, of those `enqueued` says the write
    /// enqueued (a job already there by its dedup key is neither run nor woken for).
    pub fn run_enqueued(
        &self,
        state: &AppState,
        handler: Arc<dyn JobHandler>,
        start: mydata_store::StartJobs<'_>,
        permits: StartPermits,
        enqueued: impl Fn(&NewJob) -> bool,
    ) {
        let mut leased = Vec::new();
        for (i, job) in start.jobs.iter().enumerate() {
            if !enqueued(job) {
                continue;
            }
            if i < start.leased {
                leased.push(leased_job(job, &self.worker, permits.until));
            } else {
                state.job_wake().wake(handler.queue());
            }
        }
        self.run(state, handler, leased, permits);
    }

    /// Stops starting runs (later starts queue their jobs for the workers) and waits for the runs
    /// in flight, each bounded by its handler's timeout: a process that stops finishes the fetches
    /// it started (and their packaging) instead of leaving them leased until the lease runs out.
    pub async fn drain(&self) {
        if let Some(sem) = &self.permits {
            // Every permit back means no run is left; they are kept, so none starts again.
            if let Ok(all) = sem.acquire_many(self.size).await {
                all.forget();
            }
            sem.close();
        }
    }

    /// Runs `jobs` (leased to [`Starter::worker`] by the write that enqueued them), one task each,
    /// each holding one of `permits` until it ends.
    fn run(
        &self,
        state: &AppState,
        handler: Arc<dyn JobHandler>,
        jobs: Vec<Job>,
        permits: StartPermits,
    ) {
        for (job, permit) in jobs.into_iter().zip(permits.permits) {
            let (state, handler, worker) = (state.clone(), handler.clone(), self.worker.clone());
            tokio::spawn(async move {
                run_leased(&state, handler.as_ref(), job, &worker).await;
                drop(permit);
            });
        }
    }
}

/// Wakes a sibling worker for a backlog found by polling, unless wake-ups are already waiting.
fn wake_one(signal: &Semaphore, workers: usize) {
    // More pending wake-ups than workers would only cost empty claims later.
    if signal.available_permits() < workers {
        signal.add_permits(1);
    }
}

/// Why a worker's pause ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// The poll interval passed: look for due jobs of any origin.
    Poll,
    /// A job was enqueued in this process (one wake-up taken).
    Woken,
    /// Shut down.
    Stop,
}

/// What became of one run of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Done,
    /// Done, and already marked so by the handler's own last write (one write fewer).
    Recorded,
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
    /// Starts `jobs.concurrency` workers per handler (one for retention) and the periodic tasks.
    pub fn spawn(state: AppState, handlers: Vec<Arc<dyn JobHandler>>) -> Self {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let settings = state.settings().jobs.clone();
        if settings.enabled {
            let worker_id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            for h in handlers {
                for i in 0..settings.concurrency.max(1) {
                    let name = match i {
                        0 => format!("worker:{}", h.queue()),
                        _ => format!("worker:{}#{i}", h.queue()),
                    };
                    let task = tokio::spawn(worker_loop(
                        state.clone(),
                        h.clone(),
                        i,
                        format!("{worker_id}-{i}"),
                        rx.clone(),
                    ));
                    tasks.push((name, task));
                }
            }
            tasks.push((
                "audit:integrate".into(),
                tokio::spawn(audit_loop(state.clone(), rx.clone())),
            ));
            tasks.push((
                "sqlite:checkpoint".into(),
                tokio::spawn(checkpoint_loop(state.clone(), rx.clone())),
            ));
            tasks.push((
                "schedule:periodic".into(),
                tokio::spawn(schedule_loop(state.clone(), rx.clone())),
            ));
            let expiry: Arc<dyn JobHandler> = Arc::new(ExpiryHandler);
            tasks.push((
                format!("worker:{EXPIRY_QUEUE}"),
                tokio::spawn(worker_loop(
                    state.clone(),
                    expiry,
                    0,
                    format!("{worker_id}-expiry"),
                    rx.clone(),
                )),
            ));
            let retention: Arc<dyn JobHandler> = Arc::new(RetentionHandler);
            tasks.push((
                format!("worker:{RETENTION_QUEUE}"),
                tokio::spawn(worker_loop(state, retention, 0, worker_id, rx)),
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
    pause_or_wake(d, stop, &Semaphore::new(0)).await == Resume::Stop
}

/// Like [`pause`], but also ends early when a wake-up is taken from `wake`.
async fn pause_or_wake(d: Duration, stop: &mut watch::Receiver<bool>, wake: &Semaphore) -> Resume {
    if *stop.borrow() {
        return Resume::Stop;
    }
    let resume = tokio::select! {
        _ = tokio::time::sleep(d) => Resume::Poll,
        p = wake.acquire() => {
            if let Ok(p) = p {
                p.forget();
            }
            Resume::Woken
        }
        r = stop.changed() => if r.is_err() { Resume::Stop } else { Resume::Poll },
    };
    if *stop.borrow() { Resume::Stop } else { resume }
}

/// Takes a waiting wake-up, if there is one.
fn take_wake(wake: &Semaphore) -> bool {
    match wake.try_acquire() {
        Ok(p) => {
            p.forget();
            true
        }
        Err(_) => false,
    }
}

/// One worker of a queue. Worker 0 polls every `poll_interval_ms`; the others wait for a wake-up
/// (a local enqueue, or a sibling that found a backlog), so idle workers cost no queries. After a
/// poll a worker claims until the queue is empty, and one that finds a second due job in a row
/// wakes a sibling, so a backlog left by another process spreads over all workers. After a wake-up
/// it claims once per wake-up it can take, so jobs enqueued here cost no empty claim.
async fn worker_loop(
    state: AppState,
    handler: Arc<dyn JobHandler>,
    index: u32,
    worker: String,
    mut stop: watch::Receiver<bool>,
) {
    let settings = state.settings().jobs.clone();
    let poll = Duration::from_millis(settings.poll_interval_ms.max(1));
    // Extra workers still look now and then, in case a wake-up was spent by a worker that stopped.
    let poll = if index == 0 {
        poll
    } else {
        poll.saturating_mul(20)
    };
    let lease = lease_of(&state);
    let wake = state.job_wake().signal(handler.queue());
    let workers = state.job_wake().workers;
    tracing::debug!(queue = handler.queue(), worker = %worker, "job worker started");
    let mut resume = Resume::Poll;
    loop {
        // A job claimed together with the last one's completion (one write between two jobs).
        let mut next: Option<Job> = None;
        for n in 0..BURST {
            let job = match next.take() {
                Some(job) => job,
                None if *stop.borrow() => break,
                None => match state
                    .store()
                    .claim_job(handler.queue(), &worker, lease, state.clock().now())
                    .await
                {
                    Ok(Some(job)) => job,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(queue = handler.queue(), error = %e, "job queue unavailable");
                        break;
                    }
                },
            };
            let (id, attempt) = (job.id.clone(), job.attempts);
            let outcome = run_job(&state, handler.as_ref(), job, lease).await;
            // Whether this worker takes another job: after a wake-up only while wake-ups are left;
            // after a poll until the queue is empty, waking a sibling once a backlog shows.
            let more = n + 1 < BURST
                && !*stop.borrow()
                && match resume {
                    Resume::Woken => take_wake(&wake),
                    _ => {
                        if n >= 1 {
                            wake_one(&wake, workers);
                        }
                        true
                    }
                };
            match record(
                &state,
                handler.as_ref(),
                &worker,
                lease,
                (&id, attempt),
                &outcome,
                more,
            )
            .await
            {
                // The queue was looked at with the completion, and is empty.
                Ok(None) if more && outcome == JobOutcome::Done => break,
                Ok(claimed) => next = claimed,
                Err(e) => {
                    tracing::warn!(queue = handler.queue(), error = %e, "job queue unavailable");
                    break;
                }
            }
            if !more {
                break;
            }
        }
        if let Some(job) = next {
            // Stopping with a job claimed: its lease runs out and a worker takes it over.
            tracing::debug!(queue = handler.queue(), job = %job.id, "job left to its lease");
        }
        resume = pause_or_wake(poll, &mut stop, &wake).await;
        if resume == Resume::Stop {
            break;
        }
    }
    tracing::debug!(queue = handler.queue(), worker = %worker, "job worker stopped");
}

/// Claims and runs one due job of `handler`'s queue now, exactly as a worker would (lease,
/// timeout, outcome recorded), under the worker name `worker`; returns whether there was one.
/// For one-shot runs without the background workers (`jobs.enabled = false`), as tests do to step
/// through retries on the injected clock.
pub async fn run_due_job(
    state: &AppState,
    handler: &dyn JobHandler,
    worker: &str,
) -> Result<bool, StoreError> {
    let lease = lease_of(state);
    run_one(state, handler, worker, lease).await
}

/// How long a worker's lease on a job lasts.
pub(crate) fn lease_of(state: &AppState) -> Duration {
    Duration::from_secs(state.settings().jobs.lease_secs.max(1))
}

/// `job` as just enqueued leased to `worker` until `until` (see [`run_leased`]).
pub(crate) fn leased_job(job: &NewJob, worker: &str, until: mydata_core::Timestamp) -> Job {
    Job {
        id: job.id.clone(),
        queue: job.queue.clone(),
        payload: job.payload.clone(),
        state: JobState::Running,
        attempts: 1,
        max_attempts: job.max_attempts.max(1),
        run_at: job.run_at,
        lease_owner: Some(worker.to_owned()),
        lease_until: Some(until),
        last_error: None,
    }
}

/// Runs a job that `worker` already holds the lease of, because it was enqueued leased to it (as
/// a fetch's last settlement does with the packaging), exactly as a claimed one: within its
/// handler's timeout, its outcome recorded. A failure to record is logged: the lease runs out
/// and another worker takes the job over.
pub(crate) async fn run_leased(state: &AppState, handler: &dyn JobHandler, job: Job, worker: &str) {
    if let Err(e) = run_and_record(state, handler, job, worker, lease_of(state)).await {
        tracing::warn!(queue = handler.queue(), error = %e, "job queue unavailable");
    }
}

/// Runs a job `worker` holds the lease of and records its outcome.
async fn run_and_record(
    state: &AppState,
    handler: &dyn JobHandler,
    job: Job,
    worker: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    let (id, attempt) = (job.id.clone(), job.attempts);
    let outcome = run_job(state, handler, job, lease).await;
    record(
        state,
        handler,
        worker,
        lease,
        (&id, attempt),
        &outcome,
        false,
    )
    .await?;
    Ok(())
}

/// Claims and runs one due job; returns whether there was one.
async fn run_one(
    state: &AppState,
    handler: &dyn JobHandler,
    worker: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let Some(job) = state
        .store()
        .claim_job(handler.queue(), worker, lease, state.clock().now())
        .await?
    else {
        return Ok(false);
    };
    run_and_record(state, handler, job, worker, lease).await?;
    Ok(true)
}

/// Runs a claimed job; a run may not outlive its lease, or another worker would take the job over
/// meanwhile.
async fn run_job(
    state: &AppState,
    handler: &dyn JobHandler,
    job: Job,
    lease: Duration,
) -> JobOutcome {
    let limit = handler.timeout().min(lease);
    match tokio::time::timeout(limit, handler.run(state.clone(), job)).await {
        Ok(o) => o,
        Err(_) => JobOutcome::RetryAt {
            at: state.clock().now(),
            error: format!("timed out after {limit:?}"),
        },
    }
}

/// Records a run's outcome. With `claim_next`, a job done is completed together with the claim of
/// the queue's next due job, which is returned (None: the queue had none due).
async fn record(
    state: &AppState,
    handler: &dyn JobHandler,
    worker: &str,
    lease: Duration,
    (id, attempt): (&str, u32),
    outcome: &JobOutcome,
    claim_next: bool,
) -> Result<Option<Job>, StoreError> {
    let store = state.store();
    let now = state.clock().now();
    let mut next = None;
    let result = match outcome {
        JobOutcome::Done if claim_next => {
            let (completed, claimed) = store
                .complete_and_claim(id, handler.queue(), worker, lease, now)
                .await?;
            next = claimed;
            if completed {
                Ok(JobState::Done)
            } else {
                Err(StoreError::LeaseLost(id.to_owned()))
            }
        }
        JobOutcome::Done => store
            .complete_job(id, worker, now)
            .await
            .map(|()| JobState::Done),
        JobOutcome::Recorded => Ok(JobState::Done),
        JobOutcome::RetryAt { at, error } => store.retry_job(id, worker, error, *at, now).await,
        JobOutcome::Failed(error) => store
            .fail_job(id, worker, error, now)
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
    Ok(next)
}

/// Queue of the expiry sweep: one job per `jobs.sweep_interval_secs` of the clock, whichever
/// process enqueues it first, so that the sweep runs once per period however many processes run.
pub const EXPIRY_QUEUE: &str = "expiry";

/// The queues of the periodic sweeps, whose workers [`Background::spawn`] starts itself.
pub const PERIODIC_QUEUES: [&str; 2] = [EXPIRY_QUEUE, RETENTION_QUEUE];
/// Most batches of expired transfers ended per sweep (the next period's sweep continues).
const SWEEP_ROUNDS: usize = 20;

/// What one expiry sweep ended and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub transfers_expired: usize,
    pub packages_destroyed: usize,
    pub sessions_removed: u64,
    /// Clerks' TOTP secrets a replaced data key sealed, sealed again with the current one.
    pub clerk_secrets_resealed: usize,
}

/// Ends transfers past their 8 hours and destroys their packages, removes ended OAuth
/// requests, sessions and clerk sessions, and (while the data key is being replaced) seals with
/// the current data key the clerks' TOTP secrets a replaced key sealed. Bounded; safe in several
/// processes at once.
pub async fn sweep(state: &AppState) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    for _ in 0..SWEEP_ROUNDS {
        let n = sweep_expired(state).await?;
        report.transfers_expired += n;
        if u32::try_from(n).is_ok_and(|n| n < SWEEP_BATCH) {
            break;
        }
    }
    report.transfers_expired += cancel_refused(state).await?;
    report.packages_destroyed = crate::packages::purge_expired_data(state).await?;
    let now = state.clock().now();
    state.store().sweep_oauth(now).await?;
    report.sessions_removed = crate::identity::session::sweep(state).await?;
    state.store().sweep_clerk_sessions(now).await?;
    let vault = &state.data().vault;
    if !vault.previous_checks().is_empty() {
        // During a switch of data keys, processes not yet switched still enrol clerks with the
        // old key: moved here too, so the old key can go without a clerk signing in first.
        report.clerk_secrets_resealed =
            crate::counter::clerk::reseal_totp_secrets(state.store(), vault)
                .await?
                .resealed;
    }
    Ok(report)
}

/// Ends the transfers of online requests the person refused whose own cancel was lost (see
/// `Store::refused_but_live`), before the requests themselves are swept.
async fn cancel_refused(state: &AppState) -> Result<usize, StoreError> {
    let mut n = 0;
    for id in state.store().refused_but_live(SWEEP_BATCH).await? {
        let now = state.clock().now();
        match state
            .store()
            .apply_transfer_event(
                &id,
                mydata_core::transfer::TransferEvent::Cancel,
                "system",
                now,
            )
            .await
        {
            Ok(_) => n += 1,
            // Ended or moved meanwhile by another process: the next sweep looks again.
            Err(StoreError::IllegalTransition(_) | StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Enqueues the expiry sweep of the current period (see [`EXPIRY_QUEUE`]); returns whether this
/// call enqueued it.
pub async fn schedule_sweep(state: &AppState) -> Result<bool, StoreError> {
    let every = Duration::from_secs(state.settings().jobs.sweep_interval_secs.max(1));
    enqueue_periodic(state, EXPIRY_QUEUE, every).await
}

/// Enqueues `queue`'s job of the current period of the injected clock (`every` long), unless a
/// process did already: its `dedup_key` (`queue:period`) names the period. Returns whether this
/// call enqueued it.
pub(crate) async fn enqueue_periodic(
    state: &AppState,
    queue: &str,
    every: Duration,
) -> Result<bool, StoreError> {
    let now = state.clock().now();
    let period = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
    let bucket = now.millis().div_euclid(period);
    let job = mydata_store::NewJob {
        id: mydata_store::new_job_id(),
        queue: queue.into(),
        payload: serde_json::json!({}),
        run_at: now,
        max_attempts: 3,
        dedup_key: Some(format!("{queue}:{bucket}")),
    };
    enqueue(state, &job, now).await
}

/// Runs the expiry sweep's jobs.
#[derive(Debug, Default)]
pub struct ExpiryHandler;

impl JobHandler for ExpiryHandler {
    fn queue(&self) -> &'static str {
        EXPIRY_QUEUE
    }

    fn run(&self, state: AppState, _job: Job) -> BoxFuture<JobOutcome> {
        Box::pin(async move {
            match sweep(&state).await {
                Ok(r) => {
                    if r.transfers_expired + r.packages_destroyed > 0 {
                        tracing::info!(
                            transfers = r.transfers_expired,
                            packages = r.packages_destroyed,
                            "expired transfers ended"
                        );
                    }
                    if r.clerk_secrets_resealed > 0 {
                        tracing::info!(
                            clerks = r.clerk_secrets_resealed,
                            "clerk TOTP secrets sealed with the current data key"
                        );
                    }
                    JobOutcome::Done
                }
                // The next period's sweep does the same work; no retry of this one.
                Err(e) => JobOutcome::Failed(e.to_string()),
            }
        })
    }
}

/// Most audit events integrated in one transaction, and most such batches in one round (one tree
/// head per round): 200,000 events per round, 20,000/s at the default 10 s interval, well above
/// what a process produces (≈ 11 events per transfer). On SQLite every other write waits for the
/// batch (one writer), so it is kept to a few milliseconds: batches of 1,000 took 15-20 ms under
/// load, and a transfer that met a round's burst waited for one at each of its steps (p99 130 ms
/// against 50 ms with batches of 100). On PostgreSQL a batch blocks no other writer.
fn audit_batches(backend: Backend) -> (u32, u32) {
    match backend {
        Backend::Sqlite => (100, 2_000),
        Backend::Postgres => (1_000, 200),
    }
}

/// How often SQLite's write-ahead log is checkpointed beside the writer.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// Checkpoints SQLite's write-ahead log from a reader connection, so that the writer does not
/// (see `Store::checkpoint`); ends at once on PostgreSQL.
async fn checkpoint_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        match state.store().checkpoint().await {
            Ok(None) => break,
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!(error = %e, "write-ahead log checkpoint failed"),
        }
        if pause(CHECKPOINT_EVERY, &mut stop).await {
            break;
        }
    }
}

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
    let (batch, rounds) = audit_batches(store.backend());
    store
        .integrate_audit_backlog(batch, rounds, state.clock().now())
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

/// Queue of the retention job.
pub const RETENTION_QUEUE: &str = "retention";
/// Rows handled per statement of a retention round.
const RETENTION_BATCH: u32 = 10_000;
/// Most statements of each kind per retention run (the next run continues).
const RETENTION_ROUNDS: usize = 100;

/// What one retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub audit_events_pruned: u64,
    pub receipts_deleted: u64,
    pub transfers_deleted: u64,
    pub jobs_deleted: u64,
}

/// Applies the retention rules once at the clock's current time: audit event details, receipts
/// and finished transfers older than `retention.audit_days`; finished jobs older than
/// `retention.finished_jobs_hours`. Bounded; safe in several processes at once.
pub async fn run_retention(state: &AppState) -> Result<RetentionReport, StoreError> {
    let store = state.store();
    let r = &state.settings().retention;
    let now = state.clock().now();
    let back = |d: Duration| {
        mydata_core::Timestamp::from_millis(
            now.millis()
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    };
    let audit_cutoff = back(Duration::from_secs(r.audit_days.saturating_mul(86_400)));
    let jobs_cutoff = back(Duration::from_secs(
        r.finished_jobs_hours.saturating_mul(3600),
    ));
    let mut report = RetentionReport::default();
    for _ in 0..RETENTION_ROUNDS {
        let n = store
            .prune_audit_events(audit_cutoff, RETENTION_BATCH, now)
            .await?;
        report.audit_events_pruned += n;
        if n < u64::from(RETENTION_BATCH) {
            break;
        }
    }
    for _ in 0..RETENTION_ROUNDS {
        let n = store
            .delete_receipts_before(audit_cutoff, RETENTION_BATCH)
            .await?;
        report.receipts_deleted += n;
        if n < u64::from(RETENTION_BATCH) {
            break;
        }
    }
    for _ in 0..RETENTION_ROUNDS {
        let n = store
            .delete_transfers_before(audit_cutoff, RETENTION_BATCH)
            .await?;
        report.transfers_deleted += n;
        if n < u64::from(RETENTION_BATCH) {
            break;
        }
    }
    for _ in 0..RETENTION_ROUNDS {
        let n = store
            .delete_finished_jobs_before(jobs_cutoff, RETENTION_BATCH)
            .await?;
        report.jobs_deleted += n;
        if n < u64::from(RETENTION_BATCH) {
            break;
        }
    }
    Ok(report)
}

/// Enqueues the retention job of the current period (one per `retention.interval_secs`, whoever
/// enqueues it first); returns whether this call enqueued it.
pub async fn schedule_retention(state: &AppState) -> Result<bool, StoreError> {
    let every = Duration::from_secs(state.settings().retention.interval_secs.max(1));
    enqueue_periodic(state, RETENTION_QUEUE, every).await
}

/// Enqueues a job and wakes an idle worker of its queue in this process. Returns false when a job
/// with the same `dedup_key` already exists.
pub async fn enqueue(
    state: &AppState,
    job: &mydata_store::NewJob,
    now: mydata_core::Timestamp,
) -> Result<bool, StoreError> {
    let added = state.store().enqueue_job(job, now).await?;
    if added {
        state.job_wake().wake(&job.queue);
    }
    Ok(added)
}

/// Enqueues the periodic jobs when their period comes: the expiry sweep, retention and the
/// orphaned-blob sweep ([`crate::orphans`]).
async fn schedule_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    // Checked often, enqueued once per period (the dedup key names the period).
    let every = Duration::from_secs(state.settings().jobs.sweep_interval_secs.max(1));
    loop {
        if let Err(e) = schedule_sweep(&state).await {
            tracing::warn!(error = %e, "expiry sweep could not be scheduled");
        }
        if let Err(e) = schedule_retention(&state).await {
            tracing::warn!(error = %e, "retention job could not be scheduled");
        }
        if let Err(e) = crate::orphans::schedule_object_sweep(&state).await {
            tracing::warn!(error = %e, "orphaned-blob sweep could not be scheduled");
        }
        if pause(every, &mut stop).await {
            break;
        }
    }
}

/// Runs the retention job.
#[derive(Debug, Default)]
pub struct RetentionHandler;

impl JobHandler for RetentionHandler {
    fn queue(&self) -> &'static str {
        RETENTION_QUEUE
    }

    fn run(&self, state: AppState, _job: Job) -> BoxFuture<JobOutcome> {
        Box::pin(async move {
            match run_retention(&state).await {
                Ok(r) => {
                    tracing::info!(
                        audit_events_pruned = r.audit_events_pruned,
                        receipts_deleted = r.receipts_deleted,
                        transfers_deleted = r.transfers_deleted,
                        jobs_deleted = r.jobs_deleted,
                        "retention applied"
                    );
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
        Duration::from_secs(300)
    }
}
