//! Counts an operator on call watches: the job queues' backlog, transfers in flight, agencies
//! whose circuit is open and the audit log's backlog. Read-only; every query reads an index range
//! (live rows only) or one row.

use crate::{Result, Store, on_read_pool};
use mydata_core::Timestamp;

/// One job queue's backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCounts {
    pub queue: String,
    pub queued: i64,
    pub running: i64,
    /// Failed for good (kept `retention.finished_jobs_hours`).
    pub failed: i64,
    /// When the oldest queued job was due; `None` without one.
    pub oldest_queued_run_at: Option<Timestamp>,
}

/// What `Store::ops_snapshot` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsSnapshot {
    pub queues: Vec<QueueCounts>,
    /// Transfers not yet ended (`created`, `fetching`, `ready`, `delivered`) by kind and state.
    pub transfers: Vec<(String, String, i64)>,
    /// Agencies not being called until their circuit closes again.
    pub open_circuits: Vec<String>,
    /// Events the audit sequencer has not given a leaf yet.
    pub audit_backlog: i64,
    /// The newest tree head's time; `None` before the first.
    pub last_tree_head_at: Option<Timestamp>,
}

/// The states a transfer is in until it ends (bounded by 8 hours of traffic, unlike the ended
/// ones the audit keeps for years).
const LIVE_STATES: &str = "('created', 'fetching', 'ready', 'delivered')";

impl Store {
    /// Counts for `queues` (the queues this platform runs) at `now`.
    pub async fn ops_snapshot(&self, queues: &[&str], now: Timestamp) -> Result<OpsSnapshot> {
        let mut out = Vec::with_capacity(queues.len());
        for q in queues {
            // One range of `jobs_due (queue, state, run_at)` per state: done jobs are not counted.
            let rows: Vec<(String, i64, Option<i64>)> = on_read_pool!(self, pool => sqlx::query_as(
                "SELECT state, COUNT(*), MIN(run_at) FROM jobs
                  WHERE queue = $1 AND state IN ('queued', 'running', 'failed') GROUP BY state",
            )
            .bind(q)
            .fetch_all(pool)
            .await?);
            let mut c = QueueCounts {
                queue: (*q).to_owned(),
                queued: 0,
                running: 0,
                failed: 0,
                oldest_queued_run_at: None,
            };
            for (state, n, first) in rows {
                match state.as_str() {
                    "queued" => {
                        c.queued = n;
                        c.oldest_queued_run_at = first.map(Timestamp::from_millis);
                    }
                    "running" => c.running = n,
                    _ => c.failed = n,
                }
            }
            out.push(c);
        }
        let transfers: Vec<(String, String, i64)> = on_read_pool!(self, pool => sqlx::query_as(
            &format!(
                "SELECT kind, state, COUNT(*) FROM transfers WHERE state IN {LIVE_STATES}
                  GROUP BY kind, state ORDER BY kind, state"
            ),
        )
        .fetch_all(pool)
        .await?);
        let open_circuits: Vec<(String,)> = on_read_pool!(self, pool => sqlx::query_as(
            "SELECT agency_id FROM agency_circuits WHERE open_until > $1 ORDER BY agency_id",
        )
        .bind(now.millis())
        .fetch_all(pool)
        .await?);
        let (audit_backlog,): (i64,) = on_read_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*) FROM audit_events WHERE leaf_index IS NULL",
        )
        .fetch_one(pool)
        .await?);
        // The newest head by its key (heads are never deleted; MAX(created_at) would read them all).
        let last_head: Option<(i64,)> = on_read_pool!(self, pool => sqlx::query_as(
            "SELECT created_at FROM tree_heads ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?);
        Ok(OpsSnapshot {
            queues: out,
            transfers,
            open_circuits: open_circuits.into_iter().map(|r| r.0).collect(),
            audit_backlog,
            last_tree_head_at: last_head.map(|(at,)| Timestamp::from_millis(at)),
        })
    }
}
