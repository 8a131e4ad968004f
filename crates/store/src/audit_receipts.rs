//! Stored consent and deletion receipts. A receipt is written together with the audit event that
//! commits to it (one transaction), so a receipt exists only if its event is in the log; issuing
//! the same receipt twice returns the first.

use crate::audit::{NewAuditEvent, insert_audit};
use crate::{Result, Store, StoreError, on_pool};
use mydata_core::Timestamp;

/// A receipt to store with its audit event.
#[derive(Debug, Clone)]
pub struct NewReceipt {
    pub id: String,
    pub transfer_id: String,
    /// `consent` or `deletion`.
    pub kind: String,
    /// The package digest the receipt names; empty while unknown.
    pub package_digest: String,
    /// The signed receipt (compact JWS).
    pub jws: String,
    pub created_at: Timestamp,
}

/// A stored receipt and the sequence number of its audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub id: String,
    pub transfer_id: String,
    pub kind: String,
    pub package_digest: String,
    pub seq: i64,
    pub jws: String,
    pub created_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ReceiptRow {
    id: String,
    transfer_id: String,
    kind: String,
    package_digest: String,
    seq: i64,
    jws: String,
    created_at: i64,
}

impl From<ReceiptRow> for StoredReceipt {
    fn from(r: ReceiptRow) -> Self {
        StoredReceipt {
            id: r.id,
            transfer_id: r.transfer_id,
            kind: r.kind,
            package_digest: r.package_digest,
            seq: r.seq,
            jws: r.jws,
            created_at: Timestamp::from_millis(r.created_at),
        }
    }
}

const SELECT_RECEIPT: &str =
    "SELECT id, transfer_id, kind, package_digest, seq, jws, created_at FROM audit_receipts";

impl Store {
    /// Stores a receipt and appends its audit event in one transaction. If the same receipt
    /// (transfer, kind, package digest) was stored meanwhile, nothing is written and the stored one
    /// is returned.
    pub async fn store_receipt(
        &self,
        r: &NewReceipt,
        event: &NewAuditEvent,
    ) -> Result<StoredReceipt> {
        let outcome: std::result::Result<(), sqlx::Error> = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let seq = insert_audit!(&mut *tx, event)?;
                sqlx::query("INSERT INTO audit_receipts (id, transfer_id, kind, package_digest, seq, jws, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(&r.id)
                    .bind(&r.transfer_id)
                    .bind(&r.kind)
                    .bind(&r.package_digest)
                    .bind(seq)
                    .bind(&r.jws)
                    .bind(r.created_at.millis())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            }.await
        });
        match outcome {
            Ok(()) => {}
            // Another request issued the same receipt first: its receipt stands.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            Err(e) => return Err(e.into()),
        }
        self.receipt_for(&r.transfer_id, &r.kind, &r.package_digest)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "receipt",
                id: r.id.clone(),
            })
    }

    /// The receipt of this kind for this transfer and package digest (`""` when unknown).
    pub async fn receipt_for(
        &self,
        transfer_id: &str,
        kind: &str,
        package_digest: &str,
    ) -> Result<Option<StoredReceipt>> {
        let sql = format!(
            "{SELECT_RECEIPT} WHERE transfer_id = $1 AND kind = $2 AND package_digest = $3"
        );
        let row: Option<ReceiptRow> = on_pool!(self, pool => sqlx::query_as(&sql).bind(transfer_id).bind(kind).bind(package_digest).fetch_optional(pool).await?);
        Ok(row.map(StoredReceipt::from))
    }

    /// Every receipt of a transfer, oldest first.
    pub async fn receipts_for_transfer(&self, transfer_id: &str) -> Result<Vec<StoredReceipt>> {
        let sql = format!("{SELECT_RECEIPT} WHERE transfer_id = $1 ORDER BY created_at, seq");
        let rows: Vec<ReceiptRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(transfer_id).fetch_all(pool).await?);
        Ok(rows.into_iter().map(StoredReceipt::from).collect())
    }
}
