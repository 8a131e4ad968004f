//! HTTP export of transfer records for the parties' own two-year log duty: a service (OAuth client,
//! authenticated by its `private_key_jwt` client assertion) gets the transfers it received; an
//! agency (a JWT signed by its agency key, certificate chaining to the configured agency roots)
//! gets the fetches from it. One page per request (keyset cursor), a bounded time range, CSV or
//! JSON; rows carry transfer IDs and a per-party pseudonym, never personal data (see `records`).

use super::clip;
use crate::oauth::assertion;
use crate::oauth::{ErrorCode, OAuthError};
use crate::records::{self, ExportFormat, ExportParty};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::Timestamp;
use mydata_store::{NewAuditEvent, RecordCursor, RecordParty};
use std::collections::BTreeMap;

/// Path of the services' export, also accepted as the assertion's `aud`.
pub const SERVICE_PATH: &str = "/api/v1/records/service";
/// Path of the agencies' export, also accepted as the token's `aud`.
pub const AGENCY_PATH: &str = "/api/v1/records/agency";
/// Longest time range of one request: a year and a day (two requests cover the two-year duty).
pub const MAX_RANGE_MS: i64 = 366 * 86_400_000;
/// Most rows of one page (and the default).
pub const MAX_LIMIT: u32 = 1000;
/// Response header naming the cursor of the next page (absent on the last page).
pub const NEXT_CURSOR: &str = "mydata-next-cursor";
/// Clock skew tolerated on an agency token's `iat`/`nbf`.
const SKEW_SECS: i64 = 30;

type FormResult = crate::oauth::FormBody;

fn invalid(m: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRequest, m)
}

fn one<'a>(form: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// The query part of a request, checked before anything is read.
struct Query {
    from: Timestamp,
    to: Timestamp,
    format: ExportFormat,
    after: Option<RecordCursor>,
    limit: u32,
}

fn parse_time(
    form: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<Timestamp>, OAuthError> {
    use time::format_description::well_known::Rfc3339;
    let Some(raw) = one(form, name) else {
        return Ok(None);
    };
    let t = time::OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        invalid(format!(
            "{name} must be an RFC 3339 time such as 2026-11-01T00:00:00Z, got `{}`",
            clip(raw)
        ))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(|ms| Some(Timestamp::from_millis(ms)))
        .map_err(|_| invalid(format!("{name} is out of range")))
}

fn parse_query(
    form: &BTreeMap<String, String>,
    known: &[&str],
    now: Timestamp,
) -> Result<Query, OAuthError> {
    if let Some(k) = form.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(format!(
            "unknown parameter `{}` (this endpoint takes {})",
            clip(k),
            known.join(", ")
        )));
    }
    let from = parse_time(form, "from")?.ok_or_else(|| invalid("from is required"))?;
    let to = parse_time(form, "to")?.unwrap_or(now);
    if from >= to {
        return Err(invalid("the time range is empty: from must be before to"));
    }
    if to.millis().saturating_sub(from.millis()) > MAX_RANGE_MS {
        return Err(invalid(
            "the time range is longer than 366 days: ask for each year separately",
        ));
    }
    let format = match one(form, "format") {
        None | Some("json") => ExportFormat::Json,
        Some("csv") => ExportFormat::Csv,
        Some(other) => {
            return Err(invalid(format!(
                "format must be json or csv, got `{}`",
                clip(other)
            )));
        }
    };
    let limit = match one(form, "limit") {
        None => MAX_LIMIT,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| invalid(format!("limit must be from 1 to {MAX_LIMIT}")))?,
    };
    let after = one(form, "cursor").map(decode_cursor).transpose()?;
    Ok(Query {
        from,
        to,
        format,
        after,
        limit,
    })
}

fn encode_cursor(c: &RecordCursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default())
}

fn decode_cursor(raw: &str) -> Result<RecordCursor, OAuthError> {
    let bad = || invalid("cursor is not one this endpoint returned");
    if raw.len() > 512 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

const QUERY_PARAMS: [&str; 5] = ["from", "to", "format", "cursor", "limit"];

/// `POST /api/v1/records/service` (form): the transfers this service received.
pub async fn service(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: FormResult,
) -> Result<Response, OAuthError> {
    let form = crate::oauth::parameters(form)?;
    let iss = crate::oauth::issuer(&state, &headers);
    let (client, jti) = assertion::verify_client(
        &state,
        &iss,
        one(&form, "client_id"),
        one(&form, "client_assertion_type"),
        one(&form, "client_assertion"),
    )
    .await?;
    let mut known = vec!["client_id", "client_assertion_type", "client_assertion"];
    known.extend(QUERY_PARAMS);
    let q = parse_query(&form, &known, state.clock().now())?;
    // Spent only now: a request refused for its query leaves the assertion usable for the retry.
    assertion::spend(&state, &client.client_id, &jti).await?;
    let party = ExportParty::Service(client.client_id.clone());
    let query = RecordParty::Recipient(client.client_id.clone());
    answer(
        &state,
        &party,
        &query,
        q,
        format!("service:{}", client.client_id),
    )
    .await
}

/// `POST /api/v1/records/agency` (form, `agency_assertion` a JWT signed by the agency key): the
/// fetches from this agency.
pub async fn agency(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: FormResult,
) -> Result<Response, OAuthError> {
    let form = crate::oauth::parameters(form)?;
    let iss = crate::oauth::issuer(&state, &headers);
    let token = verify_agency(
        &state,
        &[iss.clone(), format!("{iss}{AGENCY_PATH}")],
        one(&form, "agency_assertion"),
    )
    .await?;
    let mut known = vec!["agency_assertion"];
    known.extend(QUERY_PARAMS);
    let q = parse_query(&form, &known, state.clock().now())?;
    let agency_id = token.agency_id.clone();
    let party = ExportParty::Agency(agency_id.clone());
    let query = records::records_query(state.catalog(), &party).map_err(|_| {
        OAuthError::new(
            ErrorCode::InvalidClient,
            "the agency is not in the catalogue",
        )
    })?;
    // Spent only now: a request refused for its query leaves the token usable for the retry.
    token.spend(&state).await?;
    answer(&state, &party, &query, q, format!("agency:{agency_id}")).await
}

fn bad_agency(m: &str) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClient, format!("agency_assertion: {m}"))
}

/// A verified agency token whose `jti` is not recorded yet.
struct AgencyToken {
    agency_id: String,
    jti: String,
    keep_until: Timestamp,
}

impl AgencyToken {
    /// Records the `jti`; a second use is refused as a replay.
    async fn spend(&self, state: &AppState) -> Result<(), OAuthError> {
        // Agencies share the replay table with services under their own prefix.
        let party = format!("agency:{}", self.agency_id);
        if state
            .store()
            .use_jti(&party, &self.jti, self.keep_until)
            .await?
        {
            Ok(())
        } else {
            Err(bad_agency("this jti was already used (replay)"))
        }
    }
}

/// Checks an agency token: signed by a key whose certificate chains to the agency roots, `iss` the
/// certificate's agency, `aud` this platform, short-lived, with a `jti` (used once: see
/// [`AgencyToken::spend`]).
async fn verify_agency(
    state: &AppState,
    audiences: &[String],
    token: Option<&str>,
) -> Result<AgencyToken, OAuthError> {
    let bad = bad_agency;
    let token = token.ok_or_else(|| bad("is missing"))?;
    let now = state.clock().now();
    let trust = state.data().trust.get(now).await.map_err(|e| {
        tracing::warn!(error = %e, "agency trust roots unavailable");
        OAuthError::new(
            ErrorCode::ServerError,
            "the agency trust roots are unavailable; try again later",
        )
    })?;
    let verified = mydata_package::verify_agency_token(token.as_bytes(), &trust, now)
        .map_err(|e| bad(&e.to_string()))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&verified.payload).map_err(|_| bad("claims are not JSON"))?;
    if claims["iss"].as_str() != Some(verified.agency_id.as_str()) {
        return Err(bad("iss must be the agency ID of its certificate"));
    }
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => audiences.contains(a),
        serde_json::Value::Array(list) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        return Err(bad(
            "aud must be the platform's issuer or this endpoint's URL",
        ));
    }
    let now_secs = now.millis() / 1000;
    let exp = claims["exp"]
        .as_i64()
        .ok_or_else(|| bad("exp is required"))?;
    let max = i64::try_from(state.settings().oauth.assertion_max_secs).unwrap_or(300);
    if exp <= now_secs {
        return Err(bad("expired"));
    }
    if exp > now_secs + max + SKEW_SECS {
        return Err(bad(&format!("lives longer than {max} seconds")));
    }
    if ["iat", "nbf"]
        .iter()
        .any(|c| claims[c].as_i64().is_some_and(|t| t > now_secs + SKEW_SECS))
    {
        return Err(bad("is not valid yet"));
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| bad("jti is required"))?;
    Ok(AgencyToken {
        jti: jti.to_owned(),
        keep_until: Timestamp::from_millis(exp.saturating_add(SKEW_SECS).saturating_mul(1000)),
        agency_id: verified.agency_id,
    })
}

async fn answer(
    state: &AppState,
    party: &ExportParty,
    query: &RecordParty,
    q: Query,
    actor: String,
) -> Result<Response, OAuthError> {
    let (rows, next) = records::export_page(
        state.store(),
        state.catalog(),
        party,
        query,
        q.from,
        q.to,
        q.after.as_ref(),
        q.limit,
    )
    .await
    .map_err(|e| match e {
        records::ExportError::EmptyRange => invalid(e.to_string()),
        // An outage answers 503 temporarily_unavailable with Retry-After, as the OAuth endpoints.
        records::ExportError::Store(e) => OAuthError::from(e),
        e => {
            tracing::error!(error = %e, "record export failed");
            OAuthError::new(
                ErrorCode::ServerError,
                "the platform could not read the records; try again",
            )
        }
    })?;
    let next = next.as_ref().map(encode_cursor);
    // The export itself is on the record: who asked for which range, how many rows left.
    state
        .store()
        .append_audit(&NewAuditEvent {
            at: state.clock().now(),
            kind: "records.exported".into(),
            subject: None,
            transfer_id: None,
            actor,
            detail: serde_json::json!({
                "from": q.from.millis(),
                "to": q.to.millis(),
                "rows": rows.len(),
                "format": if q.format == ExportFormat::Csv { "csv" } else { "json" },
            }),
        })
        .await?;
    let (kind, id) = match party {
        ExportParty::Agency(id) => ("agency", id),
        ExportParty::Service(id) => ("service", id),
    };
    let mut res = match q.format {
        ExportFormat::Json => {
            let body = serde_json::json!({
                kind: id,
                "from": records::rfc3339(q.from.millis()),
                "to": records::rfc3339(q.to.millis()),
                "records": rows,
                "next_cursor": next,
            });
            let mut res = body.to_string().into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let failed = |_| {
                OAuthError::new(
                    ErrorCode::ServerError,
                    "the platform could not write the records; try again",
                )
            };
            w.write_record(records::csv_header()).map_err(failed)?;
            for r in &rows {
                w.write_record(records::csv_cells(r)).map_err(failed)?;
            }
            let body = w.into_inner().map_err(|_| {
                OAuthError::new(
                    ErrorCode::ServerError,
                    "the platform could not write the records; try again",
                )
            })?;
            let mut res = body.into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            res
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        h.insert(NEXT_CURSOR, v);
    }
    Ok(res)
}
