//! Self-download consent forms: the one-time token that makes a double submit start one transfer.

use crate::{Result, Store, on_pool};
use mydata_core::Timestamp;

/// What claiming a form token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadClaim {
    /// The token is new: this submit starts the transfer.
    New,
    /// The token was submitted before; `transfer_id` is None while that first submit is still
    /// starting its transfer (or failed and was released).
    Existing {
        subject: String,
        transfer_id: Option<String>,
    },
}

impl Store {
    /// Claims a form token for `subject`; only the first caller gets [`DownloadClaim::New`].
    pub async fn claim_download_request(
        &self,
        token_hash: &str,
        subject: &str,
        terms_version: &str,
        now: Timestamp,
    ) -> Result<DownloadClaim> {
        let n = on_pool!(self, pool => sqlx::query(
            "INSERT INTO download_requests (token_hash, subject, terms_version, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(subject)
        .bind(terms_version)
        .bind(now.millis())
        .execute(pool)
        .await?
        .rows_affected());
        if n == 1 {
            return Ok(DownloadClaim::New);
        }
        let row: Option<(String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT subject, transfer_id FROM download_requests WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(pool)
        .await?);
        Ok(match row {
            Some((subject, transfer_id)) => DownloadClaim::Existing {
                subject,
                transfer_id,
            },
            // Pruned between the two statements: treat it as in flight, the person retries.
            None => DownloadClaim::Existing {
                subject: subject.to_owned(),
                transfer_id: None,
            },
        })
    }

    /// Records the transfer a claimed token started.
    pub async fn attach_download_transfer(
        &self,
        token_hash: &str,
        transfer_id: &str,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query("UPDATE download_requests SET transfer_id = $1 WHERE token_hash = $2")
            .bind(transfer_id)
            .bind(token_hash)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Releases a claimed token whose transfer could not be started, so the form can be sent again.
    pub async fn release_download_request(&self, token_hash: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query("DELETE FROM download_requests WHERE token_hash = $1 AND transfer_id IS NULL")
            .bind(token_hash)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The terms version agreed to for a transfer, if it was started by a self-download form.
    pub async fn download_terms_version(&self, transfer_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT terms_version FROM download_requests WHERE transfer_id = $1",
        )
        .bind(transfer_id)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(|(v,)| v))
    }

    /// Forgets tokens claimed before `before`; returns how many.
    pub async fn prune_download_requests(&self, before: Timestamp) -> Result<u64> {
        let n = on_pool!(self, pool => sqlx::query("DELETE FROM download_requests WHERE created_at < $1")
            .bind(before.millis())
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n)
    }
}
