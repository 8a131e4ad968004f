//! Counter verification state: offices, counters, clerks and their sessions, barcode serials,
//! verification passwords, per-counter failures and lockouts, and clerks' access grants.
//!
//! Serials and passwords are stored as keyed hashes made by the server (a serial is also sealed
//! for its owner's page). Single-use rules are one conditional `UPDATE` each, so two clerks or two
//! processes racing on the same serial or password cannot both win.

use crate::{Result, Store, on_pool};
use mydata_core::Timestamp;
use mydata_core::counter::lockout_after;
use mydata_core::limits;

/// An office of an agency and the counter services it does.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OfficeRow {
    pub id: String,
    pub agency: String,
    pub name_zh: String,
    pub name_en: String,
    /// Catalogue service IDs, as a JSON array.
    pub services: String,
    pub created_at: i64,
}

impl OfficeRow {
    /// The service IDs this office does.
    pub fn service_ids(&self) -> Vec<String> {
        serde_json::from_str(&self.services).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CounterRow {
    pub id: String,
    pub office_id: String,
    pub name: String,
    pub created_at: i64,
}

/// A clerk account. `role` is `clerk` or `supervisor`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClerkRow {
    pub id: String,
    pub office_id: String,
    pub username: String,
    pub display_name: String,
    pub role: String,
    pub password_hash: String,
    pub totp_sealed: String,
    /// The clerk's subject pseudonym, for sign-in with a level-1 citizen certificate.
    pub subject: Option<String>,
    pub totp_last_step: i64,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClerkSessionRow {
    pub id_hash: String,
    pub clerk_id: String,
    pub counter_id: Option<String>,
    pub csrf_token: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CounterTransferRow {
    pub transfer_id: String,
    pub service_id: String,
    pub office_id: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SerialRow {
    pub serial_hash: String,
    pub transfer_id: String,
    pub serial_sealed: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub replaced_at: Option<i64>,
    pub used_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PasswordRow {
    pub id: String,
    pub transfer_id: String,
    pub serial_hash: String,
    pub counter_id: String,
    pub clerk_id: String,
    pub password_hash: String,
    pub attempts: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GrantRow {
    pub transfer_id: String,
    pub session_hash: String,
    pub clerk_id: String,
    pub counter_id: String,
    pub granted_at: i64,
    pub expires_at: i64,
}

/// What recording a wrong entry at a counter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureOutcome {
    /// Wrong entries within the window, this one included (0 after a lockout started).
    pub recent: u32,
    /// The end of the lockout this entry started, if it did.
    pub locked_until: Option<Timestamp>,
}

const CLERK_COLUMNS: &str = "id, office_id, username, display_name, role, password_hash, totp_sealed, subject, totp_last_step, created_at, disabled_at";
const SERIAL_COLUMNS: &str =
    "serial_hash, transfer_id, serial_sealed, issued_at, expires_at, replaced_at, used_at";
const PASSWORD_COLUMNS: &str = "id, transfer_id, serial_hash, counter_id, clerk_id, password_hash, attempts, created_at, expires_at, used_at, cancelled_at";

fn window_ms() -> i64 {
    i64::try_from(limits::LOCKOUT_WINDOW.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Registers an office, or updates its names and services.
    pub async fn put_office(&self, o: &OfficeRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO counter_offices (id, agency, name_zh, name_en, services, created_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET name_zh = EXCLUDED.name_zh, name_en = EXCLUDED.name_en, services = EXCLUDED.services")
            .bind(&o.id).bind(&o.agency).bind(&o.name_zh).bind(&o.name_en).bind(&o.services).bind(o.created_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn office(&self, id: &str) -> Result<Option<OfficeRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, agency, name_zh, name_en, services, created_at FROM counter_offices WHERE id = $1")
            .bind(id).fetch_optional(pool).await?))
    }

    pub async fn offices(&self) -> Result<Vec<OfficeRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, agency, name_zh, name_en, services, created_at FROM counter_offices ORDER BY agency, id")
            .fetch_all(pool).await?))
    }

    /// The offices doing a counter service.
    pub async fn offices_for_service(&self, service_id: &str) -> Result<Vec<OfficeRow>> {
        Ok(self
            .offices()
            .await?
            .into_iter()
            .filter(|o| o.service_ids().iter().any(|s| s == service_id))
            .collect())
    }

    /// Registers a counter of an office (an unknown office is a foreign-key error).
    pub async fn put_counter(&self, c: &CounterRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO counters (id, office_id, name, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name")
            .bind(&c.id).bind(&c.office_id).bind(&c.name).bind(c.created_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn counter(&self, id: &str) -> Result<Option<CounterRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, office_id, name, created_at FROM counters WHERE id = $1")
            .bind(id).fetch_optional(pool).await?))
    }

    pub async fn counters_of_office(&self, office_id: &str) -> Result<Vec<CounterRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, office_id, name, created_at FROM counters WHERE office_id = $1 ORDER BY id")
            .bind(office_id).fetch_all(pool).await?))
    }

    /// Creates a clerk account; false when the username (or the certificate subject) is taken.
    pub async fn put_clerk(&self, c: &ClerkRow) -> Result<bool> {
        let sql = format!(
            "INSERT INTO clerks ({CLERK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
        );
        let n = on_pool!(self, pool => sqlx::query(&sql)
            .bind(&c.id).bind(&c.office_id).bind(&c.username).bind(&c.display_name).bind(&c.role)
            .bind(&c.password_hash).bind(&c.totp_sealed).bind(&c.subject).bind(c.totp_last_step).bind(c.created_at).bind(c.disabled_at)
            .execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    pub async fn clerk(&self, id: &str) -> Result<Option<ClerkRow>> {
        let sql = format!("SELECT {CLERK_COLUMNS} FROM clerks WHERE id = $1");
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    pub async fn clerk_by_username(&self, username: &str) -> Result<Option<ClerkRow>> {
        let sql = format!("SELECT {CLERK_COLUMNS} FROM clerks WHERE username = $1");
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(username).fetch_optional(pool).await?))
    }

    /// The clerk whose citizen certificate gives this subject pseudonym.
    pub async fn clerk_by_subject(&self, subject: &str) -> Result<Option<ClerkRow>> {
        let sql = format!("SELECT {CLERK_COLUMNS} FROM clerks WHERE subject = $1");
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(subject).fetch_optional(pool).await?))
    }

    /// Every clerk's ID and sealed TOTP secret (for re-sealing them under a new data key).
    pub async fn clerk_totp_secrets(&self) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, totp_sealed FROM clerks ORDER BY id").fetch_all(pool).await?))
    }

    /// Replaces a clerk's sealed TOTP secret `from` by `to` (the same secret sealed again); false
    /// when it was not `from` any more.
    pub async fn replace_clerk_totp(&self, clerk_id: &str, from: &str, to: &str) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE clerks SET totp_sealed = $3 WHERE id = $1 AND totp_sealed = $2")
            .bind(clerk_id).bind(from).bind(to).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Accepts a TOTP time step for the clerk once: false when that step (or a later one) was
    /// already used, so a code seen over a shoulder cannot be replayed.
    pub async fn accept_totp_step(&self, clerk_id: &str, step: i64) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE clerks SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1")
            .bind(step).bind(clerk_id).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    pub async fn put_clerk_session(&self, s: &ClerkSessionRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO clerk_sessions (id_hash, clerk_id, counter_id, csrf_token, created_at, last_seen_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&s.id_hash).bind(&s.clerk_id).bind(&s.counter_id).bind(&s.csrf_token)
            .bind(s.created_at).bind(s.last_seen_at).bind(s.expires_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn clerk_session(&self, id_hash: &str) -> Result<Option<ClerkSessionRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id_hash, clerk_id, counter_id, csrf_token, created_at, last_seen_at, expires_at FROM clerk_sessions WHERE id_hash = $1")
            .bind(id_hash).fetch_optional(pool).await?))
    }

    pub async fn touch_clerk_session(&self, id_hash: &str, now: Timestamp) -> Result<()> {
        on_pool!(self, pool => sqlx::query("UPDATE clerk_sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .bind(now.millis()).bind(id_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn set_clerk_counter(&self, id_hash: &str, counter_id: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query("UPDATE clerk_sessions SET counter_id = $1 WHERE id_hash = $2")
            .bind(counter_id).bind(id_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Ends a clerk session and the data access it had.
    pub async fn delete_clerk_session(&self, id_hash: &str) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM counter_grants WHERE session_hash = $1").bind(id_hash).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM clerk_sessions WHERE id_hash = $1").bind(id_hash).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes clerk sessions and grants past their end, wrong entries older than the lockout
    /// window and ended lockouts. Returns the sessions removed.
    pub async fn sweep_clerk_sessions(&self, now: Timestamp) -> Result<u64> {
        let before = now.millis().saturating_sub(window_ms());
        let n = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM counter_grants WHERE expires_at <= $1").bind(now.millis()).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM counter_failures WHERE at <= $1").bind(before).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM counter_locks WHERE locked_until <= $1").bind(now.millis()).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM clerk_sessions WHERE expires_at <= $1").bind(now.millis()).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    pub async fn put_counter_transfer(&self, r: &CounterTransferRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO counter_transfers (transfer_id, service_id, office_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&r.transfer_id).bind(&r.service_id).bind(&r.office_id).bind(r.created_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn counter_transfer(&self, transfer_id: &str) -> Result<Option<CounterTransferRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT transfer_id, service_id, office_id, created_at FROM counter_transfers WHERE transfer_id = $1")
            .bind(transfer_id).fetch_optional(pool).await?))
    }

    /// Issues a serial for a transfer: the current one (if any) is replaced in the same
    /// transaction, so at most one serial of a transfer works at any time.
    pub async fn issue_serial(&self, s: &SerialRow, now: Timestamp) -> Result<()> {
        let insert = format!(
            "INSERT INTO counter_serials ({SERIAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE counter_serials SET replaced_at = $1 WHERE transfer_id = $2 AND replaced_at IS NULL")
                .bind(now.millis()).bind(&s.transfer_id).execute(&mut *tx).await?;
            sqlx::query(&insert)
                .bind(&s.serial_hash).bind(&s.transfer_id).bind(&s.serial_sealed).bind(s.issued_at)
                .bind(s.expires_at).bind(s.replaced_at).bind(s.used_at)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The transfer's newest serial that was not replaced (it may have expired or been used).
    pub async fn current_serial(&self, transfer_id: &str) -> Result<Option<SerialRow>> {
        let sql = format!(
            "SELECT {SERIAL_COLUMNS} FROM counter_serials WHERE transfer_id = $1 AND replaced_at IS NULL ORDER BY issued_at DESC LIMIT 1"
        );
        Ok(
            on_pool!(self, pool => sqlx::query_as(&sql).bind(transfer_id).fetch_optional(pool).await?),
        )
    }

    pub async fn serial_by_hash(&self, serial_hash: &str) -> Result<Option<SerialRow>> {
        let sql = format!("SELECT {SERIAL_COLUMNS} FROM counter_serials WHERE serial_hash = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(&sql).bind(serial_hash).fetch_optional(pool).await?),
        )
    }

    /// Stores a password sent after a scan; earlier open passwords of the transfer are cancelled.
    pub async fn put_counter_password(&self, p: &PasswordRow, now: Timestamp) -> Result<()> {
        let insert = format!(
            "INSERT INTO counter_passwords ({PASSWORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE counter_passwords SET cancelled_at = $1 WHERE transfer_id = $2 AND used_at IS NULL AND cancelled_at IS NULL")
                .bind(now.millis()).bind(&p.transfer_id).execute(&mut *tx).await?;
            sqlx::query(&insert)
                .bind(&p.id).bind(&p.transfer_id).bind(&p.serial_hash).bind(&p.counter_id).bind(&p.clerk_id)
                .bind(&p.password_hash).bind(p.attempts).bind(p.created_at).bind(p.expires_at)
                .bind(p.used_at).bind(p.cancelled_at)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn counter_password(&self, id: &str) -> Result<Option<PasswordRow>> {
        let sql = format!("SELECT {PASSWORD_COLUMNS} FROM counter_passwords WHERE id = $1");
        Ok(on_pool!(self, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    pub async fn count_counter_password_attempt(&self, id: &str) -> Result<()> {
        on_pool!(self, pool => sqlx::query("UPDATE counter_passwords SET attempts = attempts + 1 WHERE id = $1")
            .bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// The right password was entered: uses the password and its serial (both single use) and
    /// grants the clerk session access, in one transaction. False when another request used the
    /// password or serial first, or the password expired or was cancelled meanwhile.
    pub async fn complete_counter_verification(
        &self,
        password_id: &str,
        grant: &GrantRow,
        now: Timestamp,
    ) -> Result<bool> {
        let ok = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String,)> = sqlx::query_as(
                "UPDATE counter_passwords SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND cancelled_at IS NULL AND expires_at > $1 RETURNING serial_hash")
                .bind(now.millis()).bind(password_id).fetch_optional(&mut *tx).await?;
            let Some((serial_hash,)) = row else {
                return Ok(false);
            };
            let n = sqlx::query("UPDATE counter_serials SET used_at = $1 WHERE serial_hash = $2 AND used_at IS NULL")
                .bind(now.millis()).bind(&serial_hash).execute(&mut *tx).await?.rows_affected();
            if n != 1 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO counter_grants (transfer_id, session_hash, clerk_id, counter_id, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (transfer_id, session_hash) DO UPDATE SET granted_at = EXCLUDED.granted_at, expires_at = EXCLUDED.expires_at")
                .bind(&grant.transfer_id).bind(&grant.session_hash).bind(&grant.clerk_id).bind(&grant.counter_id)
                .bind(grant.granted_at).bind(grant.expires_at)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            true
        });
        Ok(ok)
    }

    /// The clerk session's live access to a transfer's data.
    pub async fn counter_grant(
        &self,
        transfer_id: &str,
        session_hash: &str,
        now: Timestamp,
    ) -> Result<Option<GrantRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT transfer_id, session_hash, clerk_id, counter_id, granted_at, expires_at FROM counter_grants
             WHERE transfer_id = $1 AND session_hash = $2 AND expires_at > $3")
            .bind(transfer_id).bind(session_hash).bind(now.millis()).fetch_optional(pool).await?))
    }

    /// The end of the counter's lockout, if it is locked at `now`.
    pub async fn counter_locked_until(
        &self,
        counter_id: &str,
        now: Timestamp,
    ) -> Result<Option<Timestamp>> {
        let row: Option<(i64,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT locked_until FROM counter_locks WHERE counter_id = $1 AND locked_until > $2")
            .bind(counter_id).bind(now.millis()).fetch_optional(pool).await?);
        Ok(row.map(|(t,)| Timestamp::from_millis(t)))
    }

    /// Wrong entries at the counter within the window ending at `now`.
    pub async fn counter_recent_failures(&self, counter_id: &str, now: Timestamp) -> Result<u32> {
        let since = now.millis().saturating_sub(window_ms());
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*) FROM counter_failures WHERE counter_id = $1 AND at > $2 AND at <= $3")
            .bind(counter_id).bind(since).bind(now.millis()).fetch_one(pool).await?);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Records one wrong barcode or password entry at a counter; the rule of
    /// [`mydata_core::counter::lockout_after`] decides whether it locks the counter. A lockout
    /// clears the counted failures, so counting starts again when it ends.
    pub async fn record_counter_failure(
        &self,
        counter_id: &str,
        now: Timestamp,
    ) -> Result<FailureOutcome> {
        let since = now.millis().saturating_sub(window_ms());
        let outcome = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO counter_failures (counter_id, at) VALUES ($1, $2)")
                .bind(counter_id).bind(now.millis()).execute(&mut *tx).await?;
            let times: Vec<(i64,)> = sqlx::query_as("SELECT at FROM counter_failures WHERE counter_id = $1 AND at > $2")
                .bind(counter_id).bind(since).fetch_all(&mut *tx).await?;
            let times: Vec<Timestamp> = times.into_iter().map(|(t,)| Timestamp::from_millis(t)).collect();
            let locked_until = lockout_after(&times, now);
            if let Some(until) = locked_until {
                sqlx::query("INSERT INTO counter_locks (counter_id, locked_at, locked_until) VALUES ($1, $2, $3)
                             ON CONFLICT (counter_id) DO UPDATE SET locked_at = EXCLUDED.locked_at, locked_until = EXCLUDED.locked_until")
                    .bind(counter_id).bind(now.millis()).bind(until.millis()).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM counter_failures WHERE counter_id = $1").bind(counter_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            FailureOutcome {
                recent: if locked_until.is_some() { 0 } else { u32::try_from(times.len()).unwrap_or(u32::MAX) },
                locked_until,
            }
        });
        Ok(outcome)
    }
}
