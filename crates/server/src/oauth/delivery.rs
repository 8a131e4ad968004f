//! Delivery to online services: the package is sealed end to end to the service's X25519 key the
//! moment it is assembled (the platform keeps only the envelope), and handed out once at
//! `GET /api/v1/transfers/{id}/package` to the access token issued for that transfer (with a DPoP
//! proof by its key when the token is DPoP-bound, RFC 9449 §7): 202 with
//! `Retry-After` while agencies are still answering, 200 with the envelope once, 410 afterwards or
//! after the transfer's 8 hours.

use super::{ErrorCode, OAuthError, dpop, hash_secret, issuer, service_event};
use crate::error::AppError;
use crate::routes::path::Path;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mydata_core::transfer::{TransferEvent, TransferKind, TransferState};
use mydata_store::{Retrieval, Transfer};
use std::sync::Arc;

/// What `packages.sealed_key` holds for an end-to-end sealed package: there is no platform key;
/// the marker only keeps the single-use and purge rules (which act on that column) the same.
pub const E2E_MARKER: &str = "e2e:hpke";
/// Media type of the envelope.
pub const ENVELOPE_TYPE: &str = "application/vnd.mydata.package+hpke+json";

/// Why a package could not be sealed to its service.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The transfer has no service, or its service is no longer registered: no package can ever
    /// reach it (final).
    #[error("{0}")]
    NoRecipient(&'static str),
    /// Anything else (reading the registration or its keys, sealing): may pass on a retry.
    #[error("{0}")]
    Failed(String),
}

/// For an online transfer, seals the assembled zip to its service: the envelope bytes to store
/// and the marker for `sealed_key`. `None` for other kinds (they keep the at-rest seal).
pub async fn seal_for_recipient(
    state: &AppState,
    t: &Transfer,
    zip: &[u8],
) -> Result<Option<(Vec<u8>, String)>, SealError> {
    if t.kind != TransferKind::Online {
        return Ok(None);
    }
    let client_id = t.recipient.as_deref().ok_or(SealError::NoRecipient(
        "an online transfer without a service",
    ))?;
    let client = super::clients::registered(state, client_id)
        .await
        .map_err(|e| SealError::Failed(e.to_string()))?
        .ok_or(SealError::NoRecipient(
            "the transfer's service is no longer registered",
        ))?;
    let failed = |e: String| SealError::Failed(e);
    let jwks = super::assertion::client_jwks(state, &client)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let key = super::assertion::encryption_key(&jwks)
        .ok_or_else(|| failed("the service has no X25519 encryption key".into()))?;
    let env = mydata_package::e2e::seal_package(
        state.data().vault.platform_kem(),
        &key,
        &t.id,
        client_id,
        zip,
    )
    .map_err(|e| failed(e.to_string()))?;
    let bytes = serde_json::to_vec(&env).map_err(|e| failed(e.to_string()))?;
    Ok(Some((bytes, E2E_MARKER.to_owned())))
}

/// How the access token was presented (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    DPoP,
}

fn credentials(headers: &HeaderMap) -> Option<(Scheme, &str)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    // Auth schemes are case-insensitive (RFC 9110 §11.1).
    if scheme.eq_ignore_ascii_case("Bearer") {
        Some((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("DPoP") {
        Some((Scheme::DPoP, token))
    } else {
        None
    }
}

/// `GET /api/v1/transfers/{id}/package`
pub async fn package(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let token_err = |m: &str| OAuthError::new(ErrorCode::InvalidToken, m.to_owned()).at_resource();
    let (scheme, token) = credentials(&headers).ok_or_else(|| {
        OAuthError::credentials_missing(
            "an access token is required (Authorization: DPoP, or Bearer for an unbound token)",
        )
    })?;
    let now = state.clock().now();
    let row = state
        .store()
        .token(&hash_secret(token))
        .await
        .map_err(|e| AppError::from(e).into_response())?
        .ok_or_else(|| token_err("the access token is unknown"))?;
    if row.revoked_at.is_some() {
        return Err(token_err("the access token was revoked"));
    }
    // An expired token is answered once the transfer is read: 410 if the transfer's 8 hours are
    // over (the token ends with them), 401 if only the token's own hour is.
    let expired = row.expires_at <= now.millis();
    if row.transfer_id != id {
        return Err(token_err("the access token is for another transfer"));
    }
    // A service removed since (say, its keys were compromised) retrieves nothing more.
    let Some(client) = super::clients::registered(&state, &row.client_id)
        .await
        .map_err(|e| AppError::from(e).into_response())?
    else {
        return Err(token_err(
            "the service this access token was issued to is no longer registered",
        ));
    };
    // A DPoP-bound token only with a fresh proof by its key (each poll its own); an unbound one
    // only as Bearer. The proof's jti is spent last, once the request is otherwise acceptable:
    // with the package taken when it is ready (one write), on its own otherwise.
    let proof = match (row.dpop_jkt.as_deref(), scheme) {
        (Some(jkt), Scheme::DPoP) => {
            let htu = format!("{}/api/v1/transfers/{id}/package", issuer(&state, &headers));
            let expected = dpop::Expected {
                htm: "GET",
                htu: &htu,
                access_token: Some(token),
                jkt: Some(jkt),
            };
            let proof = dpop::from_request(&state, &headers, &expected)
                .map_err(|e| OAuthError::from(e).at_resource())?
                .ok_or_else(|| {
                    OAuthError::new(
                        ErrorCode::InvalidDpopProof,
                        "a DPoP proof (DPoP header) is required with a DPoP-bound access token",
                    )
                    .at_resource()
                })?;
            Some(proof)
        }
        (Some(_), Scheme::Bearer) => {
            return Err(token_err(
                "this access token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof",
            ));
        }
        (None, Scheme::DPoP) => {
            return Err(token_err(
                "this access token is not DPoP-bound: send it as Authorization: Bearer",
            ));
        }
        (None, Scheme::Bearer) => None,
    };
    // One read: the transfer with its package record.
    let work = state
        .store()
        .transfer_work(&id)
        .await
        .map_err(|e| AppError::from(e).into_response())?;
    let (t, package) = match work {
        Some(w) => (Some(w.transfer), w.package),
        None => (None, None),
    };
    if expired {
        let live = t
            .as_ref()
            .is_some_and(|t| !t.state.is_terminal() && t.expires_at > now);
        return Err(if live {
            token_err("the access token has expired")
        } else {
            AppError::PackageGone(id).into_response()
        });
    }
    if let Some(p) = &proof
        && t.as_ref().map(|t| t.state) != Some(TransferState::Ready)
    {
        dpop::spend(&state, &row.client_id, p)
            .await
            .map_err(refused_proof)?;
    }
    let t = t.ok_or_else(|| AppError::PackageGone(id.clone()).into_response())?;
    match t.state {
        TransferState::Created | TransferState::Fetching => {
            let wait = t
                .datasets
                .iter()
                .filter_map(|d| d.next_attempt_at)
                .max()
                .map(|at| now.until(at).as_secs())
                .unwrap_or(1)
                .clamp(1, 300);
            let body = serde_json::json!({ "transfer_id": id, "state": t.state.code(), "retry_after": wait });
            let mut res = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(res);
        }
        TransferState::Ready => {}
        _ => return Err(AppError::PackageGone(id).into_response()),
    }
    // The person hears of each use (資料取用通知): the notice is queued by the write that spends
    // the package, so a package taken always has its notice and one taken by no one has none.
    let sent = crate::notices::NoticeEvent::SentToService {
        service: client.name.clone(),
    };
    let notices = crate::notices::jobs(&state, &t, &sent, now)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(transfer = %t.id, error = %e, "the notice of a retrieval was not queued");
            Vec::new()
        });
    take_sealed(
        &state,
        &t,
        package,
        (&row.client_id, proof.as_ref()),
        &notices,
    )
    .await
}

/// Hands the envelope out once: the guarded update that spends the package (with the DPoP proof's
/// `jti`, if any) decides the winner, and releases and purges the transfer and queues the
/// `notices` in the same write; the blob is deleted.
async fn take_sealed(
    state: &AppState,
    t: &Transfer,
    package: Option<mydata_store::PackageRecord>,
    (client_id, proof): (&str, Option<&dpop::Proof>),
    notices: &[mydata_store::NewJob],
) -> Result<Response, Response> {
    let store = state.store();
    let now = state.clock().now();
    let gone = || AppError::PackageGone(t.id.clone()).into_response();
    let internal = |e: AppError| e.into_response();
    let rec = package.ok_or_else(gone)?;
    if rec.sealed_key.as_deref() != Some(E2E_MARKER) || rec.expires_at <= now {
        return Err(gone());
    }
    let blob = state.data().blobs.package(&rec).await.map_err(|e| {
        internal(AppError::Internal(anyhow::anyhow!(
            "reading a sealed package: {e}"
        )))
    })?;
    let audit = service_event(
        "service.retrieval",
        &t.subject,
        &t.id,
        client_id,
        serde_json::json!({ "digest": rec.digest, "size": blob.len() }),
        now,
    );
    let actor = format!("service:{client_id}");
    let proof_jti = proof.map(dpop::Proof::unspent);
    // The notices run right here, leased to this process by the retrieval's write, as far as it
    // has room (no claim, no worker hand-off); the rest go to the workers.
    let starter = state.starter();
    let (start, permits) = starter.lease(state, notices);
    let closed = match store
        .retrieve_package(
            t,
            &audit,
            proof_jti.as_ref().map(|j| j.for_client(client_id)),
            start,
            &actor,
            now,
        )
        .await
        .map_err(|e| internal(e.into()))?
    {
        Retrieval::Taken {
            closed, enqueued, ..
        } => {
            starter.run_enqueued(
                state,
                Arc::new(crate::identity::messages::MessageSender),
                start,
                permits,
                |j| enqueued.contains(&j.id),
            );
            closed
        }
        Retrieval::Gone => return Err(gone()),
        Retrieval::ProofReplay => {
            return Err(OAuthError::from(dpop::ProofError::Replay).at_resource());
        }
    };
    if let Err(e) = state.data().blobs.delete_package(&rec).await {
        tracing::warn!(error = %e, "deleting a retrieved package blob failed");
    }
    // The transfer changed since it was read: each change from a fresh read.
    if !closed {
        for event in [TransferEvent::Release, TransferEvent::Purge] {
            if let Err(e) = store
                .apply_transfer_event(&t.id, event, &actor, state.clock().now())
                .await
            {
                tracing::warn!(transfer = %t.id, error = %e, "transfer state after retrieval not recorded");
                break;
            }
        }
    }
    let mut res = (StatusCode::OK, blob).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(ENVELOPE_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// A poll's DPoP proof refused at its spend: a replay is the proof's fault (401 with the DPoP
/// challenge); a database that cannot record it answers as every other failure of this endpoint
/// does (problem+json `database_unavailable` with `Retry-After`, or `internal_error`), not as an
/// OAuth endpoint.
fn refused_proof(e: OAuthError) -> Response {
    match e.code {
        super::ErrorCode::TemporarilyUnavailable => AppError::DatabaseUnavailable.into_response(),
        super::ErrorCode::ServerError => {
            AppError::Internal(anyhow::anyhow!("recording a DPoP proof failed")).into_response()
        }
        _ => e.at_resource(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_refused_for_an_outage_answers_as_the_endpoints_other_outages() {
        let res = refused_proof(OAuthError::new(
            super::super::ErrorCode::TemporarilyUnavailable,
            "database",
        ));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()[axum::http::header::CONTENT_TYPE],
            crate::error::PROBLEM_JSON
        );
        let like = AppError::DatabaseUnavailable.into_response();
        for h in [
            axum::http::header::CONTENT_TYPE,
            axum::http::header::RETRY_AFTER,
        ] {
            assert_eq!(res.headers().get(&h), like.headers().get(&h), "{h}");
        }
        let res = refused_proof(OAuthError::new(super::super::ErrorCode::ServerError, "x"));
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.headers()[axum::http::header::CONTENT_TYPE],
            crate::error::PROBLEM_JSON
        );
        let res = refused_proof(OAuthError::new(
            super::super::ErrorCode::InvalidDpopProof,
            "replayed",
        ));
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(
            res.headers()
                .contains_key(axum::http::header::WWW_AUTHENTICATE)
        );
    }
}
