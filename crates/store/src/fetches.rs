//! The data path's records: where each dataset fetch stands, the sealed per-transfer secret a fetch
//! needs, agency circuit breakers and concurrency slots (in the database so that every process sees
//! the same), and stored packages with their keys.
//!
//! Fetch status of a transfer dataset:
//!
//! ```text
//! pending ──202──▶ not_ready ──200, verified──▶ succeeded
//!    │  ▲              │
//!    │  └─transient────┤──agency 4xx──▶ refused
//!    │                 ├──answer fails a check──▶ rejected   (never stored)
//!    └─────────────────┴──deadline / retries spent──▶ failed
//! ```
//! `succeeded`, `refused`, `rejected` and `failed` are settled: nothing changes them afterwards.

use crate::audit::{NewAuditEvent, bind_audit, insert_audit};
use crate::jobs::insert_job;
use crate::oauth::Jti;
use crate::step::write_step;
use crate::transfers::change_record;
use crate::{NewJob, Result, Store, StoreError, Transfer, on_pool, on_read_pool};
use mydata_core::Timestamp;
use mydata_core::transfer::TransferEvent;
use serde::Serialize;

/// Fetch status values stored in `transfer_datasets.status`.
pub mod status {
    pub const PENDING: &str = "pending";
    pub const NOT_READY: &str = "not_ready";
    pub const SUCCEEDED: &str = "succeeded";
    /// The agency refused the request (a 4xx other than 429).
    pub const REFUSED: &str = "refused";
    /// The platform refused the agency's answer (malformed, oversized, unsigned, bad signature, ...).
    pub const REJECTED: &str = "rejected";
    /// Gave up: deadline passed, retries spent, or the transfer ended.
    pub const FAILED: &str = "failed";

    /// True for the four final values.
    pub fn is_settled(s: &str) -> bool {
        matches!(s, SUCCEEDED | REFUSED | REJECTED | FAILED)
    }
}

/// The settled statuses as an SQL list, a literal so `concat!` can build statements with it.
/// PostgreSQL's admission function (migration 0014) spells the same list out: a new settled
/// status needs a migration that replaces that function too.
macro_rules! settled_sql {
    () => {
        "('succeeded', 'refused', 'rejected', 'failed')"
    };
}
const SETTLED_SQL: &str = settled_sql!();

/// The state of one fetch that the connector works from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRecord {
    pub transfer_id: String,
    pub dataset_id: String,
    pub status: String,
    pub attempts: u32,
    pub agency_request_id: Option<String>,
    pub started_at: Option<Timestamp>,
    pub data_object: Option<String>,
    pub data_key: Option<String>,
}

#[derive(sqlx::FromRow)]
struct FetchRow {
    transfer_id: String,
    dataset_id: String,
    status: String,
    attempts: i64,
    agency_request_id: Option<String>,
    started_at: Option<i64>,
    data_object: Option<String>,
    data_key: Option<String>,
}

impl From<FetchRow> for FetchRecord {
    fn from(r: FetchRow) -> Self {
        Self {
            transfer_id: r.transfer_id,
            dataset_id: r.dataset_id,
            status: r.status,
            attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
            agency_request_id: r.agency_request_id,
            started_at: r.started_at.map(Timestamp::from_millis),
            data_object: r.data_object,
            data_key: r.data_key,
        }
    }
}

const SELECT_FETCH: &str = "SELECT transfer_id, dataset_id, status, attempts, agency_request_id, started_at, data_object, data_key FROM transfer_datasets";

/// A fetch that is still open after an attempt: the new status and when to try again.
#[derive(Debug, Clone)]
pub struct FetchProgress {
    /// `pending` or `not_ready`.
    pub status: &'static str,
    pub agency_request_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub next_attempt_at: Timestamp,
}

/// How a fetch ended.
#[derive(Debug, Clone)]
pub struct FetchSettlement {
    /// One of the settled values of [`status`].
    pub status: &'static str,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub digest: Option<String>,
    /// Where the sealed dataset was put, and its wrapped key (succeeded only).
    pub data_object: Option<String>,
    pub data_key: Option<String>,
}

/// What [`Store::admit_agency_call`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `probe` when the circuit was open and this call tests whether the agency is back;
    /// `clean` when no failure was on record, so a success needs nothing recorded; `attempt`, the
    /// fetch attempt this call is (when admitted for one).
    Go {
        probe: bool,
        clean: bool,
        attempt: Option<u32>,
    },
    /// The fetch the call was for has settled: no slot was taken.
    Settled,
    /// The agency already has its limit of calls in flight.
    Busy,
    /// The circuit is open until then.
    Open { until: Timestamp },
}

/// The fetch attempt an agency call makes (see [`Store::admit_agency_call`]), with its
/// `agency.request` event.
#[derive(Debug, Clone, Copy)]
pub struct FetchAttempt<'a> {
    pub transfer_id: &'a str,
    pub dataset_id: &'a str,
    pub audit: &'a NewAuditEvent,
}

/// A circuit breaker's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgencyCircuit {
    pub agency_id: String,
    pub consecutive_failures: u32,
    pub open_until: Option<Timestamp>,
}

/// The limits of the circuit breaker and concurrency checks.
#[derive(Debug, Clone, Copy)]
pub struct AgencyLimits {
    /// Calls in flight per agency, over every process.
    pub concurrency: u32,
    /// How long a slot is held if its holder never releases it (crash).
    pub slot_lease: std::time::Duration,
    /// Consecutive outages that open the circuit.
    pub failure_threshold: u32,
    /// How long an opened circuit stays open before one probe call is let through.
    pub open_for: std::time::Duration,
}

/// A stored package.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct PackageRecord {
    pub transfer_id: String,
    pub object_key: String,
    /// The package key wrapped by the platform's data key; None once destroyed.
    #[serde(skip)]
    pub sealed_key: Option<String>,
    /// SHA-256 (hex) of the package zip.
    pub digest: String,
    pub size_bytes: u64,
    pub datasets: u32,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub taken_at: Option<Timestamp>,
    pub deleted_at: Option<Timestamp>,
    /// The sealed package itself when it is small enough to live in its row (ciphertext, like the
    /// blob it replaces; `object_key` then names no stored object). Cleared with the key.
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

/// Names the key and body only by whether they are there (and the body's size): a printed record
/// carries neither secret nor ciphertext.
impl std::fmt::Debug for PackageRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageRecord")
            .field("transfer_id", &self.transfer_id)
            .field("object_key", &self.object_key)
            .field("sealed_key", &self.sealed_key.as_ref().map(|_| "<wrapped>"))
            .field("digest", &self.digest)
            .field("size_bytes", &self.size_bytes)
            .field("datasets", &self.datasets)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("taken_at", &self.taken_at)
            .field("deleted_at", &self.deleted_at)
            .field("body", &self.body.as_ref().map(Vec::len))
            .finish()
    }
}

#[derive(sqlx::FromRow)]
struct PackageRow {
    transfer_id: String,
    object_key: String,
    sealed_key: Option<String>,
    digest: String,
    size_bytes: i64,
    datasets: i64,
    created_at: i64,
    expires_at: i64,
    taken_at: Option<i64>,
    deleted_at: Option<i64>,
    body: Option<Vec<u8>>,
}

impl From<PackageRow> for PackageRecord {
    fn from(r: PackageRow) -> Self {
        Self {
            transfer_id: r.transfer_id,
            object_key: r.object_key,
            sealed_key: r.sealed_key,
            digest: r.digest,
            size_bytes: u64::try_from(r.size_bytes).unwrap_or(0),
            datasets: u32::try_from(r.datasets).unwrap_or(0),
            created_at: Timestamp::from_millis(r.created_at),
            expires_at: Timestamp::from_millis(r.expires_at),
            taken_at: r.taken_at.map(Timestamp::from_millis),
            deleted_at: r.deleted_at.map(Timestamp::from_millis),
            body: r.body,
        }
    }
}

const SELECT_PACKAGE: &str = "SELECT transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, taken_at, deleted_at, body FROM packages";

/// An object in blob storage whose key the store no longer holds: delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub transfer_id: String,
    pub object_key: String,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The start of a one-step insert of the jobs in a JSON array from [`jobs_json`] or
/// [`leased_jobs_json`] (parameter `$array`), at the time parameter `$now`, on SQLite: a job with a
/// `lease_owner` goes in `running` at its first attempt, the others `queued`. The caller adds its
/// `WHERE` and `ON CONFLICT (dedup_key) DO NOTHING`.
macro_rules! insert_jobs_sqlite {
    ($array:literal, $now:literal) => {
        concat!(
            "INSERT INTO jobs (id, queue, payload, state, attempts, max_attempts, run_at, dedup_key, lease_owner, lease_until, created_at, updated_at)
    SELECT json_extract(value, '$.id'), json_extract(value, '$.queue'), json_extract(value, '$.payload'),
           CASE WHEN json_extract(value, '$.lease_owner') IS NULL THEN 'queued' ELSE 'running' END,
           CASE WHEN json_extract(value, '$.lease_owner') IS NULL THEN 0 ELSE 1 END,
           json_extract(value, '$.max_attempts'), json_extract(value, '$.run_at'), json_extract(value, '$.dedup_key'),
           json_extract(value, '$.lease_owner'), json_extract(value, '$.lease_until'), ",
            $now,
            ", ",
            $now,
            "
    FROM json_each(",
            $array,
            ")"
        )
    };
}
pub(crate) use insert_jobs_sqlite;

/// [`insert_jobs_sqlite`] on PostgreSQL, up to its select list: the caller adds the `FROM` that
/// names the array's elements `x`, and the `ON CONFLICT`.
macro_rules! insert_jobs_postgres {
    ($now:literal) => {
        concat!(
            "INSERT INTO jobs (id, queue, payload, state, attempts, max_attempts, run_at, dedup_key, lease_owner, lease_until, created_at, updated_at)
    SELECT x->>'id', x->>'queue', x->>'payload',
           CASE WHEN x->>'lease_owner' IS NULL THEN 'queued' ELSE 'running' END,
           CASE WHEN x->>'lease_owner' IS NULL THEN 0 ELSE 1 END,
           (x->>'max_attempts')::bigint, (x->>'run_at')::bigint, x->>'dedup_key',
           x->>'lease_owner', (x->>'lease_until')::bigint, ",
            $now,
            ", ",
            $now
        )
    };
}
pub(crate) use insert_jobs_postgres;

/// Consent as one step (see `step`): the compare-and-set moves the transfer to `fetching`; only if it
/// matched are the sealed identity, the audit event (its `seq` returned) and the jobs (`$6`, a JSON
/// array from [`jobs_json`]) written. On SQLite each insert is conditioned on the one before it
/// having written one row, which chains back to the compare-and-set; the jobs come last because
/// their count varies.
const BEGIN_FETCHING_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE transfers SET state = $1, updated_at = $2, version = version + 1 WHERE id = $3 AND version = $4;
INSERT INTO transfer_secrets (transfer_id, sealed, created_at) SELECT $3, $5, $2 WHERE changes() = 1;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $2, $7, $8, $3, $9, $10 WHERE changes() = 1 RETURNING seq;
",
    insert_jobs_sqlite!("$6", "$2"),
    " WHERE changes() = 1
    ON CONFLICT (dedup_key) DO NOTHING;
COMMIT"
);
const BEGIN_FETCHING_POSTGRES: &str = concat!(
    "WITH u AS (UPDATE transfers SET state = $1, updated_at = $2, version = version + 1 WHERE id = $3 AND version = $4 RETURNING id),
s AS (INSERT INTO transfer_secrets (transfer_id, sealed, created_at) SELECT u.id, $5, $2 FROM u),
j AS (",
    insert_jobs_postgres!("$2"),
    "
    FROM u, jsonb_array_elements($6::jsonb) AS x
    ON CONFLICT (dedup_key) DO NOTHING)
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $2, $7, $8, u.id, $9, $10 FROM u RETURNING seq"
);

/// The start of an audit insert in the steps below; the six values follow in this order.
macro_rules! insert_audit_columns {
    () => {
        "INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail)"
    };
}

/// A package stored with its event, as one step (see `step`); the event's `seq` comes back only
/// when this was the transfer's first package. Audit parameters are `$9`–`$14`, the inline body `$15`.
const PACKAGE_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO packages (transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, body)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $15) ON CONFLICT (transfer_id) DO NOTHING;
", insert_audit_columns!(), " SELECT $9, $10, $11, $12, $13, $14 WHERE changes() = 1 RETURNING seq;
COMMIT"
);
const PACKAGE_POSTGRES: &str = concat!(
    "WITH p AS (INSERT INTO packages (transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, body)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $15) ON CONFLICT (transfer_id) DO NOTHING RETURNING transfer_id)
", insert_audit_columns!(), " SELECT $9, $10, $11, $12, $13, $14 FROM p RETURNING seq"
);

/// The package key taken once, as one step (see `step`); returns the key to the one caller that
/// wins. Audit parameters are `$3`–`$8`.
const TAKE_KEY_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE packages SET taken_at = $1 WHERE transfer_id = $2 AND sealed_key IS NOT NULL AND taken_at IS NULL AND expires_at > $1
    RETURNING sealed_key;
UPDATE packages SET sealed_key = NULL, body = NULL, deleted_at = $1 WHERE transfer_id = $2 AND changes() = 1;
", insert_audit_columns!(), " SELECT $3, $4, $5, $6, $7, $8 WHERE changes() = 1;
COMMIT"
);
const TAKE_KEY_POSTGRES: &str = concat!(
    "WITH k AS (SELECT transfer_id, sealed_key FROM packages
    WHERE transfer_id = $2 AND sealed_key IS NOT NULL AND taken_at IS NULL AND expires_at > $1 FOR UPDATE),
u AS (UPDATE packages p SET taken_at = $1, sealed_key = NULL, body = NULL, deleted_at = $1 FROM k WHERE p.transfer_id = k.transfer_id
    RETURNING k.sealed_key),
a AS (", insert_audit_columns!(), " SELECT $3, $4, $5, $6, $7, $8 FROM u)
SELECT sealed_key FROM u"
);

/// A service's retrieval as one step (see `step`): the DPoP proof's `jti` (`$9`–`$11`, NULL for
/// none) recorded; only if it was new, the key taken as in `TAKE_KEY_*` (audit `$3`–`$8`); only if
/// that won, the transfer moved from version `$13` to state `$12` (released, then purged: two
/// versions, two events `$14`/`$15` and `$16`/`$17`, subject `$18`, actor `$19`). Returns
/// `(2, NULL)` for the `jti` recorded, `(0, key)` for the key taken, `(1, NULL)` per transfer event.
/// On PostgreSQL the three events are one INSERT, so that they are numbered in this order. If the
/// key was taken, the jobs of `$20` (a JSON array from [`leased_jobs_json`]) are enqueued,
/// returning `(4, job ID)` each; on SQLite the key is cleared last, so that a package taken at `$1`
/// whose key is still there is the one this step took.
const RETRIEVE_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO oauth_jtis (client_id, jti, expires_at) SELECT $9, $10, $11 WHERE $10 IS NOT NULL
    ON CONFLICT (expires_at, client_id, jti) DO NOTHING RETURNING 2, NULL;
UPDATE packages SET taken_at = $1 WHERE transfer_id = $2 AND sealed_key IS NOT NULL AND taken_at IS NULL AND expires_at > $1
    AND (changes() = 1 OR $10 IS NULL) RETURNING 0, sealed_key;
", insert_audit_columns!(), " SELECT $3, $4, $5, $6, $7, $8 WHERE changes() = 1;
UPDATE transfers SET state = $12, updated_at = $1, version = version + 2 WHERE id = $2 AND version = $13 AND changes() = 1;
", insert_audit_columns!(), " SELECT $1, $14, $18, $2, $19, $15 WHERE changes() = 1
    UNION ALL SELECT $1, $16, $18, $2, $19, $17 WHERE changes() = 1 RETURNING 1, NULL;
",
    insert_jobs_sqlite!("$20", "$1"),
    " WHERE EXISTS (SELECT 1 FROM packages WHERE transfer_id = $2 AND taken_at = $1 AND sealed_key IS NOT NULL)
    ON CONFLICT (dedup_key) DO NOTHING RETURNING 4, id;
UPDATE packages SET sealed_key = NULL, body = NULL, deleted_at = $1 WHERE transfer_id = $2 AND taken_at = $1 AND sealed_key IS NOT NULL;
COMMIT"
);
const RETRIEVE_POSTGRES: &str = concat!(
    "WITH j AS (INSERT INTO oauth_jtis (client_id, jti, expires_at) SELECT $9::text, $10::text, $11::bigint WHERE $10::text IS NOT NULL
    ON CONFLICT (expires_at, client_id, jti) DO NOTHING RETURNING 2::bigint AS k),
k AS (SELECT transfer_id, sealed_key FROM packages
    WHERE transfer_id = $2 AND sealed_key IS NOT NULL AND taken_at IS NULL AND expires_at > $1
    AND ($10::text IS NULL OR EXISTS (SELECT 1 FROM j)) FOR UPDATE),
u AS (UPDATE packages p SET taken_at = $1, sealed_key = NULL, body = NULL, deleted_at = $1 FROM k WHERE p.transfer_id = k.transfer_id
    RETURNING k.sealed_key),
t AS (UPDATE transfers SET state = $12, updated_at = $1, version = version + 2
    WHERE id = $2 AND version = $13 AND EXISTS (SELECT 1 FROM u) RETURNING id),
a AS (", insert_audit_columns!(), " SELECT $3, $4, $5, $6, $7, $8 FROM u
    UNION ALL SELECT $1, $14, $18, t.id, $19, $15 FROM t
    UNION ALL SELECT $1, $16, $18, t.id, $19, $17 FROM t),
n AS (",
    insert_jobs_postgres!("$1"),
    "
    FROM u, jsonb_array_elements($20::jsonb) AS x
    ON CONFLICT (dedup_key) DO NOTHING RETURNING id)
SELECT k, NULL::text FROM j UNION ALL SELECT 0::bigint, sealed_key FROM u UNION ALL SELECT 1::bigint, NULL::text FROM t
UNION ALL SELECT 4::bigint, id FROM n"
);

/// A settlement as one step, SQLite only (see `settle_fetch_then`): the dataset settled once; only
/// if that changed it, its event (`$11`–`$16`) and a row `(0, datasets still open)`; when none are,
/// the next jobs (`$10`, a JSON array, possibly empty) and, if there were any, the sealed
/// identity's deletion. Then, whatever the settlement did: the agency slot of holder `$17` at
/// agency `$18` freed (with the agency's slots whose lease ran out), and job `$19` (leased by
/// `$20`) marked done, returning `(3, 0)`; NULLs for neither. A next job enqueued here is leased
/// at once to worker `$21` until `$22` (NULL: left queued), returning `(5, 0)`.
const SETTLE_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE transfer_datasets SET status = $1, error_code = $2, error_message = $3, digest = $4, data_object = $5, data_key = $6,
    next_attempt_at = NULL, settled_at = $7, updated_at = $7
    WHERE transfer_id = $8 AND dataset_id = $9 AND status NOT IN ",
    settled_sql!(),
    ";
",
    insert_audit_columns!(),
    " SELECT $11, $12, $13, $14, $15, $16 WHERE changes() = 1;
SELECT 0, (SELECT COUNT(*) FROM transfer_datasets WHERE transfer_id = $8 AND status NOT IN ",
    settled_sql!(),
    ") WHERE changes() = 1;
",
    insert_jobs_sqlite!("$10", "$7"),
    "
    WHERE changes() = 1 AND NOT EXISTS (SELECT 1 FROM transfer_datasets WHERE transfer_id = $8 AND status NOT IN ",
    settled_sql!(),
    ")
    ON CONFLICT (dedup_key) DO NOTHING;
UPDATE jobs SET state = 'running', attempts = 1, lease_owner = $21, lease_until = $22, updated_at = $7
    WHERE changes() = 1 AND $21 IS NOT NULL AND id = json_extract($10, '$[0].id') AND state = 'queued' RETURNING 5, 0;
DELETE FROM transfer_secrets WHERE transfer_id = $8 AND $10 <> '[]'
    AND NOT EXISTS (SELECT 1 FROM transfer_datasets WHERE transfer_id = $8 AND status NOT IN ",
    settled_sql!(),
    ");
DELETE FROM agency_slots WHERE holder = $17 OR (agency_id = $18 AND lease_until <= $7);
UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $7
    WHERE id = $19 AND lease_owner = $20 AND state = 'running' RETURNING 3, 0;
COMMIT"
);

/// An agency call admitted, as one step (see `step`). Rows: `(0, open_until, failures)` for the
/// circuit; `(4, ..)` when fetch `$6`/`$7` (NULL for none) is settled already, so no slot is taken;
/// `(1, ..)` when the slot was taken (the circuit not open, fewer than `$5` other slots held, the
/// fetch open); `(2, ..)` when, taking it, this call became the probe of a half-open circuit; `(3,
/// NULL, attempts)` when the fetch's attempt was counted, with its event (`$8`–`$13`). A slot
/// carries this call's lease `$4`, so an older slot of the same holder does not count as taken.
const ADMIT_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO agency_circuits (agency_id, consecutive_failures, open_until, updated_at) VALUES ($1, 0, NULL, $2)
    ON CONFLICT (agency_id) DO UPDATE SET updated_at = excluded.updated_at
    RETURNING 0, open_until, consecutive_failures;
SELECT 4, NULL, 0 WHERE $6 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM transfer_datasets
    WHERE transfer_id = $6 AND dataset_id = $7 AND status NOT IN ", settled_sql!(), ");
INSERT INTO agency_slots (holder, agency_id, lease_until)
    SELECT $3, $1, $4
    WHERE NOT EXISTS (SELECT 1 FROM agency_circuits WHERE agency_id = $1 AND open_until > $2)
      AND (SELECT COUNT(*) FROM agency_slots WHERE agency_id = $1 AND lease_until > $2 AND holder <> $3) < $5
      AND ($6 IS NULL OR EXISTS (SELECT 1 FROM transfer_datasets
          WHERE transfer_id = $6 AND dataset_id = $7 AND status NOT IN ", settled_sql!(), "))
    ON CONFLICT (holder) DO UPDATE SET agency_id = excluded.agency_id, lease_until = excluded.lease_until
    RETURNING 1, NULL, 0;
UPDATE agency_circuits SET open_until = $4 WHERE agency_id = $1 AND open_until IS NOT NULL AND changes() = 1
    RETURNING 2, open_until, 0;
UPDATE transfer_datasets SET attempts = attempts + 1, started_at = COALESCE(started_at, $2), updated_at = $2
    WHERE transfer_id = $6 AND dataset_id = $7 AND EXISTS (SELECT 1 FROM agency_slots WHERE holder = $3 AND lease_until = $4)
    RETURNING 3, NULL, attempts;
", insert_audit_columns!(), " SELECT $8, $9, $10, $11, $12, $13 WHERE changes() = 1;
COMMIT"
);

/// The fetched data of a transfer forgotten, as one step (see `step`): returns the blob references
/// that were cleared, then clears them and deletes the sealed identity.
const CLEAR_FETCHED_SQLITE: &str = "BEGIN IMMEDIATE;
SELECT transfer_id, data_object FROM transfer_datasets WHERE transfer_id = $1 AND data_object IS NOT NULL;
UPDATE transfer_datasets SET data_key = NULL, data_object = NULL WHERE transfer_id = $1;
DELETE FROM transfer_secrets WHERE transfer_id = $1;
COMMIT";
const CLEAR_FETCHED_POSTGRES: &str =
    "WITH old AS (SELECT transfer_id, dataset_id, data_object FROM transfer_datasets
    WHERE transfer_id = $1 AND data_object IS NOT NULL FOR UPDATE),
u AS (UPDATE transfer_datasets SET data_key = NULL, data_object = NULL WHERE transfer_id = $1),
d AS (DELETE FROM transfer_secrets WHERE transfer_id = $1)
SELECT transfer_id, data_object FROM old";

/// The end of packaging as one step (see `step`): the package (`$1`–`$8`, all NULL for none) and,
/// if it is the first, its event (`$9`–`$14`); the fetched data of transfer `$15` forgotten as in
/// `CLEAR_FETCHED_*` (returned as `(0, object)`); the transfer moved from version `$18` to state
/// `$16` at `$17` with its event (`$19`–`$21`), returning `(1, NULL)` if it moved; then, only if it
/// moved, job `$22` (leased by `$23`; NULL for none) marked done, returning `(3, NULL)`. The
/// package's inline body is `$24`.
const FINISH_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO packages (transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, body)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $24 WHERE $1 IS NOT NULL ON CONFLICT (transfer_id) DO NOTHING;
", insert_audit_columns!(), " SELECT $9, $10, $11, $12, $13, $14 WHERE changes() = 1;
SELECT 0, data_object FROM transfer_datasets WHERE transfer_id = $15 AND data_object IS NOT NULL;
UPDATE transfer_datasets SET data_key = NULL, data_object = NULL WHERE transfer_id = $15;
DELETE FROM transfer_secrets WHERE transfer_id = $15;
UPDATE transfers SET state = $16, updated_at = $17, version = version + 1 WHERE id = $15 AND version = $18;
", insert_audit_columns!(), " SELECT $17, $19, $20, $15, 'system', $21 WHERE changes() = 1 RETURNING 1, NULL;
UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $17
    WHERE id = $22 AND lease_owner = $23 AND state = 'running' AND changes() = 1 RETURNING 3, NULL;
COMMIT"
);
const FINISH_POSTGRES: &str = concat!(
    "WITH p AS (INSERT INTO packages (transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, body)
    SELECT $1::text, $2::text, $3::text, $4::text, $5::bigint, $6::bigint, $7::bigint, $8::bigint, $24::bytea WHERE $1::text IS NOT NULL
    ON CONFLICT (transfer_id) DO NOTHING RETURNING transfer_id),
old AS (SELECT transfer_id, dataset_id, data_object FROM transfer_datasets
    WHERE transfer_id = $15 AND data_object IS NOT NULL FOR UPDATE),
u AS (UPDATE transfer_datasets SET data_key = NULL, data_object = NULL WHERE transfer_id = $15),
d AS (DELETE FROM transfer_secrets WHERE transfer_id = $15),
t AS (UPDATE transfers SET state = $16, updated_at = $17, version = version + 1 WHERE id = $15 AND version = $18 RETURNING id),
a AS (", insert_audit_columns!(), " SELECT $9, $10, $11, $12, $13, $14 FROM p
    UNION ALL SELECT $17, $19, $20, t.id, 'system', $21 FROM t),
k AS (UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $17
    WHERE id = $22 AND lease_owner = $23 AND state = 'running' AND EXISTS (SELECT 1 FROM t) RETURNING id)
SELECT 0::bigint, data_object FROM old UNION ALL SELECT 1::bigint, NULL::text FROM t
UNION ALL SELECT 3::bigint, NULL::text FROM k"
);

/// The last open fetch of a transfer settled and the transfer packaged, as one step (see `step`
/// and [`Store::settle_and_package`]). The dataset `$4`/`$5` is settled `$1` (digest `$2`, at `$3`)
/// only if transfer `$4` is still at version `$6` and no other dataset of it is open; only then is
/// the transfer moved to state `$7` (returning `(1, NULL)`), the package (`$8`–`$13`) stored and
/// the three events written in order: the settlement (`$14`–`$19`), the package (`$20`–`$25`) and
/// the move (kind `$26`, subject `$27`, detail `$28`). The package row holding this run's sealed key
/// `$9` witnesses that the step moved the transfer: the other datasets' fetched data is then
/// forgotten (returned as `(0, object)`), the sealed identity deleted and job `$31` (leased by
/// `$32`) marked done (`(3, NULL)`). The agency slot of holder `$29` at agency `$30` is freed
/// whatever happened. The package's inline body is `$33`.
const DIRECT_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE transfer_datasets SET status = $1, error_code = NULL, error_message = NULL, digest = $2, data_object = NULL, data_key = NULL,
    next_attempt_at = NULL, settled_at = $3, updated_at = $3
    WHERE transfer_id = $4 AND dataset_id = $5 AND status NOT IN ", settled_sql!(), "
    AND EXISTS (SELECT 1 FROM transfers WHERE id = $4 AND version = $6)
    AND NOT EXISTS (SELECT 1 FROM transfer_datasets WHERE transfer_id = $4 AND dataset_id <> $5 AND status NOT IN ", settled_sql!(), ");
UPDATE transfers SET state = $7, updated_at = $3, version = version + 1 WHERE id = $4 AND version = $6 AND changes() = 1
    RETURNING 1, NULL;
INSERT INTO packages (transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, body)
    SELECT $4, $8, $9, $10, $11, $12, $3, $13, $33 WHERE changes() = 1;
", insert_audit_columns!(), " SELECT $14, $15, $16, $17, $18, $19 WHERE changes() = 1
    UNION ALL SELECT $20, $21, $22, $23, $24, $25 WHERE changes() = 1
    UNION ALL SELECT $3, $26, $27, $4, 'system', $28 WHERE changes() = 1;
SELECT 0, data_object FROM transfer_datasets WHERE transfer_id = $4 AND data_object IS NOT NULL
    AND EXISTS (SELECT 1 FROM packages WHERE transfer_id = $4 AND sealed_key = $9);
UPDATE transfer_datasets SET data_key = NULL, data_object = NULL WHERE transfer_id = $4 AND data_object IS NOT NULL
    AND EXISTS (SELECT 1 FROM packages WHERE transfer_id = $4 AND sealed_key = $9);
DELETE FROM transfer_secrets WHERE transfer_id = $4 AND EXISTS (SELECT 1 FROM packages WHERE transfer_id = $4 AND sealed_key = $9);
DELETE FROM agency_slots WHERE holder = $29 OR (agency_id = $30 AND lease_until <= $3);
UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3
    WHERE id = $31 AND lease_owner = $32 AND state = 'running'
    AND EXISTS (SELECT 1 FROM packages WHERE transfer_id = $4 AND sealed_key = $9) RETURNING 3, NULL;
COMMIT"
);
/// [`DIRECT_SQLITE`] as one statement: the transfer's row is locked first (a change committed
/// meanwhile fails the version check), and every later clause runs only from the moved row `t`.
const DIRECT_POSTGRES: &str = concat!(
    "WITH l AS (SELECT id FROM transfers WHERE id = $4 AND version = $6 FOR UPDATE),
s AS (UPDATE transfer_datasets SET status = $1, error_code = NULL, error_message = NULL, digest = $2::text, data_object = NULL,
    data_key = NULL, next_attempt_at = NULL, settled_at = $3, updated_at = $3
    WHERE transfer_id = $4 AND dataset_id = $5 AND status NOT IN ", settled_sql!(), " AND EXISTS (SELECT 1 FROM l)
    AND NOT EXISTS (SELECT 1 FROM transfer_datasets o WHERE o.transfer_id = $4 AND o.dataset_id <> $5 AND o.status NOT IN ", settled_sql!(), ")
    RETURNING transfer_id),
t AS (UPDATE transfers SET state = $7, updated_at = $3, version = version + 1 WHERE id = $4 AND version = $6
    AND EXISTS (SELECT 1 FROM s) RETURNING id),
p AS (INSERT INTO packages (transfer_id, object_key, sealed_key, digest, size_bytes, datasets, created_at, expires_at, body)
    SELECT t.id, $8::text, $9::text, $10::text, $11::bigint, $12::bigint, $3::bigint, $13::bigint, $33::bytea FROM t),
a AS (", insert_audit_columns!(), " SELECT $14::bigint, $15::text, $16::text, $17::text, $18::text, $19::text FROM t
    UNION ALL SELECT $20::bigint, $21::text, $22::text, $23::text, $24::text, $25::text FROM t
    UNION ALL SELECT $3::bigint, $26::text, $27::text, t.id, 'system', $28::text FROM t),
old AS (SELECT data_object FROM transfer_datasets
    WHERE transfer_id = $4 AND dataset_id <> $5 AND data_object IS NOT NULL AND EXISTS (SELECT 1 FROM t)),
u AS (UPDATE transfer_datasets SET data_key = NULL, data_object = NULL
    WHERE transfer_id = $4 AND dataset_id <> $5 AND data_object IS NOT NULL AND EXISTS (SELECT 1 FROM t)),
d AS (DELETE FROM transfer_secrets WHERE transfer_id = $4 AND EXISTS (SELECT 1 FROM t)),
f AS (DELETE FROM agency_slots WHERE holder = $29::text OR (agency_id = $30::text AND lease_until <= $3)),
k AS (UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $3
    WHERE id = $31::text AND lease_owner = $32::text AND state = 'running' AND EXISTS (SELECT 1 FROM t) RETURNING id)
SELECT 0::bigint, data_object FROM old UNION ALL SELECT 1::bigint, NULL::text FROM t
UNION ALL SELECT 3::bigint, NULL::text FROM k"
);

/// Jobs as the JSON array the one-step inserts read (payload as text, as `jobs.payload` stores it).
pub(crate) fn jobs_json<'a>(jobs: impl IntoIterator<Item = &'a NewJob>) -> String {
    leased_jobs_json(jobs, 0, None)
}

/// [`jobs_json`] with the first `leased` jobs carrying `lease_owner` and `lease_until` from `to`
/// (see [`crate::StartJobs`]); the inserts then store them `running`, at their first attempt.
pub(crate) fn leased_jobs_json<'a>(
    jobs: impl IntoIterator<Item = &'a NewJob>,
    leased: usize,
    to: Option<(&str, Timestamp)>,
) -> String {
    serde_json::Value::Array(
        jobs.into_iter()
            .enumerate()
            .map(|(i, j)| {
                let lease = to.filter(|_| i < leased);
                serde_json::json!({
                    "id": j.id,
                    "queue": j.queue,
                    "payload": j.payload.to_string(),
                    "max_attempts": i64::from(j.max_attempts.max(1)),
                    "run_at": j.run_at.millis(),
                    "dedup_key": j.dedup_key,
                    "lease_owner": lease.map(|l| l.0),
                    "lease_until": lease.map(|l| l.1.millis()),
                })
            })
            .collect(),
    )
    .to_string()
}

/// A slot freed: its holder's, and the agency's whose lease ran out (their holders crashed).
const RELEASE_SLOT: &str =
    "DELETE FROM agency_slots WHERE holder = $1 OR (agency_id = $2 AND lease_until <= $3)";

/// What a settlement finishes with it (see [`Store::settle_fetch_then`]); by default nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SettleAlso<'a> {
    /// The job to enqueue once every dataset of the transfer is settled (the packaging).
    pub next: Option<&'a NewJob>,
    /// The agency slot the fetch's call held: `(agency, holder)`.
    pub slot: Option<(&'a str, &'a str)>,
    /// The fetch's job, marked done: `(job ID, worker holding its lease)`.
    pub job: Option<(&'a str, &'a str)>,
    /// The next job, if enqueued, leased at once to this worker until then: it runs the job
    /// straight away, without a claim.
    pub lease_next: Option<(&'a str, Timestamp)>,
}

/// What a settlement did (see [`Store::settle_fetch_then`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleOutcome {
    /// `Some(every dataset settled)` when this call settled the fetch; None when it was already.
    pub all_settled: Option<bool>,
    /// The fetch's job was marked done.
    pub job_done: bool,
    /// The next job was enqueued leased to the worker in `lease_next`.
    pub next_leased: bool,
}

/// What the end of packaging did (see [`Store::finish_packaging`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packaged {
    /// Fetched datasets whose keys are gone and whose blobs are left to delete.
    pub leftovers: Vec<Leftover>,
    /// The transfer moved to ready.
    pub moved: bool,
    /// The packaging job was marked done with it.
    pub job_done: bool,
}

impl Packaged {
    /// From the rows of a packaging step: `(0, object)` per blob left to delete, `(1, NULL)` when
    /// the transfer moved, `(3, NULL)` when the job was marked done.
    fn from_rows(transfer_id: &str, rows: Vec<(i64, Option<String>)>) -> Self {
        let moved = rows.iter().any(|r| r.0 == 1);
        let job_done = rows.iter().any(|r| r.0 == 3);
        let leftovers = rows
            .into_iter()
            .filter(|r| r.0 == 0)
            .filter_map(|r| r.1)
            .map(|object_key| Leftover {
                transfer_id: transfer_id.to_owned(),
                object_key,
            })
            .collect();
        Self {
            leftovers,
            moved,
            job_done,
        }
    }
}

/// What a service's retrieval found (see [`Store::retrieve_package`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retrieval {
    /// The key, now cleared; `closed` when the transfer was released and purged with it;
    /// `enqueued`, the IDs of the jobs this step enqueued (one already there by its dedup key is
    /// not).
    Taken {
        key: String,
        closed: bool,
        enqueued: Vec<String>,
    },
    /// The package is gone, taken already or past its expiry.
    Gone,
    /// The DPoP proof's `jti` was used before: nothing changed.
    ProofReplay,
}

impl Store {
    /// Consent given: stores the sealed secret, moves the transfer from `created` to `fetching`
    /// (with its audit event) and enqueues the fetch jobs, all in one transaction.
    pub async fn begin_fetching(
        &self,
        transfer_id: &str,
        sealed_secret: &str,
        jobs: &[NewJob],
        actor: &str,
        now: Timestamp,
    ) -> Result<()> {
        let t = self
            .transfer(transfer_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "transfer",
                id: transfer_id.to_owned(),
            })?;
        self.begin_fetching_from(&t, sealed_secret, jobs, actor, now)
            .await
            .map(|_| ())
    }

    /// Like [`Store::begin_fetching`], from a transfer the caller has just read (one read fewer),
    /// returning it as changed. If it changed since, this is a [`StoreError::Conflict`] and nothing
    /// is written.
    pub async fn begin_fetching_from(
        &self,
        t: &crate::Transfer,
        sealed_secret: &str,
        jobs: &[NewJob],
        actor: &str,
        now: Timestamp,
    ) -> Result<crate::Transfer> {
        let transfer_id = t.id.as_str();
        let (next, kind, mut detail) = change_record(t.state, TransferEvent::Consent)?;
        detail["jobs"] = jobs.len().into();
        let audit = NewAuditEvent {
            at: now,
            kind,
            subject: Some(t.subject.clone()),
            transfer_id: Some(transfer_id.to_owned()),
            actor: actor.to_owned(),
            detail,
        };
        // One round trip (see `step`); the jobs travel as one JSON array parameter.
        let rows: Vec<(i64,)> =
            write_step!(self, BEGIN_FETCHING_SQLITE, BEGIN_FETCHING_POSTGRES, |q| q
                .bind(next.code())
                .bind(now.millis())
                .bind(transfer_id)
                .bind(t.version)
                .bind(sealed_secret)
                .bind(jobs_json(jobs))
                .bind(&audit.kind)
                .bind(&audit.subject)
                .bind(&audit.actor)
                .bind(audit.detail.to_string()));
        let ok = !rows.is_empty();
        if ok {
            Ok(t.changed_to(next, now))
        } else {
            Err(StoreError::Conflict(transfer_id.to_owned()))
        }
    }

    /// The sealed secret of a transfer, while it exists.
    pub async fn transfer_secret(&self, transfer_id: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = on_read_pool!(self, pool => sqlx::query_as("SELECT sealed FROM transfer_secrets WHERE transfer_id = $1")
            .bind(transfer_id)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(|(s,)| s))
    }

    /// Destroys the secrets of transfers that no longer fetch (ready, ended) or whose fetches have
    /// all settled; returns how many.
    pub async fn purge_transfer_secrets(&self) -> Result<u64> {
        let sql = format!(
            "DELETE FROM transfer_secrets WHERE transfer_id IN (SELECT id FROM transfers WHERE state NOT IN ('created', 'fetching'))
             OR NOT EXISTS (SELECT 1 FROM transfer_datasets d WHERE d.transfer_id = transfer_secrets.transfer_id AND d.status NOT IN {SETTLED_SQL})"
        );
        Ok(on_pool!(self, pool => sqlx::query(&sql).execute(pool).await?.rows_affected()))
    }

    /// One fetch's record.
    pub async fn fetch_record(
        &self,
        transfer_id: &str,
        dataset_id: &str,
    ) -> Result<Option<FetchRecord>> {
        let sql = format!("{SELECT_FETCH} WHERE transfer_id = $1 AND dataset_id = $2");
        let row: Option<FetchRow> = on_read_pool!(self, pool => sqlx::query_as(&sql)
            .bind(transfer_id)
            .bind(dataset_id)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(FetchRecord::from))
    }

    /// Every fetch record of a transfer, in the transfer's order.
    pub async fn fetch_records(&self, transfer_id: &str) -> Result<Vec<FetchRecord>> {
        let sql = format!("{SELECT_FETCH} WHERE transfer_id = $1 ORDER BY position");
        let rows: Vec<FetchRow> = on_read_pool!(self, pool => sqlx::query_as(&sql)
            .bind(transfer_id)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(FetchRecord::from).collect())
    }

    /// Records an open fetch's new status and next attempt, with its audit event. Returns false
    /// (and writes nothing) when the fetch settled meanwhile.
    pub async fn record_fetch_progress(
        &self,
        transfer_id: &str,
        dataset_id: &str,
        p: &FetchProgress,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE transfer_datasets SET status = $1, agency_request_id = $2, error_code = $3, error_message = $4, next_attempt_at = $5, updated_at = $6
             WHERE transfer_id = $7 AND dataset_id = $8 AND status NOT IN {SETTLED_SQL}"
        );
        let changed = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(&sql)
                .bind(p.status)
                .bind(&p.agency_request_id)
                .bind(&p.error_code)
                .bind(&p.error_message)
                .bind(p.next_attempt_at.millis())
                .bind(now.millis())
                .bind(transfer_id)
                .bind(dataset_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                insert_audit!(&mut *tx, audit)?;
            }
            tx.commit().await?;
            n == 1
        });
        Ok(changed)
    }

    /// Settles a fetch once, with its audit event. Returns `Some(all_settled)` — whether every
    /// dataset of the transfer is now settled — or None when it was settled already (by another
    /// worker), in which case nothing was written.
    pub async fn settle_fetch(
        &self,
        transfer_id: &str,
        dataset_id: &str,
        s: &FetchSettlement,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<Option<bool>> {
        let done = self
            .settle_fetch_then(
                transfer_id,
                dataset_id,
                s,
                audit,
                &SettleAlso::default(),
                now,
            )
            .await?;
        Ok(done.all_settled)
    }

    /// Like [`Store::settle_fetch`], finishing in the same transaction what `also` names: when this
    /// settles the transfer's last open dataset, its next job is enqueued and the sealed identity,
    /// which no fetch needs any more, deleted; and in any case the fetch's agency slot is freed
    /// and its job marked done. One commit on the writer instead of up to five.
    pub async fn settle_fetch_then(
        &self,
        transfer_id: &str,
        dataset_id: &str,
        s: &FetchSettlement,
        audit: &NewAuditEvent,
        also: &SettleAlso<'_>,
        now: Timestamp,
    ) -> Result<SettleOutcome> {
        if !status::is_settled(s.status) {
            return Err(StoreError::Corrupt(format!(
                "`{}` is not a settled fetch status",
                s.status
            )));
        }
        // $1–$9 of both texts: the settlement, then where it belongs.
        macro_rules! bind_settlement {
            ($q:expr) => {
                $q.bind(s.status)
                    .bind(&s.error_code)
                    .bind(&s.error_message)
                    .bind(&s.digest)
                    .bind(&s.data_object)
                    .bind(&s.data_key)
                    .bind(now.millis())
                    .bind(transfer_id)
                    .bind(dataset_id)
            };
        }
        let pool = match &self.db {
            crate::Db::Sqlite { writer, .. } => {
                // One round trip (see `step`): SQLite runs the whole text under its write lock, so
                // the count of open datasets sees every other settlement. The open count comes
                // back only if this call settled the dataset.
                let jobs = jobs_json(also.next);
                let q = crate::step::Binder::new(SETTLE_SQLITE);
                let q = bind_audit!(bind_settlement!(q).bind(&jobs), audit)
                    .bind(also.slot.map(|s| s.1))
                    .bind(also.slot.map(|s| s.0))
                    .bind(also.job.map(|j| j.0))
                    .bind(also.job.map(|j| j.1))
                    .bind(also.lease_next.map(|l| l.0))
                    .bind(also.lease_next.map(|l| l.1.millis()));
                let rows: Vec<(i64, i64)> = crate::step::sqlite_sync(writer, q).await?;
                return Ok(SettleOutcome {
                    all_settled: rows.iter().find(|r| r.0 == 0).map(|r| r.1 == 0),
                    job_done: rows.iter().any(|r| r.0 == 3),
                    next_leased: rows.iter().any(|r| r.0 == 5),
                });
            }
            crate::Db::Postgres(pool) => pool,
        };
        // PostgreSQL cannot count inside one statement (its snapshot would miss a settlement
        // committed meanwhile): a transaction that takes the transfer's row lock first.
        let sql = format!(
            "UPDATE transfer_datasets SET status = $1, error_code = $2, error_message = $3, digest = $4, data_object = $5, data_key = $6,
             next_attempt_at = NULL, settled_at = $7, updated_at = $7
             WHERE transfer_id = $8 AND dataset_id = $9 AND status NOT IN {SETTLED_SQL}"
        );
        let open_sql = format!(
            "SELECT COUNT(*) FROM transfer_datasets WHERE transfer_id = $1 AND status NOT IN {SETTLED_SQL}"
        );
        let mut tx = pool.begin().await?;
        // Serialise settlements of one transfer on its row: two workers settling its last two
        // datasets at once must not both count the other as still open.
        sqlx::query("UPDATE transfers SET version = version WHERE id = $1")
            .bind(transfer_id)
            .execute(&mut *tx)
            .await?;
        let n = bind_settlement!(sqlx::query(&sql))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let (mut all_settled, mut next_leased) = (None, false);
        if n == 1 {
            insert_audit!(&mut *tx, audit)?;
            let (open,): (i64,) = sqlx::query_as(&open_sql)
                .bind(transfer_id)
                .fetch_one(&mut *tx)
                .await?;
            if open == 0
                && let Some(job) = also.next
            {
                let inserted = insert_job!(&mut *tx, job, now)? == 1;
                if inserted && let Some((worker, until)) = also.lease_next {
                    next_leased = sqlx::query(
                        "UPDATE jobs SET state = 'running', attempts = 1, lease_owner = $1, lease_until = $2, updated_at = $3
                         WHERE id = $4 AND state = 'queued'",
                    )
                    .bind(worker)
                    .bind(until.millis())
                    .bind(now.millis())
                    .bind(&job.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                }
                sqlx::query("DELETE FROM transfer_secrets WHERE transfer_id = $1")
                    .bind(transfer_id)
                    .execute(&mut *tx)
                    .await?;
            }
            all_settled = Some(open == 0);
        }
        if let Some((agency, holder)) = also.slot {
            sqlx::query(RELEASE_SLOT)
                .bind(holder)
                .bind(agency)
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
        }
        let mut job_done = false;
        if let Some((id, owner)) = also.job {
            job_done = sqlx::query(
                "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = $1
                 WHERE id = $2 AND lease_owner = $3 AND state = 'running'",
            )
            .bind(now.millis())
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        }
        tx.commit().await?;
        Ok(SettleOutcome {
            all_settled,
            job_done,
            next_leased,
        })
    }

    /// Forgets the fetched data of a transfer (after packaging or at its end): clears every object
    /// reference and key and deletes the sealed identity, and returns the objects to delete from
    /// blob storage.
    pub async fn clear_fetched_data(&self, transfer_id: &str) -> Result<Vec<Leftover>> {
        // One round trip (see `step`). RETURNING yields the new (cleared) values, so the
        // references are read first, in the same transaction (PostgreSQL: locking the rows).
        let rows: Vec<(String, String)> =
            write_step!(self, CLEAR_FETCHED_SQLITE, CLEAR_FETCHED_POSTGRES, |q| q
                .bind(transfer_id));
        Ok(rows
            .into_iter()
            .map(|(transfer_id, object_key)| Leftover {
                transfer_id,
                object_key,
            })
            .collect())
    }

    /// The end of packaging in one step: stores `package` (with its event) unless the transfer has
    /// one already, forgets the fetched data as [`Store::clear_fetched_data`] does (returning what
    /// is left to delete), and moves `read` (a fetching transfer, as read for this run) to ready.
    /// It does not move when the transfer changed since `read`. With `job` (its ID and the worker
    /// holding its lease), the packaging job is marked done in the same step, if the transfer moved.
    pub async fn finish_packaging(
        &self,
        read: &Transfer,
        package: Option<(&PackageRecord, &NewAuditEvent)>,
        job: Option<(&str, &str)>,
        now: Timestamp,
    ) -> Result<Packaged> {
        let (next, kind, detail) = change_record(read.state, TransferEvent::Settled)?;
        let p = package.map(|(p, _)| p);
        let audit = package.map(|(_, a)| a);
        let rows: Vec<(i64, Option<String>)> =
            write_step!(self, FINISH_SQLITE, FINISH_POSTGRES, |q| q
                .bind(p.map(|p| p.transfer_id.as_str()))
                .bind(p.map(|p| p.object_key.as_str()))
                .bind(p.and_then(|p| p.sealed_key.as_deref()))
                .bind(p.map(|p| p.digest.as_str()))
                .bind(p.map(|p| i64::try_from(p.size_bytes).unwrap_or(i64::MAX)))
                .bind(p.map(|p| i64::from(p.datasets)))
                .bind(p.map(|p| p.created_at.millis()))
                .bind(p.map(|p| p.expires_at.millis()))
                .bind(audit.map(|e| e.at.millis()))
                .bind(audit.map(|e| e.kind.as_str()))
                .bind(audit.and_then(|e| e.subject.as_deref()))
                .bind(audit.and_then(|e| e.transfer_id.as_deref()))
                .bind(audit.map(|e| e.actor.as_str()))
                .bind(audit.map(|e| e.detail.to_string()))
                .bind(&read.id)
                .bind(next.code())
                .bind(now.millis())
                .bind(read.version)
                .bind(kind)
                .bind(&read.subject)
                .bind(detail.to_string())
                .bind(job.map(|j| j.0))
                .bind(job.map(|j| j.1))
                .bind(p.and_then(|p| p.body.as_deref())));
        Ok(Packaged::from_rows(&read.id, rows))
    }

    /// The last open fetch of `read` (a fetching transfer, as read for this run) settled as
    /// succeeded and the transfer packaged in one step: the work of [`Store::settle_fetch_then`]
    /// and [`Store::finish_packaging`] for a worker that holds every dataset already, so the
    /// fetched dataset is never stored. Nothing but the slot is written unless the transfer is
    /// still at `read`'s version and every other dataset has settled (`moved` is then false and
    /// the caller goes the usual way). `package.sealed_key` must be this run's fresh wrapped key.
    #[allow(clippy::too_many_arguments)]
    pub async fn settle_and_package(
        &self,
        read: &Transfer,
        dataset_id: &str,
        digest: &str,
        settled: &NewAuditEvent,
        package: (&PackageRecord, &NewAuditEvent),
        also: &SettleAlso<'_>,
        now: Timestamp,
    ) -> Result<Packaged> {
        let (next, kind, detail) = change_record(read.state, TransferEvent::Settled)?;
        let (p, created) = package;
        let Some(sealed_key) = p.sealed_key.as_deref() else {
            return Err(StoreError::Corrupt(
                "a package to store needs its key".into(),
            ));
        };
        let rows: Vec<(i64, Option<String>)> =
            write_step!(self, DIRECT_SQLITE, DIRECT_POSTGRES, |q| {
                let q = q
                    .bind(status::SUCCEEDED)
                    .bind(digest)
                    .bind(now.millis())
                    .bind(&read.id)
                    .bind(dataset_id)
                    .bind(read.version)
                    .bind(next.code())
                    .bind(p.object_key.as_str())
                    .bind(sealed_key)
                    .bind(p.digest.as_str())
                    .bind(i64::try_from(p.size_bytes).unwrap_or(i64::MAX))
                    .bind(i64::from(p.datasets))
                    .bind(p.expires_at.millis());
                bind_audit!(bind_audit!(q, settled), created)
                    .bind(kind.as_str())
                    .bind(&read.subject)
                    .bind(detail.to_string())
                    .bind(also.slot.map(|s| s.1))
                    .bind(also.slot.map(|s| s.0))
                    .bind(also.job.map(|j| j.0))
                    .bind(also.job.map(|j| j.1))
                    .bind(p.body.as_deref())
            });
        Ok(Packaged::from_rows(&read.id, rows))
    }

    /// Transfers that have ended (or passed their expiry) but still reference fetched data.
    pub async fn transfers_with_stale_data(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT d.transfer_id FROM transfer_datasets d JOIN transfers t ON t.id = d.transfer_id
                   WHERE d.data_object IS NOT NULL AND (t.state IN ('deleted', 'refused', 'expired') OR t.expires_at <= $1)
                   ORDER BY d.transfer_id LIMIT $2";
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(sql).bind(now.millis()).bind(i64::from(limit)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Admits a call to `agency_id` for `holder`, against the agency's circuit and its limit of
    /// calls in flight. With `attempt`, the call is one of that fetch's attempts: the slot is taken
    /// only while the fetch is open, and the attempt is counted with its event in the same step
    /// ([`Admission::Go`] carries its number; [`Admission::Settled`] when the fetch has settled).
    pub async fn admit_agency_call(
        &self,
        agency_id: &str,
        holder: &str,
        limits: &AgencyLimits,
        attempt: Option<&FetchAttempt<'_>>,
        now: Timestamp,
    ) -> Result<Admission> {
        let n = now.millis();
        let lease = n.saturating_add(ms(limits.slot_lease));
        let limit = i64::from(limits.concurrency.max(1));
        let e = attempt.map(|a| a.audit);
        // The same thirteen parameters for both backends' texts.
        macro_rules! bind_admission {
            ($q:expr) => {
                $q.bind(agency_id)
                    .bind(n)
                    .bind(holder)
                    .bind(lease)
                    .bind(limit)
                    .bind(attempt.map(|a| a.transfer_id))
                    .bind(attempt.map(|a| a.dataset_id))
                    .bind(e.map(|e| e.at.millis()))
                    .bind(e.map(|e| e.kind.as_str()))
                    .bind(e.and_then(|e| e.subject.as_deref()))
                    .bind(e.and_then(|e| e.transfer_id.as_deref()))
                    .bind(e.map(|e| e.actor.as_str()))
                    .bind(e.map(|e| e.detail.to_string()))
            };
        }
        let rows: Vec<(i64, Option<i64>, i64)> = match &self.db {
            crate::Db::Sqlite { writer, .. } => {
                // One step: SQLite runs the whole text under its write lock, so the count of
                // slots sees every other admission.
                let q = bind_admission!(crate::step::Binder::new(ADMIT_SQLITE));
                crate::step::sqlite_sync(writer, q).await?
            }
            // PostgreSQL: one call of the function migration 0014 defines, which locks the
            // circuit row first and then counts the slots with a fresh snapshot (one statement's
            // would miss a slot taken while it waited for the lock); one round trip, so the lock
            // is held only while it runs.
            crate::Db::Postgres(pool) => {
                bind_admission!(sqlx::query_as(
                    "SELECT step, until_ms, num FROM mydata_admit_agency_call($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                ))
                .fetch_all(pool)
                .await?
            }
        };
        let circuit = rows.iter().find(|r| r.0 == 0);
        let open_until = circuit.and_then(|r| r.1);
        let failures = circuit.map_or(0, |r| r.2);
        if let Some(until) = open_until.filter(|u| *u > n) {
            return Ok(Admission::Open {
                until: Timestamp::from_millis(until),
            });
        }
        if rows.iter().any(|r| r.0 == 4) {
            return Ok(Admission::Settled);
        }
        if !rows.iter().any(|r| r.0 == 1) {
            return Ok(Admission::Busy);
        }
        let probe = rows.iter().any(|r| r.0 == 2);
        let attempt = rows
            .iter()
            .find(|r| r.0 == 3)
            .map(|r| u32::try_from(r.2).unwrap_or(u32::MAX));
        Ok(Admission::Go {
            probe,
            clean: !probe && failures == 0,
            attempt,
        })
    }

    /// Frees the slot `holder` took at `agency_id`, and the agency's slots whose lease has run out
    /// (their holders crashed; they no longer count, this only tidies up).
    pub async fn release_agency_slot(
        &self,
        agency_id: &str,
        holder: &str,
        now: Timestamp,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query(RELEASE_SLOT)
            .bind(holder)
            .bind(agency_id)
            .bind(now.millis())
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Records how a call to `agency_id` went: an outage counts towards opening the circuit (and
    /// re-opens it after a failed probe); anything else closes it. Returns true when this call
    /// opened the circuit.
    pub async fn record_agency_result(
        &self,
        agency_id: &str,
        outage: bool,
        limits: &AgencyLimits,
        now: Timestamp,
    ) -> Result<bool> {
        let n = now.millis();
        if !outage {
            on_pool!(self, pool => sqlx::query(
                "UPDATE agency_circuits SET consecutive_failures = 0, open_until = NULL, updated_at = $1 WHERE agency_id = $2",
            )
            .bind(n)
            .bind(agency_id)
            .execute(pool)
            .await
            .map(|_| ()))?;
            return Ok(false);
        }
        let threshold = i64::from(limits.failure_threshold.max(1));
        let row: Option<(i64, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(
            "UPDATE agency_circuits SET consecutive_failures = consecutive_failures + 1,
             open_until = CASE WHEN consecutive_failures + 1 >= $1 THEN $2 ELSE open_until END, updated_at = $3
             WHERE agency_id = $4 RETURNING consecutive_failures, open_until",
        )
        .bind(threshold)
        .bind(n.saturating_add(ms(limits.open_for)))
        .bind(n)
        .bind(agency_id)
        .fetch_optional(pool)
        .await?);
        Ok(row.is_some_and(|(f, _)| f >= threshold))
    }

    /// The circuit of one agency, if it was ever called.
    pub async fn agency_circuit(&self, agency_id: &str) -> Result<Option<AgencyCircuit>> {
        let row: Option<(String, i64, Option<i64>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT agency_id, consecutive_failures, open_until FROM agency_circuits WHERE agency_id = $1",
        )
        .bind(agency_id)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(|(agency_id, f, open_until)| AgencyCircuit {
            agency_id,
            consecutive_failures: u32::try_from(f).unwrap_or(u32::MAX),
            open_until: open_until.map(Timestamp::from_millis),
        }))
    }

    /// Slots of `agency_id` held at `now`.
    pub async fn agency_slots_in_use(&self, agency_id: &str, now: Timestamp) -> Result<u32> {
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(
            "SELECT COUNT(*) FROM agency_slots WHERE agency_id = $1 AND lease_until > $2",
        )
        .bind(agency_id)
        .bind(now.millis())
        .fetch_one(pool)
        .await?);
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Records a stored package with its audit event. A second package for the same transfer is
    /// refused (returns false, writes nothing).
    pub async fn insert_package(&self, p: &PackageRecord, audit: &NewAuditEvent) -> Result<bool> {
        // One round trip (see `step`): the package, and its event only if it is the first.
        let rows: Vec<(i64,)> =
            write_step!(self, PACKAGE_SQLITE, PACKAGE_POSTGRES, |q| bind_audit!(
                q.bind(&p.transfer_id)
                    .bind(&p.object_key)
                    .bind(&p.sealed_key)
                    .bind(&p.digest)
                    .bind(i64::try_from(p.size_bytes).unwrap_or(i64::MAX))
                    .bind(i64::from(p.datasets))
                    .bind(p.created_at.millis())
                    .bind(p.expires_at.millis()),
                audit
            )
            .bind(p.body.as_deref()));
        let inserted = !rows.is_empty();
        Ok(inserted)
    }

    /// The package of a transfer (also after it was destroyed: its metadata stays).
    pub async fn package(&self, transfer_id: &str) -> Result<Option<PackageRecord>> {
        let sql = format!("{SELECT_PACKAGE} WHERE transfer_id = $1");
        let row: Option<PackageRow> = on_read_pool!(self, pool => sqlx::query_as(&sql).bind(transfer_id).fetch_optional(pool).await?);
        Ok(row.map(PackageRecord::from))
    }

    /// Takes the package key once: clears it (the package can never be opened again) and marks the
    /// package taken, with the audit event, in one statement that only one caller can win. Returns
    /// the wrapped key, or None when the package is gone, taken already or past its expiry.
    pub async fn take_package_key(
        &self,
        transfer_id: &str,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<Option<String>> {
        // One round trip (see `step`): the guarded update decides who wins and returns the key it
        // clears (SQLite: read by the first UPDATE, which leaves it in place; PostgreSQL: from the
        // locked row), and the event is written only for the winner.
        let rows: Vec<(String,)> =
            write_step!(self, TAKE_KEY_SQLITE, TAKE_KEY_POSTGRES, |q| bind_audit!(
                q.bind(now.millis()).bind(transfer_id),
                audit
            ));
        Ok(rows.into_iter().next().map(|(k,)| k))
    }

    /// A service retrieves its package, in one step: records the DPoP proof's `jti` (if any), then
    /// takes the key as [`Store::take_package_key`] does, then moves `read` (a ready transfer, as
    /// read for this request) to released and purged; if the key was taken, `notices` (jobs, the
    /// person's notice of the retrieval, the first of them possibly leased to the caller, which
    /// then runs them without a claim) are enqueued, each unless its dedup key exists. The
    /// transfer is left as it is when it changed since `read`: the caller then moves it from a
    /// fresh read.
    pub async fn retrieve_package(
        &self,
        read: &Transfer,
        audit: &NewAuditEvent,
        proof: Option<Jti<'_>>,
        notices: crate::StartJobs<'_>,
        actor: &str,
        now: Timestamp,
    ) -> Result<Retrieval> {
        let (released, released_kind, released_detail) =
            change_record(read.state, TransferEvent::Release)?;
        let (purged, purged_kind, purged_detail) = change_record(released, TransferEvent::Purge)?;
        let rows: Vec<(i64, Option<String>)> =
            write_step!(self, RETRIEVE_SQLITE, RETRIEVE_POSTGRES, |q| bind_audit!(
                q.bind(now.millis()).bind(&read.id),
                audit
            )
            .bind(proof.map(|p| p.client_id))
            .bind(proof.map(|p| p.jti))
            .bind(proof.map(|p| p.keep_until.millis()))
            .bind(purged.code())
            .bind(read.version)
            .bind(&released_kind)
            .bind(released_detail.to_string())
            .bind(&purged_kind)
            .bind(purged_detail.to_string())
            .bind(&read.subject)
            .bind(actor)
            .bind(leased_jobs_json(notices.jobs, notices.leased, notices.to)));
        if proof.is_some() && !rows.iter().any(|r| r.0 == 2) {
            return Ok(Retrieval::ProofReplay);
        }
        let Some(key) = rows.iter().find(|r| r.0 == 0).and_then(|r| r.1.clone()) else {
            return Ok(Retrieval::Gone);
        };
        Ok(Retrieval::Taken {
            key,
            closed: rows.iter().any(|r| r.0 == 1),
            enqueued: rows
                .iter()
                .filter(|r| r.0 == 4)
                .filter_map(|r| r.1.clone())
                .collect(),
        })
    }

    /// Packages whose key must be destroyed now: past their expiry, or their transfer has ended.
    pub async fn packages_to_destroy(&self, now: Timestamp, limit: u32) -> Result<Vec<String>> {
        let sql = "SELECT p.transfer_id FROM packages p JOIN transfers t ON t.id = p.transfer_id
                   WHERE p.sealed_key IS NOT NULL AND (p.expires_at <= $1 OR t.state IN ('deleted', 'refused', 'expired'))
                   ORDER BY p.expires_at LIMIT $2";
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(sql).bind(now.millis()).bind(i64::from(limit)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Destroys a package's key with its audit event; returns the blob to delete, or None when the
    /// key was already gone.
    pub async fn destroy_package_key(
        &self,
        transfer_id: &str,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<Option<Leftover>> {
        let row: Option<(String,)> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<(String,)> = sqlx::query_as(
                "UPDATE packages SET sealed_key = NULL, body = NULL, deleted_at = $1 WHERE transfer_id = $2 AND sealed_key IS NOT NULL RETURNING object_key",
            )
            .bind(now.millis())
            .bind(transfer_id)
            .fetch_optional(&mut *tx)
            .await?;
            if row.is_some() {
                insert_audit!(&mut *tx, audit)?;
            }
            tx.commit().await?;
            row
        });
        Ok(row.map(|(object_key,)| Leftover {
            transfer_id: transfer_id.to_owned(),
            object_key,
        }))
    }

    /// Whether a live record still references the blob `object_key` of `transfer_id`: a package
    /// whose key is not destroyed, or a fetched dataset whose key is not cleared. A blob nothing
    /// references is an orphan (a crash between writing it and recording its key).
    pub async fn object_referenced(&self, transfer_id: &str, object_key: &str) -> Result<bool> {
        let sql = "SELECT COUNT(*) FROM (
                       SELECT 1 AS one FROM packages WHERE transfer_id = $1 AND object_key = $2 AND sealed_key IS NOT NULL
                       UNION ALL
                       SELECT 1 AS one FROM transfer_datasets WHERE transfer_id = $1 AND data_object = $2 AND data_key IS NOT NULL
                   ) AS refs";
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).bind(transfer_id).bind(object_key).fetch_one(pool).await?);
        Ok(n > 0)
    }
}
