//! Flow 3, online services: an OAuth 2.0 authorization server following FAPI 2.0 where it applies
//! (PAR required, PKCE S256, `authorization_details`, `private_key_jwt`, `iss` in the response),
//! service registration, the consent pages and end-to-end encrypted delivery.
//!
//! [`clients`] registers services (admin API, config); [`flow`] is the authorization server
//! (PAR, authorize, consent and confirmation pages, token); [`assertion`] checks signed JWTs from
//! services (client assertions, identity assertions); [`dpop`] checks DPoP proofs (RFC 9449) that
//! bind tokens to a service's key; [`delivery`] seals packages to the service and hands them out once.

pub mod assertion;
pub mod clients;
pub mod delivery;
pub mod dpop;
pub mod flow;

use crate::i18n::Lang;
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `authorization_details` type of a MyData transfer (RFC 9396).
pub const DETAILS_TYPE: &str = "mydata_transfer";
/// Datasets a service may request without a recorded legal basis.
pub const MAX_DATASETS: usize = 5;

/// Settings of the authorization server (config key `oauth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthSettings {
    /// The issuer identifier (the platform's public base URL, no trailing slash). Empty: taken from
    /// the request's Host header, for development only; set it in production.
    pub issuer: String,
    /// Bearer token of the admin API (`/api/v1/admin/services`); empty: the admin API is off.
    pub admin_token: String,
    /// Life of a pushed request_uri before the person opens it (RFC 9126 `expires_in`).
    pub par_ttl_secs: u64,
    /// Life of an authorization code (at most 60).
    pub code_ttl_secs: u64,
    /// Life of an access token.
    pub token_ttl_secs: u64,
    /// How long a person has from opening the request to the last confirmation; consenting
    /// extends it to the slowest dataset's expected wait plus this long (within the transfer's
    /// 8 hours).
    pub authorization_ttl_secs: u64,
    /// Longest lifetime of a client assertion (`exp` - now).
    pub assertion_max_secs: u64,
    /// How long a JWK set fetched from a service's `jwks_uri` is used before it is fetched again.
    pub jwks_cache_secs: u64,
    /// How long, in milliseconds, a process reuses a registration it read (0: read it every
    /// time). The admin API of the same process takes effect at once; other processes' after this.
    pub client_cache_ms: u64,
    /// How long, in milliseconds, the consent page asked for right after the person agreed waits
    /// for the agencies before it shows the wait page (0: never waits). Instant agencies then lead
    /// straight to the confirmation, without the wait page's reloads.
    pub ready_hold_ms: u64,
    /// Services registered at start (replacing stored registrations with the same client ID).
    pub clients: Vec<clients::Registration>,
    /// Serve services registered in the `test` environment. Their consent page says the data is
    /// simulated, as the platform's test zone gives test services simulated data only: turn it on
    /// only where the agencies are simulated (`demo` does). Off, their pushed requests are refused.
    pub serve_test_services: bool,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            admin_token: String::new(),
            par_ttl_secs: 300,
            code_ttl_secs: 60,
            token_ttl_secs: 3600,
            authorization_ttl_secs: 3600,
            assertion_max_secs: 300,
            jwks_cache_secs: 300,
            client_cache_ms: 2_000,
            ready_hold_ms: 3_000,
            clients: Vec::new(),
            serve_test_services: false,
        }
    }
}

impl OAuthSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=60).contains(&self.code_ttl_secs) {
            return Err("config key `oauth.code_ttl_secs`: must be from 1 to 60".into());
        }
        // FAPI 2.0 Security Profile §5.3.2.1: a request_uri lives less than 600 seconds.
        if !(10..=599).contains(&self.par_ttl_secs) {
            return Err("config key `oauth.par_ttl_secs`: must be from 10 to 599".into());
        }
        if self.token_ttl_secs == 0
            || self.authorization_ttl_secs == 0
            || self.assertion_max_secs == 0
        {
            return Err(
                "config keys `oauth.*_ttl_secs` and `oauth.assertion_max_secs` must be at least 1"
                    .into(),
            );
        }
        if !(1..=86_400).contains(&self.jwks_cache_secs) {
            return Err("config key `oauth.jwks_cache_secs`: must be from 1 to 86400".into());
        }
        if self.ready_hold_ms > 30_000 {
            return Err("config key `oauth.ready_hold_ms`: must be from 0 to 30000".into());
        }
        if self.client_cache_ms > 60_000 {
            return Err("config key `oauth.client_cache_ms`: must be from 0 to 60000".into());
        }
        if !self.issuer.is_empty() {
            let ok = url::Url::parse(&self.issuer).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.query().is_none()
                    && !self.issuer.ends_with('/')
            });
            if !ok {
                return Err("config key `oauth.issuer`: must be an http(s) URL without query or trailing slash".into());
            }
        }
        if !self.admin_token.is_empty() && self.admin_token.len() < 16 {
            return Err("config key `oauth.admin_token`: must be at least 16 characters".into());
        }
        Ok(())
    }
}

/// The issuer identifier for this request.
pub fn issuer(state: &AppState, headers: &HeaderMap) -> String {
    let configured = &state.settings().oauth.issuer;
    if !configured.is_empty() {
        return configured.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .unwrap_or("localhost");
    let scheme = if state.settings().tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// SHA-256 hex of a secret (codes, tokens) as stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh 256-bit random value, base64url.
pub fn random_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// RFC 6749 §5.2 error codes (and their RFC 9126 / 9396 / 6750 / 9449 relatives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    AccessDenied,
    InvalidRequestUri,
    InvalidAuthorizationDetails,
    InvalidToken,
    InvalidDpopProof,
    ServerError,
    /// The database cannot be reached right now (RFC 6749 §4.1.2.1's code, used at every
    /// endpoint): 503 with Retry-After, so that a service tries again instead of giving up.
    TemporarilyUnavailable,
}

impl ErrorCode {
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::InvalidRequestUri => "invalid_request_uri",
            ErrorCode::InvalidAuthorizationDetails => "invalid_authorization_details",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// The status at the authorization server's endpoints (RFC 6749 §5.2; RFC 9449 §5 answers a
    /// bad proof there with 400). A resource answers 401 instead: [`OAuthError::at_resource`].
    fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidClient | ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
            ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why an authorization cannot go on, as the person's browser is told on a page (never redirected:
/// the service's redirect URI cannot be trusted yet, or the request is over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    Malformed,
    NotPushed,
    NotIssued,
    UnknownOrOther,
    Unknown,
    Expired,
    ExpiredOrUsed,
    OtherPerson,
    OtherSignIn,
    Finished,
    Answered,
    NotWaiting,
    NothingFetched,
}

impl Halt {
    /// The message in the page's language.
    pub fn message(self, lang: Lang) -> &'static str {
        let (zh, en) = match self {
            Halt::Malformed => (
                "授權請求的格式不正確。",
                "the authorization request is malformed",
            ),
            Halt::NotPushed => (
                "缺少 client_id 或 request_uri：本平臺只接受服務事先送來的授權請求。",
                "client_id and request_uri are required: only pushed requests are accepted",
            ),
            Halt::NotIssued => (
                "這個 request_uri 不是本平臺核發的。",
                "request_uri was not issued by this platform",
            ),
            Halt::UnknownOrOther => (
                "找不到這個授權請求，或它屬於其他服務；請回到服務網站重新開始。",
                "this request is unknown or belongs to another service; go back to the service and start again",
            ),
            Halt::Unknown => (
                "找不到這個授權請求；請回到服務網站重新開始。",
                "this request is unknown; go back to the service and start again",
            ),
            Halt::Expired => (
                "這個授權請求已逾時；請回到服務網站重新開始。",
                "this request has expired; go back to the service and start again",
            ),
            Halt::ExpiredOrUsed => (
                "這個授權請求已逾時或已使用過；請回到服務網站重新開始。",
                "this request has expired or was already used; go back to the service and start again",
            ),
            Halt::OtherPerson => (
                "這個授權請求是為另一個人建立的；請回到服務網站重新開始。",
                "this request was made for another person; go back to the service and start again",
            ),
            Halt::OtherSignIn => (
                "這個授權請求屬於另一次登入；請回到服務網站重新開始。",
                "this request belongs to another sign-in; go back to the service and start again",
            ),
            Halt::Finished => (
                "這個授權請求已經完成；請回到服務網站。",
                "this request is finished; go back to the service",
            ),
            Halt::Answered => (
                "這個請求已經回覆過了。",
                "this request was already answered",
            ),
            Halt::NotWaiting => (
                "這次傳送目前不是在等待您確認。",
                "this transfer is not waiting for your confirmation",
            ),
            Halt::NothingFetched => (
                "沒有任何一項資料取得成功，因此沒有可以傳送的資料。",
                "no dataset could be fetched, so nothing can be sent",
            ),
        };
        lang.pick(zh, en)
    }
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message(Lang::En))
    }
}

/// An error of the OAuth endpoints, answered as RFC 6749 §5.2 JSON (`error`,
/// `error_description`), never cached; 401s carry `WWW-Authenticate`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {description}", code.code())]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
    /// A status other than the code's own, for refusals HTTP has a status for and RFC 6749 has
    /// no code for (a body over the limit: 413 `invalid_request`; a wrong method: 405).
    status: Option<StatusCode>,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            status: None,
        }
    }

    /// A refusal made before the endpoint's handler (the body limit, the method, the media
    /// type), as `invalid_request` with that status and the platform's own description of it.
    pub fn outside_handler(err: &crate::error::AppError) -> Self {
        Self {
            status: Some(err.status()),
            ..Self::new(ErrorCode::InvalidRequest, err.detail_in(Lang::En))
        }
    }

    /// The endpoint's form body could not be read: too large (413, restated by the error layer
    /// with the configured limit) or not a form.
    pub fn unreadable_form(e: &axum::extract::rejection::FormRejection) -> Self {
        use axum::extract::rejection::FormRejection;
        match e {
            FormRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::outside_handler(&crate::error::AppError::PayloadTooLarge { limit: None })
            }
            _ => Self::new(
                ErrorCode::InvalidRequest,
                "the body must be application/x-www-form-urlencoded",
            ),
        }
    }
}

/// The form body of an endpoint services call with OAuth client authentication, as axum reads it.
pub type FormBody =
    Result<axum::Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>;

/// The parameters of such a body, each at most once (RFC 6749 §3.1: a repeated parameter is
/// `invalid_request`, not the last one winning).
pub fn parameters(
    form: FormBody,
) -> Result<std::collections::BTreeMap<String, String>, OAuthError> {
    let axum::Form(pairs) = form.map_err(|e| OAuthError::unreadable_form(&e))?;
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        if map.contains_key(&k) {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "parameter `{}` is sent more than once",
                    crate::routes::clip(&k)
                ),
            ));
        }
        map.insert(k, v);
    }
    Ok(map)
}

impl From<mydata_store::StoreError> for OAuthError {
    fn from(e: mydata_store::StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            return OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "the platform cannot reach its database; try again in a minute",
            );
        }
        tracing::error!(error = %e, "oauth request failed in the store");
        OAuthError::new(
            ErrorCode::ServerError,
            "the platform could not process the request; try again",
        )
    }
}

impl OAuthError {
    fn respond(self, status: StatusCode) -> Response {
        tracing::debug!(error = self.code.code(), "oauth request refused");
        let code = self.code.code();
        let body = serde_json::json!({ "error": code, "error_description": self.description });
        let mut res = (status, body.to_string()).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }

    /// The answer of a protected resource (RFC 6750 §3, RFC 9449 §7.1): a refused token or proof
    /// is 401 with a `DPoP` challenge naming the error and the accepted algorithms, and for a
    /// refused token a `Bearer` one as well (both schemes are accepted).
    pub fn at_resource(self) -> Response {
        if !matches!(
            self.code,
            ErrorCode::InvalidToken | ErrorCode::InvalidDpopProof
        ) {
            return self.into_response();
        }
        let code = self.code.code();
        let mut res = self.respond(StatusCode::UNAUTHORIZED);
        let dpop = format!("DPoP algs=\"{}\", error=\"{code}\"", dpop::ALGS.join(" "));
        let bearer =
            (code == ErrorCode::InvalidToken.code()).then(|| format!("Bearer error=\"{code}\""));
        for v in std::iter::once(dpop).chain(bearer) {
            if let Ok(v) = HeaderValue::from_str(&v) {
                res.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }

    /// The answer of a protected resource to a request without any credentials: 401 with both
    /// challenges and no error code in them (RFC 6750 §3.1, RFC 9449 §7.1); the body says what to
    /// send.
    pub fn credentials_missing(description: &str) -> Response {
        let mut res =
            Self::new(ErrorCode::InvalidToken, description).respond(StatusCode::UNAUTHORIZED);
        let dpop = format!("DPoP algs=\"{}\"", dpop::ALGS.join(" "));
        for v in [dpop.as_str(), "Bearer"] {
            if let Ok(v) = HeaderValue::from_str(v) {
                res.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| self.code.status());
        let client = self.code == ErrorCode::InvalidClient;
        if self.code == ErrorCode::InvalidToken {
            return self.at_resource();
        }
        let code = self.code.code();
        let unavailable = self.code == ErrorCode::TemporarilyUnavailable;
        let mut res = self.respond(status);
        if unavailable {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::DATABASE_RETRY_AFTER_SECS),
            );
        }
        if client {
            let v = format!("private_key_jwt error=\"{code}\"");
            if let Ok(v) = HeaderValue::from_str(&v) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        res
    }
}

/// An audit event about a transfer of an online service (no personal data: pseudonym only).
pub fn service_event(
    kind: &str,
    subject: &str,
    transfer_id: &str,
    client_id: &str,
    detail: serde_json::Value,
    now: mydata_core::Timestamp,
) -> mydata_store::NewAuditEvent {
    let mut detail = detail;
    if let Some(o) = detail.as_object_mut() {
        o.insert("client_id".into(), serde_json::Value::from(client_id));
    }
    mydata_store::NewAuditEvent {
        at: now,
        kind: kind.into(),
        subject: Some(subject.to_owned()),
        transfer_id: Some(transfer_id.to_owned()),
        actor: format!("service:{client_id}"),
        detail,
    }
}

/// A verified `jti` (of a client assertion, or a DPoP proof's replay key) not yet recorded: the
/// request records it in its own write, with what it stores.
#[derive(Debug, Clone)]
pub struct UnspentJti {
    pub jti: String,
    pub keep_until: mydata_core::Timestamp,
}

impl UnspentJti {
    /// As the store records it, for `client_id`.
    pub fn for_client<'a>(&'a self, client_id: &'a str) -> mydata_store::Jti<'a> {
        mydata_store::Jti {
            client_id,
            jti: &self.jti,
            keep_until: self.keep_until,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_database_outage_is_temporarily_unavailable_with_retry_after() {
        // SQLITE_BUSY: another process holds the database file.
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        let res = OAuthError::from(mydata_store::StoreError::Sqlite(busy)).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "60");
        let fault = mydata_store::StoreError::Corrupt("bad row".into());
        let res = OAuthError::from(fault).into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
    }
}
