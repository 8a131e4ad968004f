//! Online services: registered OAuth clients, pushed authorization requests and their progress,
//! single-use authorization codes, the client-assertion `jti` replay guard and access tokens.
//!
//! Codes and tokens are stored by SHA-256 only. Every single-use rule is one guarded statement, so
//! two racing requests (or two server processes) cannot both win.

use crate::audit::{NewAuditEvent, bind_audit};
use crate::step::write_step;
use crate::{Result, Store, StoreError, on_pool, on_read_pool};
use mydata_core::Timestamp;
use serde::{Deserialize, Serialize};

/// A registered service as stored (JSON arrays decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRow {
    pub client_id: String,
    pub name: String,
    /// The JWK set by value (JSON text), or None when `jwks_uri` is used.
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub terms: String,
    pub purpose: String,
    pub datasets: Vec<String>,
    pub legal_basis: Option<String>,
    pub environment: String,
    pub trusted_verifier: bool,
    /// RFC 9449 §5.2: token requests must carry a DPoP proof (tokens are always sender-bound).
    pub dpop_bound_access_tokens: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct ClientDbRow {
    client_id: String,
    name: String,
    jwks: Option<String>,
    jwks_uri: Option<String>,
    redirect_uris: String,
    terms: String,
    purpose: String,
    datasets: String,
    legal_basis: Option<String>,
    environment: String,
    trusted_verifier: i64,
    dpop_bound_access_tokens: i64,
    created_at: i64,
    updated_at: i64,
}

fn json_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored list: {e}")))
}

impl TryFrom<ClientDbRow> for ClientRow {
    type Error = StoreError;
    fn try_from(r: ClientDbRow) -> Result<Self> {
        Ok(ClientRow {
            redirect_uris: json_list(&r.redirect_uris)?,
            datasets: json_list(&r.datasets)?,
            client_id: r.client_id,
            name: r.name,
            jwks: r.jwks,
            jwks_uri: r.jwks_uri,
            terms: r.terms,
            purpose: r.purpose,
            legal_basis: r.legal_basis,
            environment: r.environment,
            trusted_verifier: r.trusted_verifier != 0,
            dpop_bound_access_tokens: r.dpop_bound_access_tokens != 0,
            created_at: Timestamp::from_millis(r.created_at),
            updated_at: Timestamp::from_millis(r.updated_at),
        })
    }
}

/// One authorization, from the pushed request to the code.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RequestRow {
    pub id: String,
    pub client_id: String,
    /// The validated request as JSON (the server owns its shape).
    pub params: String,
    pub status: String,
    pub session_hash: Option<String>,
    pub transfer_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub updated_at: i64,
}

/// An authorization code (by hash).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CodeRow {
    pub code_hash: String,
    pub request_id: String,
    pub client_id: String,
    pub transfer_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// A code with its request's parameters and its transfer's state and end (see
/// [`Store::code_grant`]); None for a request or transfer no longer stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeGrant {
    pub code: CodeRow,
    pub request_params: Option<String>,
    pub transfer: Option<(mydata_core::transfer::TransferState, Timestamp)>,
}

#[derive(sqlx::FromRow)]
struct CodeGrantRow {
    #[sqlx(flatten)]
    code: CodeRow,
    r_params: Option<String>,
    t_state: Option<String>,
    t_expires_at: Option<i64>,
}

crate::step::step_row!(CodeGrantRow { r_params, t_state, t_expires_at } flatten { code });
crate::step::step_row!(CodeRow {
    code_hash,
    request_id,
    client_id,
    transfer_id,
    redirect_uri,
    code_challenge,
    created_at,
    expires_at,
    used_at,
});
crate::step::step_row!(RequestRow {
    id,
    client_id,
    params,
    status,
    session_hash,
    transfer_id,
    created_at,
    expires_at,
    updated_at,
});
crate::step::step_row!(TokenRow {
    token_hash,
    client_id,
    transfer_id,
    code_hash,
    dpop_jkt,
    created_at,
    expires_at,
    revoked_at,
});

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeem {
    /// First use: the code is now spent.
    Fresh(CodeRow),
    /// Used before: every token issued for it has been revoked now (RFC 6749 §4.1.2).
    Reused,
    Unknown,
}

/// An access token (by hash).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenRow {
    pub token_hash: String,
    pub client_id: String,
    pub transfer_id: String,
    pub code_hash: String,
    pub dpop_jkt: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// A `jti` to record as used (client assertion or DPoP proof), kept until `keep_until`.
#[derive(Debug, Clone, Copy)]
pub struct Jti<'a> {
    pub client_id: &'a str,
    pub jti: &'a str,
    pub keep_until: Timestamp,
}

/// What storing a pushed request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Stored, its `jti`s recorded.
    Stored,
    /// The client assertion's `jti` was used before: nothing stored (the proof's `jti` is spent).
    AssertionReplay,
    /// The DPoP proof's `jti` was used before: nothing stored (the assertion's `jti` is spent).
    ProofReplay,
    /// The identity assertion's `jti` was used before: nothing stored (the others are spent).
    IdentityReplay,
}

/// What issuing a token at the token endpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issue {
    /// The code is spent, both `jti`s recorded and the token stored.
    Issued,
    /// The client assertion's `jti` was used before: nothing changed (but the proof's `jti`,
    /// spent either way).
    AssertionReplay,
    /// The DPoP proof's `jti` was used before: nothing changed but the assertion's `jti`.
    ProofReplay,
    /// The code was spent before: every token issued for it is revoked now (RFC 6749 §4.1.2).
    /// Both `jti`s are recorded.
    CodeReused,
    /// No such code. Both `jti`s are recorded.
    CodeUnknown,
}

/// Records a client assertion's `jti` (`$2`, kept until `$3`) and a DPoP proof's (`$4`/`$5`, NULL
/// for none) for client `$1`, each only if new, returning 0 and 2 for those recorded. SQLite: one
/// statement, after which `changes()` counts them; PostgreSQL: the CTE `j`.
macro_rules! insert_jtis_sqlite {
    () => {
        "INSERT INTO oauth_jtis (client_id, jti, expires_at)
    SELECT $1, $2, $3 UNION ALL SELECT $1, $4, $5 WHERE $4 IS NOT NULL
    ON CONFLICT (expires_at, client_id, jti) DO NOTHING RETURNING CASE WHEN jti = $2 THEN 0 ELSE 2 END;
"
    };
}
macro_rules! insert_jtis_postgres {
    () => {
        "WITH j AS (INSERT INTO oauth_jtis (client_id, jti, expires_at)
    SELECT $1::text, $2::text, $3::bigint UNION ALL SELECT $1::text, $4::text, $5::bigint WHERE $4::text IS NOT NULL
    ON CONFLICT (expires_at, client_id, jti) DO NOTHING RETURNING CASE WHEN jti = $2::text THEN 0 ELSE 2 END AS k),
"
    };
}

/// Binds `$1`–`$5` of the `insert_jtis_*` fragments.
macro_rules! bind_jtis {
    ($q:expr, $assertion:expr, $proof:expr) => {{
        let (assertion, proof): (Jti<'_>, Option<Jti<'_>>) = ($assertion, $proof);
        $q.bind(assertion.client_id)
            .bind(assertion.jti)
            .bind(assertion.keep_until.millis())
            .bind(proof.map(|p| p.jti))
            .bind(proof.map(|p| p.keep_until.millis()))
    }};
}

/// The token endpoint's writes as one step (see `step`): the assertion's `jti` (`$2`, `$3`) and the
/// proof's (`$4`, `$5`; NULL for none) for client `$1`, then, only if every one of them is new, the
/// code `$7` spent at `$6` and the token (`$8`–`$11`) stored. Returns 0 for the assertion's `jti`
/// recorded, 2 for the proof's, 1 for the token.
const ISSUE_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
",
    insert_jtis_sqlite!(),
    "UPDATE oauth_codes SET used_at = $6 WHERE code_hash = $7 AND used_at IS NULL AND changes() = 1 + ($4 IS NOT NULL);
INSERT INTO oauth_tokens (token_hash, client_id, transfer_id, code_hash, dpop_jkt, created_at, expires_at, revoked_at)
    SELECT $8, $1, $9, $7, $10, $6, $11, NULL WHERE changes() = 1 RETURNING 1;
COMMIT"
);
const ISSUE_POSTGRES: &str = concat!(
    insert_jtis_postgres!(),
    "c AS (UPDATE oauth_codes SET used_at = $6 WHERE code_hash = $7 AND used_at IS NULL
    AND (SELECT count(*) FROM j) = CASE WHEN $4::text IS NULL THEN 1 ELSE 2 END RETURNING code_hash),
t AS (INSERT INTO oauth_tokens (token_hash, client_id, transfer_id, code_hash, dpop_jkt, created_at, expires_at, revoked_at)
    SELECT $8, $1::text, $9, c.code_hash, $10, $6, $11, NULL FROM c RETURNING 1 AS k)
SELECT k::bigint FROM j UNION ALL SELECT k::bigint FROM t"
);

/// A pushed request stored with its client's `jti`s recorded, as one step (see `step`): the
/// assertion's and the proof's `jti` as in `ISSUE_*` (`$1`–`$5`) and an identity assertion's
/// (`$14`, `$15`; NULL for none), then the request (`$6`–`$13`) only if every one was new
/// (returning 0, 2 and 3 for the `jti`s recorded, 1 for the request).
const PUSH_SQLITE: &str = "BEGIN IMMEDIATE;
INSERT INTO oauth_jtis (client_id, jti, expires_at)
    SELECT $1, $2, $3 UNION ALL SELECT $1, $4, $5 WHERE $4 IS NOT NULL UNION ALL SELECT $1, $14, $15 WHERE $14 IS NOT NULL
    ON CONFLICT (expires_at, client_id, jti) DO NOTHING RETURNING CASE WHEN jti = $2 THEN 0 WHEN jti = $4 THEN 2 ELSE 3 END;
INSERT INTO oauth_requests (id, client_id, params, status, session_hash, transfer_id, created_at, expires_at, updated_at)
    SELECT $6, $1, $7, $8, $9, $10, $11, $12, $13 WHERE changes() = 1 + ($4 IS NOT NULL) + ($14 IS NOT NULL) RETURNING 1;
COMMIT";
const PUSH_POSTGRES: &str = "WITH j AS (INSERT INTO oauth_jtis (client_id, jti, expires_at)
    SELECT $1::text, $2::text, $3::bigint UNION ALL SELECT $1::text, $4::text, $5::bigint WHERE $4::text IS NOT NULL
    UNION ALL SELECT $1::text, $14::text, $15::bigint WHERE $14::text IS NOT NULL
    ON CONFLICT (expires_at, client_id, jti) DO NOTHING
    RETURNING CASE WHEN jti = $2::text THEN 0 WHEN jti = $4::text THEN 2 ELSE 3 END AS k),
r AS (INSERT INTO oauth_requests (id, client_id, params, status, session_hash, transfer_id, created_at, expires_at, updated_at)
    SELECT $6, $1::text, $7, $8, $9, $10, $11, $12, $13
    WHERE (SELECT count(*) FROM j) = 1 + CASE WHEN $4::text IS NULL THEN 0 ELSE 1 END + CASE WHEN $14::text IS NULL THEN 0 ELSE 1 END
    RETURNING 1 AS k)
SELECT k::bigint FROM j UNION ALL SELECT k::bigint FROM r";

const SELECT_CLIENT: &str = "SELECT client_id, name, jwks, jwks_uri, redirect_uris, terms, purpose, datasets, legal_basis, environment, trusted_verifier, dpop_bound_access_tokens, created_at, updated_at FROM oauth_clients";
const SELECT_REQUEST: &str = "SELECT id, client_id, params, status, session_hash, transfer_id, created_at, expires_at, updated_at FROM oauth_requests";

/// A request's `params` without the sealed ID number of a trusted verifier's assertion
/// (`asserted.subject_sealed`, see the server's `Pushed`): only the consent needs it (the transfer
/// then holds its own sealed secret for the fetches), so every write that moves a request past
/// `opened`, its consent included, drops it. The key is looked for first: a request without it is
/// left as it is (no JSON parsed and written back).
macro_rules! params_without_sealed_sqlite {
    () => {
        "CASE WHEN instr(params, '\"subject_sealed\"') > 0 THEN json_remove(params, '$.asserted.subject_sealed') ELSE params END"
    };
}
macro_rules! params_without_sealed_postgres {
    () => {
        "CASE WHEN strpos(oauth_requests.params, '\"subject_sealed\"') > 0
             THEN (oauth_requests.params::jsonb #- '{asserted,subject_sealed}')::text ELSE oauth_requests.params END"
    };
}
pub(crate) use {params_without_sealed_postgres, params_without_sealed_sqlite};

/// A request moved from `$2` to `$3` with its audit event (`$6`–`$11`, all NULL for none), as one
/// step (see `step`); returns the request's ID when it moved. Moved past `opened`, it keeps no
/// sealed identity (see [`params_without_sealed_sqlite`]).
const ADVANCE_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE oauth_requests SET status = $3, transfer_id = COALESCE($4, transfer_id), updated_at = $5,
    params = CASE WHEN $3 IN ('pushed', 'opened') THEN params ELSE ",
    params_without_sealed_sqlite!(),
    " END
    WHERE id = $1 AND status = $2 AND expires_at > $5 RETURNING id;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $6, $7, $8, $9, $10, $11 WHERE changes() = 1 AND $7 IS NOT NULL;
COMMIT"
);
const ADVANCE_POSTGRES: &str = concat!(
    "WITH u AS (UPDATE oauth_requests SET status = $3::text, transfer_id = COALESCE($4, transfer_id), updated_at = $5,
    params = CASE WHEN $3::text IN ('pushed', 'opened') THEN oauth_requests.params ELSE ",
    params_without_sealed_postgres!(),
    " END
    WHERE id = $1 AND status = $2 AND expires_at > $5 RETURNING id),
a AS (INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $6, $7, $8, $9, $10, $11 FROM u WHERE $7 IS NOT NULL)
SELECT id FROM u"
);

/// The second confirmation as one step (see `step`): the request `consented → confirmed` (keeping
/// no sealed identity), then its code and the audit event (`$10`–`$15`, its `seq` returned) only
/// if it moved.
const CONFIRM_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE;
UPDATE oauth_requests SET status = 'confirmed', updated_at = $9, params = ",
    params_without_sealed_sqlite!(),
    " WHERE id = $2 AND status = 'consented' AND expires_at > $9;
INSERT INTO oauth_codes (code_hash, request_id, client_id, transfer_id, redirect_uri, code_challenge, created_at, expires_at, used_at)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, NULL WHERE changes() = 1;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $10, $11, $12, $13, $14, $15 WHERE changes() = 1 RETURNING seq;
COMMIT"
);
const CONFIRM_POSTGRES: &str = concat!(
    "WITH u AS (UPDATE oauth_requests SET status = 'confirmed', updated_at = $9, params = ",
    params_without_sealed_postgres!(),
    "
    WHERE id = $2 AND status = 'consented' AND expires_at > $9 RETURNING id),
c AS (INSERT INTO oauth_codes (code_hash, request_id, client_id, transfer_id, redirect_uri, code_challenge, created_at, expires_at, used_at)
    SELECT $1, u.id, $3, $4, $5, $6, $7, $8, NULL FROM u)
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail) SELECT $10, $11, $12, $13, $14, $15 FROM u RETURNING seq"
);

/// The states of an online transfer that removing its service ends, in the order of the
/// `DELETE_CLIENT_*` steps' details (`$5`, `$6`, `$7`).
const ENDED_BY_REMOVAL: [mydata_core::transfer::TransferState; 3] = [
    mydata_core::transfer::TransferState::Created,
    mydata_core::transfer::TransferState::Fetching,
    mydata_core::transfer::TransferState::Ready,
];

/// Removing a registration (`$1`) as one step (see `step`): every online transfer to it still in
/// `created`, `fetching` or `ready` moves to `$8` at `$2` with its audit event (kind `$3`, actor
/// `$4`, detail `$5`/`$6`/`$7` by the state it left), then the registration goes (its requests and
/// codes with it). Rows: `(0, transfer)` per transfer ended, `(1, client)` if it existed.
const DELETE_CLIENT_SQLITE: &str = "BEGIN IMMEDIATE;
INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail)
    SELECT $2, $3, subject, id, $4, CASE state WHEN 'created' THEN $5 WHEN 'fetching' THEN $6 ELSE $7 END
    FROM transfers WHERE state IN ('created', 'fetching', 'ready') AND kind = 'online' AND recipient = $1
    ORDER BY created_at, id;
UPDATE transfers SET state = $8, updated_at = $2, version = version + 1
    WHERE state IN ('created', 'fetching', 'ready') AND kind = 'online' AND recipient = $1 RETURNING 0, id;
DELETE FROM oauth_clients WHERE client_id = $1 RETURNING 1, client_id;
COMMIT";
const DELETE_CLIENT_POSTGRES: &str = "WITH o AS (SELECT id, subject, state, created_at FROM transfers
        WHERE state IN ('created', 'fetching', 'ready') AND kind = 'online' AND recipient = $1::text FOR UPDATE),
u AS (UPDATE transfers t SET state = $8::text, updated_at = $2::bigint, version = t.version + 1 FROM o
        WHERE t.id = o.id AND t.state = o.state RETURNING t.id, o.subject, o.state, o.created_at),
a AS (INSERT INTO audit_events (at, kind, subject, transfer_id, actor, detail)
    SELECT $2::bigint, $3::text, u.subject, u.id, $4::text,
           CASE u.state WHEN 'created' THEN $5::text WHEN 'fetching' THEN $6::text ELSE $7::text END
    FROM u ORDER BY u.created_at, u.id),
d AS (DELETE FROM oauth_clients WHERE client_id = $1::text RETURNING client_id)
SELECT 0::bigint, id FROM u UNION ALL SELECT 1::bigint, client_id FROM d";

/// What removing a registration did (see [`Store::delete_client`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRemoval {
    /// The registration existed (and is gone now).
    pub existed: bool,
    /// The transfers to the service that were ended, by ID.
    pub ended: Vec<String>,
}

impl Store {
    /// Registers a service or replaces its registration (keeping its creation time).
    pub async fn put_client(&self, c: &ClientRow) -> Result<()> {
        let uris = serde_json::to_string(&c.redirect_uris).unwrap_or_else(|_| "[]".into());
        let datasets = serde_json::to_string(&c.datasets).unwrap_or_else(|_| "[]".into());
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO oauth_clients (client_id, name, jwks, jwks_uri, redirect_uris, terms, purpose, datasets, legal_basis, environment, trusted_verifier, dpop_bound_access_tokens, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, jwks = excluded.jwks, jwks_uri = excluded.jwks_uri,
               redirect_uris = excluded.redirect_uris, terms = excluded.terms, purpose = excluded.purpose, datasets = excluded.datasets,
               legal_basis = excluded.legal_basis, environment = excluded.environment, trusted_verifier = excluded.trusted_verifier,
               dpop_bound_access_tokens = excluded.dpop_bound_access_tokens, updated_at = excluded.updated_at",
        )
        .bind(&c.client_id)
        .bind(&c.name)
        .bind(&c.jwks)
        .bind(&c.jwks_uri)
        .bind(&uris)
        .bind(&c.terms)
        .bind(&c.purpose)
        .bind(&datasets)
        .bind(&c.legal_basis)
        .bind(&c.environment)
        .bind(i64::from(c.trusted_verifier))
        .bind(i64::from(c.dpop_bound_access_tokens))
        .bind(c.created_at.millis())
        .bind(c.updated_at.millis())
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRow>> {
        let sql = format!("{SELECT_CLIENT} WHERE client_id = $1");
        let row: Option<ClientDbRow> = on_read_pool!(self, pool => sqlx::query_as(&sql).bind(client_id).fetch_optional(pool).await?);
        row.map(ClientRow::try_from).transpose()
    }

    pub async fn clients(&self) -> Result<Vec<ClientRow>> {
        let sql = format!("{SELECT_CLIENT} ORDER BY client_id");
        let rows: Vec<ClientDbRow> =
            on_read_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        rows.into_iter().map(ClientRow::try_from).collect()
    }

    /// Removes a registration and its open authorizations, and ends every online transfer to the
    /// service that has not been released yet (`created`, `fetching`, `ready`: its package could
    /// never be delivered) with the `Cancel` event and its audit event (actor `actor`), all in one
    /// transaction. What the ended transfers hold is then destroyed as for any ended transfer (the
    /// expiry sweep's purge); their fetches find them closed and call no agency.
    pub async fn delete_client(
        &self,
        client_id: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<ClientRemoval> {
        use mydata_core::transfer::TransferEvent;
        // The same event from each state: one new state and kind, one detail per state left.
        let mut details = Vec::with_capacity(ENDED_BY_REMOVAL.len());
        for from in ENDED_BY_REMOVAL {
            let (_, _, mut detail) = crate::transfers::change_record(from, TransferEvent::Cancel)?;
            detail["reason"] = "service_removed".into();
            details.push(detail.to_string());
        }
        let (to, kind, _) =
            crate::transfers::change_record(ENDED_BY_REMOVAL[0], TransferEvent::Cancel)?;
        let rows: Vec<(i64, String)> =
            write_step!(self, DELETE_CLIENT_SQLITE, DELETE_CLIENT_POSTGRES, |q| q
                .bind(client_id)
                .bind(now.millis())
                .bind(kind.as_str())
                .bind(actor)
                .bind(details[0].as_str())
                .bind(details[1].as_str())
                .bind(details[2].as_str())
                .bind(to.code()));
        let mut removal = ClientRemoval::default();
        for (what, id) in rows {
            match what {
                0 => removal.ended.push(id),
                _ => removal.existed = true,
            }
        }
        removal.ended.sort();
        Ok(removal)
    }

    /// Stores a pushed authorization request.
    pub async fn put_request(&self, r: &RequestRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO oauth_requests (id, client_id, params, status, session_hash, transfer_id, created_at, expires_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&r.id)
        .bind(&r.client_id)
        .bind(&r.params)
        .bind(&r.status)
        .bind(&r.session_hash)
        .bind(&r.transfer_id)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.updated_at)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn request(&self, id: &str) -> Result<Option<RequestRow>> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| format!("{SELECT_REQUEST} WHERE id = $1"));
        let rows: Vec<RequestRow> = crate::step::read_rows!(self, SQL.as_str(), |q| q.bind(id));
        Ok(rows.into_iter().next())
    }

    /// Replaces the unspent code of request `request_id` by `code_hash` (a repeated "send": the
    /// browser showed the second answer, so the first code never reached the service). False if
    /// the request has no unspent code.
    pub async fn reissue_code(
        &self,
        request_id: &str,
        code_hash: &str,
        created_at: i64,
        expires_at: i64,
    ) -> Result<bool> {
        const REISSUE: &str =
            "UPDATE oauth_codes SET code_hash = $2, created_at = $3, expires_at = $4
             WHERE request_id = $1 AND used_at IS NULL RETURNING request_id";
        let rows: Vec<(String,)> = write_step!(self, REISSUE, REISSUE, |q| q
            .bind(request_id)
            .bind(code_hash)
            .bind(created_at)
            .bind(expires_at));
        Ok(rows.len() == 1)
    }

    /// Moves an opened or consented request from session `from` to session `to` (the same person
    /// signed in again after the first session ended). False if it is not held by `from`.
    pub async fn rebind_request(
        &self,
        id: &str,
        from: &str,
        to: &str,
        now: Timestamp,
    ) -> Result<bool> {
        const REBIND: &str = "UPDATE oauth_requests SET session_hash = $3, updated_at = $4
             WHERE id = $1 AND session_hash = $2 AND status IN ('opened', 'consented') AND expires_at > $4
             RETURNING id";
        let rows: Vec<(String,)> = write_step!(self, REBIND, REBIND, |q| q
            .bind(id)
            .bind(from)
            .bind(to)
            .bind(now.millis()));
        Ok(rows.len() == 1)
    }

    /// Lets go of a request session `session_hash` opened but has not answered (the person signed
    /// out: it was not them): pushed again, for the next sign-in to open. False if not held so.
    pub async fn release_request(
        &self,
        id: &str,
        session_hash: &str,
        now: Timestamp,
    ) -> Result<bool> {
        const RELEASE: &str = "UPDATE oauth_requests SET status = 'pushed', session_hash = NULL, updated_at = $3
             WHERE id = $1 AND session_hash = $2 AND status = 'opened' AND expires_at > $3 RETURNING id";
        let rows: Vec<(String,)> = write_step!(self, RELEASE, RELEASE, |q| q
            .bind(id)
            .bind(session_hash)
            .bind(now.millis()));
        Ok(rows.len() == 1)
    }

    /// Keeps a pushed request, not yet opened, until `until` while the person signs in (a first
    /// sign-in with contact registration outlasts the request_uri's few minutes). False if it was
    /// not pushed, has expired, or lives that long already.
    pub async fn hold_request(&self, id: &str, until: Timestamp, now: Timestamp) -> Result<bool> {
        const HOLD: &str = "UPDATE oauth_requests SET expires_at = $2, updated_at = $3
             WHERE id = $1 AND status = 'pushed' AND expires_at > $3 AND expires_at < $2 RETURNING id";
        let rows: Vec<(String,)> = write_step!(self, HOLD, HOLD, |q| q
            .bind(id)
            .bind(until.millis())
            .bind(now.millis()));
        Ok(rows.len() == 1)
    }

    /// Binds a pushed request to the browser session that opened it (first use of the
    /// request_uri), extending its life to `until`. False if it is expired, already opened by
    /// another session, or past the `pushed`/`opened` steps.
    pub async fn open_request(
        &self,
        id: &str,
        session_hash: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        // One statement, the same on both backends; a step so that SQLite runs it in this thread.
        const OPEN: &str = "UPDATE oauth_requests SET session_hash = $2, status = 'opened', updated_at = $4,
               expires_at = CASE WHEN status = 'pushed' THEN $3 ELSE expires_at END
             WHERE id = $1 AND expires_at > $4 AND (status = 'pushed' OR (status = 'opened' AND session_hash = $2))
             RETURNING id";
        let rows: Vec<(String,)> = write_step!(self, OPEN, OPEN, |q| q
            .bind(id)
            .bind(session_hash)
            .bind(until.millis())
            .bind(now.millis()));
        Ok(rows.len() == 1)
    }

    /// Moves a request from `from` to `to` (recording its transfer when given) with an audit
    /// event, in one transaction. False, and nothing written, if it was not in `from` or is expired.
    pub async fn advance_request(
        &self,
        id: &str,
        from: &str,
        to: &str,
        transfer_id: Option<&str>,
        audit: Option<&NewAuditEvent>,
        now: Timestamp,
    ) -> Result<bool> {
        // One round trip (see `step`); without an event the audit insert writes nothing.
        let rows: Vec<(String,)> = write_step!(self, ADVANCE_SQLITE, ADVANCE_POSTGRES, |q| q
            .bind(id)
            .bind(from)
            .bind(to)
            .bind(transfer_id)
            .bind(now.millis())
            .bind(audit.map(|e| e.at.millis()))
            .bind(audit.map(|e| e.kind.as_str()))
            .bind(audit.and_then(|e| e.subject.as_deref()))
            .bind(audit.and_then(|e| e.transfer_id.as_deref()))
            .bind(audit.map(|e| e.actor.as_str()))
            .bind(audit.map(|e| e.detail.to_string())));
        Ok(!rows.is_empty())
    }

    /// The person's second confirmation: the request moves `consented → confirmed` and its code is
    /// stored, with the audit event, in one transaction. False if the request was not waiting.
    pub async fn confirm_request(
        &self,
        code: &CodeRow,
        audit: &NewAuditEvent,
        now: Timestamp,
    ) -> Result<bool> {
        // One round trip (see `step`): the code and the event only if the request was waiting.
        let rows: Vec<(i64,)> =
            write_step!(self, CONFIRM_SQLITE, CONFIRM_POSTGRES, |q| bind_audit!(
                q.bind(&code.code_hash)
                    .bind(&code.request_id)
                    .bind(&code.client_id)
                    .bind(&code.transfer_id)
                    .bind(&code.redirect_uri)
                    .bind(&code.code_challenge)
                    .bind(code.created_at)
                    .bind(code.expires_at)
                    .bind(now.millis()),
                audit
            ));
        Ok(!rows.is_empty())
    }

    /// A code as stored (spent or not), to check it before spending it, with what the token
    /// endpoint answers from: its request's parameters and its transfer's state and end, all in
    /// one read.
    pub async fn code_grant(&self, code_hash: &str) -> Result<Option<CodeGrant>> {
        let rows: Vec<CodeGrantRow> = crate::step::read_rows!(self, "SELECT c.code_hash, c.request_id, c.client_id, c.transfer_id, c.redirect_uri, c.code_challenge, c.created_at,
                    c.expires_at, c.used_at, r.params AS r_params, t.state AS t_state, t.expires_at AS t_expires_at
             FROM oauth_codes c LEFT JOIN oauth_requests r ON r.id = c.request_id LEFT JOIN transfers t ON t.id = c.transfer_id
             WHERE c.code_hash = $1", |q| q.bind(code_hash));
        let row = rows.into_iter().next();
        let Some(r) = row else {
            return Ok(None);
        };
        let transfer = match (r.t_state, r.t_expires_at) {
            (Some(state), Some(end)) => {
                Some((crate::parse_column(&state)?, Timestamp::from_millis(end)))
            }
            _ => None,
        };
        Ok(Some(CodeGrant {
            code: r.code,
            request_params: r.r_params,
            transfer,
        }))
    }

    /// Spends a code. A second use revokes the tokens issued for it.
    pub async fn redeem_code(&self, code_hash: &str, now: Timestamp) -> Result<Redeem> {
        let won: Option<CodeRow> = on_pool!(self, pool => sqlx::query_as(
            "UPDATE oauth_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL
             RETURNING code_hash, request_id, client_id, transfer_id, redirect_uri, code_challenge, created_at, expires_at, used_at",
        )
        .bind(code_hash)
        .bind(now.millis())
        .fetch_optional(pool)
        .await?);
        match won {
            Some(c) => Ok(Redeem::Fresh(c)),
            None if self.revoke_reused(code_hash, now).await? => Ok(Redeem::Reused),
            None => Ok(Redeem::Unknown),
        }
    }

    /// A code that could not be spent: if it exists it was spent before, and every token issued
    /// for it is revoked now. A code swept with its request (hours after its own expiry) is known
    /// by the tokens it issued, which outlive it until the transfer ends. False if neither is left.
    async fn revoke_reused(&self, code_hash: &str, now: Timestamp) -> Result<bool> {
        let exists = on_pool!(self, pool => sqlx::query(
            "SELECT 1 FROM oauth_codes WHERE code_hash = $1
             UNION ALL SELECT 1 FROM oauth_tokens WHERE code_hash = $1 LIMIT 1",
        )
        .bind(code_hash)
        .fetch_optional(pool)
        .await?
        .is_some());
        if !exists {
            return Ok(false);
        }
        on_pool!(self, pool => sqlx::query("UPDATE oauth_tokens SET revoked_at = $2 WHERE code_hash = $1 AND revoked_at IS NULL")
            .bind(code_hash).bind(now.millis()).execute(pool).await.map(|_| ()))?;
        Ok(true)
    }

    /// Stores a pushed request with its client assertion's `jti`, its DPoP proof's and its
    /// identity assertion's recorded, in one step; nothing is stored if any was used before.
    pub async fn push_request(
        &self,
        r: &RequestRow,
        assertion: Jti<'_>,
        proof: Option<Jti<'_>>,
        identity: Option<Jti<'_>>,
    ) -> Result<Push> {
        let rows: Vec<(i64,)> = write_step!(self, PUSH_SQLITE, PUSH_POSTGRES, |q| bind_jtis!(
            q, assertion, proof
        )
        .bind(&r.id)
        .bind(&r.params)
        .bind(&r.status)
        .bind(&r.session_hash)
        .bind(&r.transfer_id)
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.updated_at)
        .bind(identity.map(|i| i.jti))
        .bind(identity.map(|i| i.keep_until.millis())));
        let has = |k: i64| rows.iter().any(|r| r.0 == k);
        Ok(if !has(0) {
            Push::AssertionReplay
        } else if proof.is_some() && !has(2) {
            Push::ProofReplay
        } else if identity.is_some() && !has(3) {
            Push::IdentityReplay
        } else {
            Push::Stored
        })
    }

    /// The token endpoint's writes in one step: records the client assertion's `jti` and the DPoP
    /// proof's, then spends the code and stores `token` (whose `code_hash` names the code) only if
    /// neither `jti` was used before (the token's `created_at` is `now`). A code already spent
    /// revokes its tokens, as [`Store::redeem_code`] does.
    pub async fn issue_token(
        &self,
        assertion: Jti<'_>,
        proof: Option<Jti<'_>>,
        token: &TokenRow,
        now: Timestamp,
    ) -> Result<Issue> {
        let rows: Vec<(i64,)> = write_step!(self, ISSUE_SQLITE, ISSUE_POSTGRES, |q| bind_jtis!(
            q, assertion, proof
        )
        .bind(now.millis())
        .bind(&token.code_hash)
        .bind(&token.token_hash)
        .bind(&token.transfer_id)
        .bind(&token.dpop_jkt)
        .bind(token.expires_at));
        let has = |k: i64| rows.iter().any(|r| r.0 == k);
        if !has(0) {
            return Ok(Issue::AssertionReplay);
        }
        if proof.is_some() && !has(2) {
            return Ok(Issue::ProofReplay);
        }
        if has(1) {
            return Ok(Issue::Issued);
        }
        Ok(if self.revoke_reused(&token.code_hash, now).await? {
            Issue::CodeReused
        } else {
            Issue::CodeUnknown
        })
    }

    /// Records a client assertion's `jti`; false if this client used it before (a replay).
    pub async fn use_jti(&self, client_id: &str, jti: &str, keep_until: Timestamp) -> Result<bool> {
        let n = on_pool!(self, pool => sqlx::query(
            "INSERT INTO oauth_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT (expires_at, client_id, jti) DO NOTHING",
        )
        .bind(client_id)
        .bind(jti)
        .bind(keep_until.millis())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    pub async fn put_token(&self, t: &TokenRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO oauth_tokens (token_hash, client_id, transfer_id, code_hash, dpop_jkt, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.token_hash)
        .bind(&t.client_id)
        .bind(&t.transfer_id)
        .bind(&t.code_hash)
        .bind(&t.dpop_jkt)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn token(&self, token_hash: &str) -> Result<Option<TokenRow>> {
        let rows: Vec<TokenRow> = crate::step::read_rows!(
            self,
            "SELECT token_hash, client_id, transfer_id, code_hash, dpop_jkt, created_at, expires_at, revoked_at FROM oauth_tokens WHERE token_hash = $1",
            |q| q.bind(token_hash)
        );
        Ok(rows.into_iter().next())
    }

    /// Forgets expired jtis, codes, tokens and authorizations. Returns rows removed.
    /// Transfers still live although the person refused their request ("do not send"): the
    /// refusal's own cancel was lost (a crash between its two writes). At most `limit`.
    pub async fn refused_but_live(&self, limit: u32) -> Result<Vec<String>> {
        let sql = "SELECT t.id FROM oauth_requests r JOIN transfers t ON t.id = r.transfer_id
            WHERE r.status = 'refused' AND t.state IN ('created', 'fetching', 'ready') LIMIT $1";
        let ids: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(sql).bind(i64::from(limit)).fetch_all(pool).await?);
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    pub async fn sweep_oauth(&self, now: Timestamp) -> Result<u64> {
        let mut n = 0;
        for sql in [
            "DELETE FROM oauth_jtis WHERE expires_at <= $1",
            "DELETE FROM oauth_tokens WHERE expires_at <= $1",
            // Spent codes stay up to 8 hours (their request's deletion takes them sooner); a late
            // replay is known by the tokens it issued all the same (`revoke_reused`).
            "DELETE FROM oauth_codes WHERE expires_at <= $1 - 28800000",
            "DELETE FROM oauth_requests WHERE expires_at <= $1",
        ] {
            n += on_pool!(self, pool => sqlx::query(sql).bind(now.millis()).execute(pool).await?.rows_affected());
        }
        Ok(n)
    }
}
