//! The durable job queue: background work (agency fetches, notices, sweeps) stored in the database.
//!
//! A worker claims a due job with a lease in one statement; if the worker dies, the lease runs out and
//! another worker takes the job over. PostgreSQL claims with `FOR UPDATE SKIP LOCKED` so that many
//! processes share the queue without waiting on each other; SQLite has a single writer and needs no
//! skipping. A job that fails is retried at a time the caller picks until `max_attempts`, then stays
//! `failed` for an operator to see.

use crate::step::write_step;
use crate::{Result, Store, StoreError, on_pool, parse_column};
use mydata_core::Timestamp;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn code(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Done,
            JobState::Failed,
        ]
        .into_iter()
        .find(|j| j.code() == s)
        .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// A new job ID: a UUIDv7, time-ordered, so that the jobs table's key index grows at its end
/// instead of taking a random page in every commit (one fetch job per transfer).
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub queue: String,
    pub payload: serde_json::Value,
    pub run_at: Timestamp,
    pub max_attempts: u32,
    /// When set, a second job with the same key is not enqueued.
    pub dedup_key: Option<String>,
}

/// Jobs to enqueue with a transfer's start, the first `leased` of them already leased to `to`: a
/// worker that runs them straight away (the request that started the transfer) takes no claim, and
/// if it dies the lease runs out and any worker takes them over.
#[derive(Debug, Clone, Copy)]
pub struct StartJobs<'a> {
    pub jobs: &'a [NewJob],
    pub leased: usize,
    /// The worker and the end of its lease (ignored when `leased` is 0).
    pub to: Option<(&'a str, Timestamp)>,
}

impl<'a> StartJobs<'a> {
    /// `jobs`, none of them leased.
    pub fn queued(jobs: &'a [NewJob]) -> Self {
        Self {
            jobs,
            leased: 0,
            to: None,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: Timestamp,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Timestamp>,
    pub last_error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    queue: String,
    payload: String,
    state: String,
    attempts: i64,
    max_attempts: i64,
    run_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    last_error: Option<String>,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self> {
        Ok(Job {
            payload: serde_json::from_str(&r.payload)
                .map_err(|e| StoreError::Corrupt(format!("payload of job {}: {e}", r.id)))?,
            state: parse_column(&r.state)?,
            attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
            max_attempts: u32::try_from(r.max_attempts).unwrap_or(u32::MAX),
            run_at: Timestamp::from_millis(r.run_at),
            lease_until: r.lease_until.map(Timestamp::from_millis),
            id: r.id,
            queue: r.queue,
            lease_owner: r.lease_owner,
            last_error: r.last_error,
        })
    }
}

crate::step::step_row!(JobRow {
    id,
    queue,
    payload,
    state,
    attempts,
    max_attempts,
    run_at,
    lease_owner,
    lease_until,
    last_error,
});

/// The text of [`INSERT_JOB`], for statements built around it at compile time.
macro_rules! insert_job_sql {
    () => {
        "INSERT INTO jobs (id, queue, payload, state, attempts, max_attempts, run_at, dedup_key, created_at, updated_at)
                   VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $7, $7) ON CONFLICT (dedup_key) DO NOTHING"
    };
}
pub(crate) const INSERT_JOB: &str = insert_job_sql!();

/// Runs [`INSERT_JOB`] for a `&NewJob` on an executor (a pool or an open transaction); evaluates
/// to the rows affected (0 when a job with the same `dedup_key` exists).
/// Binds a `&NewJob`'s values for [`INSERT_JOB`] to `$q` (a query or a write step's binder).
macro_rules! bind_job {
    ($q:expr, $job:expr, $now:expr) => {{
        let job: &$crate::NewJob = $job;
        let now: mydata_core::Timestamp = $now;
        $q.bind(&job.id)
            .bind(&job.queue)
            .bind(job.payload.to_string())
            .bind(i64::from(job.max_attempts.max(1)))
            .bind(job.run_at.millis())
            .bind(&job.dedup_key)
            .bind(now.millis())
    }};
}
pub(crate) use bind_job;

macro_rules! insert_job {
    ($exec:expr, $job:expr, $now:expr) => {{
        $crate::jobs::bind_job!(sqlx::query($crate::jobs::INSERT_JOB), $job, $now)
            .execute($exec)
            .await
            .map(|r| r.rows_affected())
    }};
}
pub(crate) use insert_job;

const JOB_COLUMNS: &str = "id, queue, payload, state, attempts, max_attempts, run_at, lease_owner, lease_until, last_error";

/// Due: queued and its time has come, or running with a lease that ran out (its worker died).
const DUE: &str = "queue = $4 AND ((state = 'queued' AND run_at <= $3) OR (state = 'running' AND lease_until < $3))";

/// The claim of the next due job of queue `$4` for worker `$1` until `$2`, at `$3`, other than
/// those `also` excludes: a job whose lease ran out (its worker died) first, so that queued work
/// never starves it, then the queued ones by time. The outer condition is repeated so that it is
/// checked again after waiting on a row lock; PostgreSQL skips rows another claim holds locked.
///
/// Each kind is looked up on its own, by a plain index scan: on PostgreSQL every change of a job's
/// state leaves a dead entry in `jobs_due` until vacuum, and a plain scan marks those it meets so
/// later claims pass them by, where the bitmap scan that one `OR` of both conditions gets visits
/// them all again (1.3 ms a claim after 5,000 jobs, against 0.1 ms).
fn claim_sql(postgres: bool, also: &str) -> String {
    let lock = if postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let pick = |cond: &str| {
        format!(
            "(SELECT id FROM jobs WHERE queue = $4 AND {cond}{also} ORDER BY run_at, id LIMIT 1{lock})"
        )
    };
    format!(
        "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3
    WHERE id = COALESCE({}, {}) AND {DUE} RETURNING {JOB_COLUMNS}",
        pick("state = 'running' AND lease_until < $3"),
        pick("state = 'queued' AND run_at <= $3"),
    )
}

static CLAIM_SQLITE: LazyLock<String> = LazyLock::new(|| claim_sql(false, ""));
static CLAIM_POSTGRES: LazyLock<String> = LazyLock::new(|| claim_sql(true, ""));

/// A leased job (`$5`, leased by `$1`) marked done and the next due job of queue `$4` claimed until
/// `$2`, at `$3`, as one step (see `step`). Rows: the done job's (none if its lease was lost), then
/// the claimed job's. The claim skips `$5`, which PostgreSQL could not update twice in a statement.
const DONE: &str =
    "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3
    WHERE id = $5 AND lease_owner = $1 AND state = 'running'";
static DONE_THEN_CLAIM_SQLITE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "BEGIN IMMEDIATE;\n{DONE} RETURNING {JOB_COLUMNS};\n{};\nCOMMIT",
        claim_sql(false, " AND id <> $5")
    )
});
static DONE_THEN_CLAIM_POSTGRES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH f AS ({DONE} RETURNING {JOB_COLUMNS}),\nc AS ({})\nSELECT * FROM f UNION ALL SELECT * FROM c",
        claim_sql(true, " AND id <> $5")
    )
});

impl Store {
    /// Adds a job. Returns false when a job with the same `dedup_key` already exists.
    pub async fn enqueue_job(&self, job: &NewJob, now: Timestamp) -> Result<bool> {
        // A write step (see `step`): on SQLite it joins the writer's group commit instead of
        // holding the writer for a commit of its own (a notice per transfer did, at 25 % of the
        // throughput).
        let rows: Vec<(String,)> = crate::step::write_one!(
            self,
            concat!(insert_job_sql!(), " RETURNING id"),
            |q| bind_job!(q, job, now)
        );
        Ok(rows.len() == 1)
    }

    /// Claims the next due job of `queue` for `worker` until `now + lease`, or returns None.
    /// A job whose leases ran out more often than it may be attempted is marked failed instead.
    pub async fn claim_job(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Option<Job>> {
        // Bounded: each round either returns or retires one exhausted job.
        for _ in 0..16 {
            let Some(job) = self.claim_once(queue, worker, now.plus(lease), now).await? else {
                return Ok(None);
            };
            if job.attempts <= job.max_attempts {
                return Ok(Some(job));
            }
            self.retire_exhausted(&job.id, worker, now).await?;
        }
        Ok(None)
    }

    async fn claim_once(
        &self,
        queue: &str,
        worker: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Job>> {
        // One statement; a step so that SQLite runs it in this thread.
        let rows: Vec<JobRow> =
            write_step!(self, CLAIM_SQLITE.as_str(), CLAIM_POSTGRES.as_str(), |q| q
                .bind(worker)
                .bind(until.millis())
                .bind(now.millis())
                .bind(queue));
        rows.into_iter().next().map(Job::try_from).transpose()
    }

    /// Marks a job that was claimed once more than it may be attempted failed for good.
    async fn retire_exhausted(&self, id: &str, worker: &str, now: Timestamp) -> Result<()> {
        self.finish_job(
            id,
            worker,
            JobState::Failed,
            Some("lease expired on every attempt"),
            now,
        )
        .await
    }

    /// Marks `done` done, as [`Store::complete_job`] does, and claims the next due job of `queue`,
    /// as [`Store::claim_job`] does, in one write step (a busy worker pays one round trip between
    /// two jobs, not two). The flag is false when the lease on `done` was lost.
    pub async fn complete_and_claim(
        &self,
        done: &str,
        queue: &str,
        worker: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<(bool, Option<Job>)> {
        let until = now.plus(lease);
        let rows: Vec<JobRow> = write_step!(
            self,
            DONE_THEN_CLAIM_SQLITE.as_str(),
            DONE_THEN_CLAIM_POSTGRES.as_str(),
            |q| q
                .bind(worker)
                .bind(until.millis())
                .bind(now.millis())
                .bind(queue)
                .bind(done)
        );
        let completed = rows.iter().any(|r| r.id == done);
        let claimed = rows
            .into_iter()
            .find(|r| r.id != done)
            .map(Job::try_from)
            .transpose()?;
        match claimed {
            Some(job) if job.attempts > job.max_attempts => {
                // Its leases ran out on every attempt: retired, and the next one claimed instead.
                self.retire_exhausted(&job.id, worker, now).await?;
                Ok((completed, self.claim_job(queue, worker, lease, now).await?))
            }
            other => Ok((completed, other)),
        }
    }

    /// Marks a leased job done.
    pub async fn complete_job(&self, id: &str, worker: &str, now: Timestamp) -> Result<()> {
        self.finish_job(id, worker, JobState::Done, None, now).await
    }

    /// Marks a leased job failed for good (an operator can see it and its last error).
    pub async fn fail_job(
        &self,
        id: &str,
        worker: &str,
        error: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.finish_job(id, worker, JobState::Failed, Some(error), now)
            .await
    }

    async fn finish_job(
        &self,
        id: &str,
        worker: &str,
        state: JobState,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        let sql = "UPDATE jobs SET state = $1, last_error = COALESCE($2, last_error), lease_owner = NULL, lease_until = NULL, updated_at = $3
                   WHERE id = $4 AND lease_owner = $5 AND state = 'running'";
        let n = on_pool!(self, pool => sqlx::query(sql)
            .bind(state.code())
            .bind(error)
            .bind(now.millis())
            .bind(id)
            .bind(worker)
            .execute(pool)
            .await?
            .rows_affected());
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(id.to_owned()))
        }
    }

    /// Records a failed attempt: the job runs again at `retry_at`, or is marked failed when it has
    /// used all its attempts. Returns the job's new state.
    pub async fn retry_job(
        &self,
        id: &str,
        worker: &str,
        error: &str,
        retry_at: Timestamp,
        now: Timestamp,
    ) -> Result<JobState> {
        let sql = "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                   run_at = $1, last_error = $2, lease_owner = NULL, lease_until = NULL, updated_at = $3
                   WHERE id = $4 AND lease_owner = $5 AND state = 'running' RETURNING state";
        let row: Option<(String,)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(retry_at.millis())
            .bind(error)
            .bind(now.millis())
            .bind(id)
            .bind(worker)
            .fetch_optional(pool)
            .await?);
        match row {
            Some((state,)) => parse_column(&state),
            None => Err(StoreError::LeaseLost(id.to_owned())),
        }
    }

    /// The job, whatever its state.
    pub async fn job(&self, id: &str) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row: Option<JobRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?);
        row.map(Job::try_from).transpose()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_ids_sort_in_the_order_they_were_made() {
        // Time-ordered IDs land at the end of the jobs table's key index; random ones would
        // dirty a random page of it in every commit.
        let ids: Vec<String> = (0..2_000).map(|_| super::new_job_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "job IDs out of order");
    }
}
