//! Identity verification: who a person is and how sure the platform is of it.
//!
//! Every method plugs in through one interface, [`Method`]: it reads its form, names the account
//! the attempt is for (after validating the ID number, before anything else), and verifies. The
//! flow around it is the same for all methods (`routes::login`): lockout check per account and
//! per client address, verification, failure counting, first-use confirmation by a one-time code,
//! then a new session ID carrying subject, method, level and time ([`session`]).
//!
//! ```text
//! choose method ──▶ method form ──verify──▶ known contact? ──yes──▶ session rotated, verified
//!                        │                      │no
//!                        └─fail: count, lock    └──▶ register email/mobile ──code──▶ (same)
//! ```
//!
//! ID numbers never leave this module except towards an agency: the rest of the platform sees the
//! keyed pseudonym of [`pseudonym`].

pub mod certificate;
pub mod messages;
pub mod methods;
pub mod passkey;
pub mod password;
pub mod pseudonym;
pub mod registry;
pub mod session;

use crate::config::Settings;
use mydata_core::identity::SubjectKind;
use mydata_core::{BusinessId, IdNumber, IdentityMethod};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use methods::{Method, MethodContext};
pub use pseudonym::Pseudonyms;

/// Whether the session cookie carries the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieSecure {
    /// Secure when the server itself serves TLS.
    Auto,
    /// Always (TLS ends at a proxy in front of the platform).
    Always,
    /// Never (plain-HTTP development only).
    Never,
}

/// Settings of identity verification and sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// A session unused this long ends.
    pub session_idle_minutes: u64,
    /// A session ends this long after it began, however active.
    pub session_absolute_minutes: u64,
    pub cookie_secure: CookieSecure,
    /// The platform's origin as the person's browser sees it (`https://mydata.example`); it is part
    /// of the bytes a certificate signs. Empty means `http://<listen>`.
    pub public_origin: String,
    /// Header holding the client address set by the load balancer (its last entry is used), e.g.
    /// `x-forwarded-for`. Empty means the TCP peer address.
    pub client_address_header: String,
    /// Base URL of the agencies' identity-check API (`.../agencies/{id}/v1/identity-checks`);
    /// empty means `agencies.base_url`.
    pub registry_url: String,
    /// PEM files of the roots that issue citizen and business certificates (not the agency CA).
    pub certificate_roots: Vec<PathBuf>,
    /// PEM CRL files of those CAs, read at each verification so a new CRL takes effect at once.
    pub certificate_crls: Vec<PathBuf>,
    /// Where the page finds `mydata card-agent` on the person's computer.
    pub card_agent_url: String,
    /// How long a certificate challenge may be answered.
    pub challenge_ttl_secs: u64,
    /// How long a one-time code is valid.
    pub code_ttl_secs: u64,
    /// Wrong entries allowed per code.
    pub code_max_attempts: u32,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            session_idle_minutes: 15,
            session_absolute_minutes: 8 * 60,
            cookie_secure: CookieSecure::Auto,
            public_origin: String::new(),
            client_address_header: String::new(),
            registry_url: String::new(),
            certificate_roots: Vec::new(),
            certificate_crls: Vec::new(),
            card_agent_url: "http://127.0.0.1:61161".into(),
            challenge_ttl_secs: 120,
            code_ttl_secs: 300,
            code_max_attempts: 5,
        }
    }
}

impl IdentitySettings {
    pub fn validate(&self) -> Result<(), String> {
        let bad = |k: &str, m: &str| Err(format!("config key `identity.{k}`: {m}"));
        if self.session_idle_minutes == 0 {
            return bad("session_idle_minutes", "must be at least 1");
        }
        if self.session_absolute_minutes < self.session_idle_minutes {
            return bad(
                "session_absolute_minutes",
                "must be at least identity.session_idle_minutes",
            );
        }
        if self.challenge_ttl_secs == 0 || self.code_ttl_secs == 0 {
            return bad(
                "code_ttl_secs",
                "code and challenge lifetimes must be at least 1 second",
            );
        }
        if self.code_max_attempts == 0 {
            return bad("code_max_attempts", "must be at least 1");
        }
        for (key, url) in [
            ("public_origin", &self.public_origin),
            ("registry_url", &self.registry_url),
            ("card_agent_url", &self.card_agent_url),
        ] {
            if !url.is_empty() && url::Url::parse(url).is_err() {
                return bad(key, "must be an absolute URL such as https://host:port");
            }
        }
        Ok(())
    }
}

/// The person (or company) a method proved, before pseudonymisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectId {
    Person(IdNumber),
    Company(BusinessId),
}

impl SubjectId {
    pub fn kind(&self) -> SubjectKind {
        match self {
            SubjectId::Person(_) => SubjectKind::Natural,
            SubjectId::Company(_) => SubjectKind::Legal,
        }
    }
}

/// The fields of a submitted method form.
pub type Form = BTreeMap<String, String>;

/// Why a verification was refused. Each has a stable code; messages never say which of several
/// fields was wrong. Every one counts toward lockout, except where [`Refusal::counts`] says not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the ID number is not valid (check its letters and digits)")]
    InvalidIdNumber,
    #[error("the 統一編號 is not valid (8 digits with a correct check digit)")]
    InvalidBusinessId,
    #[error("a field is missing or malformed")]
    MalformedInput,
    #[error("the details you entered do not match the records; check them and try again")]
    Mismatch,
    #[error("the card number or password is wrong, or no password is registered for this card")]
    WrongPassword,
    #[error("the certificate is not valid (it may be expired, revoked or from an unknown issuer)")]
    CertificateInvalid,
    #[error("the certificate has expired or is not valid yet")]
    CertificateExpired,
    #[error("the certificate has been revoked")]
    CertificateRevoked,
    #[error("the certificate was not issued by a trusted certificate authority")]
    CertificateUntrusted,
    #[error("the certificate cannot be used for signing in")]
    CertificateUsage,
    #[error("the card's signature does not verify")]
    SignatureInvalid,
    #[error("the sign-in request has expired; start again")]
    ChallengeExpired,
    #[error("the sign-in request was already used or is unknown; start again")]
    ChallengeUsed,
    #[error("this certificate is for another kind of person (citizen or business)")]
    WrongSubjectKind,
    #[error(
        "the passkey's answer did not verify (it may be for another person or another site); try again"
    )]
    PasskeyInvalid,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InvalidIdNumber => "invalid_id_number",
            Refusal::InvalidBusinessId => "invalid_business_id",
            Refusal::MalformedInput => "invalid_credentials_input",
            Refusal::Mismatch => "identity_mismatch",
            Refusal::WrongPassword => "wrong_password",
            Refusal::CertificateInvalid => "certificate_invalid",
            Refusal::CertificateExpired => "certificate_expired",
            Refusal::CertificateRevoked => "certificate_revoked",
            Refusal::CertificateUntrusted => "certificate_untrusted",
            Refusal::CertificateUsage => "certificate_usage",
            Refusal::SignatureInvalid => "signature_invalid",
            Refusal::ChallengeExpired => "challenge_expired",
            Refusal::ChallengeUsed => "challenge_used",
            Refusal::WrongSubjectKind => "wrong_subject_kind",
            Refusal::PasskeyInvalid => "passkey_invalid",
        }
    }

    /// The text shown in the person's language.
    pub fn message_zh(self) -> &'static str {
        match self {
            Refusal::InvalidIdNumber => "身分證統一編號格式或檢查碼不正確，請再檢查一次。",
            Refusal::InvalidBusinessId => "統一編號應為 8 位數字且檢查碼正確。",
            Refusal::MalformedInput => "有欄位未填或格式不正確。",
            Refusal::Mismatch => "您輸入的資料與機關紀錄不符，請檢查後再試。",
            Refusal::WrongPassword => "健保卡號或密碼錯誤，或此卡尚未註冊密碼。",
            Refusal::CertificateInvalid => "憑證無效（可能已過期、已廢止或非受信任機構簽發）。",
            Refusal::CertificateExpired => "憑證已過期或尚未生效。",
            Refusal::CertificateRevoked => "憑證已被廢止。",
            Refusal::CertificateUntrusted => "憑證不是受信任的憑證機構簽發的。",
            Refusal::CertificateUsage => "此憑證不能用於登入。",
            Refusal::SignatureInvalid => "卡片簽章驗證失敗。",
            Refusal::ChallengeExpired => "登入請求已逾時，請重新開始。",
            Refusal::ChallengeUsed => "登入請求已使用過或不存在，請重新開始。",
            Refusal::WrongSubjectKind => "此憑證的種類（自然人或工商）不符。",
            Refusal::PasskeyInvalid => "通行密鑰驗證失敗（可能屬於其他人或其他網站），請再試一次。",
        }
    }

    /// Whether the refusal counts toward lockout. Input that never reached a check (a challenge
    /// that ran out, a form that lost a field) does not: it cannot be a guess.
    pub fn counts(self) -> bool {
        !matches!(self, Refusal::ChallengeExpired | Refusal::MalformedInput)
    }
}

/// The subject's keyed pseudonym (HMAC-SHA256 of the ID number or 統一編號 under the subject key,
/// `keys.pseudonym_key`): the one name under which sessions, passwords, passkeys and transfers
/// record the subject. Every pseudonym is made here.
pub fn subject_pseudonym(state: &crate::state::AppState, id: &SubjectId) -> String {
    let raw = match id {
        SubjectId::Person(n) => n.as_str(),
        SubjectId::Company(b) => b.as_str(),
    };
    state.identity().subjects.pseudonym(raw)
}

/// Long-lived identity services of one process: the pseudonym key, the agency client and the
/// methods on offer.
#[derive(Debug, Clone)]
pub struct Identity {
    pub pseudonyms: Arc<Pseudonyms>,
    /// The subject pseudonym key; use it through [`subject_pseudonym`].
    pub(crate) subjects: Arc<pseudonym::SubjectKey>,
    pub http: reqwest::Client,
    methods: Arc<Vec<Arc<dyn Method>>>,
}

impl Identity {
    /// The check values of the pseudonym and identity-hash keys, for [`crate::keys::check_shared`]:
    /// processes on different machines each create their own key files when none are configured,
    /// and records would split under two pseudonyms per person, lockouts count per process.
    pub fn key_checks(&self) -> [(&'static str, String); 2] {
        [
            ("pseudonym_key", self.subjects.check_value()),
            ("identity_hash_key", self.pseudonyms.check_value()),
        ]
    }

    /// Loads (or creates) the pseudonym key and sets up the methods the settings allow.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let pseudonyms = Arc::new(Pseudonyms::load_or_create(
            &settings.identity_hash_key_path(),
        )?);
        // Loaded before the data key is created, so a fresh installation gets a random key and
        // only one from before this file existed continues its data-key-derived pseudonyms.
        let subjects = Arc::new(pseudonym::SubjectKey::load_or_create(
            &settings.pseudonym_key_path(),
            Some(&settings.data_key_path()),
        )?);
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let methods: Vec<Arc<dyn Method>> = vec![
            Arc::new(certificate::CertificateMethod::new(
                IdentityMethod::MoicaCert,
            )),
            Arc::new(certificate::CertificateMethod::new(
                IdentityMethod::MoeaCert,
            )),
            Arc::new(passkey::PasskeyMethod),
            Arc::new(methods::NhiCard),
            Arc::new(methods::DualId),
        ];
        Ok(Self {
            pseudonyms,
            subjects,
            http,
            methods: Arc::new(methods),
        })
    }

    /// The method implementing `m`, if this platform offers it.
    pub fn method(&self, m: IdentityMethod) -> Option<Arc<dyn Method>> {
        self.methods.iter().find(|x| x.method() == m).cloned()
    }

    /// Whether `m` can be used here.
    pub fn offers(&self, m: IdentityMethod) -> bool {
        self.method(m).is_some()
    }
}
