//! Identity state: browser sessions, pseudonymous subjects and their verified contacts, one-time
//! codes, lockout counters, certificate challenges and the demo outbox.
//!
//! Nothing here holds an ID number: subjects and lock keys are keyed pseudonyms made by the server.
//! Session tokens and one-time codes are stored hashed. Every single-use rule (codes, challenges)
//! is one conditional `UPDATE`, so two processes racing on the same code cannot both win.

use crate::{Result, Store, on_pool, on_read_pool};
use mydata_core::Timestamp;
use std::time::Duration;

/// A session row. `id_hash` is the SHA-256 of the cookie token, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub id_hash: String,
    pub csrf_token: String,
    pub subject: Option<String>,
    pub subject_kind: Option<String>,
    pub method: Option<String>,
    pub level: Option<i64>,
    pub verified_at: Option<i64>,
    pub pending: Option<String>,
    /// The subject's ID number sealed by the server's data key; never readable from the database alone.
    pub subject_sealed: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

crate::step::step_row!(SessionRow {
    id_hash,
    csrf_token,
    subject,
    subject_kind,
    method,
    level,
    verified_at,
    pending,
    subject_sealed,
    created_at,
    last_seen_at,
    expires_at,
});

/// A subject known to the platform.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubjectRow {
    pub pseudonym: String,
    pub kind: String,
    pub created_at: i64,
    pub first_use_at: Option<i64>,
    pub password_hash: Option<String>,
    pub password_set_at: Option<i64>,
}

/// A verified email address or mobile number.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ContactRow {
    pub subject: String,
    pub channel: String,
    pub address: String,
    pub verified_at: i64,
}

crate::step::step_row!(ContactRow {
    subject,
    channel,
    address,
    verified_at,
});

/// A one-time code as stored (hashed).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CodeRow {
    pub id: String,
    pub session_hash: String,
    pub subject: String,
    pub channel: String,
    pub address: String,
    pub code_hash: String,
    pub attempts: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A message kept for the demo outbox page.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: String,
    pub at: i64,
    pub channel: String,
    pub recipient: String,
    pub title: String,
    pub body: String,
}

/// A message job's done state with its payload emptied, under the lease of `$2` (see
/// [`Store::record_message_sent`]).
macro_rules! message_done_sql {
    () => {
        "UPDATE jobs SET state = 'done', payload = '{}', lease_owner = NULL, lease_until = NULL, updated_at = $3
         WHERE id = $1 AND lease_owner = $2 AND state = 'running' RETURNING id"
    };
}
const MESSAGE_SENT_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO outbox (id, at, channel, recipient, title, body) SELECT $4, $5, $6, $7, $8, $9 WHERE $4 IS NOT NULL
    ON CONFLICT (id) DO NOTHING;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $10, $11, $12, $13, $14, $15 WHERE $11 IS NOT NULL;
",
    message_done_sql!(),
    ";\nCOMMIT"
);
const MESSAGE_SENT_POSTGRES: &str = concat!(
    "WITH o AS (INSERT INTO outbox (id, at, channel, recipient, title, body)
    SELECT $4::text, $5::bigint, $6::text, $7::text, $8::text, $9::text WHERE $4::text IS NOT NULL
    ON CONFLICT (id) DO NOTHING),
a AS (INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail)
    SELECT $10::bigint, $11::text, $12::text, $13::text, $14::text, $15::text WHERE $11::text IS NOT NULL)
",
    message_done_sql!()
);

/// What a challenge lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeUse {
    /// Taken now (single use); the exact bytes the signature must cover.
    Taken { to_be_signed: String },
    /// It existed but its time ran out (it is consumed all the same).
    Expired,
    /// Unknown, of another session, or already used.
    Unusable,
}

/// The lockout rule: `threshold` failures within `window` lock for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutRule {
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

const SESSION_COLUMNS: &str = "id_hash, csrf_token, subject, subject_kind, method, level, verified_at, pending, created_at, last_seen_at, expires_at, subject_sealed";
const CODE_COLUMNS: &str = "id, session_hash, subject, channel, address, code_hash, attempts, created_at, expires_at, used_at";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores a new session, removing `replaces` (the session it rotates) in the same transaction.
    pub async fn put_session(&self, s: &SessionRow, replaces: Option<&str>) -> Result<()> {
        let insert = format!(
            "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(old) = replaces {
                sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(old).execute(&mut *tx).await?;
                // Codes and challenges were bound to the old session: they die with it.
                sqlx::query("DELETE FROM one_time_codes WHERE session_hash = $1").bind(old).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM cert_challenges WHERE session_hash = $1").bind(old).execute(&mut *tx).await?;
            }
            sqlx::query(&insert)
                .bind(&s.id_hash)
                .bind(&s.csrf_token)
                .bind(&s.subject)
                .bind(&s.subject_kind)
                .bind(&s.method)
                .bind(s.level)
                .bind(s.verified_at)
                .bind(&s.pending)
                .bind(s.created_at)
                .bind(s.last_seen_at)
                .bind(s.expires_at)
                .bind(&s.subject_sealed)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The session, if it exists (time-outs are the caller's rule).
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = $1")
        });
        let rows: Vec<SessionRow> =
            crate::step::read_rows!(self, SQL.as_str(), |q| q.bind(id_hash));
        Ok(rows.into_iter().next())
    }

    /// Records activity on a session (the idle time-out counts from here).
    pub async fn touch_session(&self, id_hash: &str, now: Timestamp) -> Result<()> {
        on_pool!(self, pool => sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .bind(now.millis()).bind(id_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Sets or clears the verification waiting for its first-use code.
    pub async fn set_session_pending(&self, id_hash: &str, pending: Option<&str>) -> Result<()> {
        on_pool!(self, pool => sqlx::query("UPDATE sessions SET pending = $1 WHERE id_hash = $2")
            .bind(pending).bind(id_hash).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM one_time_codes WHERE session_hash = $1").bind(id_hash).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM cert_challenges WHERE session_hash = $1").bind(id_hash).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes sessions past their absolute end or idle since before `idle_before`, and codes,
    /// challenges, failures and lockouts that can no longer matter. Returns the sessions removed.
    pub async fn sweep_identity(
        &self,
        now: Timestamp,
        idle_before: Timestamp,
        failures_before: Timestamp,
    ) -> Result<u64> {
        let n = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2")
                .bind(now.millis()).bind(idle_before.millis()).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM one_time_codes WHERE expires_at <= $1 OR session_hash NOT IN (SELECT id_hash FROM sessions)")
                .bind(now.millis()).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM cert_challenges WHERE expires_at <= $1").bind(now.millis()).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM auth_failures WHERE at < $1").bind(failures_before.millis()).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM lockouts WHERE locked_until <= $1").bind(now.millis()).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    /// The subject with this pseudonym.
    pub async fn subject(&self, pseudonym: &str) -> Result<Option<SubjectRow>> {
        Ok(on_read_pool!(self, pool => sqlx::query_as(
            "SELECT pseudonym, kind, created_at, first_use_at, password_hash, password_set_at FROM subjects WHERE pseudonym = $1")
            .bind(pseudonym).fetch_optional(pool).await?))
    }

    /// Creates the subject on first sight; returns it as stored.
    pub async fn ensure_subject(
        &self,
        pseudonym: &str,
        kind: &str,
        now: Timestamp,
    ) -> Result<SubjectRow> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO subjects (pseudonym, kind, created_at) VALUES ($1, $2, $3) ON CONFLICT (pseudonym) DO NOTHING")
            .bind(pseudonym).bind(kind).bind(now.millis()).execute(pool).await.map(|_| ())?);
        self.subject(pseudonym)
            .await?
            .ok_or(crate::StoreError::NotFound {
                what: "subject",
                id: "(pseudonym)".into(),
            })
    }

    /// Stores a password hash (Argon2id PHC string) for the subject.
    pub async fn set_password_hash(
        &self,
        pseudonym: &str,
        hash: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE subjects SET password_hash = $1, password_set_at = $2 WHERE pseudonym = $3")
            .bind(hash).bind(now.millis()).bind(pseudonym).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Records the proven contact and that the first-use check is done.
    pub async fn complete_first_use(
        &self,
        pseudonym: &str,
        channel: &str,
        address: &str,
        now: Timestamp,
    ) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO contacts (subject, channel, address, verified_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (subject, channel) DO UPDATE SET address = EXCLUDED.address, verified_at = EXCLUDED.verified_at")
                .bind(pseudonym).bind(channel).bind(address).bind(now.millis()).execute(&mut *tx).await?;
            sqlx::query("UPDATE subjects SET first_use_at = COALESCE(first_use_at, $1) WHERE pseudonym = $2")
                .bind(now.millis()).bind(pseudonym).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn contacts(&self, pseudonym: &str) -> Result<Vec<ContactRow>> {
        // In the calling thread on SQLite (see `step`): every transfer's notice asks.
        let rows: Vec<ContactRow> = crate::step::read_rows!(
            self,
            "SELECT subject, channel, address, verified_at FROM contacts WHERE subject = $1 ORDER BY channel",
            |q| q.bind(pseudonym)
        );
        Ok(rows)
    }

    /// Stores a new code for the session, replacing any earlier code of that session.
    pub async fn put_code(&self, c: &CodeRow) -> Result<()> {
        let insert = format!(
            "INSERT INTO one_time_codes ({CODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM one_time_codes WHERE session_hash = $1").bind(&c.session_hash).execute(&mut *tx).await?;
            sqlx::query(&insert)
                .bind(&c.id).bind(&c.session_hash).bind(&c.subject).bind(&c.channel).bind(&c.address)
                .bind(&c.code_hash).bind(c.attempts).bind(c.created_at).bind(c.expires_at).bind(c.used_at)
                .execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The session's current code.
    pub async fn code_for_session(&self, session_hash: &str) -> Result<Option<CodeRow>> {
        let sql = format!(
            "SELECT {CODE_COLUMNS} FROM one_time_codes WHERE session_hash = $1 ORDER BY created_at DESC LIMIT 1"
        );
        Ok(
            on_read_pool!(self, pool => sqlx::query_as(&sql).bind(session_hash).fetch_optional(pool).await?),
        )
    }

    /// Counts one attempt at a code, unless it is used or out of attempts; returns whether the
    /// attempt may be checked (false: no attempts left, or already used).
    pub async fn count_code_attempt(&self, id: &str, max_attempts: u32) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE one_time_codes SET attempts = attempts + 1 WHERE id = $1 AND used_at IS NULL AND attempts < $2")
            .bind(id).bind(i64::from(max_attempts)).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// Marks the code used; false when another request used it first.
    pub async fn use_code(&self, id: &str, now: Timestamp) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE one_time_codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now.millis()).bind(id).execute(pool).await?.rows_affected());
        Ok(n == 1)
    }

    /// The latest end of a lockout on any of `keys` that is still running at `now`.
    pub async fn locked_until(&self, keys: &[&str], now: Timestamp) -> Result<Option<Timestamp>> {
        let mut latest: Option<i64> = None;
        for key in keys {
            let row: Option<(i64,)> = on_read_pool!(self, pool => sqlx::query_as(
                "SELECT locked_until FROM lockouts WHERE lock_key = $1 AND locked_until > $2")
                .bind(*key).bind(now.millis()).fetch_optional(pool).await?);
            if let Some((t,)) = row {
                latest = Some(latest.map_or(t, |l| l.max(t)));
            }
        }
        Ok(latest.map(Timestamp::from_millis))
    }

    /// Records one failure on each key; a key reaching the rule's threshold within its window is
    /// locked until `now + duration` (its counter starts again afterwards). Returns the lockout
    /// end when this failure locked any key.
    pub async fn record_failure(
        &self,
        keys: &[&str],
        rule: LockoutRule,
        now: Timestamp,
    ) -> Result<Option<Timestamp>> {
        let since = now.millis().saturating_sub(ms(rule.window));
        let until = now.plus(rule.duration).millis();
        let mut locked = None;
        for key in keys {
            let hit = on_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO auth_failures (lock_key, at) VALUES ($1, $2)")
                    .bind(*key).bind(now.millis()).execute(&mut *tx).await?;
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM auth_failures WHERE lock_key = $1 AND at > $2")
                    .bind(*key).bind(since).fetch_one(&mut *tx).await?;
                let hit = n >= i64::from(rule.threshold);
                if hit {
                    sqlx::query("INSERT INTO lockouts (lock_key, locked_until) VALUES ($1, $2)
                                 ON CONFLICT (lock_key) DO UPDATE SET locked_until = EXCLUDED.locked_until")
                        .bind(*key).bind(until).execute(&mut *tx).await?;
                    sqlx::query("DELETE FROM auth_failures WHERE lock_key = $1").bind(*key).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                hit
            });
            if hit {
                locked = Some(Timestamp::from_millis(until));
            }
        }
        Ok(locked)
    }

    /// Stores a certificate login challenge bound to a session.
    pub async fn put_challenge(
        &self,
        id: &str,
        session_hash: &str,
        to_be_signed: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO cert_challenges (id, session_hash, to_be_signed, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(id).bind(session_hash).bind(to_be_signed).bind(now.millis()).bind(expires_at.millis())
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Takes a challenge for use: once only, by the session it was issued to.
    pub async fn take_challenge(
        &self,
        id: &str,
        session_hash: &str,
        now: Timestamp,
    ) -> Result<ChallengeUse> {
        let row: Option<(String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "UPDATE cert_challenges SET used_at = $1 WHERE id = $2 AND session_hash = $3 AND used_at IS NULL RETURNING to_be_signed, expires_at")
            .bind(now.millis()).bind(id).bind(session_hash).fetch_optional(pool).await?);
        Ok(match row {
            None => ChallengeUse::Unusable,
            Some((_, exp)) if exp <= now.millis() => ChallengeUse::Expired,
            Some((to_be_signed, _)) => ChallengeUse::Taken { to_be_signed },
        })
    }

    /// The newest messages first.
    pub async fn outbox(&self, limit: u32) -> Result<Vec<OutboxRow>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, at, channel, recipient, title, body FROM outbox ORDER BY at DESC, id DESC LIMIT $1")
            .bind(i64::from(limit)).fetch_all(pool).await?))
    }

    /// Records a delivered message in one write step: the demo's outbox row (when `outbox` is
    /// given, the delivery itself), the notice's audit event (when `audit` is given), and the
    /// message job `job` done with its payload emptied while `worker` still holds its lease.
    /// Four commits' worth of writes before (one per transfer's notice). Returns false when the
    /// lease was lost: the rows are written all the same, the job is left to its new owner. The
    /// outbox row is keyed by the job: a second run of the job adds none.
    pub async fn record_message_sent(
        &self,
        job: &str,
        worker: &str,
        outbox: Option<&OutboxRow>,
        audit: Option<&crate::NewAuditEvent>,
        now: Timestamp,
    ) -> Result<bool> {
        let rows: Vec<(String,)> =
            crate::step::write_step!(self, MESSAGE_SENT_SQLITE, MESSAGE_SENT_POSTGRES, |q| q
                .bind(job)
                .bind(worker)
                .bind(now.millis())
                .bind(outbox.map(|m| &m.id))
                .bind(outbox.map(|m| m.at))
                .bind(outbox.map(|m| &m.channel))
                .bind(outbox.map(|m| &m.recipient))
                .bind(outbox.map(|m| &m.title))
                .bind(outbox.map(|m| &m.body))
                .bind(audit.map(|e| e.at.millis()))
                .bind(audit.map(|e| &e.kind))
                .bind(audit.and_then(|e| e.subject.as_ref()))
                .bind(audit.and_then(|e| e.transfer_id.as_ref()))
                .bind(audit.map(|e| &e.actor))
                .bind(audit.map(|e| e.detail.to_string())));
        Ok(rows.len() == 1)
    }
}
