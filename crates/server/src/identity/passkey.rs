//! Passkeys: the TW FidO / mobile citizen certificate analogue (level 2), as WebAuthn credentials
//! verified by webauthn-rs.
//!
//! As TW FidO must be bound with a citizen certificate, a passkey can only be registered in a
//! session verified at level 1. Signing in, the person gives their ID number (so the account is
//! known before anything else, for lockout and so the session can carry it sealed, as with every
//! method); the platform offers that person's passkeys, the device checks the person (user
//! verification is required) and signs the challenge. Both ceremonies keep their state in the
//! database, bound to the session and to the origin they were started for, single use and
//! expiring, so any process can finish what another started. The relying-party ID is the host of
//! `identity.public_origin` (or, when that is empty, of the request's own origin), which must be a
//! domain name: browsers refuse passkeys for IP addresses.

use super::methods::{Method, MethodContext, MethodError, MethodFuture, field, id_number};
use super::session::{Session, Verified};
use super::{Form, Refusal, SubjectId};
use crate::error::AppError;
use crate::state::AppState;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::{IdentityMethod, Timestamp};
use mydata_store::{CeremonyRow, CeremonyUse, PasskeyRow};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::Duration;
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    Webauthn, WebauthnBuilder,
};

pub const REGISTER: &str = "register";
pub const AUTHENTICATE: &str = "authenticate";
/// Largest credential JSON accepted from a page (a passkey response is about 1 KiB).
const MAX_CREDENTIAL_JSON: usize = 16 * 1024;
/// Most passkeys one person may register (a phone, a tablet, a laptop, spares).
pub const MAX_PASSKEYS: usize = 10;
/// Longest passkey name kept.
const MAX_NAME_CHARS: usize = 40;

/// Why a passkey operation (other than a sign-in, see [`Refusal`]) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyProblem {
    #[error(
        "no passkey is registered for this ID number; sign in with a citizen certificate and register one first"
    )]
    NotRegistered,
    #[error(
        "passkeys are not available here: the platform's address must be a domain name (set identity.public_origin)"
    )]
    Unavailable,
    #[error("the device's answer to the registration did not verify; start again")]
    RegistrationFailed,
    #[error("this passkey is already registered")]
    AlreadyRegistered,
    #[error("you already have the most passkeys allowed ({MAX_PASSKEYS}); remove one first")]
    TooMany,
    #[error("no such passkey among yours")]
    NotFound,
}

impl PasskeyProblem {
    pub fn code(self) -> &'static str {
        match self {
            PasskeyProblem::NotRegistered => "passkey_not_registered",
            PasskeyProblem::Unavailable => "passkey_unavailable",
            PasskeyProblem::RegistrationFailed => "passkey_registration_failed",
            PasskeyProblem::AlreadyRegistered => "passkey_already_registered",
            PasskeyProblem::TooMany => "passkey_limit_reached",
            PasskeyProblem::NotFound => "passkey_not_found",
        }
    }

    pub fn status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            PasskeyProblem::NotRegistered => StatusCode::NOT_FOUND,
            PasskeyProblem::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            PasskeyProblem::RegistrationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            PasskeyProblem::AlreadyRegistered | PasskeyProblem::TooMany => StatusCode::CONFLICT,
            PasskeyProblem::NotFound => StatusCode::NOT_FOUND,
        }
    }

    pub fn message_zh(self) -> &'static str {
        match self {
            PasskeyProblem::NotRegistered => {
                "此身分證號尚未註冊通行密鑰，請先以自然人憑證登入後註冊。"
            }
            PasskeyProblem::Unavailable => "本平臺目前無法使用通行密鑰（平臺網址須為網域名稱）。",
            PasskeyProblem::RegistrationFailed => "裝置的註冊回應驗證失敗，請重新開始。",
            PasskeyProblem::AlreadyRegistered => "此通行密鑰已經註冊過了。",
            PasskeyProblem::TooMany => "通行密鑰已達上限，請先移除一個。",
            PasskeyProblem::NotFound => "找不到這個通行密鑰。",
        }
    }
}

impl From<PasskeyProblem> for AppError {
    fn from(p: PasskeyProblem) -> Self {
        AppError::Passkey(p)
    }
}

/// The relying party for an origin: its host is the RP ID and must be a domain name.
pub fn relying_party(state: &AppState, origin: &str) -> Result<Webauthn, PasskeyProblem> {
    let url = Url::parse(origin).map_err(|_| PasskeyProblem::Unavailable)?;
    let rp_id = url.domain().ok_or(PasskeyProblem::Unavailable)?.to_owned();
    WebauthnBuilder::new(&rp_id, &url)
        .map(|b| {
            b.rp_name("MyData").timeout(Duration::from_secs(
                state.settings().identity.challenge_ttl_secs,
            ))
        })
        .and_then(WebauthnBuilder::build)
        .map_err(|_| PasskeyProblem::Unavailable)
}

/// The WebAuthn user handle of a subject: derived from the pseudonym, so it names no one.
fn user_handle(subject: &str) -> Uuid {
    let h = Sha256::digest(format!("mydata:v1:passkey-user:{subject}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    Uuid::from_bytes(b)
}

/// An ID number shown on the person's own device without giving it all away (A1******89).
pub(crate) fn masked(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() < 5 {
        return "*".repeat(chars.len());
    }
    let n = chars.len();
    format!(
        "{}{}{}",
        chars[..2].iter().collect::<String>(),
        "*".repeat(n - 4),
        chars[n - 2..].iter().collect::<String>()
    )
}

/// A ceremony as handed to the page: its ID and the options for `navigator.credentials`.
#[derive(Debug, Serialize)]
pub struct Started<T: Serialize> {
    pub ceremony_id: String,
    pub options: T,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
}

fn internal(e: impl std::fmt::Display) -> AppError {
    AppError::Internal(anyhow::anyhow!("passkey: {e}"))
}

async fn put_ceremony(
    state: &AppState,
    session_hash: &str,
    kind: &str,
    subject: &str,
    origin: &str,
    state_json: String,
) -> Result<(String, Timestamp), AppError> {
    let now = state.clock().now();
    let expires = now.plus(Duration::from_secs(
        state.settings().identity.challenge_ttl_secs,
    ));
    let id = uuid::Uuid::new_v4().simple().to_string();
    state
        .store()
        .put_passkey_ceremony(&CeremonyRow {
            id: id.clone(),
            session_hash: session_hash.to_owned(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            origin: origin.to_owned(),
            state: state_json,
            created_at: now.millis(),
            expires_at: expires.millis(),
            used_at: None,
        })
        .await?;
    Ok((id, expires))
}

/// Takes a ceremony once; refusals as for certificate challenges.
async fn take(
    state: &AppState,
    id: &str,
    session_hash: &str,
    kind: &str,
) -> Result<CeremonyRow, Refusal> {
    match state
        .store()
        .take_passkey_ceremony(id, session_hash, kind, state.clock().now())
        .await
    {
        Ok(CeremonyUse::Taken(row)) => Ok(*row),
        Ok(CeremonyUse::Expired) => Err(Refusal::ChallengeExpired),
        Ok(CeremonyUse::Unusable) => Err(Refusal::ChallengeUsed),
        Err(e) => {
            tracing::error!(error = %e, "taking a passkey ceremony");
            Err(Refusal::ChallengeUsed)
        }
    }
}

fn stored_passkeys(rows: &[PasskeyRow]) -> Vec<Passkey> {
    rows.iter()
        .filter_map(|r| serde_json::from_str::<Passkey>(&r.passkey).ok())
        .collect()
}

/// The counter and backup flags of a passkey record, to be stored beside it.
fn flags(pk: &Passkey) -> (i64, bool, bool) {
    let v = serde_json::to_value(pk).unwrap_or_default();
    let c = &v["cred"];
    (
        c["counter"].as_i64().unwrap_or(0),
        c["backup_eligible"].as_bool().unwrap_or(false),
        c["backup_state"].as_bool().unwrap_or(false),
    )
}

/// Whether a session may register passkeys: verified at level 1 as a natural person.
pub fn may_register(v: &Verified) -> bool {
    v.level == mydata_core::AssuranceLevel::L1
        && v.subject_kind == mydata_core::identity::SubjectKind::Natural
}

/// Starts registering a passkey for the level-1 session's person.
pub async fn start_registration(
    state: &AppState,
    s: &Session,
    origin: &str,
) -> Result<Started<CreationChallengeResponse>, AppError> {
    let v = s.verified().ok_or(AppError::NotSignedIn)?;
    if !may_register(&v) {
        return Err(AppError::InsufficientLevel {
            required: mydata_core::AssuranceLevel::L1,
        });
    }
    let rp = relying_party(state, origin)?;
    let existing = state.store().passkeys_of(&v.subject).await?;
    if existing.len() >= MAX_PASSKEYS {
        return Err(PasskeyProblem::TooMany.into());
    }
    let exclude: Vec<Vec<u8>> = stored_passkeys(&existing)
        .iter()
        .map(|p| p.cred_id().clone())
        .collect();
    let id = super::session::subject_id(state, &v)?;
    let shown = masked(&super::session::subject_text(&id));
    let (ccr, reg) = rp
        .start_passkey_registration(
            user_handle(&v.subject),
            &shown,
            &format!("MyData {shown}"),
            (!exclude.is_empty()).then_some(exclude),
        )
        .map_err(internal)?;
    let json = serde_json::to_string(&reg).map_err(internal)?;
    let (ceremony_id, expires) =
        put_ceremony(state, s.id_hash(), REGISTER, &v.subject, origin, json).await?;
    Ok(Started {
        ceremony_id,
        options: ccr,
        expires_at: expires.millis(),
    })
}

/// Finishes a registration: the device's answer must verify against the stored ceremony of this
/// session, which is still verified at level 1 as the same person.
pub async fn finish_registration(
    state: &AppState,
    s: &Session,
    ceremony_id: &str,
    credential: &str,
    name: &str,
) -> Result<PasskeyRow, AppError> {
    let v = s.verified().ok_or(AppError::NotSignedIn)?;
    if !may_register(&v) {
        return Err(AppError::InsufficientLevel {
            required: mydata_core::AssuranceLevel::L1,
        });
    }
    let row = take(state, ceremony_id, s.id_hash(), REGISTER)
        .await
        .map_err(AppError::IdentityRefused)?;
    if row.subject != v.subject {
        return Err(AppError::IdentityRefused(Refusal::ChallengeUsed));
    }
    if credential.len() > MAX_CREDENTIAL_JSON {
        return Err(PasskeyProblem::RegistrationFailed.into());
    }
    let reg_state: PasskeyRegistration = serde_json::from_str(&row.state).map_err(internal)?;
    let answer: RegisterPublicKeyCredential =
        serde_json::from_str(credential).map_err(|_| PasskeyProblem::RegistrationFailed)?;
    let rp = relying_party(state, &row.origin)?;
    let existing_ids: Vec<String> = state
        .store()
        .passkeys_of(&v.subject)
        .await?
        .into_iter()
        .map(|r| r.credential_id)
        .collect();
    let pk = rp
        .finish_passkey_registration(&answer, &reg_state)
        .map_err(|e| {
            tracing::info!(error = %e, "passkey registration did not verify");
            // The library refuses a credential of the exclusion list (under a misleading error
            // name): say so plainly when the device answered with one the person already has.
            let raw = URL_SAFE_NO_PAD.encode(&answer.raw_id);
            if existing_ids.contains(&raw) {
                PasskeyProblem::AlreadyRegistered
            } else {
                PasskeyProblem::RegistrationFailed
            }
        })?;
    if existing_ids.len() >= MAX_PASSKEYS {
        return Err(PasskeyProblem::TooMany.into());
    }
    let (count, be, bs) = flags(&pk);
    let now = state.clock().now();
    let name: String = name.trim().chars().take(MAX_NAME_CHARS).collect();
    let stored = PasskeyRow {
        id: uuid::Uuid::new_v4().simple().to_string(),
        subject: v.subject.clone(),
        credential_id: URL_SAFE_NO_PAD.encode(pk.cred_id()),
        passkey: serde_json::to_string(&pk).map_err(internal)?,
        name: if name.is_empty() {
            "Passkey".into()
        } else {
            name
        },
        sign_count: count,
        backup_eligible: i64::from(be),
        backup_state: i64::from(bs),
        created_at: now.millis(),
        last_used_at: None,
    };
    if !state.store().add_passkey(&stored).await? {
        return Err(PasskeyProblem::AlreadyRegistered.into());
    }
    Ok(stored)
}

/// Starts a sign-in for `subject`: the options naming their passkeys, or `None` when they have none.
pub async fn start_authentication(
    state: &AppState,
    session_hash: &str,
    subject: &str,
    origin: &str,
) -> Result<Option<Started<RequestChallengeResponse>>, AppError> {
    let rp = relying_party(state, origin)?;
    let keys = stored_passkeys(&state.store().passkeys_of(subject).await?);
    if keys.is_empty() {
        return Ok(None);
    }
    let (rcr, auth) = rp.start_passkey_authentication(&keys).map_err(internal)?;
    let json = serde_json::to_string(&auth).map_err(internal)?;
    let (ceremony_id, expires) =
        put_ceremony(state, session_hash, AUTHENTICATE, subject, origin, json).await?;
    Ok(Some(Started {
        ceremony_id,
        options: rcr,
        expires_at: expires.millis(),
    }))
}

/// TW FidO (level 2): the ID number, then an assertion by one of that person's passkeys.
#[derive(Debug)]
pub struct PasskeyMethod;

impl Method for PasskeyMethod {
    fn method(&self) -> IdentityMethod {
        IdentityMethod::TwFido
    }

    fn fields(&self) -> &'static [&'static str] {
        &["id_number"]
    }

    fn account(&self, form: &Form) -> Result<SubjectId, Refusal> {
        id_number(form).map(SubjectId::Person)
    }

    fn verify<'a>(
        &'a self,
        cx: &'a MethodContext<'a>,
        form: &'a Form,
        account: &'a SubjectId,
    ) -> MethodFuture<'a, Result<SubjectId, MethodError>> {
        Box::pin(async move {
            let state = cx.state;
            let ceremony_id = field(form, "ceremony_id").ok_or(Refusal::MalformedInput)?;
            let credential = field(form, "credential").ok_or(Refusal::MalformedInput)?;
            let row = take(state, ceremony_id, cx.session_hash, AUTHENTICATE).await?;
            let subject = super::subject_pseudonym(state, account);
            // A ceremony started for one ID number cannot sign in another.
            if row.subject != subject {
                return Err(Refusal::PasskeyInvalid.into());
            }
            if credential.len() > MAX_CREDENTIAL_JSON {
                return Err(Refusal::PasskeyInvalid.into());
            }
            let answer: PublicKeyCredential =
                serde_json::from_str(credential).map_err(|_| Refusal::PasskeyInvalid)?;
            let auth: PasskeyAuthentication = serde_json::from_str(&row.state)
                .map_err(|e| MethodError::Internal(e.to_string()))?;
            let rp = relying_party(state, &row.origin)
                .map_err(|e| MethodError::Internal(e.to_string()))?;
            let result = rp
                .finish_passkey_authentication(&answer, &auth)
                .map_err(|e| {
                    tracing::info!(error = %e, "passkey assertion did not verify");
                    Refusal::PasskeyInvalid
                })?;
            let cred_id = URL_SAFE_NO_PAD.encode(result.cred_id());
            let rows = state
                .store()
                .passkeys_of(&subject)
                .await
                .map_err(|e| MethodError::Internal(e.to_string()))?;
            let Some(stored) = rows.iter().find(|r| r.credential_id == cred_id) else {
                // Removed between the start and the answer.
                return Err(Refusal::PasskeyInvalid.into());
            };
            let mut pk: Passkey = serde_json::from_str(&stored.passkey)
                .map_err(|e| MethodError::Internal(e.to_string()))?;
            pk.update_credential(&result);
            let (count, be, bs) = flags(&pk);
            let json =
                serde_json::to_string(&pk).map_err(|e| MethodError::Internal(e.to_string()))?;
            state
                .store()
                .record_passkey_use(&cred_id, &json, count, be, bs, state.clock().now())
                .await
                .map_err(|e| MethodError::Internal(e.to_string()))?;
            Ok(account.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_masked_and_user_handles_name_no_one() {
        assert_eq!(masked("A123456789"), "A1******89");
        assert_eq!(masked("abc"), "***");
        let h = user_handle("p1");
        assert_eq!(h, user_handle("p1"));
        assert_ne!(h, user_handle("p2"));
    }
}
