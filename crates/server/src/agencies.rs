//! Fetching datasets from agencies as durable jobs (queue [`FETCH_QUEUE`]).
//!
//! [`start_fetch`] records the person's consent: the identity the agencies need is sealed for the
//! transfer, the transfer moves to `fetching`, and one job per dataset is enqueued, in one
//! transaction. Each run of a job makes at most one agency call and then records where the fetch
//! stands; it never sleeps: "not ready" reschedules the job at the agency's `Retry-After`, transient
//! errors at an exponential back-off with jitter, both within the fetch deadline. Before a call the
//! agency's circuit breaker and concurrency limit are checked in the database, so they hold over
//! every process. A dataset is stored (sealed, in blob storage) only after every check of
//! `mydata_connector::verify` passed. When the last dataset settles, the package job is enqueued.

use crate::background::{BoxFuture, JobHandler, JobOutcome};
use crate::blobs::Blobs;
use crate::config::Settings;
use crate::state::AppState;
use crate::vault::Vault;
use anyhow::Context;
use mydata_connector::{
    AgencyClient, Answer, Call, CallError, ClientSettings, Expected, FetchSubject, Rejection,
    SignedDatasetBody, TrustCache, TrustSource,
};
use mydata_core::retry::{RetryDecision, RetryPolicy};
use mydata_core::transfer::{TransferEvent, TransferState};
use mydata_core::{AssuranceLevel, BusinessId, IdNumber, IdentityMethod, Timestamp};
use mydata_store::{
    Admission, AgencyLimits, FetchAttempt, FetchProgress, FetchSettlement, Job, NewAuditEvent,
    NewJob, NewTransfer, RequestAnswer, SettleAlso, StoreError, Transfer, fetch_status,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use url::Url;

/// The queue of dataset fetches.
pub const FETCH_QUEUE: &str = "agency-fetch";
/// Runs of one fetch job at most; the deadline normally ends a fetch long before.
const FETCH_MAX_RUNS: u32 = 10_000;
/// Longest a fetch job waits in-process for a busy agency's slot before it is left for later.
const SLOT_WAIT: Duration = Duration::from_millis(300);

/// Everything the data path needs besides the database: agency client, trust, blob storage, data
/// key, and the limits from the configuration.
#[derive(Debug)]
pub struct DataPath {
    pub client: AgencyClient,
    pub trust: TrustCache,
    pub blobs: Blobs,
    pub vault: Vault,
    pub limits: AgencyLimits,
    pub retry: RetryPolicy,
}

impl DataPath {
    /// Builds the data path from the settings (key file and object directory created if missing).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let a = &settings.agencies;
        let parse = |s: &str| Url::parse(s).with_context(|| format!("invalid agency URL `{s}`"));
        let default_base = if a.base_url.is_empty() {
            None
        } else {
            Some(parse(&a.base_url)?)
        };
        let mut per_agency = std::collections::BTreeMap::new();
        for (id, u) in &a.endpoints {
            per_agency.insert(id.clone(), parse(u)?);
        }
        let timeout = Duration::from_millis(a.request_timeout_ms);
        let client = AgencyClient::new(ClientSettings {
            default_base,
            per_agency,
            request_timeout: timeout,
            max_response_bytes: a.max_response_bytes,
        })
        .map_err(|e| anyhow::anyhow!("cannot build the agency client: {e}"))?;
        let mut crl_urls = Vec::new();
        for u in &a.crl_urls {
            crl_urls.push(parse(u)?);
        }
        let source = TrustSource {
            root_files: a.trust_roots.clone(),
            root_pems: Vec::new(),
            crl_files: a.crl_files.clone(),
            crl_urls,
            allow_missing_crl: a.allow_missing_crl,
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("cannot build the CRL client")?;
        Ok(Self {
            client,
            trust: TrustCache::new(
                source,
                Duration::from_secs(a.trust_refresh_secs.max(1)),
                http,
            ),
            blobs: Blobs::from_settings(settings)?,
            vault: Vault::load_or_create(settings)?,
            limits: AgencyLimits {
                concurrency: a.concurrency,
                // A slot outlives the longest call, so it is only ever reclaimed from a dead process.
                slot_lease: timeout + Duration::from_secs(30),
                failure_threshold: a.circuit_failures,
                open_for: Duration::from_secs(a.circuit_open_secs),
            },
            retry: RetryPolicy {
                base: Duration::from_millis(a.retry_base_ms),
                max_delay: Duration::from_secs(a.retry_max_delay_secs.max(1)),
                deadline: Duration::from_secs(a.fetch_deadline_secs),
            },
        })
    }
}

/// The payload of a fetch job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchJob {
    pub transfer_id: String,
    pub dataset_id: String,
}

/// A request to fetch datasets for a person who has proved their identity and consented.
#[derive(Debug, Clone)]
pub struct StartFetch {
    /// The transfer to create (its `subject` must be the person's pseudonym).
    pub transfer: NewTransfer,
    /// The ID number or 統一編號, already verified by the identity flow.
    pub subject_id: String,
    pub method: IdentityMethod,
    pub level: AssuranceLevel,
    /// The online service's authorization request this consent answers: moved
    /// `opened → consented` in the transfer's own write step.
    pub answers: Option<ServiceAnswer>,
}

/// The online service's authorization request a consent answers.
#[derive(Debug, Clone)]
pub struct ServiceAnswer {
    pub request_id: String,
    /// The consent's event, logged on the new transfer.
    pub event: NewAuditEvent,
    /// The request then lives at least this long: the person's last confirmation waits for the
    /// agencies.
    pub keep_until: Timestamp,
}

/// Why a fetch could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("sealing the subject failed")]
    Seal,
    /// The request the consent answers was answered meanwhile (or expired): the other answer
    /// stands and the transfer started for this one is cancelled.
    #[error("this request was already answered")]
    AlreadyAnswered,
}

fn secret_context(transfer_id: &str) -> String {
    format!("mydata:v1:transfer-secret:{transfer_id}")
}

/// A new transfer ID: a UUIDv7, time-ordered, so that the audit log's `(transfer_id, seq)` index
/// and the other indexes keyed by transfer grow at their end instead of at random pages (4x the
/// SQLite append rate, docs/PERFORMANCE.md). Its 74 random bits keep it unguessable; the time it
/// reveals is the transfer's start, which its owner and recipient know anyway.
pub fn new_transfer_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The object key of a fetched dataset's sealed blob: flat under `fetched/` (transfer IDs hold no
/// `.`, dataset slugs no `/`), so that storing one creates no directory per transfer, which the
/// local store would create on every fetch and leave behind empty.
pub fn fetched_object(transfer_id: &str, dataset_id: &str) -> String {
    format!("fetched/{transfer_id}.{dataset_id}")
}

/// The context under which a fetched dataset's key is sealed.
pub fn fetched_key_context(transfer_id: &str, dataset_id: &str) -> String {
    format!("mydata:v1:fetched-key:{transfer_id}:{dataset_id}")
}

/// Creates the transfer, seals the subject for it and enqueues one fetch job per dataset.
pub async fn start_fetch(
    state: &AppState,
    req: StartFetch,
    actor: &str,
) -> Result<Transfer, StartError> {
    let catalog = state.catalog();
    let natural = IdNumber::parse(&req.subject_id).is_ok();
    if !natural && BusinessId::parse(&req.subject_id).is_err() {
        return Err(StartError::Invalid(
            "the subject is neither a valid ID number nor a valid 統一編號".into(),
        ));
    }
    if !req.method.level().satisfies(req.level) {
        return Err(StartError::Invalid(format!(
            "{} cannot reach level {}",
            req.method.code(),
            req.level
        )));
    }
    if req.transfer.datasets.is_empty() {
        return Err(StartError::Invalid("no dataset was chosen".into()));
    }
    for id in &req.transfer.datasets {
        let d = catalog
            .dataset(id)
            .ok_or_else(|| StartError::Invalid(format!("dataset `{id}` does not exist")))?;
        if !d.accepts(req.method) || !req.level.satisfies(d.min_level()) {
            return Err(StartError::Invalid(format!(
                "dataset `{id}` does not accept {} at level {}",
                req.method.code(),
                req.level
            )));
        }
    }
    let now = state.clock().now();
    let store = state.store();
    let id = &req.transfer.id;
    let subject = FetchSubject::new(&req.subject_id, req.method.code(), req.level.number());
    let plain =
        zeroize::Zeroizing::new(serde_json::to_vec(&subject).map_err(|_| StartError::Seal)?);
    let sealed = state
        .data()
        .vault
        .seal(&secret_context(id), &plain)
        .map_err(|_| StartError::Seal)?;
    let jobs: Vec<NewJob> = req
        .transfer
        .datasets
        .iter()
        .map(|d| NewJob {
            id: mydata_store::new_job_id(),
            queue: FETCH_QUEUE.into(),
            payload: serde_json::json!(FetchJob {
                transfer_id: id.clone(),
                dataset_id: d.clone(),
            }),
            run_at: now,
            max_attempts: FETCH_MAX_RUNS,
            dedup_key: Some(format!("fetch:{id}:{d}")),
        })
        .collect();
    // Created and fetching in one write: the person consented when asking (and answered the
    // service's request, if there is one).
    let answers = req.answers.as_ref().map(|a| RequestAnswer {
        request_id: &a.request_id,
        audit: &a.event,
        keep_until: a.keep_until,
    });
    // As many fetches as this process has room for run right here, leased to it by the same
    // write; the rest go to the workers.
    let starter = state.starter();
    let (start, permits) = starter.lease(state, &jobs);
    let (t, answered) = store
        .start_transfer(&req.transfer, &sealed, start, answers.as_ref(), actor, now)
        .await?;
    let twice = answers.is_some() && !answered;
    if twice {
        // Answered twice at once: the other answer stands, this transfer is cancelled (before its
        // fetches run, which then find nothing to do).
        let _ = store
            .apply_transfer_event(&t.id, TransferEvent::Cancel, actor, now)
            .await;
    }
    // A new transfer's jobs are all new.
    starter.run_enqueued(state, Arc::new(FetchHandler), start, permits, |_| true);
    if twice {
        return Err(StartError::AlreadyAnswered);
    }
    Ok(t)
}

/// What a signed-in person asks for; the flows (self-download, counter, online service) fill it.
#[derive(Debug, Clone)]
pub struct PersonRequest {
    pub kind: mydata_core::transfer::TransferKind,
    /// The counter or service the data goes to; `None` for a self-download.
    pub recipient: Option<String>,
    pub purpose: String,
    pub datasets: Vec<String>,
    /// The online service's authorization request this consent answers (see [`StartFetch`]).
    pub answers: Option<ServiceAnswer>,
}

/// Starts a transfer for the person of a verified session: the one place every flow turns a
/// sign-in plus consent into agency fetches. The session's level must meet every dataset's.
pub async fn start_for_session(
    state: &AppState,
    v: &crate::identity::session::Verified,
    req: PersonRequest,
) -> Result<Transfer, crate::error::AppError> {
    use crate::error::AppError;
    if req.datasets.is_empty() {
        return Err(AppError::EmptySelection);
    }
    for id in &req.datasets {
        let d = state
            .catalog()
            .dataset(id)
            .ok_or_else(|| crate::routes::not_found("dataset", id))?;
        if !v.level.satisfies(d.min_level()) {
            return Err(AppError::InsufficientLevel {
                required: d.min_level(),
            });
        }
    }
    let id = crate::identity::session::subject_id(state, v)?;
    let start = StartFetch {
        transfer: NewTransfer {
            id: new_transfer_id(),
            kind: req.kind,
            subject: v.subject.clone(),
            recipient: req.recipient,
            purpose: req.purpose,
            datasets: req.datasets,
        },
        subject_id: crate::identity::session::subject_text(&id),
        method: v.method,
        level: v.level,
        answers: req.answers,
    };
    start_fetch(state, start, &v.subject)
        .await
        .map_err(StartError::into_app_error)
}

impl StartError {
    /// The one mapping of a refused start to the HTTP error people see.
    pub fn into_app_error(self) -> crate::error::AppError {
        use crate::error::AppError;
        match self {
            StartError::Invalid(m) => AppError::InvalidBody(m),
            StartError::Store(e) => e.into(),
            StartError::Seal => AppError::Internal(anyhow::anyhow!("sealing the subject failed")),
            StartError::AlreadyAnswered => {
                AppError::AuthorizationRefused(crate::oauth::Halt::Answered)
            }
        }
    }
}

/// Runs the jobs of [`FETCH_QUEUE`].
#[derive(Debug, Default)]
pub struct FetchHandler;

impl JobHandler for FetchHandler {
    fn queue(&self) -> &'static str {
        FETCH_QUEUE
    }

    fn run(&self, state: AppState, job: Job) -> BoxFuture<JobOutcome> {
        Box::pin(async move {
            let Ok(p) = serde_json::from_value::<FetchJob>(job.payload.clone()) else {
                return JobOutcome::Failed("payload is not a fetch job".into());
            };
            let lease = job.lease_owner.as_deref().map(|w| (job.id.as_str(), w));
            match run_fetch(&state, &p, lease).await {
                Ok(o) => o,
                // The database is unavailable: try again soon; the job's lease protects the rest.
                Err(e) => JobOutcome::RetryAt {
                    at: state.clock().now().plus(Duration::from_secs(5)),
                    error: format!("store: {e}"),
                },
            }
        })
    }

    fn timeout(&self) -> Duration {
        // One agency call plus the database work around it.
        Duration::from_secs(55)
    }
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

/// An audit event of the agency exchange: metadata only, never the ID number or data content.
fn agency_event(
    kind: &str,
    t: &Transfer,
    agency: &str,
    dataset: &str,
    detail: serde_json::Value,
    now: Timestamp,
) -> NewAuditEvent {
    let mut d = serde_json::json!({ "agency": agency, "dataset": dataset });
    if let (Some(obj), serde_json::Value::Object(extra)) = (d.as_object_mut(), detail) {
        obj.extend(extra);
    }
    NewAuditEvent {
        at: now,
        kind: kind.into(),
        subject: Some(t.subject.clone()),
        transfer_id: Some(t.id.clone()),
        actor: "system".into(),
        detail: d,
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    t: &'a Transfer,
    agency: &'a str,
    dataset: &'a str,
    /// The job's ID and the worker holding its lease: a settlement marks it done.
    job: Option<(&'a str, &'a str)>,
    /// This fetch's holder name for an agency call slot.
    holder: &'a str,
    /// Whether this run holds its call slot (taken, not yet freed).
    holds_slot: AtomicBool,
    /// The transfer's other fetches when, as read, every one of them had settled and no package
    /// was stored: this fetch is its last, and packages it in the same write as its settlement.
    others: Option<Vec<mydata_store::FetchRecord>>,
}

/// The other fetches of `t` from `work` if this fetch (of `dataset`) is the last open one and no
/// package is stored, with `t` as read (see [`Ctx::others`]).
fn others_if_last(
    work: &mydata_store::TransferWork,
    t: &Transfer,
    dataset: &str,
) -> Option<Vec<mydata_store::FetchRecord>> {
    let last = work.package.is_none()
        && work.transfer.version == t.version
        && work.transfer.state == TransferState::Fetching
        && work
            .fetches
            .iter()
            .all(|r| r.dataset_id == dataset || fetch_status::is_settled(&r.status));
    last.then(|| {
        work.fetches
            .iter()
            .filter(|r| r.dataset_id != dataset)
            .cloned()
            .collect()
    })
}

impl Ctx<'_> {
    async fn settle(&self, s: FetchSettlement, now: Timestamp) -> Result<JobOutcome, StoreError> {
        let event = agency_event(
            "agency.outcome",
            self.t,
            self.agency,
            self.dataset,
            serde_json::json!({
                "outcome": s.status,
                "error_code": s.error_code,
                "digest": s.digest,
            }),
            now,
        );
        tracing::info!(transfer = %self.t.id, dataset = self.dataset, agency = self.agency,
            outcome = s.status, code = ?s.error_code, "dataset fetch settled");
        let store = self.state.store();
        // One step settles the dataset, frees the call slot, marks the job done and, with the last
        // dataset, enqueues the packaging and deletes the identity, which nothing needs any more.
        let package = crate::packages::assembly_job(&self.t.id, now);
        // The worker running this fetch packages right after it: the packaging job is enqueued
        // leased to it, so no other worker has to be woken to claim it.
        let lease = crate::background::lease_of(self.state);
        let also = SettleAlso {
            next: Some(&package),
            slot: self
                .holds_slot
                .load(Ordering::Relaxed)
                .then_some((self.agency, self.holder)),
            job: self.job,
            lease_next: self.job.map(|(_, worker)| (worker, now.plus(lease))),
        };
        let done = store
            .settle_fetch_then(&self.t.id, self.dataset, &s, &event, &also, now)
            .await?;
        if also.slot.is_some() {
            self.slot_freed();
        }
        match done.all_settled {
            Some(true) if done.next_leased => {
                if let Some((_, worker)) = self.job {
                    let job = crate::background::leased_job(&package, worker, now.plus(lease));
                    let handler = crate::packages::PackageHandler;
                    crate::background::run_leased(self.state, &handler, job, worker).await;
                }
            }
            Some(true) => self.state.job_wake().wake(&package.queue),
            Some(false) => {}
            None => {
                // Settled by someone else meanwhile: drop what this run stored.
                if let Some(obj) = &s.data_object {
                    let _ = self.state.data().blobs.delete(obj).await;
                }
            }
        }
        Ok(if done.job_done {
            JobOutcome::Recorded
        } else {
            JobOutcome::Done
        })
    }

    /// Frees the call slot if this run holds it.
    async fn release_slot(&self, now: Timestamp) -> Result<(), StoreError> {
        if self.holds_slot.load(Ordering::Relaxed) {
            self.state
                .store()
                .release_agency_slot(self.agency, self.holder, now)
                .await?;
            self.slot_freed();
        }
        Ok(())
    }

    /// Notes the slot freed and wakes one fetch job of this process waiting for one.
    fn slot_freed(&self) {
        self.holds_slot.store(false, Ordering::Relaxed);
        self.state.slot_freed().settle_one(self.agency);
    }

    async fn fail(
        &self,
        status: &'static str,
        code: &str,
        message: String,
        now: Timestamp,
    ) -> Result<JobOutcome, StoreError> {
        self.settle(
            FetchSettlement {
                status,
                error_code: Some(code.to_owned()),
                error_message: Some(message),
                digest: None,
                data_object: None,
                data_key: None,
            },
            now,
        )
        .await
    }

    /// Keeps the fetch open and runs the job again at `at`.
    async fn later(
        &self,
        status: &'static str,
        request_id: Option<String>,
        code: Option<&str>,
        message: Option<String>,
        at: Timestamp,
        now: Timestamp,
    ) -> Result<JobOutcome, StoreError> {
        self.release_slot(now).await?;
        let event = agency_event(
            "agency.outcome",
            self.t,
            self.agency,
            self.dataset,
            serde_json::json!({ "outcome": status, "error_code": code, "next_attempt_at": at }),
            now,
        );
        let progress = FetchProgress {
            status,
            agency_request_id: request_id,
            error_code: code.map(str::to_owned),
            error_message: message.clone(),
            next_attempt_at: at,
        };
        let open = self
            .state
            .store()
            .record_fetch_progress(&self.t.id, self.dataset, &progress, &event, now)
            .await?;
        Ok(if open {
            JobOutcome::RetryAt {
                at,
                error: code.unwrap_or(status).to_owned(),
            }
        } else {
            JobOutcome::Done
        })
    }
}

/// One run of a fetch job: `lease` is the job's ID and the worker holding it.
async fn run_fetch(
    state: &AppState,
    p: &FetchJob,
    lease: Option<(&str, &str)>,
) -> Result<JobOutcome, StoreError> {
    let now = state.clock().now();
    // One read for the transfer, the fetch and the sealed identity.
    let Some(found) = state.store().transfer_work(&p.transfer_id).await? else {
        return Ok(JobOutcome::Done);
    };
    let Some(rec) = found.fetch(&p.dataset_id).cloned() else {
        return Ok(JobOutcome::Done);
    };
    if fetch_status::is_settled(&rec.status) {
        return Ok(JobOutcome::Done);
    }
    let others = others_if_last(&found, &found.transfer, &p.dataset_id);
    let t = found.transfer;
    let agency = state
        .catalog()
        .dataset(&p.dataset_id)
        .map(|d| d.agency.clone())
        .unwrap_or_default();
    let holder = format!("{}/{}", t.id, p.dataset_id);
    let ctx = Ctx {
        state,
        t: &t,
        agency: &agency,
        dataset: &p.dataset_id,
        job: lease,
        holder: &holder,
        holds_slot: AtomicBool::new(false),
        others,
    };
    let outcome = fetch_once(&ctx, &rec, found.sealed_subject, now).await;
    // Whatever happened (a store error included), a slot still held is freed here.
    ctx.release_slot(state.clock().now()).await?;
    outcome
}

/// Checks the fetch can go on, calls the agency and records what came of it.
async fn fetch_once(
    ctx: &Ctx<'_>,
    rec: &mydata_store::FetchRecord,
    sealed: Option<String>,
    now: Timestamp,
) -> Result<JobOutcome, StoreError> {
    let (state, t, agency) = (ctx.state, ctx.t, ctx.agency);
    let store = state.store();
    let data = state.data();
    if t.state != TransferState::Fetching {
        let msg = format!("the transfer is {}", t.state);
        return ctx
            .fail(fetch_status::FAILED, "transfer_closed", msg, now)
            .await;
    }
    if agency.is_empty() {
        let msg = "the dataset is not in the catalogue".to_owned();
        return ctx
            .fail(fetch_status::FAILED, "unknown_dataset", msg, now)
            .await;
    }
    let started = rec.started_at.unwrap_or(now);
    let deadline = t.expires_at.min(started.plus(data.retry.deadline));
    if now >= deadline {
        let msg = "no answer from the agency before the fetch deadline".to_owned();
        return ctx
            .fail(fetch_status::FAILED, "deadline_exceeded", msg, now)
            .await;
    }
    let Some(sealed) = sealed else {
        let msg = "the identity for this transfer is no longer held".to_owned();
        return ctx
            .fail(fetch_status::FAILED, "subject_unavailable", msg, now)
            .await;
    };
    let subject: FetchSubject = match data
        .vault
        .open(&secret_context(&t.id), &sealed)
        .ok()
        .and_then(|plain| serde_json::from_slice(&plain).ok())
    {
        Some(s) => s,
        None => {
            let msg = "the sealed identity does not open with the data key".to_owned();
            return ctx
                .fail(fetch_status::FAILED, "subject_unavailable", msg, now)
                .await;
        }
    };
    let call = match &rec.agency_request_id {
        Some(request_id) => Call::Poll {
            transfer_id: &t.id,
            request_id,
        },
        None => Call::Create {
            transfer_id: &t.id,
            dataset_id: ctx.dataset,
            subject: &subject,
        },
    };
    let kind = if matches!(call, Call::Poll { .. }) {
        "poll"
    } else {
        "create"
    };
    let request_event = agency_event(
        "agency.request",
        t,
        agency,
        ctx.dataset,
        serde_json::json!({ "call": kind }),
        now,
    );
    let attempt = FetchAttempt {
        transfer_id: &t.id,
        dataset_id: ctx.dataset,
        audit: &request_event,
    };
    // Watched before the first try, so a slot freed between the try and the wait is not missed.
    let freed = state.slot_freed().watch(agency);
    let mut waited = Duration::ZERO;
    let clean = loop {
        match store
            .admit_agency_call(agency, ctx.holder, &data.limits, Some(&attempt), now)
            .await?
        {
            // A call of this process usually frees a slot within milliseconds: wait for it here a
            // little, rather than leave the job for half a second or more.
            Admission::Busy if waited < SLOT_WAIT => {
                let started = std::time::Instant::now();
                freed.settled(SLOT_WAIT - waited).await;
                waited += started.elapsed().max(Duration::from_millis(1));
            }
            other => break other,
        }
    };
    drop(freed);
    let (clean, attempt) = match clean {
        Admission::Go {
            clean,
            attempt: Some(attempt),
            ..
        } => {
            ctx.holds_slot.store(true, Ordering::Relaxed);
            (clean, attempt)
        }
        // Settled meanwhile (by another worker, or the transfer ended).
        Admission::Settled => return Ok(JobOutcome::Done),
        Admission::Go { attempt: None, .. } => {
            ctx.holds_slot.store(true, Ordering::Relaxed);
            return Ok(JobOutcome::Done);
        }
        Admission::Busy => {
            // Not an attempt: wait for a slot, spread out so waiting jobs do not return together.
            let wait = Duration::from_millis(500).mul_f64(1.0 + jitter());
            return Ok(JobOutcome::RetryAt {
                at: now.plus(wait),
                error: "agency_busy".into(),
            });
        }
        Admission::Open { until } => {
            if until >= deadline {
                let msg = "the agency's circuit is open past the fetch deadline".to_owned();
                return ctx
                    .fail(fetch_status::FAILED, "circuit_open", msg, now)
                    .await;
            }
            let at = until.plus(Duration::from_millis(250).mul_f64(1.0 + jitter()));
            let msg = Some("the agency looks down; calls paused".to_owned());
            return ctx
                .later(
                    open_status(rec),
                    rec.agency_request_id.clone(),
                    Some("circuit_open"),
                    msg,
                    at,
                    now,
                )
                .await;
        }
    };
    let answer = data.client.call(state.platform(), agency, call, now).await;
    drop(subject);
    // Time passes during the call (real agencies are slow): decide with the clock after it.
    let now = state.clock().now();
    let outage = matches!(&answer, Err(e) if e.is_outage());
    // A success at an agency with no failure on record changes nothing: no write for it.
    let opened = if outage || !clean {
        store
            .record_agency_result(agency, outage, &data.limits, now)
            .await?
    } else {
        false
    };
    if opened {
        tracing::warn!(agency = %agency, "agency circuit opened after repeated outages");
    }
    match answer {
        Ok(Answer::NotReady {
            request_id,
            retry_after,
        }) => {
            let wait = retry_after.unwrap_or(data.retry.base);
            let at = now.plus(wait);
            if at > deadline {
                let msg = "the agency will not be ready before the fetch deadline".to_owned();
                return ctx
                    .fail(fetch_status::FAILED, "deadline_exceeded", msg, now)
                    .await;
            }
            ctx.later(
                fetch_status::NOT_READY,
                Some(request_id),
                None,
                None,
                at,
                now,
            )
            .await
        }
        Ok(Answer::Dataset(body)) => accept(ctx, &body, now).await,
        Err(e) if e.is_transient() => {
            let request_id = if e == CallError::RequestGone {
                None
            } else {
                rec.agency_request_id.clone()
            };
            match data
                .retry
                .next(attempt, started, now, e.retry_after(), jitter())
            {
                RetryDecision::At(at) if at <= deadline => {
                    ctx.later(
                        fetch_status::PENDING,
                        request_id,
                        Some(e.code()),
                        Some(e.to_string()),
                        at,
                        now,
                    )
                    .await
                }
                _ => {
                    ctx.fail(fetch_status::FAILED, e.code(), e.to_string(), now)
                        .await
                }
            }
        }
        Err(e @ (CallError::TooLarge { .. } | CallError::Malformed(_))) => {
            ctx.fail(fetch_status::REJECTED, e.code(), e.to_string(), now)
                .await
        }
        Err(e @ CallError::Refused { .. }) => {
            ctx.fail(fetch_status::REFUSED, e.code(), e.to_string(), now)
                .await
        }
        Err(e) => {
            ctx.fail(fetch_status::FAILED, e.code(), e.to_string(), now)
                .await
        }
    }
}

/// The record's open status as a static value (for progress updates that keep it).
fn open_status(rec: &mydata_store::FetchRecord) -> &'static str {
    if rec.status == fetch_status::NOT_READY {
        fetch_status::NOT_READY
    } else {
        fetch_status::PENDING
    }
}

/// Verifies an answer and, only if every check passes, stores it sealed.
async fn accept(
    ctx: &Ctx<'_>,
    body: &SignedDatasetBody,
    now: Timestamp,
) -> Result<JobOutcome, StoreError> {
    let data = ctx.state.data();
    let trust = match data.trust.get(now).await {
        Ok(t) => t,
        Err(e) => {
            // Without trust roots nothing can be accepted; a CRL download may recover.
            let code = if matches!(e, mydata_connector::TrustError::NoRoots) {
                "no_trust_roots"
            } else {
                "trust_unavailable"
            };
            tracing::warn!(error = %e, "agency trust roots unavailable");
            return ctx
                .fail(fetch_status::FAILED, code, e.to_string(), now)
                .await;
        }
    };
    let expected = Expected {
        agency_id: ctx.agency,
        dataset_id: ctx.dataset,
        transfer_id: &ctx.t.id,
    };
    let verified = match mydata_connector::check(body, expected, &trust, now) {
        Ok(v) => v,
        Err(r) => {
            if matches!(r, Rejection::RevocationUnknown) {
                // A stale CRL: reload it before the next fetch.
                data.trust.invalidate();
            }
            return ctx
                .fail(fetch_status::REJECTED, r.code(), r.to_string(), now)
                .await;
        }
    };
    // Fetched in parallel, the others may have settled during this call: looked at again.
    let reread;
    let others = match &ctx.others {
        _ if !crate::packages::packaged_by_last_fetch(ctx.t) => None,
        Some(o) => Some(o),
        None => {
            reread = ctx
                .state
                .store()
                .transfer_work(&ctx.t.id)
                .await?
                .and_then(|w| others_if_last(&w, ctx.t, ctx.dataset));
            reread.as_ref()
        }
    };
    if let Some(others) = others {
        let settled = agency_event(
            "agency.outcome",
            ctx.t,
            ctx.agency,
            ctx.dataset,
            serde_json::json!({
                "outcome": fetch_status::SUCCEEDED,
                "error_code": null,
                "digest": verified.digest,
            }),
            now,
        );
        let also = SettleAlso {
            slot: ctx
                .holds_slot
                .load(Ordering::Relaxed)
                .then_some((ctx.agency, ctx.holder)),
            job: ctx.job,
            ..SettleAlso::default()
        };
        let done = crate::packages::package_with_last_fetch(
            ctx.state,
            ctx.t,
            others,
            &verified.dataset,
            &verified.digest,
            &settled,
            &also,
        )
        .await?;
        if let Some(job_done) = done {
            if also.slot.is_some() {
                ctx.slot_freed();
            }
            tracing::info!(transfer = %ctx.t.id, dataset = ctx.dataset, agency = ctx.agency,
                outcome = fetch_status::SUCCEEDED, "dataset fetch settled and packaged");
            return Ok(if job_done {
                JobOutcome::Recorded
            } else {
                JobOutcome::Done
            });
        }
    }
    let stored = SignedDatasetBody::from_signed(&verified.dataset, &verified.media_types);
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&stored).unwrap_or_default());
    let object = fetched_object(&ctx.t.id, ctx.dataset);
    let (key, blob) = match mydata_package::seal(&plain) {
        Ok(x) => x,
        Err(e) => {
            return ctx
                .fail(fetch_status::FAILED, "seal_failed", e.to_string(), now)
                .await;
        }
    };
    let wrapped = match data
        .vault
        .seal(&fetched_key_context(&ctx.t.id, ctx.dataset), key.as_bytes())
    {
        Ok(w) => w,
        Err(e) => {
            return ctx
                .fail(fetch_status::FAILED, "seal_failed", e.to_string(), now)
                .await;
        }
    };
    if let Err(e) = data.blobs.put(&object, blob).await {
        tracing::warn!(error = %e, "storing a fetched dataset failed");
        return Ok(JobOutcome::RetryAt {
            at: now.plus(Duration::from_secs(5)),
            error: "blob_store_unavailable".into(),
        });
    }
    ctx.settle(
        FetchSettlement {
            status: fetch_status::SUCCEEDED,
            error_code: None,
            error_message: None,
            digest: Some(verified.digest),
            data_object: Some(object),
            data_key: Some(wrapped),
        },
        now,
    )
    .await
}
