//! Browser sessions, kept in the database (any process can serve any request).
//!
//! The cookie holds 32 random bytes; the database keeps only their SHA-256, so a copy of the
//! database does not hand out live sessions. Cookies are HttpOnly, SameSite=Lax, Path=/, and
//! Secure (with the `__Host-` prefix) when the platform is reached over TLS. A session ends after
//! `identity.session_idle_minutes` without use and `identity.session_absolute_minutes` after it
//! began, both on the injected clock. Logging in always issues a new session ID (the old one is
//! deleted with its codes and challenges), so a session ID planted before login is worthless.
//!
//! Every form carries the session's CSRF token (synchronizer-token pattern); a POST without the
//! right token is refused before anything else happens.

use super::{CookieSecure, SubjectId};
use crate::error::AppError;
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::identity::SubjectKind;
use mydata_core::{AssuranceLevel, BusinessId, IdNumber, IdentityMethod, Timestamp};
use mydata_store::SessionRow;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Name of the form field and header carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Activity is written at most this often (the idle time-out is minutes, not seconds).
const TOUCH_EVERY: Duration = Duration::from_secs(30);

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub row: SessionRow,
}

/// What a verified session knows about its person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The keyed pseudonym, never the ID number.
    pub subject: String,
    pub subject_kind: SubjectKind,
    pub method: IdentityMethod,
    pub level: AssuranceLevel,
    pub verified_at: Timestamp,
    /// The ID number sealed for this subject ([`seal_subject`]); opened only to start a fetch.
    #[serde(skip)]
    pub subject_sealed: Option<String>,
}

/// A verification waiting for its first-use code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub subject: String,
    pub subject_kind: SubjectKind,
    pub method: IdentityMethod,
    pub verified_at: Timestamp,
    pub next: String,
    /// The ID number sealed for this subject ([`seal_subject`]).
    #[serde(default)]
    pub subject_sealed: Option<String>,
}

impl Session {
    pub fn id_hash(&self) -> &str {
        &self.row.id_hash
    }

    pub fn csrf(&self) -> &str {
        &self.row.csrf_token
    }

    /// Subject, method, level and time, when the session is verified.
    pub fn verified(&self) -> Option<Verified> {
        let r = &self.row;
        let method: IdentityMethod = r.method.as_deref()?.parse().ok()?;
        let level = AssuranceLevel::try_from(u8::try_from(r.level?).ok()?).ok()?;
        Some(Verified {
            subject: r.subject.clone()?,
            subject_kind: method.subject_kind(),
            method,
            level,
            verified_at: Timestamp::from_millis(r.verified_at?),
            subject_sealed: r.subject_sealed.clone(),
        })
    }

    pub fn pending(&self) -> Option<Pending> {
        serde_json::from_str(self.row.pending.as_deref()?).ok()
    }

    /// Checks a submitted CSRF token in constant time.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), AppError> {
        check_csrf_token(&self.row.csrf_token, given)
    }
}

/// Compares a submitted CSRF token with the session's in constant time (person and clerk alike);
/// a missing or empty one never matches.
pub fn check_csrf_token(expected: &str, given: Option<&str>) -> Result<(), AppError> {
    let given = given.unwrap_or_default();
    let ok: bool = given.as_bytes().ct_eq(expected.as_bytes()).into();
    if ok && !given.is_empty() {
        Ok(())
    } else {
        Err(AppError::CsrfRejected)
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn secure(state: &AppState) -> bool {
    match state.settings().identity.cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => state.settings().tls.is_some(),
    }
}

/// The session cookie's name (`__Host-` prefixed when Secure, which browsers then enforce).
pub fn cookie_name(state: &AppState) -> &'static str {
    if secure(state) {
        "__Host-mydata-session"
    } else {
        "mydata-session"
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(state: &AppState, token: &str, max_age: Duration) -> HeaderValue {
    let mut c = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        cookie_name(state),
        max_age.as_secs()
    );
    if secure(state) {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A header that removes the session cookie.
pub fn clear_cookie(state: &AppState) -> HeaderValue {
    set_cookie(state, "", Duration::ZERO)
}

fn idle(state: &AppState) -> Duration {
    Duration::from_secs(
        state
            .settings()
            .identity
            .session_idle_minutes
            .saturating_mul(60),
    )
}

fn absolute(state: &AppState) -> Duration {
    Duration::from_secs(
        state
            .settings()
            .identity
            .session_absolute_minutes
            .saturating_mul(60),
    )
}

/// What looking for the request's session found.
#[derive(Debug)]
pub enum Found {
    Live(Box<Session>),
    /// A cookie was sent but its session timed out or does not exist (any more).
    Ended,
    None,
}

/// The request's session, applying both time-outs. An ended session is deleted.
pub async fn find(state: &AppState, headers: &HeaderMap) -> Result<Found, AppError> {
    let Some(token) = cookie_value(headers, cookie_name(state)).filter(|t| !t.is_empty()) else {
        return Ok(Found::None);
    };
    let hash = hash_token(&token);
    let store = state.store();
    let Some(row) = store.session(&hash).await? else {
        return Ok(Found::Ended);
    };
    let now = state.clock().now();
    let idle_end = Timestamp::from_millis(row.last_seen_at).plus(idle(state));
    if now >= Timestamp::from_millis(row.expires_at) || now >= idle_end {
        store.delete_session(&hash).await?;
        return Ok(Found::Ended);
    }
    if Timestamp::from_millis(row.last_seen_at).plus(TOUCH_EVERY) <= now {
        store.touch_session(&hash, now).await?;
    }
    Ok(Found::Live(Box::new(Session { row })))
}

/// The live session, if any.
pub async fn load(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, AppError> {
    Ok(match find(state, headers).await? {
        Found::Live(s) => Some(*s),
        _ => None,
    })
}

/// The live session for a form POST, with its CSRF token checked: refused with `session_expired`
/// when the cookie's session has ended, `csrf_failed` when the token is missing or wrong.
pub async fn for_post(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, AppError> {
    match find(state, headers).await? {
        Found::Live(s) => {
            s.check_csrf(csrf)?;
            Ok(*s)
        }
        Found::Ended => Err(AppError::SessionExpired),
        Found::None => Err(AppError::CsrfRejected),
    }
}

fn new_row(now: Timestamp, abs: Duration) -> (String, SessionRow) {
    let token = random_token();
    let row = SessionRow {
        id_hash: hash_token(&token),
        csrf_token: random_token(),
        subject: None,
        subject_kind: None,
        method: None,
        level: None,
        verified_at: None,
        pending: None,
        subject_sealed: None,
        created_at: now.millis(),
        last_seen_at: now.millis(),
        expires_at: now.plus(abs).millis(),
    };
    (token, row)
}

/// The live session, or a new anonymous one (with the cookie to set) so a form can carry a token.
pub async fn ensure(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Session, Option<HeaderValue>), AppError> {
    if let Some(s) = load(state, headers).await? {
        return Ok((s, None));
    }
    let (token, row) = new_row(state.clock().now(), absolute(state));
    state.store().put_session(&row, None).await?;
    Ok((
        Session { row },
        Some(set_cookie(state, &token, absolute(state))),
    ))
}

/// Ends `old` and starts a new session verified as `v` (new ID, new CSRF token). A step-up by the
/// same person keeps the absolute end of the old session; anyone else starts a fresh clock.
pub async fn rotate_verified(
    state: &AppState,
    old: &Session,
    v: &Verified,
) -> Result<(Session, HeaderValue), AppError> {
    let now = state.clock().now();
    let (token, mut row) = new_row(now, absolute(state));
    if old.row.subject.as_deref() == Some(v.subject.as_str()) {
        row.created_at = old.row.created_at;
        row.expires_at = old.row.expires_at;
    }
    row.subject = Some(v.subject.clone());
    row.subject_kind = Some(kind_code(v.subject_kind).into());
    row.method = Some(v.method.code().into());
    row.level = Some(i64::from(v.level.number()));
    row.verified_at = Some(v.verified_at.millis());
    row.subject_sealed = v.subject_sealed.clone();
    state.store().put_session(&row, Some(old.id_hash())).await?;
    let left = now.until(Timestamp::from_millis(row.expires_at));
    Ok((Session { row }, set_cookie(state, &token, left)))
}

/// Ends the session.
pub async fn end(state: &AppState, s: &Session) -> Result<HeaderValue, AppError> {
    state.store().delete_session(s.id_hash()).await?;
    Ok(clear_cookie(state))
}

pub fn kind_code(k: SubjectKind) -> &'static str {
    match k {
        SubjectKind::Natural => "natural",
        SubjectKind::Legal => "legal",
    }
}

/// The pseudonym of a proven subject.
pub fn pseudonym(state: &AppState, id: &SubjectId) -> String {
    super::subject_pseudonym(state, id)
}

/// Removes ended sessions, stale codes, challenges and lockout counters.
pub async fn sweep(state: &AppState) -> Result<u64, mydata_store::StoreError> {
    let now = state.clock().now();
    let idle_before = Timestamp::from_millis(
        now.millis()
            .saturating_sub(i64::try_from(idle(state).as_millis()).unwrap_or(i64::MAX)),
    );
    let failures_before = Timestamp::from_millis(now.millis().saturating_sub(
        i64::try_from(mydata_core::limits::LOCKOUT_WINDOW.as_millis()).unwrap_or(i64::MAX),
    ));
    state.store().sweep_passkey_ceremonies(now).await?;
    state
        .store()
        .sweep_identity(now, idle_before, failures_before)
        .await
}

fn subject_context(pseudonym: &str) -> String {
    format!("mydata:v1:session-subject:{pseudonym}")
}

/// Seals a proven subject's ID number under the data key, bound to its pseudonym, for the session.
pub fn seal_subject(state: &AppState, id: &SubjectId) -> Result<String, AppError> {
    let pseudonym = pseudonym(state, id);
    state
        .data()
        .vault
        .seal(&subject_context(&pseudonym), subject_raw(id).as_bytes())
        .map_err(|e| AppError::Internal(anyhow::anyhow!("sealing the session subject: {e}")))
}

fn subject_raw(id: &SubjectId) -> &str {
    match id {
        SubjectId::Person(n) => n.as_str(),
        SubjectId::Company(b) => b.as_str(),
    }
}

/// The ID number (or 統一編號) of a verified session's person, for asking agencies about them.
/// Refused as `not_signed_in` when the session holds none (for example one verified before this
/// column existed) or when it does not open to the session's own pseudonym.
pub fn subject_id(state: &AppState, v: &Verified) -> Result<SubjectId, AppError> {
    let sealed = v.subject_sealed.as_deref().ok_or(AppError::NotSignedIn)?;
    let plain = state
        .data()
        .vault
        .open(&subject_context(&v.subject), sealed)
        .map_err(|_| AppError::NotSignedIn)?;
    let raw = std::str::from_utf8(&plain).map_err(|_| AppError::NotSignedIn)?;
    let id = match v.subject_kind {
        SubjectKind::Natural => {
            SubjectId::Person(IdNumber::parse(raw).map_err(|_| AppError::NotSignedIn)?)
        }
        SubjectKind::Legal => {
            SubjectId::Company(BusinessId::parse(raw).map_err(|_| AppError::NotSignedIn)?)
        }
    };
    if pseudonym(state, &id) != v.subject {
        return Err(AppError::NotSignedIn);
    }
    Ok(id)
}

/// The ID number or 統一編號 as text (what agencies are asked about).
pub fn subject_text(id: &SubjectId) -> String {
    subject_raw(id).to_owned()
}
