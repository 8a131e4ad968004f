//! Passkeys (WebAuthn credentials) by subject pseudonym, and the registration and sign-in
//! ceremonies in progress. A ceremony is taken once by one conditional `UPDATE`, so two processes
//! racing on the same challenge cannot both win.

use crate::{Result, Store, on_pool};
use mydata_core::Timestamp;

/// A stored passkey.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PasskeyRow {
    pub id: String,
    pub subject: String,
    /// base64url (no padding) of the credential ID.
    pub credential_id: String,
    /// The relying-party library's credential record (JSON).
    pub passkey: String,
    pub name: String,
    pub sign_count: i64,
    pub backup_eligible: i64,
    pub backup_state: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A ceremony in progress.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CeremonyRow {
    pub id: String,
    pub session_hash: String,
    /// `register` or `authenticate`.
    pub kind: String,
    pub subject: String,
    pub origin: String,
    pub state: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// What taking a ceremony found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CeremonyUse {
    /// Taken now (it cannot be taken again).
    Taken(Box<CeremonyRow>),
    /// Taken now, but its time had run out.
    Expired,
    /// Unknown, of another session or kind, or already used.
    Unusable,
}

const PASSKEY_COLUMNS: &str = "id, subject, credential_id, passkey, name, sign_count, backup_eligible, backup_state, created_at, last_used_at";
const CEREMONY_COLUMNS: &str =
    "id, session_hash, kind, subject, origin, state, created_at, expires_at, used_at";

impl Store {
    /// Stores a ceremony.
    pub async fn put_passkey_ceremony(&self, c: &CeremonyRow) -> Result<()> {
        let sql = format!(
            "INSERT INTO passkey_ceremonies ({CEREMONY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        on_pool!(self, pool => sqlx::query(&sql)
            .bind(&c.id).bind(&c.session_hash).bind(&c.kind).bind(&c.subject).bind(&c.origin)
            .bind(&c.state).bind(c.created_at).bind(c.expires_at).bind(c.used_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Takes a ceremony for use: once only, by the session it was started in, for its kind.
    pub async fn take_passkey_ceremony(
        &self,
        id: &str,
        session_hash: &str,
        kind: &str,
        now: Timestamp,
    ) -> Result<CeremonyUse> {
        let sql = format!(
            "UPDATE passkey_ceremonies SET used_at = $1 WHERE id = $2 AND session_hash = $3 AND kind = $4 AND used_at IS NULL RETURNING {CEREMONY_COLUMNS}"
        );
        let row: Option<CeremonyRow> = on_pool!(self, pool => sqlx::query_as(&sql)
            .bind(now.millis()).bind(id).bind(session_hash).bind(kind)
            .fetch_optional(pool).await?);
        Ok(match row {
            None => CeremonyUse::Unusable,
            Some(r) if r.expires_at <= now.millis() => CeremonyUse::Expired,
            Some(r) => CeremonyUse::Taken(Box::new(r)),
        })
    }

    /// Deletes ceremonies past their end (used or not).
    pub async fn sweep_passkey_ceremonies(&self, now: Timestamp) -> Result<u64> {
        Ok(
            on_pool!(self, pool => sqlx::query("DELETE FROM passkey_ceremonies WHERE expires_at <= $1")
            .bind(now.millis()).execute(pool).await?.rows_affected()),
        )
    }

    /// Stores a new passkey; false when its credential ID is already registered (to anyone).
    pub async fn add_passkey(&self, p: &PasskeyRow) -> Result<bool> {
        let sql = format!(
            "INSERT INTO passkeys ({PASSKEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (credential_id) DO NOTHING"
        );
        let n = on_pool!(self, pool => sqlx::query(&sql)
            .bind(&p.id).bind(&p.subject).bind(&p.credential_id).bind(&p.passkey).bind(&p.name)
            .bind(p.sign_count).bind(p.backup_eligible).bind(p.backup_state).bind(p.created_at)
            .bind(p.last_used_at)
            .execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// The subject's passkeys, oldest first.
    pub async fn passkeys_of(&self, subject: &str) -> Result<Vec<PasskeyRow>> {
        let sql = format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE subject = $1 ORDER BY created_at, id"
        );
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(subject).fetch_all(pool).await?))
    }

    /// Records a sign-in with a passkey: its updated record, counter and backup flags.
    pub async fn record_passkey_use(
        &self,
        credential_id: &str,
        passkey: &str,
        sign_count: i64,
        backup_eligible: bool,
        backup_state: bool,
        now: Timestamp,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE passkeys SET passkey = $1, sign_count = $2, backup_eligible = $3, backup_state = $4, last_used_at = $5 WHERE credential_id = $6")
            .bind(passkey).bind(sign_count).bind(i64::from(backup_eligible)).bind(i64::from(backup_state))
            .bind(now.millis()).bind(credential_id)
            .execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Removes one of the subject's passkeys; false when it is not theirs (or gone).
    pub async fn delete_passkey(&self, subject: &str, id: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query("DELETE FROM passkeys WHERE id = $1 AND subject = $2")
            .bind(id).bind(subject).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }
}
