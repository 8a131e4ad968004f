//! The authorization server: metadata (RFC 8414), pushed authorization requests (RFC 9126, the only
//! way in), the authorization endpoint, the consent and confirmation pages, and the token endpoint
//! (PKCE S256, `private_key_jwt`, single-use codes of at most 60 s, RFC 9207 `iss`, DPoP-bound
//! tokens, RFC 9449).
//!
//! One authorization goes `pushed → opened` (a signed-in browser session took the request_uri) `→
//! consented` (the transfer is created and agencies are asked) `→ confirmed` (the person saw what
//! was fetched and agreed to send it; the code is issued), or `→ refused` at either question.

use super::assertion::{self, JWT_BEARER};
use super::{
    DETAILS_TYPE, ErrorCode, Halt, MAX_DATASETS, OAuthError, clients, dpop, hash_secret, issuer,
    random_secret, service_event,
};
use crate::error::{AppError, PageError, render};
use crate::i18n::Lang;
use crate::identity::session;
use crate::routes::form::{CsrfField, PostedForm, lang_of};
use crate::routes::path::Path;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::transfer::{TransferEvent, TransferKind, TransferState};
use mydata_store::{ClientRow, Issue, OAuthCodeRow, Push, RequestRow, TokenRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Prefix of the request_uri values this server hands out.
pub const REQUEST_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";

/// The validated, stored content of a pushed request. No personal data: a `login_hint` is kept as
/// the person's pseudonym only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub datasets: Vec<String>,
    pub purpose: String,
    /// Pseudonym of the person the service named in `login_hint`.
    pub hint_subject: Option<String>,
    /// The DPoP key thumbprint the code is bound to (RFC 9449 §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
    /// The person a trusted verifier asserted (`identity_assertion`): it stands for their sign-in
    /// for this request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asserted: Option<Asserted>,
}

/// A trusted verifier's assertion as kept with the pushed request: the pseudonym, the ID number
/// sealed as sessions seal it ([`session::seal_subject`]), the level, and when it was accepted.
/// The sealed ID number is kept only until the consent (which seals it into the transfer's own
/// secret for the fetches) or until the request is answered otherwise: the store drops it then.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Asserted {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_sealed: Option<String>,
    pub level: u8,
    pub at: i64,
}

impl Pushed {
    /// The person as the assertion verified them, for this request's consent pages and agency
    /// requests only (no platform session is signed in).
    pub fn asserted_person(&self) -> Option<session::Verified> {
        let a = self.asserted.as_ref()?;
        Some(session::Verified {
            subject: a.subject.clone(),
            subject_kind: mydata_core::identity::SubjectKind::Natural,
            method: mydata_core::IdentityMethod::Asserted,
            level: mydata_core::AssuranceLevel::try_from(a.level).ok()?,
            verified_at: mydata_core::Timestamp::from_millis(a.at),
            subject_sealed: a.subject_sealed.clone(),
        })
    }
}

/// `GET /.well-known/oauth-authorization-server`
pub async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let iss = issuer(&state, &headers);
    let body = serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth/authorize"),
        "pushed_authorization_request_endpoint": format!("{iss}/oauth/par"),
        "require_pushed_authorization_requests": true,
        "token_endpoint": format!("{iss}/oauth/token"),
        "jwks_uri": format!("{iss}/oauth/jwks.json"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA"],
        "authorization_details_types_supported": [DETAILS_TYPE],
        "authorization_response_iss_parameter_supported": true,
        "dpop_signing_alg_values_supported": dpop::ALGS,
        "mydata_package_encryption_supported": [mydata_package::e2e::SUITE],
        "mydata_package_endpoint": format!("{iss}/api/v1/transfers/{{transfer_id}}/package"),
        "service_documentation": format!("{iss}/api/v1/openapi.yaml"),
    });
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(body),
    )
        .into_response()
}

/// `GET /oauth/jwks.json`: the platform's keys for services: the ES256 key that signs package
/// receipts, and the X25519 key that `login_hint`s are encrypted to and that seals packages.
pub async fn jwks(State(state): State<AppState>) -> Response {
    // The signing keys first, the current one leading: SDKs from before key rotation take the
    // first EC key as the receipt key.
    let mut keys = state.platform_keys().public_jwks();
    // The X25519 key that seals now first (SDKs encrypt login_hints to the first), then those of
    // the data keys announced to replace it or replaced by it.
    keys.extend(state.data().vault.platform_kems().map(|k| k.public_jwk()));
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(serde_json::json!({ "keys": keys })),
    )
        .into_response()
}

fn invalid(m: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidRequest, m)
}

fn one<'a>(form: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// One `mydata_transfer` object; a field it does not define is refused (RFC 9396 §5), so a
/// misspelt `purpose` is not silently replaced by the registered one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Details {
    #[serde(rename = "type")]
    kind: String,
    datasets: Vec<String>,
    #[serde(default)]
    purpose: Option<String>,
}

/// Parses `authorization_details` and checks it against the registration.
fn check_details(
    raw: Option<&str>,
    client: &ClientRow,
) -> Result<(Vec<String>, String), OAuthError> {
    let bad = |m: String| OAuthError::new(ErrorCode::InvalidAuthorizationDetails, m);
    let raw =
        raw.ok_or_else(|| bad("authorization_details is required (type mydata_transfer)".into()))?;
    let list: Vec<Details> = serde_json::from_str(raw).map_err(|e| {
        bad(format!(
            "authorization_details is not a JSON array of objects: {e}"
        ))
    })?;
    let [d] = list.as_slice() else {
        return Err(bad(
            "authorization_details must hold exactly one mydata_transfer object".into(),
        ));
    };
    if d.kind != DETAILS_TYPE {
        return Err(bad(format!(
            "authorization_details type must be {DETAILS_TYPE}"
        )));
    }
    if d.datasets.is_empty() {
        return Err(bad("datasets must name at least one dataset".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in &d.datasets {
        if !client.datasets.contains(id) {
            return Err(bad(format!(
                "dataset `{id}` is not in this service's registration"
            )));
        }
        if !seen.insert(id) {
            return Err(bad(format!("dataset `{id}` is listed twice")));
        }
    }
    if d.datasets.len() > MAX_DATASETS && client.legal_basis.is_none() {
        return Err(bad(format!(
            "at most {MAX_DATASETS} datasets without a recorded legal basis"
        )));
    }
    let purpose = d.purpose.clone().unwrap_or_else(|| client.purpose.clone());
    if purpose.trim().is_empty() || purpose.chars().count() > MAX_PURPOSE_CHARS {
        return Err(bad(format!(
            "purpose must be 1 to {MAX_PURPOSE_CHARS} characters"
        )));
    }
    Ok((d.datasets.clone(), purpose))
}

/// The longest purpose a person is shown (a pushed request's, or the registration's in its place).
pub const MAX_PURPOSE_CHARS: usize = 500;

/// `POST /oauth/par` (RFC 9126).
pub async fn par(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: super::FormBody,
) -> Result<Response, OAuthError> {
    let form = super::parameters(form)?;
    let iss = issuer(&state, &headers);
    // The assertion's jti is recorded with the request stored, in one write (see `push_request`).
    let (client, assertion_jti) = assertion::verify_client(
        &state,
        &iss,
        one(&form, "client_id"),
        one(&form, "client_assertion_type"),
        one(&form, "client_assertion"),
    )
    .await?;
    if client.environment == "test" && !state.settings().oauth.serve_test_services {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this platform does not serve test-environment services (they receive simulated data only, and its agencies hold real data); use the test platform, or register the service for trial",
        ));
    }
    if form.contains_key("request_uri") {
        return Err(invalid("request_uri must not be sent to the PAR endpoint"));
    }
    if form.contains_key("request") {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "request objects are not supported; send parameters in the form",
        ));
    }
    if one(&form, "response_type") != Some("code") {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "response_type must be code",
        ));
    }
    let redirect_uri =
        one(&form, "redirect_uri").ok_or_else(|| invalid("redirect_uri is required"))?;
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return Err(invalid("redirect_uri is not registered for this service"));
    }
    let code_challenge =
        one(&form, "code_challenge").ok_or_else(|| invalid("code_challenge is required (PKCE)"))?;
    if one(&form, "code_challenge_method") != Some("S256") {
        return Err(invalid("code_challenge_method must be S256"));
    }
    if code_challenge.len() != 43 || URL_SAFE_NO_PAD.decode(code_challenge).is_err() {
        return Err(invalid(
            "code_challenge must be the base64url SHA-256 of the verifier",
        ));
    }
    let st = one(&form, "state").map(str::to_owned);
    if st.as_ref().is_some_and(|s| s.len() > 512) {
        return Err(invalid("state is longer than 512 characters"));
    }
    let (datasets, purpose) = check_details(one(&form, "authorization_details"), &client)?;
    let hint_subject = match one(&form, "login_hint") {
        None => None,
        Some(h) => {
            // Encrypted to any X25519 key the platform publishes (a service may have read its
            // keys before a switch); a hint names none, and one that is not for a key fails fast.
            let id = state
                .data()
                .vault
                .platform_kems()
                .find_map(|k| mydata_package::e2e::open_login_hint(k, &client.client_id, h).ok())
                .ok_or_else(|| {
                    invalid("login_hint does not open with the platform key for this service")
                })?;
            let id = mydata_core::IdNumber::parse(id.trim())
                .map(|n| n.as_str().to_owned())
                .or_else(|_| {
                    mydata_core::BusinessId::parse(id.trim()).map(|b| b.as_str().to_owned())
                })
                .map_err(|_| invalid("login_hint is not a valid ID number or 統一編號"))?;
            Some(state.identity().subjects.pseudonym(&id))
        }
    };
    let mut identity_jti = None;
    let asserted = match form.get("identity_assertion") {
        None => None,
        Some(token) => {
            let a = assertion::identity_assertion(&state, &client, &iss, token, &datasets).await?;
            identity_jti = Some(a.jti.clone());
            let id = crate::identity::SubjectId::Person(
                mydata_core::IdNumber::parse(&a.id_number)
                    .map_err(|_| invalid("identity_assertion: sub is not a valid ID number"))?,
            );
            let sealed = session::seal_subject(&state, &id).map_err(|_| {
                OAuthError::new(ErrorCode::ServerError, "the assertion could not be kept")
            })?;
            Some(Asserted {
                subject: session::pseudonym(&state, &id),
                subject_sealed: Some(sealed),
                level: a.level.number(),
                at: state.clock().now().millis(),
            })
        }
    };
    let (dpop_jkt, proof) = dpop::par_binding(
        &state,
        &headers,
        &format!("{iss}/oauth/par"),
        one(&form, "dpop_jkt"),
    )?;
    let pushed = Pushed {
        redirect_uri: redirect_uri.to_owned(),
        state: st,
        code_challenge: code_challenge.to_owned(),
        datasets,
        purpose,
        hint_subject,
        dpop_jkt,
        asserted,
    };
    let now = state.clock().now();
    let ttl = state.settings().oauth.par_ttl_secs;
    let id = random_secret();
    let row = RequestRow {
        id: id.clone(),
        client_id: client.client_id.clone(),
        params: serde_json::to_string(&pushed)
            .map_err(|_| invalid("request could not be stored"))?,
        status: "pushed".into(),
        session_hash: None,
        transfer_id: None,
        created_at: now.millis(),
        expires_at: now.plus(Duration::from_secs(ttl)).millis(),
        updated_at: now.millis(),
    };
    let proof_jti = proof.as_ref().map(dpop::Proof::unspent);
    let stored = state
        .store()
        .push_request(
            &row,
            assertion_jti.for_client(&client.client_id),
            proof_jti.as_ref().map(|j| j.for_client(&client.client_id)),
            identity_jti
                .as_ref()
                .map(|j| j.for_client(&client.client_id)),
        )
        .await?;
    match stored {
        Push::Stored => {}
        Push::AssertionReplay => return Err(assertion::replayed()),
        Push::ProofReplay => return Err(dpop::ProofError::Replay.into()),
        Push::IdentityReplay => return Err(assertion::identity_replayed()),
    }
    let body = serde_json::json!({ "request_uri": format!("{REQUEST_URI_PREFIX}{id}"), "expires_in": ttl });
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response())
}

/// A page-level refusal before the service's redirect URI can be trusted (shown, never redirected).
fn stop(lang: Lang, why: Halt) -> PageError {
    PageError(AppError::AuthorizationRefused(why), lang)
}

/// The redirect back to the service (RFC 6749 §4.1.2, RFC 9207 `iss`).
fn back_to_service(p: &Pushed, iss: &str, params: &[(&str, &str)]) -> Response {
    let mut url = match url::Url::parse(&p.redirect_uri) {
        Ok(u) => u,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = &p.state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", iss);
    }
    Redirect::to(url.as_str()).into_response()
}

#[derive(Debug, Deserialize)]
pub struct AuthorizeQuery {
    client_id: Option<String>,
    request_uri: Option<String>,
}

async fn load_request(
    state: &AppState,
    id: &str,
) -> Result<Option<(RequestRow, Pushed, ClientRow)>, AppError> {
    let Some(r) = state.store().request(id).await? else {
        return Ok(None);
    };
    let Ok(p) = serde_json::from_str::<Pushed>(&r.params) else {
        return Ok(None);
    };
    let Some(c) = super::clients::registered(state, &r.client_id).await? else {
        return Ok(None);
    };
    // A return address withdrawn from the registration since the push (say, taken over) is sent
    // nothing more: neither a code nor an error.
    if !c.redirect_uris.contains(&p.redirect_uri) {
        return Ok(None);
    }
    Ok(Some((r, p, c)))
}

/// `GET /oauth/authorize?client_id=...&request_uri=...`
pub async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    q: Result<Query<AuthorizeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let lang = lang_of(&uri, &headers);
    let Ok(Query(q)) = q else {
        return Err(stop(lang, Halt::Malformed));
    };
    let (Some(client_id), Some(request_uri)) = (q.client_id, q.request_uri) else {
        return Err(stop(lang, Halt::NotPushed));
    };
    let Some(id) = request_uri.strip_prefix(REQUEST_URI_PREFIX) else {
        return Err(stop(lang, Halt::NotIssued));
    };
    let now = state.clock().now();
    let found = load_request(&state, id)
        .await
        .map_err(|e| PageError(e, lang))?;
    let Some((req, pushed, client)) = found.filter(|(r, _, _)| r.client_id == client_id) else {
        return Err(stop(lang, Halt::UnknownOrOther));
    };
    let iss = issuer(&state, &headers);
    let found = session::load(&state, &headers)
        .await
        .map_err(|e| PageError(e, lang))?;
    if found.is_none() && req.expires_at <= now.millis() {
        return Err(stop(lang, Halt::Expired));
    }
    // A trusted verifier's assertion stands for the sign-in: the browser needs only a session to
    // hold the request and its CSRF token (an anonymous one, signed in to nothing else).
    let mut new_cookie = None;
    let (s, v) = match (pushed.asserted_person(), found) {
        (Some(asserted), found) => {
            let s = match found {
                Some(s) => s,
                // Only a request not opened yet can be opened by a browser without a session: the
                // refusal below is given before a session is made for it.
                None if req.status != "pushed" => {
                    return Err(stop(lang, Halt::ExpiredOrUsed));
                }
                None => {
                    let (s, cookie) = session::ensure(&state, &headers)
                        .await
                        .map_err(|e| PageError(e, lang))?;
                    new_cookie = cookie;
                    s
                }
            };
            if let Some(signed_in) = s.verified()
                && signed_in.subject != asserted.subject
            {
                return refuse_person(
                    &state,
                    lang,
                    id,
                    &signed_in.subject,
                    &client,
                    &pushed,
                    &iss,
                    "assertion_mismatch",
                    "the signed-in person is not the person the service asserted",
                )
                .await;
            }
            (s, asserted)
        }
        (None, Some(s)) => match s.verified() {
            Some(v) => (s, v),
            None => return sign_in_first(&state, &req, &uri, &pushed.datasets, lang).await,
        },
        (None, None) => return sign_in_first(&state, &req, &uri, &pushed.datasets, lang).await,
    };
    if let Some(hint) = &pushed.hint_subject
        && hint != &v.subject
    {
        // The service named someone else: stop here, tell the service, change nothing else.
        return refuse_person(
            &state,
            lang,
            id,
            &v.subject,
            &client,
            &pushed,
            &iss,
            "login_hint_mismatch",
            "the signed-in person is not the person the service named",
        )
        .await;
    }
    if v.method != mydata_core::IdentityMethod::Asserted
        && let Ok(sel) = state.catalog().selection(&pushed.datasets)
        && !crate::routes::login::satisfies(&v, &sel)
    {
        // Signed in at a lower level, or as a company for a person's data: the sign-in page
        // offers only the ways these datasets take, and comes back here.
        return sign_in_first(&state, &req, &uri, &pushed.datasets, lang).await;
    }
    for d in &pushed.datasets {
        if let Some(ds) = state.catalog().dataset(d)
            && !v.level.satisfies(ds.min_level())
        {
            return Err(PageError(
                AppError::InsufficientLevel {
                    required: ds.min_level(),
                },
                lang,
            ));
        }
    }
    let until = now.plus(Duration::from_secs(
        state.settings().oauth.authorization_ttl_secs,
    ));
    let opened = state
        .store()
        .open_request(id, s.id_hash(), until, now)
        .await
        .map_err(|e| PageError(e.into(), lang))?;
    let resumable = req.session_hash.as_deref() == Some(s.id_hash())
        && matches!(req.status.as_str(), "opened" | "consented");
    if !opened && !resumable {
        return Err(stop(lang, Halt::ExpiredOrUsed));
    }
    if opened && v.method == mydata_core::IdentityMethod::Asserted {
        state
            .store()
            .append_audit(&mydata_store::NewAuditEvent {
                at: now,
                kind: "identity.asserted".into(),
                subject: Some(v.subject.clone()),
                transfer_id: None,
                actor: format!("service:{}", client.client_id),
                detail: serde_json::json!({
                    "client_id": client.client_id,
                    "level": v.level.number(),
                }),
            })
            .await
            .map_err(|e| PageError(e.into(), lang))?;
    }
    // The consent question is answered here, one redirect fewer; a request already answered
    // resumes at its own page (the wait or the confirmation).
    let mut res = if opened || req.status == "opened" {
        let view = ConsentView {
            id,
            status: "opened",
            session: &s,
            person: &v,
            pushed: &pushed,
            client: &client,
            transfer: None,
            error: None,
        };
        render_consent(&state, lang, &view)?
    } else {
        Redirect::to(&format!("/oauth/consent/{id}")).into_response()
    };
    if let Some(c) = new_cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(res)
}

/// Stops a request whose person is not the one the service named or asserted: back to the
/// service with `access_denied` (audit `service.refused` with `reason`), nothing else changed.
#[allow(clippy::too_many_arguments)]
async fn refuse_person(
    state: &AppState,
    lang: Lang,
    id: &str,
    subject: &str,
    client: &ClientRow,
    pushed: &Pushed,
    iss: &str,
    reason: &str,
    description: &str,
) -> Result<Response, PageError> {
    let now = state.clock().now();
    let event = mydata_store::NewAuditEvent {
        at: now,
        kind: "service.refused".into(),
        subject: Some(subject.to_owned()),
        transfer_id: None,
        actor: "platform".into(),
        detail: serde_json::json!({ "client_id": client.client_id, "reason": reason }),
    };
    let refused = state
        .store()
        .advance_request(id, "pushed", "refused", None, Some(&event), now)
        .await
        .map_err(|e| PageError(e.into(), lang))?;
    if !refused {
        // Another browser opened the request first (or it expired): its answer stands, and this
        // browser learns nothing of the service's request, its state included.
        return Err(stop(lang, Halt::ExpiredOrUsed));
    }
    Ok(back_to_service(
        pushed,
        iss,
        &[
            ("error", "access_denied"),
            ("error_description", description),
        ],
    ))
}

/// To the sign-in page for request `req`, which is kept meanwhile: a first sign-in (a card, a
/// one-time code, contacts to register) may take longer than the request_uri's own few minutes,
/// so the request lives `oauth.authorization_ttl_secs` from its push, as it would once opened.
async fn sign_in_first(
    state: &AppState,
    req: &mydata_store::RequestRow,
    uri: &axum::http::Uri,
    datasets: &[String],
    lang: Lang,
) -> Result<Response, PageError> {
    if req.status == "pushed" {
        let ttl = Duration::from_secs(state.settings().oauth.authorization_ttl_secs);
        let until = mydata_core::Timestamp::from_millis(req.created_at).plus(ttl);
        state
            .store()
            .hold_request(&req.id, until, state.clock().now())
            .await
            .map_err(|e| PageError(e.into(), lang))?;
    }
    Ok(to_login(uri, datasets))
}

/// The sign-in page, offering the ways `datasets` accept, then back to this request.
fn to_login(uri: &axum::http::Uri, datasets: &[String]) -> Response {
    let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Redirect::to(&crate::routes::login::login_href(next, datasets)).into_response()
}

/// A dataset line of the consent pages.
#[derive(Debug)]
pub struct DatasetLine {
    pub name: String,
    pub agency: String,
    /// The agency's expected time to answer (the catalogue's), shown before consent.
    pub wait: String,
    pub status: String,
    pub ok: bool,
}

#[derive(Debug, Template)]
#[template(path = "oauth/consent.html")]
pub struct ConsentPage {
    pub chrome: crate::pages::Chrome,
    pub t: Texts,
    pub step: &'static str,
    pub service: String,
    pub environment: String,
    pub production: bool,
    pub purpose: String,
    pub registered_purpose: String,
    pub terms: String,
    pub datasets: Vec<DatasetLine>,
    pub action: String,
    pub csrf: String,
    pub refresh: bool,
    pub any_fetched: bool,
    /// Who verified the person when a trusted verifier's assertion stood for the sign-in.
    pub asserted: String,
    /// Who is signed in (masked ID number and method), so that a person on a shared device sees
    /// whose data this would be; empty for an asserted person.
    pub signed_in_as: String,
    /// Where signing out leads back to (this request, to sign in as someone else).
    pub next: String,
    /// The platform terms' version the consent's checkbox agrees to.
    pub terms_version: &'static str,
    pub error: Option<&'static str>,
    /// The languages the service wrote its name, the purpose and its terms in (see
    /// [`crate::i18n::text_lang`]): one language each, shown on pages in either.
    pub service_lang: &'static str,
    pub purpose_lang: &'static str,
    pub registered_purpose_lang: &'static str,
    pub terms_lang: &'static str,
}

/// The authorize URL of request `id` (local path), where a new sign-in opens it again.
fn authorize_path(client_id: &str, id: &str) -> String {
    let enc = crate::routes::login::urlencode;
    format!(
        "/oauth/authorize?client_id={}&request_uri={}",
        enc(client_id),
        enc(&format!("{REQUEST_URI_PREFIX}{id}"))
    )
}

/// Signing out from a consent question (`next`, its authorize URL): the request this session
/// opened is let go, so that whoever signs in next opens it as their own.
pub async fn release_on_sign_out(
    state: &AppState,
    session: &session::Session,
    next: &str,
) -> Result<(), mydata_store::StoreError> {
    let Some(query) = next.strip_prefix("/oauth/authorize?") else {
        return Ok(());
    };
    let id = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "request_uri")
        .and_then(|(_, v)| v.strip_prefix(REQUEST_URI_PREFIX).map(str::to_owned));
    if let Some(id) = id {
        state
            .store()
            .release_request(&id, session.id_hash(), state.clock().now())
            .await?;
    }
    Ok(())
}

/// The version of the platform's terms for online services shown on the consent question; the
/// consent's audit event records it.
pub const PLATFORM_TERMS_VERSION: &str = "online-terms-2026-12";

/// The fixed texts of the consent pages in one language.
#[derive(Debug)]
pub struct Texts {
    pub title_consent: &'static str,
    pub title_wait: &'static str,
    pub title_confirm: &'static str,
    pub intro: &'static str,
    pub service: &'static str,
    pub purpose: &'static str,
    pub terms: &'static str,
    pub datasets: &'static str,
    pub agency: &'static str,
    pub wait: &'static str,
    pub status: &'static str,
    pub agree: &'static str,
    pub decline: &'static str,
    pub waiting: &'static str,
    pub confirm_intro: &'static str,
    pub send: &'static str,
    pub dont_send: &'static str,
    pub nothing: &'static str,
    pub environment: &'static str,
    pub trial_environment: &'static str,
    pub once: &'static str,
    pub reload: &'static str,
    pub early_intro: &'static str,
    pub send_when_ready: &'static str,
    pub identity: &'static str,
    pub signed_in: &'static str,
    pub not_you: &'static str,
    pub platform_terms: &'static str,
    pub platform_terms_agree: &'static str,
    pub platform_terms_body: &'static [&'static str],
}

impl Texts {
    fn new(l: Lang) -> Self {
        Self {
            title_consent: l.pick("同意提供資料", "Consent to share data"),
            title_wait: l.pick("正在向機關取得資料", "Fetching your data from the agencies"),
            title_confirm: l.pick("確認傳送資料", "Confirm sending your data"),
            intro: l.pick("以下服務請求取得您的個人資料。您同意後，平臺會向各機關取得資料，並在傳送前再次請您確認。", "The service below asks for your personal data. If you agree, the platform fetches it from each agency and asks you once more before sending it."),
            service: l.pick("服務", "Service"),
            purpose: l.pick("使用目的", "Purpose"),
            terms: l.pick("服務條款", "Terms of the service"),
            datasets: l.pick("資料項目", "Datasets"),
            agency: l.pick("提供機關", "Agency"),
            wait: l.pick("預計取得時間", "Expected wait"),
            status: l.pick("狀態", "Status"),
            agree: l.pick("同意並取得資料", "Agree and fetch the data"),
            decline: l.pick("不同意", "Decline"),
            waiting: l.pick("資料取得中，本頁會自動更新。", "Fetching; this page refreshes by itself."),
            confirm_intro: l.pick("資料已取得。確認後，資料以此服務的金鑰加密交付給它；服務取走後平臺即刪除，最遲於 8 小時期限屆滿時刪除。", "Your data is ready. Once you confirm, it is handed to this service encrypted to its key; the platform deletes it as soon as the service has taken it, and at the latest when the 8 hours end."),
            send: l.pick("確認傳送", "Send to the service"),
            dont_send: l.pick("不要傳送", "Do not send"),
            nothing: l.pick("沒有任何資料可以取得，無法傳送。", "No dataset could be fetched, so nothing can be sent."),
            environment: l.pick("測試環境：資料為模擬資料", "Test environment: the data is simulated"),
            trial_environment: l.pick("試營運環境：此服務尚在試辦，傳送的是您的真實資料", "Trial: this service is on trial; it receives your real data"),
            once: l.pick("此同意僅用於這一次傳送。", "This consent covers this one transfer only."),
            reload: l.pick("重新整理", "Refresh"),
            early_intro: l.pick("不想等候？您可以現在確認：資料取得後即加密傳送給此服務，無法取得的項目不會傳送。", "Rather not wait? Confirm now: your data is sent encrypted to this service as soon as it is fetched; anything that cannot be fetched is not sent."),
            send_when_ready: l.pick("取得後自動傳送", "Send when ready"),
            identity: l.pick("身分驗證", "Identity"),
            signed_in: l.pick("登入身分", "Signed in as"),
            not_you: l.pick("不是您？登出", "Not you? Sign out"),
            platform_terms: l.pick("MyData 平臺服務條款與隱私權保護政策", "MyData platform terms and privacy notice"),
            platform_terms_agree: l.pick("我已閱讀並同意 MyData 平臺服務條款與隱私權保護政策", "I have read and agree to the MyData platform terms and privacy notice"),
            platform_terms_body: match l {
                Lang::ZhTw => &[
                    "一、您同意後，本平臺單次即時向上列機關取得上列資料，經機關數位簽章，並在您再次確認後以此服務的金鑰加密交付此服務；本次同意僅適用於這一次傳送，並非長期授權。",
                    "二、本平臺於處理期間使用您的身分證統一編號（或統一編號）向機關取得資料，只以無法還原的代號記錄是誰申請，不保存身分證號碼明文。",
                    "三、平臺只保存加密後、平臺無法解開的資料，服務取走後即刪除，最遲於申請後 8 小時刪除；您選擇不傳送時亦即刪除。",
                    "四、每一次申請、取得與交付都會記錄（不含資料內容）並通知您，您可隨時於「使用紀錄」查閱及匯出。",
                    "五、資料由各機關提供並負責其正確性；服務取得資料後，依其上列服務條款與使用目的利用。",
                    "六、本平臺蒐集、處理或利用個人資料，除其他法律另有規定外，依個人資料保護法辦理。",
                ],
                Lang::En => &[
                    "1. Once you agree, the platform fetches the data listed above from the agencies listed, once; each agency signs it, and after you confirm again it is handed to this service encrypted to the service's key. This consent covers this one transfer only; it is never a standing permission.",
                    "2. While the request is processed the platform uses your ID number (or business ID) to ask the agencies; it records who asked only by a pseudonym that cannot be turned back into your ID number.",
                    "3. The platform keeps only the encrypted data, which it cannot open, and deletes it once the service has taken it, at the latest 8 hours after the request, or at once if you choose not to send it.",
                    "4. Every request, fetch and delivery is recorded (never the data itself) and you are notified; you can see and export your usage records at any time.",
                    "5. Each agency is responsible for the accuracy of its data; the service uses the data under its terms and for its purpose shown above.",
                    "6. Personal data is collected, processed and used under Taiwan's Personal Data Protection Act unless another law says otherwise.",
                ],
            },
        }
    }
}

fn dataset_lines(
    state: &AppState,
    lang: Lang,
    ids: &[String],
    t: Option<&mydata_store::Transfer>,
) -> Vec<DatasetLine> {
    ids.iter()
        .map(|id| {
            let ds = state.catalog().dataset(id);
            let name = ds
                .map(|d| lang.pick(&d.name_zh, &d.name_en).to_owned())
                .unwrap_or_else(|| id.clone());
            let agency = ds
                .and_then(|d| state.catalog().agency(&d.agency))
                .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
                .unwrap_or_default();
            let row = t.and_then(|t| t.datasets.iter().find(|d| &d.dataset_id == id));
            let (status, ok) = match row.map(|r| r.status.as_str()) {
                None => (String::new(), true),
                Some(s) => {
                    let ok = s == mydata_store::fetch_status::SUCCEEDED;
                    (crate::pages::fetch_status_label(s, lang).to_owned(), ok)
                }
            };
            let wait = crate::routes::download::ready_text(ds.map_or(0, |d| d.ready_minutes), lang);
            DatasetLine {
                name,
                agency,
                wait,
                status,
                ok,
            }
        })
        .collect()
}

/// Checks the consent page's session: signed in and the one that opened the request. `posted` is
/// the session a form post has already loaded (and checked the CSRF token of); a page view loads it.
async fn consent_session(
    state: &AppState,
    headers: &HeaderMap,
    posted: Option<session::Session>,
    lang: Lang,
    id: &str,
) -> Result<
    (
        session::Session,
        session::Verified,
        RequestRow,
        Pushed,
        ClientRow,
    ),
    PageError,
> {
    let s = match posted {
        Some(s) => s,
        None => session::load(state, headers)
            .await
            .map_err(|e| PageError(e, lang))?
            .ok_or(PageError(AppError::NotSignedIn, lang))?,
    };
    let found = load_request(state, id)
        .await
        .map_err(|e| PageError(e, lang))?;
    // The person is the one the service asserted (for this request only), else the signed-in one.
    let asserted = found.as_ref().and_then(|(_, p, _)| p.asserted_person());
    let signed_in = s.verified();
    // Signed in on the platform: the person's own sign-in, or, where a service asserted the
    // person, their proof that they are that person (checked below).
    let by_sign_in = signed_in.is_some();
    let asserted_subject = asserted.as_ref().map(|a| a.subject.clone());
    let v = match (asserted, &signed_in) {
        (Some(a), Some(si)) if si.subject != a.subject => {
            return Err(stop(lang, Halt::OtherPerson));
        }
        (Some(a), _) => a,
        (None, Some(si)) => si.clone(),
        (None, None) => return Err(PageError(AppError::NotSignedIn, lang)),
    };
    let (r, p, c) = found.ok_or_else(|| stop(lang, Halt::Unknown))?;
    if r.session_hash.as_deref() != Some(s.id_hash()) {
        // The same person signed in again (their session ended while an agency took its hour):
        // the request follows them. Known only for a sign-in, and by the transfer the request
        // started, the person the service named or the person it asserted.
        let owner = match (by_sign_in, r.status.as_str()) {
            (true, "consented") => match r.transfer_id.as_deref() {
                Some(tid) => state
                    .store()
                    .transfer(tid)
                    .await
                    .map_err(|e| PageError(e.into(), lang))?
                    .map(|t| t.subject),
                None => None,
            },
            (true, "opened") => p.hint_subject.clone().or(asserted_subject),
            _ => None,
        };
        let moved = match (owner, r.session_hash.as_deref()) {
            (Some(owner), Some(from)) if owner == v.subject => state
                .store()
                .rebind_request(&r.id, from, s.id_hash(), state.clock().now())
                .await
                .map_err(|e| PageError(e.into(), lang))?,
            _ => false,
        };
        if !moved {
            return Err(stop(lang, Halt::OtherSignIn));
        }
    }
    if r.expires_at <= state.clock().now().millis() {
        return Err(stop(lang, Halt::Expired));
    }
    Ok((s, v, r, p, c))
}

/// `GET /oauth/consent/{id}`: the consent question, the wait, or the confirmation.
pub async fn consent_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let lang = lang_of(&uri, &headers);
    let (s, v, r, p, c) = match consent_session(&state, &headers, None, lang, &id).await {
        Ok(found) => found,
        // Signed out meanwhile (say, the session's idle limit while an agency took its time):
        // sign in again and come back here. A person a service asserted proves by signing in
        // that they are that person (the assertion still stands for the request).
        Err(PageError(AppError::NotSignedIn, _))
            if load_request(&state, &id)
                .await
                .map_err(|e| PageError(e, lang))?
                .is_some() =>
        {
            return Ok(to_login(&uri, &[]));
        }
        Err(e) => return Err(e),
    };
    let t = match r.transfer_id.as_deref() {
        Some(tid) => hold_until_settled(&state, tid)
            .await
            .map_err(|e| PageError(e.into(), lang))?,
        None => None,
    };
    let view = ConsentView {
        id: &id,
        status: &r.status,
        session: &s,
        person: &v,
        pushed: &p,
        client: &c,
        transfer: t.as_ref(),
        error: None,
    };
    render_consent(&state, lang, &view)
}

/// What a consent page shows: the request, its person and service, its transfer once there is one.
struct ConsentView<'a> {
    id: &'a str,
    status: &'a str,
    session: &'a session::Session,
    person: &'a session::Verified,
    pushed: &'a Pushed,
    client: &'a ClientRow,
    transfer: Option<&'a mydata_store::Transfer>,
    /// Why the answer was not taken (shown above the buttons).
    error: Option<&'static str>,
}

/// The consent question, the wait or the confirmation, whichever the request's status and its
/// transfer's state call for, with the headers every consent page needs.
fn render_consent(
    state: &AppState,
    lang: Lang,
    view: &ConsentView<'_>,
) -> Result<Response, PageError> {
    let ConsentView {
        id,
        status,
        session: s,
        person: v,
        pushed: p,
        client: c,
        transfer: t,
        error,
    } = *view;
    let asserted = if v.method == mydata_core::IdentityMethod::Asserted {
        match lang {
            Lang::ZhTw => format!(
                "已由「{}」驗證（身分驗證等級 {}），無須在本平臺登入",
                c.name, v.level
            ),
            Lang::En => format!(
                "Verified by {} (assurance level {}); no sign-in on the platform is needed",
                c.name, v.level
            ),
        }
    } else {
        String::new()
    };
    let (step, action, refresh) = match (status, t.map(|t| t.state)) {
        ("opened", _) => ("consent", format!("/oauth/consent/{id}"), false),
        ("consented", Some(TransferState::Created | TransferState::Fetching)) => {
            ("wait", format!("/oauth/consent/{id}/confirm"), true)
        }
        ("consented", Some(TransferState::Ready)) => {
            ("confirm", format!("/oauth/consent/{id}/confirm"), false)
        }
        _ => {
            return Err(stop(lang, Halt::Finished));
        }
    };
    let any_fetched = t.is_some_and(|t| {
        t.datasets
            .iter()
            .any(|d| d.status == mydata_store::fetch_status::SUCCEEDED)
    });
    let signed_in_as = if v.method == mydata_core::IdentityMethod::Asserted {
        String::new()
    } else {
        // The masked ID number needs the sealed one; a session without it shows the method.
        let shown = session::subject_id(state, v)
            .map(|id| crate::identity::passkey::masked(&session::subject_text(&id)))
            .unwrap_or_default();
        format!(
            "{shown}（{}）",
            lang.pick(v.method.name_zh(), v.method.name_en())
        )
    };
    let page = ConsentPage {
        // Shown at /oauth/authorize too: the switch keeps the request's parameters (as every
        // page's does, see `Chrome::new`).
        chrome: crate::pages::Chrome::new(lang),
        t: Texts::new(lang),
        step,
        service: c.name.clone(),
        environment: c.environment.clone(),
        production: c.environment == "production",
        purpose: p.purpose.clone(),
        registered_purpose: c.purpose.clone(),
        terms: c.terms.clone(),
        datasets: dataset_lines(state, lang, &p.datasets, t),
        action,
        csrf: s.csrf().to_owned(),
        refresh,
        any_fetched,
        asserted,
        signed_in_as,
        next: authorize_path(&c.client_id, id),
        terms_version: PLATFORM_TERMS_VERSION,
        error,
        service_lang: crate::i18n::text_lang(&c.name),
        purpose_lang: crate::i18n::text_lang(&p.purpose),
        registered_purpose_lang: crate::i18n::text_lang(&c.purpose),
        terms_lang: crate::i18n::text_lang(&c.terms),
    };
    let mut res = render(&page)
        .map_err(|e| PageError(e, lang))?
        .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // The answers redirect to the service: a form's redirect must be allowed by `form-action`
    // (browsers enforce it on the redirect target too), so the page allows exactly its origin.
    if let Some(origin) = url::Url::parse(&p.redirect_uri)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        && let Ok(v) = header::HeaderValue::from_str(&crate::app::csp_with_form_action(&origin))
    {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    Ok(res)
}

/// The transfer, read once its agencies have answered if that happens soon: within
/// `oauth.ready_hold_ms` of the consent, the page waits for the transfer to settle (woken by this
/// process's package job, else reading again when the time is up) instead of showing the wait
/// page at once. Later visits, and transfers already settled, are answered straight away.
async fn hold_until_settled(
    state: &AppState,
    tid: &str,
) -> Result<Option<mydata_store::Transfer>, mydata_store::StoreError> {
    let pending = |t: &Option<mydata_store::Transfer>| {
        t.as_ref()
            .is_some_and(|t| matches!(t.state, TransferState::Created | TransferState::Fetching))
    };
    let hold_ms = i64::try_from(state.settings().oauth.ready_hold_ms).unwrap_or(0);
    let watch = (hold_ms > 0).then(|| state.settled().watch(tid));
    let t = state.store().transfer(tid).await?;
    let Some(watch) = watch else {
        return Ok(t);
    };
    let since = t.as_ref().map_or(i64::MAX, |t| {
        state
            .clock()
            .now()
            .millis()
            .saturating_sub(t.created_at.millis())
    });
    if !pending(&t) || since >= hold_ms {
        return Ok(t);
    }
    let left = u64::try_from(hold_ms.saturating_sub(since.max(0))).unwrap_or(0);
    watch.settled(Duration::from_millis(left)).await;
    state.store().transfer(tid).await
}

#[derive(Debug, Deserialize)]
pub struct Decision {
    csrf: Option<String>,
    decision: Option<String>,
    /// The platform terms' version the person ticked (with "agree").
    platform_terms: Option<String>,
}

impl CsrfField for Decision {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /oauth/consent/{id}`: the first answer.
pub async fn consent_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    PostedForm {
        session,
        form: f,
        lang,
    }: PostedForm<Decision>,
) -> Result<Response, PageError> {
    let (s, v, r, p, c) = consent_session(&state, &headers, Some(session), lang, &id).await?;
    if r.status == "consented" && f.decision.as_deref() == Some("agree") {
        // A repeated "agree" (a double tap): the page the first one leads to.
        return Ok(Redirect::to(&format!("/oauth/consent/{id}")).into_response());
    }
    if r.status != "opened" {
        return Err(stop(lang, Halt::Answered));
    }
    let iss = issuer(&state, &headers);
    let now = state.clock().now();
    match f.decision.as_deref() {
        Some("agree") if f.platform_terms.as_deref() != Some(PLATFORM_TERMS_VERSION) => {
            // Not ticked (or ticked on a page showing older terms): the question again.
            let view = ConsentView {
                id: &id,
                status: "opened",
                session: &s,
                person: &v,
                pushed: &p,
                client: &c,
                transfer: None,
                error: Some(lang.pick(
                    "請閱讀並勾選同意 MyData 平臺服務條款與隱私權保護政策。",
                    "Read and tick your agreement to the MyData platform terms and privacy notice.",
                )),
            };
            let mut res = render_consent(&state, lang, &view)?;
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(res)
        }
        Some("agree") => {
            // The request moves to consented in the transfer's own write step; the event's
            // transfer is the new one. It records which terms the person was shown: the
            // platform's by version, the service's by digest.
            let event = service_event(
                "service.consent",
                &v.subject,
                "",
                &c.client_id,
                serde_json::json!({
                    "datasets": p.datasets,
                    "purpose": p.purpose,
                    "service_name": c.name,
                    "environment": c.environment,
                    "platform_terms": PLATFORM_TERMS_VERSION,
                    "service_terms_sha256": hex::encode(Sha256::digest(c.terms.as_bytes())),
                }),
                now,
            );
            crate::agencies::start_for_session(
                &state,
                &v,
                crate::agencies::PersonRequest {
                    kind: TransferKind::Online,
                    recipient: Some(c.client_id.clone()),
                    purpose: p.purpose.clone(),
                    datasets: p.datasets.clone(),
                    answers: Some(crate::agencies::ServiceAnswer {
                        request_id: id.clone(),
                        event,
                        keep_until: confirm_by(&state, &p.datasets, now),
                    }),
                },
            )
            .await
            .map_err(|e| PageError(e, lang))?;
            Ok(Redirect::to(&format!("/oauth/consent/{id}")).into_response())
        }
        Some("decline") => {
            let event = mydata_store::NewAuditEvent {
                at: now,
                kind: "service.refused".into(),
                subject: Some(v.subject.clone()),
                transfer_id: None,
                actor: v.subject.clone(),
                detail: serde_json::json!({ "client_id": c.client_id, "step": "consent" }),
            };
            state
                .store()
                .advance_request(&id, "opened", "refused", None, Some(&event), now)
                .await
                .map_err(|e| PageError(e.into(), lang))?;
            Ok(back_to_service(
                &p,
                &iss,
                &[
                    ("error", "access_denied"),
                    ("error_description", "the person declined"),
                ],
            ))
        }
        _ => Err(PageError(
            AppError::InvalidBody("decision must be agree or decline".into()),
            lang,
        )),
    }
}

/// The answer to the service when the person chose not to send the data (at the confirmation,
/// or the same answer repeated).
const NOT_SENT: [(&str, &str); 2] = [
    ("error", "access_denied"),
    ("error_description", "the person chose not to send the data"),
];

/// The same answer again from the request's own session (a double tap, or the back button):
/// browsers show the last response, so the first one's redirect never reached the service. A
/// repeated "send" gets a fresh code in place of the unspent one; a repeated "do not send" the
/// same refusal. `None` when this is not a repeat.
async fn repeated_answer(
    state: &AppState,
    headers: &HeaderMap,
    r: &mydata_store::RequestRow,
    p: &Pushed,
    decision: Option<&str>,
) -> Option<Result<Response, AppError>> {
    let iss = issuer(state, headers);
    match (r.status.as_str(), decision) {
        ("confirmed", Some("send")) => {
            let code = random_secret();
            let now = state.clock().now();
            let ttl = Duration::from_secs(state.settings().oauth.code_ttl_secs);
            let reissued = state
                .store()
                .reissue_code(
                    &r.id,
                    &hash_secret(&code),
                    now.millis(),
                    now.plus(ttl).millis(),
                )
                .await;
            match reissued {
                Ok(true) => Some(Ok(back_to_service(p, &iss, &[("code", &code)]))),
                // The service has redeemed it: the answer is complete.
                Ok(false) => None,
                Err(e) => Some(Err(e.into())),
            }
        }
        ("refused", Some("dont_send")) => Some(Ok(back_to_service(p, &iss, &NOT_SENT))),
        _ => None,
    }
}

/// Until when a person who consents now may give the last confirmation: the slowest dataset's
/// expected wait plus `oauth.authorization_ttl_secs`, so the hour a request has from opening does
/// not run out while an agency prepares a 60-minute dataset; never past the transfer's own life.
fn confirm_by(
    state: &AppState,
    datasets: &[String],
    now: mydata_core::Timestamp,
) -> mydata_core::Timestamp {
    let slowest = datasets
        .iter()
        .filter_map(|d| state.catalog().dataset(d))
        .map(|d| u64::from(d.ready_minutes) * 60)
        .max()
        .unwrap_or(0);
    let wait = slowest.saturating_add(state.settings().oauth.authorization_ttl_secs);
    now.plus(Duration::from_secs(wait).min(mydata_core::limits::PACKAGE_TTL))
}

/// `POST /oauth/consent/{id}/confirm`: the second answer, once the data is ready.
pub async fn confirm_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    PostedForm {
        session,
        form: f,
        lang,
    }: PostedForm<Decision>,
) -> Result<Response, PageError> {
    let (_s, v, r, p, c) = consent_session(&state, &headers, Some(session), lang, &id).await?;
    if let Some(res) = repeated_answer(&state, &headers, &r, &p, f.decision.as_deref()).await {
        return res.map_err(|e| PageError(e, lang));
    }
    let tid = r.transfer_id.clone().unwrap_or_default();
    // One read: the transfer with its package record.
    let work = state
        .store()
        .transfer_work(&tid)
        .await
        .map_err(|e| PageError(e.into(), lang))?;
    let package = work.as_ref().and_then(|w| w.package.clone());
    let t = work
        .map(|w| w.transfer)
        .filter(|t| {
            r.status == "consented"
                && matches!(
                    t.state,
                    TransferState::Created | TransferState::Fetching | TransferState::Ready
                )
        })
        .ok_or_else(|| stop(lang, Halt::NotWaiting))?;
    // While an agency is slow the person may answer now ("send when ready") instead of keeping the
    // page open: the service then polls and gets 202 + Retry-After until the package is sealed.
    let early = t.state != TransferState::Ready;
    let iss = issuer(&state, &headers);
    let now = state.clock().now();
    match f.decision.as_deref() {
        Some("send") => {
            let has_package = early || package.is_some_and(|p| p.sealed_key.is_some());
            if !has_package {
                return Err(stop(lang, Halt::NothingFetched));
            }
            let code = random_secret();
            let row = OAuthCodeRow {
                code_hash: hash_secret(&code),
                request_id: id.clone(),
                client_id: c.client_id.clone(),
                transfer_id: t.id.clone(),
                redirect_uri: p.redirect_uri.clone(),
                code_challenge: p.code_challenge.clone(),
                created_at: now.millis(),
                expires_at: now
                    .plus(Duration::from_secs(state.settings().oauth.code_ttl_secs))
                    .millis(),
                used_at: None,
            };
            let fetched: Vec<&str> = t
                .datasets
                .iter()
                .filter(|d| d.status == mydata_store::fetch_status::SUCCEEDED)
                .map(|d| d.dataset_id.as_str())
                .collect();
            let event = service_event(
                "service.release",
                &v.subject,
                &t.id,
                &c.client_id,
                serde_json::json!({ "datasets": fetched, "when_ready": early }),
                now,
            );
            if !state
                .store()
                .confirm_request(&row, &event, now)
                .await
                .map_err(|e| PageError(e.into(), lang))?
            {
                return Err(stop(lang, Halt::Answered));
            }
            Ok(back_to_service(&p, &iss, &[("code", &code)]))
        }
        Some("dont_send") => {
            let event = service_event(
                "service.refused",
                &v.subject,
                &t.id,
                &c.client_id,
                serde_json::json!({ "step": "release" }),
                now,
            );
            // The transfer ends first (its package goes at the next purge), from a fresh read if
            // packaging moved it meanwhile; one that has ended already is left as it is. Should
            // the request's answer below be lost, the expiry sweep ends what is still live.
            match state
                .store()
                .apply_transfer_event_from(&t, TransferEvent::Cancel, &v.subject, now)
                .await
            {
                Ok(_) | Err(mydata_store::StoreError::IllegalTransition(_)) => {}
                Err(e) => return Err(PageError(e.into(), lang)),
            }
            state
                .store()
                .advance_request(&id, "consented", "refused", None, Some(&event), now)
                .await
                .map_err(|e| PageError(e.into(), lang))?;
            Ok(back_to_service(&p, &iss, &NOT_SENT))
        }
        _ => Err(PageError(
            AppError::InvalidBody("decision must be send or dont_send".into()),
            lang,
        )),
    }
}

/// The PKCE check (RFC 7636 §4.6): BASE64URL(SHA256(verifier)) equals the challenge.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// `POST /oauth/token`
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: super::FormBody,
) -> Result<Response, OAuthError> {
    let form = super::parameters(form)?;
    let iss = issuer(&state, &headers);
    // The assertion's jti is recorded with the code spent, in one write (see `issue_token`).
    let (client, assertion_jti) = assertion::verify_client(
        &state,
        &iss,
        one(&form, "client_id"),
        one(&form, "client_assertion_type"),
        one(&form, "client_assertion"),
    )
    .await?;
    match one(&form, "grant_type") {
        Some("authorization_code") => {}
        // RFC 6749 §5.2: a missing parameter is invalid_request; another grant, unsupported.
        None => return Err(invalid("grant_type is missing")),
        Some(_) => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "grant_type must be authorization_code",
            ));
        }
    }
    // DPoP (RFC 9449 §5): a proof binds the token to its key; required when registered so, and of
    // trial and production services (`clients::requires_dpop`). Checked now, its jti spent only
    // once the code is about to be.
    let token_endpoint = format!("{iss}/oauth/token");
    let proof = dpop::from_request(
        &state,
        &headers,
        &dpop::Expected {
            htm: "POST",
            htu: &token_endpoint,
            access_token: None,
            jkt: None,
        },
    )?;
    if proof.is_none() && clients::requires_dpop(&client) {
        return Err(OAuthError::new(
            ErrorCode::InvalidDpopProof,
            "this service must send a DPoP proof (DPoP header) to the token endpoint",
        ));
    }
    let grant = |m: &str| OAuthError::new(ErrorCode::InvalidGrant, m.to_owned());
    let code = one(&form, "code").ok_or_else(|| invalid("code is required"))?;
    let hash = hash_secret(code);
    let now = state.clock().now();
    // One read: the code, its request's parameters and its transfer's state.
    let found = state
        .store()
        .code_grant(&hash)
        .await?
        .ok_or_else(|| grant("the code is unknown"))?;
    let row = &found.code;
    // Every check before the code is spent, so a refused attempt changes nothing.
    if row.client_id != client.client_id {
        return Err(grant("the code was issued to another client"));
    }
    if row.used_at.is_none() {
        if row.expires_at <= now.millis() {
            return Err(grant("the code has expired"));
        }
        if one(&form, "redirect_uri") != Some(row.redirect_uri.as_str()) {
            return Err(grant(
                "redirect_uri differs from the one of the authorization request",
            ));
        }
        let verifier =
            one(&form, "code_verifier").ok_or_else(|| grant("code_verifier is required (PKCE)"))?;
        if !pkce_matches(verifier, &row.code_challenge) {
            return Err(grant("code_verifier does not match the code_challenge"));
        }
    }
    let pushed = found
        .request_params
        .as_deref()
        .and_then(|params| serde_json::from_str::<Pushed>(params).ok());
    if let Some(bound) = pushed.as_ref().and_then(|p| p.dpop_jkt.as_deref())
        && proof.as_ref().map(|p| p.jkt.as_str()) != Some(bound)
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidDpopProof,
            "the code is bound to a DPoP key (dpop_jkt): send a DPoP proof signed with it",
        ));
    }
    let access = random_secret();
    let ttl = state.settings().oauth.token_ttl_secs;
    // Answered early ("send when ready"): the token must outlive a slow agency, so it lives as
    // long as the transfer (at most its 8 hours); otherwise the configured lifetime caps it.
    let expires = match found.transfer {
        Some((TransferState::Created | TransferState::Fetching, end)) => end,
        Some((_, end)) => end.min(now.plus(Duration::from_secs(ttl))),
        None => now,
    };
    let token = TokenRow {
        token_hash: hash_secret(&access),
        client_id: client.client_id.clone(),
        transfer_id: row.transfer_id.clone(),
        code_hash: hash,
        dpop_jkt: proof.as_ref().map(|p| p.jkt.clone()),
        created_at: now.millis(),
        expires_at: expires.millis(),
        revoked_at: None,
    };
    let proof_jti = proof.as_ref().map(dpop::Proof::unspent);
    let issued = state
        .store()
        .issue_token(
            assertion_jti.for_client(&client.client_id),
            proof_jti.as_ref().map(|j| j.for_client(&client.client_id)),
            &token,
            now,
        )
        .await?;
    match issued {
        Issue::Issued => {}
        Issue::AssertionReplay => return Err(assertion::replayed()),
        Issue::ProofReplay => return Err(dpop::ProofError::Replay.into()),
        Issue::CodeReused => {
            return Err(grant(
                "the code was already used; tokens issued for it are revoked",
            ));
        }
        Issue::CodeUnknown => return Err(grant("the code is unknown")),
    }
    let (datasets, purpose) = pushed.map(|p| (p.datasets, p.purpose)).unwrap_or_default();
    let body = serde_json::json!({
        "access_token": access,
        "token_type": if proof.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": now.until(expires).as_secs(),
        "authorization_details": [{
            "type": DETAILS_TYPE,
            "datasets": datasets,
            "purpose": purpose,
            "transfer_id": row.transfer_id,
        }],
    });
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(body),
    )
        .into_response())
}

/// The JWT-bearer assertion type, re-exported for the SDK docs.
pub const CLIENT_ASSERTION_TYPE: &str = JWT_BEARER;

const SERVICE_API: &str = include_str!("../../../../docs/service-api.yaml");
const AGENCY_API: &str = include_str!("../../../../docs/agency-api.yaml");

/// `GET /api/v1/openapi.yaml`: the OpenAPI document of the online-service API.
pub async fn openapi_service() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/yaml; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SERVICE_API,
    )
        .into_response()
}

/// `GET /api/v1/agency-api.yaml`: the OpenAPI document agencies implement.
pub async fn openapi_agency() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/yaml; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        AGENCY_API,
    )
        .into_response()
}
