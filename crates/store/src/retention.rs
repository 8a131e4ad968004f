//! Retention: what the platform may keep and for how long. Audit events lose their details after
//! the audit retention period, but keep their leaf hash, so the Merkle tree, its heads and every
//! proof stay valid; receipts and finished transfers go at the same age; finished jobs (whose
//! payloads and errors may mention a person's request) go after hours.
//!
//! Each call does a bounded amount of work and can be repeated; several processes may run it at
//! once (pruning takes the log state row, deletions are idempotent).

use crate::{Db, Result, Store, StoreError, on_pool};
use mydata_core::Timestamp;

impl Store {
    /// Removes the details (subject, transfer, actor, detail) of integrated audit events recorded
    /// before `before`, in leaf order, at most `max` of them; returns how many. Stops at the first
    /// event that is still within retention, so the pruned part of the log is always a prefix.
    pub async fn prune_audit_events(
        &self,
        before: Timestamp,
        max: u32,
        now: Timestamp,
    ) -> Result<u64> {
        let lock_state = match self.db {
            Db::Sqlite { .. } => {
                "UPDATE audit_log_state SET pruned_below = pruned_below WHERE id = 1 RETURNING pruned_below"
            }
            Db::Postgres(_) => "SELECT pruned_below FROM audit_log_state WHERE id = 1 FOR UPDATE",
        };
        let pruned = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let (from,): (i64,) = sqlx::query_as(lock_state).fetch_one(&mut *tx).await?;
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT leaf_index, at FROM audit_events WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2",
            )
            .bind(from)
            .bind(i64::from(max))
            .fetch_all(&mut *tx)
            .await?;
            let mut end = from;
            for (index, at) in rows {
                if index != end {
                    return Err(StoreError::Corrupt(format!(
                        "audit log entry {end} is missing; run `mydata audit verify`"
                    )));
                }
                if at >= before.millis() {
                    break;
                }
                end += 1;
            }
            if end > from {
                sqlx::query(
                    "UPDATE audit_events SET subject = NULL, transfer_id = NULL, actor = '', detail = 'null', pruned_at = $3
                     WHERE leaf_index >= $1 AND leaf_index < $2",
                )
                .bind(from)
                .bind(end)
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE audit_log_state SET pruned_below = $1 WHERE id = 1")
                    .bind(end)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            end - from
        });
        Ok(u64::try_from(pruned).unwrap_or(0))
    }

    /// Deletes receipts issued before `before` (their audit entries stay, pruned in turn).
    pub async fn delete_receipts_before(&self, before: Timestamp, max: u32) -> Result<u64> {
        let sql = "DELETE FROM audit_receipts WHERE id IN (SELECT id FROM audit_receipts WHERE created_at < $1 ORDER BY created_at LIMIT $2)";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(before.millis()).bind(i64::from(max)).execute(pool).await?.rows_affected());
        Ok(n)
    }

    /// Deletes finished transfers (deleted, refused, expired) created before `before`, with their
    /// dataset rows: the records agencies and services export are kept exactly as long as the log.
    pub async fn delete_transfers_before(&self, before: Timestamp, max: u32) -> Result<u64> {
        let sql = "DELETE FROM transfers WHERE id IN (SELECT id FROM transfers WHERE state IN ('deleted', 'refused', 'expired')
                   AND created_at < $1 ORDER BY created_at LIMIT $2)";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(before.millis()).bind(i64::from(max)).execute(pool).await?.rows_affected());
        Ok(n)
    }

    /// Deletes jobs that finished (done or failed) before `before`.
    pub async fn delete_finished_jobs_before(&self, before: Timestamp, max: u32) -> Result<u64> {
        let sql = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('done', 'failed') AND updated_at < $1
                   ORDER BY updated_at LIMIT $2)";
        let n = on_pool!(self, pool => sqlx::query(sql).bind(before.millis()).bind(i64::from(max)).execute(pool).await?.rows_affected());
        Ok(n)
    }

    /// How many leaves have been pruned (the pruned prefix of the log).
    pub async fn audit_pruned_below(&self) -> Result<u64> {
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as("SELECT pruned_below FROM audit_log_state WHERE id = 1").fetch_one(pool).await?);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
