//! Clerks of counter offices: registration of offices, counters and clerk accounts (for the admin
//! CLI), sign-in with password plus TOTP (RFC 6238), and clerk sessions kept in the database.
//!
//! A clerk's TOTP secret is sealed by the platform's data key; a code's time step is accepted
//! once, so a code read over a shoulder cannot be replayed. Failed sign-ins lock the account
//! with the platform's lockout rule. The session cookie is `HttpOnly`, `SameSite=Strict` and
//! scoped to `/clerk`.

use crate::error::AppError;
use crate::identity::password;
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::{Timestamp, limits};
use mydata_store::{ClerkRow, ClerkSessionRow, CounterRow, LockoutRule, OfficeRow};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

/// A clerk session ends after this long idle...
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// ...and at the latest after a working day.
pub const ABSOLUTE: Duration = Duration::from_secs(10 * 3600);
/// TOTP: 6 digits every 30 seconds, one step of clock drift either way.
const TOTP_DIGITS: usize = 6;
const TOTP_STEP: u64 = 30;

const SIGN_IN_RULE: LockoutRule = LockoutRule {
    threshold: limits::LOCKOUT_THRESHOLD,
    window: limits::LOCKOUT_WINDOW,
    duration: limits::LOCKOUT_DURATION,
};

/// The two roles of a clerk account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Clerk,
    Supervisor,
}

impl Role {
    pub fn code(self) -> &'static str {
        match self {
            Role::Clerk => "clerk",
            Role::Supervisor => "supervisor",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "clerk" => Some(Role::Clerk),
            "supervisor" => Some(Role::Supervisor),
            _ => None,
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] mydata_store::StoreError),
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Registers (or updates) an office doing the given counter services of the catalogue.
pub async fn register_office(
    state: &AppState,
    id: &str,
    agency: &str,
    name_zh: &str,
    name_en: &str,
    services: &[String],
) -> Result<OfficeRow, AdminError> {
    if !valid_id(id) || !valid_id(agency) {
        return Err(AdminError::Invalid(
            "office and agency IDs are 1-64 characters of letters, digits, '-', '_' and '.'".into(),
        ));
    }
    if name_zh.trim().is_empty() || name_en.trim().is_empty() {
        return Err(AdminError::Invalid(
            "an office needs a Chinese and an English name".into(),
        ));
    }
    if services.is_empty() {
        return Err(AdminError::Invalid(
            "an office needs at least one counter service".into(),
        ));
    }
    for s in services {
        match state.catalog().service(s) {
            Some(svc) if svc.mode.offers(mydata_core::catalog::ServiceMode::Counter) => {}
            Some(_) => {
                return Err(AdminError::Invalid(format!(
                    "service `{s}` is online only; counters can do services of mode counter or both"
                )));
            }
            None => {
                return Err(AdminError::Invalid(format!(
                    "service `{s}` is not in the catalogue"
                )));
            }
        }
    }
    let row = OfficeRow {
        id: id.into(),
        agency: agency.into(),
        name_zh: name_zh.trim().into(),
        name_en: name_en.trim().into(),
        services: serde_json::to_string(services).unwrap_or_else(|_| "[]".into()),
        created_at: state.clock().now().millis(),
    };
    state.store().put_office(&row).await?;
    Ok(row)
}

/// Registers (or renames) a counter of an office.
pub async fn register_counter(
    state: &AppState,
    office_id: &str,
    id: &str,
    name: &str,
) -> Result<CounterRow, AdminError> {
    if !valid_id(id) {
        return Err(AdminError::Invalid(
            "a counter ID is 1-64 characters of letters, digits, '-', '_' and '.'".into(),
        ));
    }
    if state.store().office(office_id).await?.is_none() {
        return Err(AdminError::Invalid(format!(
            "office `{office_id}` is not registered"
        )));
    }
    if let Some(existing) = state.store().counter(id).await?
        && existing.office_id != office_id
    {
        return Err(AdminError::Invalid(format!(
            "counter `{id}` belongs to office `{}`",
            existing.office_id
        )));
    }
    let row = CounterRow {
        id: id.into(),
        office_id: office_id.into(),
        name: if name.trim().is_empty() {
            id.into()
        } else {
            name.trim().into()
        },
        created_at: state.clock().now().millis(),
    };
    state.store().put_counter(&row).await?;
    Ok(row)
}

/// A new clerk account and the TOTP secret to give them (shown once, never stored in clear).
#[derive(Debug)]
pub struct NewClerk {
    pub clerk: ClerkRow,
    /// Base32 secret for an authenticator app.
    pub totp_secret: String,
    /// `otpauth://` URI (for a QR code).
    pub totp_uri: String,
}

fn totp_context(clerk_id: &str) -> String {
    format!("mydata:v1:clerk-totp:{clerk_id}")
}

/// What [`reseal_totp_secrets`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Sealed again with the current data key.
    pub resealed: usize,
    /// Opened by no data key listed: those clerks must enrol again.
    pub unreadable: usize,
}

/// Seals every clerk's TOTP secret that a replaced data key sealed again with the current one:
/// clerk accounts outlive any transfer, so after a switch of data keys their secrets would
/// otherwise open only as long as the old key stays listed. A secret no key opens is left as it
/// is, counted and logged (that clerk needs a new enrolment).
pub async fn reseal_totp_secrets(
    store: &mydata_store::Store,
    vault: &crate::vault::Vault,
) -> Result<Resealed, mydata_store::StoreError> {
    let mut done = Resealed::default();
    for (id, sealed) in store.clerk_totp_secrets().await? {
        match vault.reseal(&totp_context(&id), &sealed) {
            Ok(None) => {}
            Ok(Some(again)) => {
                if store.replace_clerk_totp(&id, &sealed, &again).await? {
                    done.resealed += 1;
                }
            }
            Err(e) => {
                done.unreadable += 1;
                tracing::warn!(clerk = %id, error = %e, "a clerk's TOTP secret opens with no data key listed: enrol the clerk again");
            }
        }
    }
    Ok(done)
}

fn totp(secret: Vec<u8>) -> Result<TOTP, AdminError> {
    TOTP::new(Algorithm::SHA1, TOTP_DIGITS, 1, TOTP_STEP, secret)
        .map_err(|e| AdminError::Invalid(format!("TOTP secret: {e}")))
}

/// Creates a clerk account of an office.
pub async fn register_clerk(
    state: &AppState,
    office_id: &str,
    username: &str,
    display_name: &str,
    role: Role,
    pass: &str,
    certificate_id: Option<&str>,
) -> Result<NewClerk, AdminError> {
    if !valid_id(username) {
        return Err(AdminError::Invalid(
            "a username is 1-64 characters of letters, digits, '-', '_' and '.'".into(),
        ));
    }
    password::check_new(pass, pass).map_err(|m| {
        AdminError::Invalid(format!(
            "the password is not accepted ({m}); use 10 to 128 characters"
        ))
    })?;
    if state.store().office(office_id).await?.is_none() {
        return Err(AdminError::Invalid(format!(
            "office `{office_id}` is not registered"
        )));
    }
    let subject = match certificate_id {
        Some(raw) => {
            let n = mydata_core::IdNumber::parse(raw.trim()).map_err(|_| {
                AdminError::Invalid(
                    "--certificate-id must be the clerk's ID number (as in their citizen certificate)"
                        .into(),
                )
            })?;
            Some(crate::identity::subject_pseudonym(
                state,
                &crate::identity::SubjectId::Person(n),
            ))
        }
        None => None,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let mut secret = vec![0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    let t = totp(secret.clone())?;
    let encoded = t.get_secret_base32();
    let sealed = state
        .data()
        .vault
        .seal(&totp_context(&id), &secret)
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    let hash = password::hash(pass).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let clerk = ClerkRow {
        id: id.clone(),
        office_id: office_id.into(),
        username: username.into(),
        display_name: if display_name.trim().is_empty() {
            username.into()
        } else {
            display_name.trim().into()
        },
        role: role.code().into(),
        password_hash: hash,
        totp_sealed: sealed,
        subject,
        totp_last_step: 0,
        created_at: state.clock().now().millis(),
        disabled_at: None,
    };
    if !state.store().put_clerk(&clerk).await? {
        return Err(AdminError::Invalid(format!(
            "username `{username}` is taken, or that certificate already belongs to a clerk"
        )));
    }
    let uri = format!(
        "otpauth://totp/MyData:{user}?secret={encoded}&issuer=MyData&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
        user = url::form_urlencoded::byte_serialize(username.as_bytes()).collect::<String>()
    );
    Ok(NewClerk {
        clerk,
        totp_secret: encoded,
        totp_uri: uri,
    })
}

/// The TOTP code of a base32 secret at a time (for tests and the demo).
pub fn totp_code(secret_base32: &str, at: Timestamp) -> Option<String> {
    let bytes = Secret::Encoded(secret_base32.to_owned()).to_bytes().ok()?;
    let t = totp(bytes).ok()?;
    Some(t.generate(u64::try_from(at.millis() / 1000).ok()?))
}

/// Why a clerk sign-in failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInRefusal {
    /// Unknown user, wrong password or wrong code: one message for all, so the form tells an
    /// attacker nothing about which part was right.
    Wrong,
    Locked {
        retry_after_secs: u64,
    },
    Malformed,
}

/// A clerk sign-in the form refuses, as [`AppError::ClerkRefused`] answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClerkProblem {
    #[error("the username, password or code is not right")]
    Wrong,
    #[error("fill in the username, the password and the 6-digit code")]
    Incomplete,
    #[error("no counter staff account belongs to this citizen certificate")]
    CertificateUnknown,
}

impl ClerkProblem {
    pub fn code(self) -> &'static str {
        match self {
            ClerkProblem::Wrong => "clerk_sign_in_failed",
            ClerkProblem::Incomplete => "clerk_sign_in_incomplete",
            ClerkProblem::CertificateUnknown => "clerk_certificate_unknown",
        }
    }

    pub fn status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ClerkProblem::Wrong => StatusCode::UNAUTHORIZED,
            ClerkProblem::Incomplete => StatusCode::UNPROCESSABLE_ENTITY,
            ClerkProblem::CertificateUnknown => StatusCode::FORBIDDEN,
        }
    }

    pub fn message_zh(self) -> &'static str {
        match self {
            ClerkProblem::Wrong => "帳號、密碼或動態密碼不正確。",
            ClerkProblem::Incomplete => "請填寫帳號、密碼與 6 位數動態密碼。",
            ClerkProblem::CertificateUnknown => "此自然人憑證沒有對應的臨櫃人員帳號。",
        }
    }
}

impl From<SignInRefusal> for AppError {
    fn from(r: SignInRefusal) -> Self {
        match r {
            SignInRefusal::Wrong => AppError::ClerkRefused(ClerkProblem::Wrong),
            SignInRefusal::Malformed => AppError::ClerkRefused(ClerkProblem::Incomplete),
            SignInRefusal::Locked { retry_after_secs } => AppError::LockedOut { retry_after_secs },
        }
    }
}

fn lock_key(state: &AppState, username: &str) -> String {
    format!(
        "clerk-{}",
        &state
            .identity()
            .pseudonyms
            .code("clerk-sign-in", &username.to_ascii_lowercase())[..32]
    )
}

/// Checks a clerk's password and TOTP code at the injected time.
pub async fn check_sign_in(
    state: &AppState,
    username: &str,
    pass: &str,
    code: &str,
) -> Result<Result<ClerkRow, SignInRefusal>, AppError> {
    let store = state.store();
    let now = state.clock().now();
    let code = code.trim();
    if username.is_empty()
        || username.len() > 64
        || pass.is_empty()
        || pass.len() > 1024
        || code.len() != TOTP_DIGITS
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(Err(SignInRefusal::Malformed));
    }
    let key = lock_key(state, username);
    if let Some(until) = store.locked_until(&[key.as_str()], now).await? {
        return Ok(Err(SignInRefusal::Locked {
            retry_after_secs: now.until(until).as_secs().max(1),
        }));
    }
    let clerk = store
        .clerk_by_username(username)
        .await?
        .filter(|c| c.disabled_at.is_none());
    let Some(clerk) = clerk else {
        // Spend the same work as a real check.
        password::burn(pass);
        store
            .record_failure(&[key.as_str()], SIGN_IN_RULE, now)
            .await?;
        return Ok(Err(SignInRefusal::Wrong));
    };
    let pass_ok = password::verify(pass, &clerk.password_hash);
    let step = accepted_step(state, &clerk, code, now);
    let ok = pass_ok
        && match step {
            Some(s) => store.accept_totp_step(&clerk.id, s).await?,
            None => false,
        };
    if !ok {
        if let Some(until) = store
            .record_failure(&[key.as_str()], SIGN_IN_RULE, now)
            .await?
        {
            return Ok(Err(SignInRefusal::Locked {
                retry_after_secs: now.until(until).as_secs().max(1),
            }));
        }
        return Ok(Err(SignInRefusal::Wrong));
    }
    // Sealed with a data key the platform is replacing (a clerk enrolled by a process not yet
    // switched): sealed again with the current one, so the old key can go.
    if let Ok(Some(again)) = state
        .data()
        .vault
        .reseal(&totp_context(&clerk.id), &clerk.totp_sealed)
    {
        store
            .replace_clerk_totp(&clerk.id, &clerk.totp_sealed, &again)
            .await?;
    }
    Ok(Ok(clerk))
}

/// The time step at which `code` is the clerk's TOTP (now, or one step either side).
fn accepted_step(state: &AppState, clerk: &ClerkRow, code: &str, now: Timestamp) -> Option<i64> {
    let secret = state
        .data()
        .vault
        .open(&totp_context(&clerk.id), &clerk.totp_sealed)
        .ok()?;
    let t = totp(secret.to_vec()).ok()?;
    let secs = u64::try_from(now.millis() / 1000).ok()?;
    let current = secs / TOTP_STEP;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = t.generate(step * TOTP_STEP);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            return i64::try_from(step).ok();
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// A live clerk session.
#[derive(Debug, Clone)]
pub struct ClerkSession {
    pub row: ClerkSessionRow,
    pub clerk: ClerkRow,
    pub office: OfficeRow,
}

impl ClerkSession {
    pub fn role(&self) -> Role {
        Role::parse(&self.clerk.role).unwrap_or(Role::Clerk)
    }

    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), AppError> {
        crate::identity::session::check_csrf_token(&self.row.csrf_token, given)
    }
}

fn secure(state: &AppState) -> bool {
    use crate::identity::CookieSecure;
    match state.settings().identity.cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => state.settings().tls.is_some(),
    }
}

/// The clerk cookie's name. Path-scoped to `/clerk`, so `__Host-` cannot be used; `__Secure-` is
/// when the cookie is Secure.
pub fn cookie_name(state: &AppState) -> &'static str {
    if secure(state) {
        "__Secure-mydata_clerk"
    } else {
        "mydata_clerk"
    }
}

fn cookie(state: &AppState, value: &str, max_age: Duration) -> HeaderValue {
    let mut c = format!(
        "{}={value}; Path=/clerk; HttpOnly; SameSite=Strict; Max-Age={}",
        cookie_name(state),
        max_age.as_secs()
    );
    if secure(state) {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn clear_cookie(state: &AppState) -> HeaderValue {
    cookie(state, "", Duration::ZERO)
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn token_of(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(state);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// Starts a session for a clerk who signed in; returns the cookie to set.
pub async fn start(state: &AppState, clerk: &ClerkRow) -> Result<HeaderValue, AppError> {
    let now = state.clock().now();
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let mut csrf = [0u8; 32];
    rand::rng().fill_bytes(&mut csrf);
    // A clerk whose office has one counter sits at it; otherwise they choose.
    let counters = state.store().counters_of_office(&clerk.office_id).await?;
    let counter_id = match counters.as_slice() {
        [only] => Some(only.id.clone()),
        _ => None,
    };
    state
        .store()
        .put_clerk_session(&ClerkSessionRow {
            id_hash: hash_token(&token),
            clerk_id: clerk.id.clone(),
            counter_id,
            csrf_token: URL_SAFE_NO_PAD.encode(csrf),
            created_at: now.millis(),
            last_seen_at: now.millis(),
            expires_at: now.plus(ABSOLUTE).millis(),
        })
        .await?;
    Ok(cookie(state, &token, ABSOLUTE))
}

/// The request's live clerk session (both time-outs applied; an ended one is deleted).
pub async fn load(state: &AppState, headers: &HeaderMap) -> Result<Option<ClerkSession>, AppError> {
    let Some(token) = token_of(state, headers) else {
        return Ok(None);
    };
    let store = state.store();
    let hash = hash_token(&token);
    let Some(row) = store.clerk_session(&hash).await? else {
        return Ok(None);
    };
    let now = state.clock().now();
    if now >= Timestamp::from_millis(row.expires_at)
        || now >= Timestamp::from_millis(row.last_seen_at).plus(IDLE)
    {
        store.delete_clerk_session(&hash).await?;
        return Ok(None);
    }
    let Some(clerk) = store
        .clerk(&row.clerk_id)
        .await?
        .filter(|c| c.disabled_at.is_none())
    else {
        store.delete_clerk_session(&hash).await?;
        return Ok(None);
    };
    let Some(office) = store.office(&clerk.office_id).await? else {
        return Ok(None);
    };
    store.touch_clerk_session(&hash, now).await?;
    Ok(Some(ClerkSession { row, clerk, office }))
}

/// Ends the session.
pub async fn end(state: &AppState, s: &ClerkSession) -> Result<(), AppError> {
    state.store().delete_clerk_session(&s.row.id_hash).await?;
    Ok(())
}
