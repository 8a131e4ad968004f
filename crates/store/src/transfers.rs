//! Transfers and their datasets; every state change is written together with its audit event.

use crate::audit::NewAuditEvent;
use crate::step::write_step;
use crate::{Result, Store, StoreError, on_pool, parse_column};
use mydata_core::transfer::{TransferEvent, TransferKind, TransferState};
use mydata_core::{Timestamp, limits};
use serde::Serialize;

/// What the caller decides when a transfer is created.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub id: String,
    pub kind: TransferKind,
    /// Keyed pseudonym of the person, never the ID number.
    pub subject: String,
    pub recipient: Option<String>,
    pub purpose: String,
    pub datasets: Vec<String>,
}

/// A transfer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    pub id: String,
    pub kind: TransferKind,
    pub subject: String,
    pub recipient: Option<String>,
    pub purpose: String,
    pub state: TransferState,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
    pub datasets: Vec<TransferDataset>,
}

/// One dataset of a transfer and where its fetch stands (see `fetches` for the status values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferDataset {
    pub dataset_id: String,
    pub status: String,
    pub updated_at: Timestamp,
    /// Calls made to the agency for it.
    pub attempts: u32,
    /// Stable code of the last problem (refusal, rejection, transient error), no personal data.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// SHA-256 of the agency-signed manifest, once the dataset was fetched and verified.
    pub digest: Option<String>,
    pub started_at: Option<Timestamp>,
    pub next_attempt_at: Option<Timestamp>,
    pub settled_at: Option<Timestamp>,
}

impl Transfer {
    /// This transfer after a compare-and-set from it moved it to `next` at `now`: its datasets are
    /// as read before (a state change does not touch them).
    pub(crate) fn changed_to(&self, next: TransferState, now: Timestamp) -> Transfer {
        Transfer {
            state: next,
            updated_at: now,
            version: self.version + 1,
            ..self.clone()
        }
    }
}

/// A `transfers` row as the database returns it, before its text columns are parsed.
#[derive(sqlx::FromRow)]
struct TransferRow {
    id: String,
    kind: String,
    subject: String,
    recipient: Option<String>,
    purpose: String,
    state: String,
    created_at: i64,
    expires_at: i64,
    updated_at: i64,
    version: i64,
}

crate::step::step_row!(TransferRow {
    id,
    kind,
    subject,
    recipient,
    purpose,
    state,
    created_at,
    expires_at,
    updated_at,
    version,
});
crate::step::step_row!(TransferWorkRow { d_agency_request_id, d_data_object, d_data_key, sealed } flatten { joined, p });
crate::step::step_row!(JoinedPackageRow {
    p_object_key,
    p_sealed_key,
    p_digest,
    p_size_bytes,
    p_datasets,
    p_created_at,
    p_expires_at,
    p_taken_at,
    p_deleted_at,
    p_body,
});
crate::step::step_row!(TransferWithDatasetRow {} flatten { t, d });
crate::step::step_row!(JoinedDatasetRow {
    d_dataset_id,
    d_status,
    d_updated_at,
    d_attempts,
    d_error_code,
    d_error_message,
    d_digest,
    d_started_at,
    d_next_attempt_at,
    d_settled_at,
});

impl TryFrom<TransferRow> for Transfer {
    type Error = StoreError;
    fn try_from(r: TransferRow) -> Result<Self> {
        Ok(Transfer {
            kind: parse_column(&r.kind)?,
            state: parse_column(&r.state)?,
            id: r.id,
            subject: r.subject,
            recipient: r.recipient,
            purpose: r.purpose,
            created_at: Timestamp::from_millis(r.created_at),
            expires_at: Timestamp::from_millis(r.expires_at),
            updated_at: Timestamp::from_millis(r.updated_at),
            version: r.version,
            datasets: Vec::new(),
        })
    }
}

/// The columns of a transfer joined with its dataset rows (`d_*`).
macro_rules! transfer_with_datasets_columns {
    () => {
        "t.id, t.kind, t.subject, t.recipient, t.purpose, t.state, t.created_at, t.expires_at, t.updated_at, t.version,
    d.dataset_id AS d_dataset_id, d.status AS d_status, d.updated_at AS d_updated_at, d.attempts AS d_attempts,
    d.error_code AS d_error_code, d.error_message AS d_error_message, d.digest AS d_digest,
    d.started_at AS d_started_at, d.next_attempt_at AS d_next_attempt_at, d.settled_at AS d_settled_at"
    };
}

const SELECT_TRANSFER_WITH_DATASETS: &str = concat!(
    "SELECT ",
    transfer_with_datasets_columns!(),
    " FROM transfers t LEFT JOIN transfer_datasets d ON d.transfer_id = t.id WHERE t.id = $1 ORDER BY d.position"
);

/// A person's newest transfers with their datasets: the transfers limited first, then joined.
const SELECT_TRANSFERS_OF_SUBJECT: &str = concat!(
    "SELECT ",
    transfer_with_datasets_columns!(),
    " FROM (SELECT * FROM transfers WHERE subject = $1 ORDER BY created_at DESC, id LIMIT $2) t
    LEFT JOIN transfer_datasets d ON d.transfer_id = t.id ORDER BY t.created_at DESC, t.id, d.position"
);

/// What the work on a transfer reads of it, in one statement: the transfer with its datasets, the
/// fetches' own columns on every row, the sealed identity and the package record (at most one).
const SELECT_TRANSFER_WORK: &str = concat!(
    "SELECT ",
    transfer_with_datasets_columns!(),
    ",
    d.agency_request_id AS d_agency_request_id, d.data_object AS d_data_object, d.data_key AS d_data_key,
    (SELECT sealed FROM transfer_secrets s WHERE s.transfer_id = t.id) AS sealed,
    p.object_key AS p_object_key, p.sealed_key AS p_sealed_key, p.digest AS p_digest, p.size_bytes AS p_size_bytes,
    p.datasets AS p_datasets, p.created_at AS p_created_at, p.expires_at AS p_expires_at, p.taken_at AS p_taken_at,
    p.deleted_at AS p_deleted_at, p.body AS p_body
    FROM transfers t LEFT JOIN transfer_datasets d ON d.transfer_id = t.id LEFT JOIN packages p ON p.transfer_id = t.id
    WHERE t.id = $1 ORDER BY d.position"
);

#[derive(sqlx::FromRow)]
struct TransferWorkRow {
    #[sqlx(flatten)]
    joined: TransferWithDatasetRow,
    d_agency_request_id: Option<String>,
    d_data_object: Option<String>,
    d_data_key: Option<String>,
    sealed: Option<String>,
    #[sqlx(flatten)]
    p: JoinedPackageRow,
}

/// A transfer's package columns (`p_*`; all `None` when it has none).
#[derive(sqlx::FromRow)]
struct JoinedPackageRow {
    p_object_key: Option<String>,
    p_sealed_key: Option<String>,
    p_digest: Option<String>,
    p_size_bytes: Option<i64>,
    p_datasets: Option<i64>,
    p_created_at: Option<i64>,
    p_expires_at: Option<i64>,
    p_taken_at: Option<i64>,
    p_deleted_at: Option<i64>,
    p_body: Option<Vec<u8>>,
}

impl JoinedPackageRow {
    fn into_package(self, transfer_id: &str) -> Option<crate::PackageRecord> {
        Some(crate::PackageRecord {
            transfer_id: transfer_id.to_owned(),
            object_key: self.p_object_key?,
            sealed_key: self.p_sealed_key,
            digest: self.p_digest?,
            size_bytes: u64::try_from(self.p_size_bytes?).unwrap_or(0),
            datasets: u32::try_from(self.p_datasets?).unwrap_or(0),
            created_at: Timestamp::from_millis(self.p_created_at?),
            expires_at: Timestamp::from_millis(self.p_expires_at?),
            taken_at: self.p_taken_at.map(Timestamp::from_millis),
            deleted_at: self.p_deleted_at.map(Timestamp::from_millis),
            body: self.p_body,
        })
    }
}

/// A transfer as the work on it needs it (see [`Store::transfer_work`]).
#[derive(Debug, Clone)]
pub struct TransferWork {
    pub transfer: Transfer,
    /// Every fetch's record, in the transfer's order.
    pub fetches: Vec<crate::FetchRecord>,
    /// The transfer's sealed identity, while it is held.
    pub sealed_subject: Option<String>,
    /// The transfer's package record (kept, as destroyed, once taken or expired).
    pub package: Option<crate::PackageRecord>,
}

impl TransferWork {
    /// The record of the fetch of `dataset_id`.
    pub fn fetch(&self, dataset_id: &str) -> Option<&crate::FetchRecord> {
        self.fetches.iter().find(|f| f.dataset_id == dataset_id)
    }
}

/// A transfer joined with one of its dataset rows (all `None` when it has no datasets).
#[derive(sqlx::FromRow)]
struct TransferWithDatasetRow {
    #[sqlx(flatten)]
    t: TransferRow,
    #[sqlx(flatten)]
    d: JoinedDatasetRow,
}

#[derive(sqlx::FromRow)]
struct JoinedDatasetRow {
    d_dataset_id: Option<String>,
    d_status: Option<String>,
    d_updated_at: Option<i64>,
    d_attempts: Option<i64>,
    d_error_code: Option<String>,
    d_error_message: Option<String>,
    d_digest: Option<String>,
    d_started_at: Option<i64>,
    d_next_attempt_at: Option<i64>,
    d_settled_at: Option<i64>,
}

impl JoinedDatasetRow {
    fn into_dataset(self) -> Option<TransferDataset> {
        Some(TransferDataset {
            dataset_id: self.d_dataset_id?,
            status: self.d_status?,
            updated_at: Timestamp::from_millis(self.d_updated_at?),
            attempts: u32::try_from(self.d_attempts?).unwrap_or(u32::MAX),
            error_code: self.d_error_code,
            error_message: self.d_error_message,
            digest: self.d_digest,
            started_at: self.d_started_at.map(Timestamp::from_millis),
            next_attempt_at: self.d_next_attempt_at.map(Timestamp::from_millis),
            settled_at: self.d_settled_at.map(Timestamp::from_millis),
        })
    }
}

/// A new transfer as one step (see `step`): the row, one pending row per dataset (`$9`, a JSON array
/// of dataset IDs, in order) and the `transfer.created` event.
const CREATE_SQLITE: &str = "BEGIN IMMEDIATE;
INSERT INTO transfers (id, kind, subject, recipient, purpose, state, created_at, expires_at, updated_at, version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, 0);
INSERT INTO transfer_datasets (transfer_id, dataset_id, position, status, updated_at)
    SELECT $1, value, key, 'pending', $7 FROM json_each($9) WHERE true;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) VALUES ($7, $10, $3, $1, $11, $12) RETURNING seq;
COMMIT";
const CREATE_POSTGRES: &str = "WITH t AS (INSERT INTO transfers (id, kind, subject, recipient, purpose, state, created_at, expires_at, updated_at, version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, 0) RETURNING id),
d AS (INSERT INTO transfer_datasets (transfer_id, dataset_id, position, status, updated_at)
    SELECT t.id, x.value, x.n - 1, 'pending', $7 FROM t, jsonb_array_elements_text($9::jsonb) WITH ORDINALITY AS x(value, n))
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $7, $10, $3, t.id, $11, $12 FROM t RETURNING seq";

/// A new transfer that starts fetching at once, as one step (see `step`): `CREATE_*` with the row
/// already `fetching` at version 1 (what creation and consent make of it), its two events
/// (`$10`–`$12`, `$13`/`$14`), the sealed secret `$15` and the fetch jobs `$16` (a JSON array;
/// one with a `lease_owner` goes in `running`, at its first attempt). An answered request
/// (`$17`, its event `$18`–`$22`) lives at least until `$23`, and keeps no sealed identity (see
/// `oauth::params_without_sealed_sqlite`).
const START_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
INSERT INTO transfers (id, kind, subject, recipient, purpose, state, created_at, expires_at, updated_at, version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, 1);
INSERT INTO transfer_datasets (transfer_id, dataset_id, position, status, updated_at)
    SELECT $1, value, key, 'pending', $7 FROM json_each($9) WHERE true;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) VALUES ($7, $10, $3, $1, $11, $12), ($7, $13, $3, $1, $11, $14);
INSERT INTO transfer_secrets (transfer_id, sealed, created_at) VALUES ($1, $15, $7);
",
    crate::fetches::insert_jobs_sqlite!("$16", "$7"),
    " WHERE true
    ON CONFLICT (dedup_key) DO NOTHING;
UPDATE oauth_requests SET status = 'consented', transfer_id = $1, updated_at = $7, expires_at = MAX(expires_at, $23),
    params = ",
    crate::oauth::params_without_sealed_sqlite!(),
    "
    WHERE id = $17 AND status = 'opened' AND expires_at > $7 RETURNING 1;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $18, $19, $20, $1, $21, $22 WHERE changes() = 1;
COMMIT"
);
const START_POSTGRES: &str = concat!(
    "WITH t AS (INSERT INTO transfers (id, kind, subject, recipient, purpose, state, created_at, expires_at, updated_at, version)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, 1) RETURNING id),
d AS (INSERT INTO transfer_datasets (transfer_id, dataset_id, position, status, updated_at)
    SELECT t.id, x.value, x.n - 1, 'pending', $7 FROM t, jsonb_array_elements_text($9::jsonb) WITH ORDINALITY AS x(value, n)),
s AS (INSERT INTO transfer_secrets (transfer_id, sealed, created_at) SELECT t.id, $15, $7 FROM t),
j AS (",
    crate::fetches::insert_jobs_postgres!("$7"),
    "
    FROM t, jsonb_array_elements($16::jsonb) AS x
    ON CONFLICT (dedup_key) DO NOTHING),
r AS (UPDATE oauth_requests SET status = 'consented', transfer_id = t.id, updated_at = $7,
        expires_at = GREATEST(oauth_requests.expires_at, $23::bigint), params = ",
    crate::oauth::params_without_sealed_postgres!(),
    " FROM t
    WHERE oauth_requests.id = $17::text AND oauth_requests.status = 'opened' AND oauth_requests.expires_at > $7
    RETURNING oauth_requests.id)
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail)
    SELECT $7, $10, $3, t.id, $11, $12 FROM t UNION ALL SELECT $7, $13, $3, t.id, $11, $14 FROM t
    UNION ALL SELECT $18::bigint, $19::text, $20::text, t.id, $21::text, $22::text FROM t, r
    RETURNING CASE WHEN kind = $19::text THEN 1::bigint ELSE 0::bigint END"
);

/// A state change of a transfer with its audit event, as one step (see `step`): the UPDATE is a
/// compare-and-set on `version`, and the event (at the change's time, `$2`) is inserted only when
/// it matched a row.
const APPLY_EVENT_SQLITE: &str = "BEGIN IMMEDIATE;
UPDATE transfers SET state = $1, updated_at = $2, version = version + 1 WHERE id = $3 AND version = $4;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $2, $5, $6, $3, $7, $8 WHERE changes() = 1 RETURNING seq;
COMMIT";
const APPLY_EVENT_POSTGRES: &str = "WITH u AS (UPDATE transfers SET state = $1, updated_at = $2, version = version + 1 WHERE id = $3 AND version = $4 RETURNING id)
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $2, $5, $6, u.id, $7, $8 FROM u RETURNING seq";

/// How a transfer's state change goes into the audit log, one format for every path that changes a
/// state: the new state, the event's kind (named for the new state) and its detail (the old state
/// and the event).
pub(crate) fn change_record(
    from: TransferState,
    event: TransferEvent,
) -> Result<(TransferState, String, serde_json::Value)> {
    let to = from.next(event)?;
    Ok((
        to,
        format!("transfer.{}", to.code()),
        serde_json::json!({ "from": from.code(), "event": event }),
    ))
}

/// The detail of a `transfer.created` event.
fn created_detail(t: &NewTransfer) -> serde_json::Value {
    serde_json::json!({ "datasets": t.datasets, "purpose": t.purpose, "kind": t.kind.code() })
}

/// A transfer as [`Store::create_transfer`] writes it: created at `now`, its datasets pending.
fn fresh_transfer(t: &NewTransfer, now: Timestamp) -> Transfer {
    let expires_at = now.plus(limits::PACKAGE_TTL);
    let state = TransferState::Created;
    Transfer {
        id: t.id.clone(),
        kind: t.kind,
        subject: t.subject.clone(),
        recipient: t.recipient.clone(),
        purpose: t.purpose.clone(),
        state,
        created_at: now,
        expires_at,
        updated_at: now,
        version: 0,
        datasets: t
            .datasets
            .iter()
            .map(|d| TransferDataset {
                dataset_id: d.clone(),
                status: "pending".into(),
                updated_at: now,
                attempts: 0,
                error_code: None,
                error_message: None,
                digest: None,
                started_at: None,
                next_attempt_at: None,
                settled_at: None,
            })
            .collect(),
    }
}

/// The online service's authorization request a consent answers (see [`Store::start_transfer`]),
/// with its event; the event's `transfer_id` is the new transfer's, whatever it says.
#[derive(Debug, Clone, Copy)]
pub struct RequestAnswer<'a> {
    pub request_id: &'a str,
    pub audit: &'a NewAuditEvent,
    /// The request lives at least until then (its last confirmation can wait for slow agencies);
    /// a later expiry it already has is kept.
    pub keep_until: Timestamp,
}

impl Store {
    /// Creates a transfer the person has consented to in the same breath: as
    /// [`Store::create_transfer`] followed by [`Store::begin_fetching_from`] (the same rows and
    /// events: `transfer.created`, then `transfer.fetching`), in one write step. With `answers`,
    /// the same step moves that request `opened → consented` with the transfer and its event;
    /// the flag says whether it moved (false without one, or when it was answered meanwhile, in
    /// which case the transfer is created all the same, for the caller to cancel). Jobs that
    /// `jobs` leases are stored running under that lease, for the caller to run at once.
    pub async fn start_transfer(
        &self,
        t: &NewTransfer,
        sealed_secret: &str,
        jobs: crate::StartJobs<'_>,
        answers: Option<&RequestAnswer<'_>>,
        actor: &str,
        now: Timestamp,
    ) -> Result<(Transfer, bool)> {
        let created = fresh_transfer(t, now);
        let (next, fetching_kind, mut fetching_detail) =
            change_record(created.state, TransferEvent::Consent)?;
        fetching_detail["jobs"] = jobs.jobs.len().into();
        let datasets = serde_json::Value::from(t.datasets.clone()).to_string();
        let rows: Vec<(i64,)> = write_step!(self, START_SQLITE, START_POSTGRES, |q| q
            .bind(&t.id)
            .bind(t.kind.code())
            .bind(&t.subject)
            .bind(&t.recipient)
            .bind(&t.purpose)
            .bind(next.code())
            .bind(now.millis())
            .bind(created.expires_at.millis())
            .bind(&datasets)
            .bind("transfer.created")
            .bind(actor)
            .bind(created_detail(t).to_string())
            .bind(fetching_kind)
            .bind(fetching_detail.to_string())
            .bind(sealed_secret)
            .bind(crate::fetches::leased_jobs_json(
                jobs.jobs,
                jobs.leased,
                jobs.to
            ))
            .bind(answers.map(|a| a.request_id))
            .bind(answers.map(|a| a.audit.at.millis()))
            .bind(answers.map(|a| a.audit.kind.as_str()))
            .bind(answers.and_then(|a| a.audit.subject.as_deref()))
            .bind(answers.map(|a| a.audit.actor.as_str()))
            .bind(answers.map(|a| a.audit.detail.to_string()))
            .bind(answers.map_or(0, |a| a.keep_until.millis())));
        Ok((created.changed_to(next, now), rows.iter().any(|r| r.0 == 1)))
    }

    /// Creates a transfer in state `created`, expiring [`limits::PACKAGE_TTL`] after `now`, with one
    /// pending row per dataset and a `transfer.created` audit event, all in one transaction.
    pub async fn create_transfer(
        &self,
        t: &NewTransfer,
        actor: &str,
        now: Timestamp,
    ) -> Result<Transfer> {
        let created = fresh_transfer(t, now);
        let event = NewAuditEvent {
            at: now,
            kind: "transfer.created".into(),
            subject: Some(t.subject.clone()),
            transfer_id: Some(t.id.clone()),
            actor: actor.to_owned(),
            detail: created_detail(t),
        };
        // One round trip (see `step`); the datasets travel as one JSON array parameter.
        let datasets = serde_json::Value::from(t.datasets.clone()).to_string();
        let _: Vec<(i64,)> = write_step!(self, CREATE_SQLITE, CREATE_POSTGRES, |q| q
            .bind(&t.id)
            .bind(t.kind.code())
            .bind(&t.subject)
            .bind(&t.recipient)
            .bind(&t.purpose)
            .bind(created.state.code())
            .bind(now.millis())
            .bind(created.expires_at.millis())
            .bind(&datasets)
            .bind(&event.kind)
            .bind(&event.actor)
            .bind(event.detail.to_string()));
        // Exactly what was written: reading it back would cost a statement on every transfer.
        Ok(created)
    }

    /// The transfer with its datasets, if it exists.
    pub async fn transfer(&self, id: &str) -> Result<Option<Transfer>> {
        // One statement for the transfer and its datasets: it is read on every page and job step.
        let rows: Vec<TransferWithDatasetRow> =
            crate::step::read_rows!(self, SELECT_TRANSFER_WITH_DATASETS, |q| q.bind(id));
        let mut rows = rows.into_iter();
        let Some(first) = rows.next() else {
            return Ok(None);
        };
        let mut datasets = Vec::new();
        let mut t = Transfer::try_from(first.t)?;
        for d in std::iter::once(first.d).chain(rows.map(|r| r.d)) {
            if let Some(d) = d.into_dataset() {
                datasets.push(d);
            }
        }
        t.datasets = datasets;
        Ok(Some(t))
    }

    /// The transfer `id` with its datasets, every fetch's record, the sealed identity and its
    /// package record, in one statement: the fetch and packaging jobs, the confirmation and the
    /// package retrieval each need several of them.
    pub async fn transfer_work(&self, id: &str) -> Result<Option<TransferWork>> {
        let rows: Vec<TransferWorkRow> =
            crate::step::read_rows!(self, SELECT_TRANSFER_WORK, |q| q.bind(id));
        let mut rows = rows.into_iter().peekable();
        let Some(first) = rows.peek() else {
            return Ok(None);
        };
        let sealed_subject = first.sealed.clone();
        let mut t: Option<Transfer> = None;
        let mut fetches = Vec::new();
        let mut package = None;
        for r in rows {
            if package.is_none() {
                package = r.p.into_package(id);
            }
            let transfer = match &mut t {
                Some(t) => t,
                None => t.insert(Transfer::try_from(r.joined.t)?),
            };
            let Some(d) = r.joined.d.into_dataset() else {
                continue;
            };
            fetches.push(crate::FetchRecord {
                transfer_id: transfer.id.clone(),
                dataset_id: d.dataset_id.clone(),
                status: d.status.clone(),
                attempts: d.attempts,
                agency_request_id: r.d_agency_request_id,
                started_at: d.started_at,
                data_object: r.d_data_object,
                data_key: r.d_data_key,
            });
            transfer.datasets.push(d);
        }
        Ok(t.map(|transfer| TransferWork {
            transfer,
            fetches,
            sealed_subject,
            package,
        }))
    }

    /// The person's newest `limit` transfers, newest first, each with its datasets (one statement).
    pub async fn transfers_for_subject(&self, subject: &str, limit: u32) -> Result<Vec<Transfer>> {
        let rows: Vec<TransferWithDatasetRow> =
            crate::step::read_rows!(self, SELECT_TRANSFERS_OF_SUBJECT, |q| q
                .bind(subject)
                .bind(i64::from(limit)));
        let mut out: Vec<Transfer> = Vec::new();
        for row in rows {
            // Rows come grouped by transfer (ordered by it), datasets in their order.
            if out.last().is_none_or(|t| t.id != row.t.id) {
                out.push(Transfer::try_from(row.t)?);
            }
            if let (Some(t), Some(d)) = (out.last_mut(), row.d.into_dataset()) {
                t.datasets.push(d);
            }
        }
        Ok(out)
    }

    /// IDs of transfers whose 8 hours have passed while they may still hold data.
    pub async fn transfers_past_expiry(&self, now: Timestamp, limit: u32) -> Result<Vec<String>> {
        let sql = "SELECT id FROM transfers WHERE state IN ('created', 'fetching', 'ready', 'delivered') AND expires_at <= $1
                   ORDER BY expires_at LIMIT $2";
        let ids: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(sql).bind(now.millis()).bind(i64::from(limit)).fetch_all(pool).await?);
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Applies `event` to the transfer: checks the state machine, changes the state only if nobody
    /// else changed it meanwhile, and appends the audit event, in one transaction. Returns the
    /// transfer as changed (its datasets as read before the change).
    pub async fn apply_transfer_event(
        &self,
        id: &str,
        event: TransferEvent,
        actor: &str,
        now: Timestamp,
    ) -> Result<Transfer> {
        let current = self
            .transfer(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "transfer",
                id: id.to_owned(),
            })?;
        self.apply_to(&current, event, actor, now).await
    }

    /// Like [`Store::apply_transfer_event`], starting from a transfer the caller read earlier (one
    /// read fewer when it is unchanged). If it changed since, it is read again and the event applied
    /// to what is found, exactly as [`Store::apply_transfer_event`] would.
    pub async fn apply_transfer_event_from(
        &self,
        read: &Transfer,
        event: TransferEvent,
        actor: &str,
        now: Timestamp,
    ) -> Result<Transfer> {
        // A stale read shows up as a lost compare-and-set, or as a transition its old state forbids.
        match self.apply_to(read, event, actor, now).await {
            Err(StoreError::Conflict(_) | StoreError::IllegalTransition(_)) => {
                self.apply_transfer_event(&read.id, event, actor, now).await
            }
            other => other,
        }
    }

    /// The compare-and-set of a state change from `current`.
    async fn apply_to(
        &self,
        current: &Transfer,
        event: TransferEvent,
        actor: &str,
        now: Timestamp,
    ) -> Result<Transfer> {
        let id = current.id.as_str();
        let (next, kind, detail) = change_record(current.state, event)?;
        let audit = NewAuditEvent {
            at: now,
            kind,
            subject: Some(current.subject.clone()),
            transfer_id: Some(id.to_owned()),
            actor: actor.to_owned(),
            detail,
        };
        // One round trip (see `step`): the compare-and-set on the version, and the audit event only
        // if it matched; the event's `seq` comes back when the change was made.
        let changed: Vec<(i64,)> =
            write_step!(self, APPLY_EVENT_SQLITE, APPLY_EVENT_POSTGRES, |q| q
                .bind(next.code())
                .bind(now.millis())
                .bind(id)
                .bind(current.version)
                .bind(&audit.kind)
                .bind(&audit.subject)
                .bind(&audit.actor)
                .bind(audit.detail.to_string()));
        let changed = !changed.is_empty();
        if !changed {
            return Err(StoreError::Conflict(id.to_owned()));
        }
        Ok(current.changed_to(next, now))
    }
}
