//! The append-only audit log: every use of a person's data, pseudonymous and without content.
//!
//! Rows are only ever inserted; the person's usage records are queries over this table, not a second
//! table that could disagree with it. (The Merkle tree over these rows comes with the audit issue.)

use crate::{Result, Store, StoreError, on_pool, on_read_pool};
use mydata_core::Timestamp;
use serde::Serialize;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub at: Timestamp,
    /// Dotted event name, e.g. `transfer.created`.
    pub kind: String,
    /// Keyed pseudonym of the person concerned, never an ID number.
    pub subject: Option<String>,
    pub transfer_id: Option<String>,
    /// Who caused it (a pseudonym, a service client ID, a counter ID, `system`).
    pub actor: String,
    /// Metadata only: never personal data content.
    pub detail: serde_json::Value,
}

/// A stored event with its position in the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: Timestamp,
    pub kind: String,
    pub subject: Option<String>,
    pub transfer_id: Option<String>,
    pub actor: String,
    pub detail: serde_json::Value,
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    seq: i64,
    at: i64,
    kind: String,
    subject: Option<String>,
    transfer_id: Option<String>,
    actor: String,
    detail: String,
}
crate::step::step_row!(AuditRow {
    seq,
    at,
    kind,
    subject,
    transfer_id,
    actor,
    detail
});

impl TryFrom<AuditRow> for AuditEvent {
    type Error = StoreError;
    fn try_from(r: AuditRow) -> Result<Self> {
        Ok(AuditEvent {
            detail: serde_json::from_str(&r.detail).map_err(|e| {
                StoreError::Corrupt(format!("audit detail of event {}: {e}", r.seq))
            })?,
            seq: r.seq,
            at: Timestamp::from_millis(r.at),
            kind: r.kind,
            subject: r.subject,
            transfer_id: r.transfer_id,
            actor: r.actor,
        })
    }
}

/// Rows per multi-row statement: well under SQLite's bound-parameter limit at six per row.
pub(crate) const BATCH_ROWS: usize = 1000;

/// The text of [`INSERT_AUDIT`], for statements built around it at compile time.
macro_rules! insert_audit_sql {
    () => {
        "INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq"
    };
}
pub(crate) const INSERT_AUDIT: &str = insert_audit_sql!();
const SELECT_AUDIT: &str =
    "SELECT seq, at, kind, subject, transfer_id, actor, detail FROM audit_events";

/// Appends an event through the given executor (a pool or the caller's transaction, so that a state
/// change and its event commit together) and yields its sequence number.
macro_rules! insert_audit {
    ($exec:expr, $e:expr) => {{
        let e: &$crate::audit::NewAuditEvent = $e;
        sqlx::query_as::<_, (i64,)>($crate::audit::INSERT_AUDIT)
            .bind(e.at.millis())
            .bind(&e.kind)
            .bind(&e.subject)
            .bind(&e.transfer_id)
            .bind(&e.actor)
            .bind(e.detail.to_string())
            .fetch_one($exec)
            .await
            .map(|(seq,)| seq)
    }};
}
pub(crate) use insert_audit;

/// Binds an audit event's six values (at, kind, subject, transfer, actor, detail) after the
/// parameters already bound to `$q`, for write steps that insert the event themselves.
macro_rules! bind_audit {
    ($q:expr, $e:expr) => {{
        let e: &$crate::audit::NewAuditEvent = $e;
        $q.bind(e.at.millis())
            .bind(&e.kind)
            .bind(&e.subject)
            .bind(&e.transfer_id)
            .bind(&e.actor)
            .bind(e.detail.to_string())
    }};
}
pub(crate) use bind_audit;

impl Store {
    /// Appends one event and returns its sequence number.
    pub async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64> {
        // A write step (see `step`): on SQLite it joins the writer's group commit.
        let rows: Vec<(i64,)> =
            crate::step::write_one!(self, insert_audit_sql!(), |q| bind_audit!(q, e));
        rows.into_iter()
            .next()
            .map(|(seq,)| seq)
            .ok_or_else(|| StoreError::NotFound {
                what: "appended audit event",
                id: e.kind.clone(),
            })
    }

    /// Appends many events in one transaction (multi-row inserts); returns how many were appended.
    /// For writers that batch, such as busy counters or bulk imports.
    pub async fn append_audit_batch(&self, events: &[NewAuditEvent]) -> Result<usize> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in events.chunks(BATCH_ROWS) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) ");
                q.push_values(chunk, |mut b, e| {
                    b.push_bind(e.at.millis())
                        .push_bind(&e.kind)
                        .push_bind(&e.subject)
                        .push_bind(&e.transfer_id)
                        .push_bind(&e.actor)
                        .push_bind(e.detail.to_string());
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(events.len())
    }

    /// The person's events, oldest first: those of their transfers (found through the transfers,
    /// so the events of a transfer that retention has deleted are no longer listed) and those
    /// without a transfer (see migration 0012).
    pub async fn audit_for_subject(&self, subject: &str) -> Result<Vec<AuditEvent>> {
        let sql = format!(
            "{SELECT_AUDIT} WHERE subject = $1 AND transfer_id IS NULL
             UNION ALL
             {SELECT_AUDIT} WHERE subject = $1 AND transfer_id IN (SELECT id FROM transfers WHERE subject = $1)
             ORDER BY seq"
        );
        let rows: Vec<AuditRow> =
            on_read_pool!(self, pool => sqlx::query_as(&sql).bind(subject).fetch_all(pool).await?);
        rows.into_iter().map(AuditEvent::try_from).collect()
    }

    /// One event by its sequence number.
    pub async fn audit_event(&self, seq: i64) -> Result<Option<AuditEvent>> {
        let sql = format!("{SELECT_AUDIT} WHERE seq = $1");
        let row: Option<AuditRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(seq).fetch_optional(pool).await?);
        row.map(AuditEvent::try_from).transpose()
    }

    /// Up to `limit` events with a sequence number above `after`, in log order: a scan of the whole
    /// log page by page (exports, checks).
    pub async fn audit_events_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>> {
        let sql = format!("{SELECT_AUDIT} WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows: Vec<AuditRow> = on_pool!(self, pool => sqlx::query_as(&sql).bind(after).bind(i64::from(limit)).fetch_all(pool).await?);
        rows.into_iter().map(AuditEvent::try_from).collect()
    }

    /// The events of one transfer, oldest first.
    pub async fn audit_for_transfer(&self, transfer_id: &str) -> Result<Vec<AuditEvent>> {
        let sql = format!("{SELECT_AUDIT} WHERE transfer_id = $1 ORDER BY seq");
        let rows: Vec<AuditRow> = on_read_pool!(self, pool => sqlx::query_as(&sql).bind(transfer_id).fetch_all(pool).await?);
        rows.into_iter().map(AuditEvent::try_from).collect()
    }
}
