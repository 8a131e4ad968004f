//! Transfer records for the parties' own log duty: an agency's (its datasets in any transfer) or a
//! service's (transfers it received), by creation time, in pages (keyset, so a long export never
//! skips or repeats a row while new transfers arrive).

use crate::{Result, Store, on_pool};
use mydata_core::Timestamp;
use serde::{Deserialize, Serialize};

/// Whose records.
#[derive(Debug, Clone)]
pub enum RecordParty {
    /// An agency: the records of its datasets (the caller maps the agency to them from the catalogue).
    Agency { datasets: Vec<String> },
    /// A service or counter: the transfers whose recipient it is.
    Recipient(String),
}

/// One dataset of one transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TransferRecord {
    pub transfer_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub kind: String,
    pub recipient: Option<String>,
    pub purpose: String,
    pub state: String,
    /// The platform pseudonym; exports replace it with a per-party one.
    pub subject: String,
    pub dataset_id: String,
    pub dataset_status: String,
    pub dataset_updated_at: i64,
    pub position: i64,
}

/// Where the next page starts (after this row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCursor {
    pub created_at: i64,
    pub transfer_id: String,
    pub position: i64,
}

impl Store {
    /// Records of `party` for transfers created in `[from, to)`, oldest first, at most `limit`,
    /// after `after`. Returns the page and the cursor of the next one (None at the end).
    pub async fn transfer_records(
        &self,
        party: &RecordParty,
        from: Timestamp,
        to: Timestamp,
        after: Option<&RecordCursor>,
        limit: u32,
    ) -> Result<(Vec<TransferRecord>, Option<RecordCursor>)> {
        let mut sql = String::from(
            "SELECT t.id AS transfer_id, t.created_at, t.updated_at, t.kind, t.recipient, t.purpose, t.state, t.subject,
                    d.dataset_id, d.status AS dataset_status, d.updated_at AS dataset_updated_at, d.position
             FROM transfers t JOIN transfer_datasets d ON d.transfer_id = t.id
             WHERE t.created_at >= $1 AND t.created_at < $2",
        );
        let mut n = 2;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        let texts: Vec<String> = match party {
            RecordParty::Agency { datasets } => {
                if datasets.is_empty() {
                    return Ok((Vec::new(), None));
                }
                let ph: Vec<String> = datasets.iter().map(|_| next()).collect();
                sql.push_str(&format!(" AND d.dataset_id IN ({})", ph.join(", ")));
                datasets.clone()
            }
            RecordParty::Recipient(id) => {
                sql.push_str(&format!(" AND t.recipient = {}", next()));
                vec![id.clone()]
            }
        };
        if after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(
                " AND (t.created_at, t.id, d.position) > ({a}, {b}, {c})"
            ));
        }
        let l = next();
        sql.push_str(&format!(
            " ORDER BY t.created_at, t.id, d.position LIMIT {l}"
        ));
        let rows: Vec<TransferRecord> = on_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql).bind(from.millis()).bind(to.millis());
            for t in &texts {
                q = q.bind(t);
            }
            if let Some(c) = after {
                q = q.bind(c.created_at).bind(&c.transfer_id).bind(c.position);
            }
            q.bind(i64::from(limit)).fetch_all(pool).await?
        });
        let cursor = if rows.len() as u64 == u64::from(limit) {
            rows.last().map(|r| RecordCursor {
                created_at: r.created_at,
                transfer_id: r.transfer_id.clone(),
                position: r.position,
            })
        } else {
            None
        };
        Ok((rows, cursor))
    }
}
