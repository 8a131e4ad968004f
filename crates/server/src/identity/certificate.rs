//! Certificate sign-in (level 1): the citizen certificate (自然人憑證) for persons and the business
//! certificate (工商憑證) for companies, following `card-agent-contract.md`.
//!
//! The platform issues a challenge (random 32-byte nonce, an ID, two minutes, single use, bound to
//! the session); the card signs the UTF-8 text
//! `mydata-login-v1\n{platform origin}\n{challenge id}\n{nonce base64url}`; the platform then
//! checks, in order: the challenge (unused, unexpired, this session's), the chain to a configured
//! identity root with validity dates and revocation (CRL, every level of the chain), the key usage
//! (digitalSignature), the signature over exactly those bytes, and maps the subject serialNumber
//! (ID number, or 統一編號 for a business certificate) to the subject. The identity roots are a
//! trust setting of their own, separate from the agency CA that signs datasets.

use super::methods::{Method, MethodContext, MethodError, MethodFuture};
use super::{Form, Refusal, SubjectId};
use crate::error::AppError;
use crate::state::AppState;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mydata_core::{IdNumber, IdentityMethod, Timestamp};
use mydata_store::ChallengeUse;
use rand::RngCore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use serde::Serialize;
use std::time::Duration;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_cert::der::{Decode, Tag, Tagged};

/// The first line of every text a card signs for this platform.
pub const DOMAIN: &str = "mydata-login-v1";
/// Most certificates accepted in `x5c` (leaf and intermediates).
const MAX_CHAIN: usize = 4;
/// Largest accepted certificate (DER bytes).
const MAX_CERT: usize = 8 * 1024;

static ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] =
    &[webpki::ring::ECDSA_P256_SHA256];

/// The text the card signs.
pub fn to_be_signed(origin: &str, challenge_id: &str, nonce_b64: &str) -> String {
    format!("{DOMAIN}\n{origin}\n{challenge_id}\n{nonce_b64}")
}

/// A challenge as handed to the page.
#[derive(Debug, Clone, Serialize)]
pub struct Challenge {
    pub challenge_id: String,
    pub nonce: String,
    /// base64url (no padding) of the UTF-8 bytes to sign, as the card agent expects them.
    pub to_be_signed: String,
    /// Milliseconds since the Unix epoch.
    pub expires_at: i64,
}

/// Issues a challenge bound to the session.
pub async fn issue(
    state: &AppState,
    session_hash: &str,
    origin: &str,
) -> Result<Challenge, AppError> {
    let mut nonce = [0u8; 32];
    rand::rng().fill_bytes(&mut nonce);
    let nonce = URL_SAFE_NO_PAD.encode(nonce);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let text = to_be_signed(origin, &id, &nonce);
    let now = state.clock().now();
    let expires = now.plus(Duration::from_secs(
        state.settings().identity.challenge_ttl_secs,
    ));
    state
        .store()
        .put_challenge(&id, session_hash, &text, now, expires)
        .await?;
    Ok(Challenge {
        challenge_id: id,
        nonce,
        to_be_signed: URL_SAFE_NO_PAD.encode(text.as_bytes()),
        expires_at: expires.millis(),
    })
}

/// The certificate chain of a form: `x5c` as a JSON array of base64 DER certificates.
fn chain(form: &Form) -> Result<Vec<CertificateDer<'static>>, Refusal> {
    let raw = super::methods::field(form, "x5c").ok_or(Refusal::MalformedInput)?;
    let list: Vec<String> = serde_json::from_str(raw).map_err(|_| Refusal::CertificateInvalid)?;
    if list.is_empty() || list.len() > MAX_CHAIN {
        return Err(Refusal::CertificateInvalid);
    }
    list.iter()
        .map(|b| {
            let der = STANDARD
                .decode(b.trim())
                .map_err(|_| Refusal::CertificateInvalid)?;
            if der.len() > MAX_CERT {
                return Err(Refusal::CertificateInvalid);
            }
            Ok(CertificateDer::from(der))
        })
        .collect()
}

/// OID 2.5.4.5 (subject serialNumber) and 2.5.29.15 (key usage).
const SERIAL_NUMBER: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.5");
const KEY_USAGE: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.29.15");

/// The subject serialNumber of a certificate.
fn subject_serial(cert: &x509_cert::Certificate) -> Option<String> {
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == SERIAL_NUMBER)
        .filter(|atv| matches!(atv.value.tag(), Tag::PrintableString | Tag::Utf8String))
        .and_then(|atv| std::str::from_utf8(atv.value.value()).ok())
        .map(|s| s.trim().to_owned())
}

/// Whether the certificate's key usage includes digitalSignature (absent extension: no).
fn signs_digitally(cert: &x509_cert::Certificate) -> bool {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == KEY_USAGE)
        .and_then(|e| x509_cert::ext::pkix::KeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|ku| ku.digital_signature())
}

fn read_pem_files<T>(
    paths: &[std::path::PathBuf],
    parse: impl Fn(&[u8]) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, MethodError> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p)
            .map_err(|e| MethodError::Internal(format!("cannot read {}: {e}", p.display())))?;
        out.extend(
            parse(&bytes).map_err(|e| MethodError::Internal(format!("{}: {e}", p.display())))?,
        );
    }
    Ok(out)
}

/// Checks chain, dates, revocation and usage; returns the parsed leaf.
fn verify_chain(
    state: &AppState,
    chain: &[CertificateDer<'static>],
    now: Timestamp,
) -> Result<(), MethodError> {
    let settings = &state.settings().identity;
    let roots: Vec<CertificateDer<'static>> = read_pem_files(&settings.certificate_roots, |b| {
        CertificateDer::pem_slice_iter(b)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    })?;
    if roots.is_empty() {
        // No identity root configured: nobody can be trusted, and that is the operator's problem.
        return Err(MethodError::Internal(
            "no identity.certificate_roots configured".into(),
        ));
    }
    let anchors: Vec<TrustAnchor<'_>> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let crls: Vec<CertRevocationList<'static>> = read_pem_files(&settings.certificate_crls, |b| {
        CertificateRevocationListDer::pem_slice_iter(b)
            .map(|c| {
                c.map_err(|e| e.to_string()).and_then(|der| {
                    OwnedCertRevocationList::from_der(der.as_ref())
                        .map(CertRevocationList::from)
                        .map_err(|e| format!("{e:?}"))
                })
            })
            .collect()
    })?;
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    // Revocation must be established for every certificate: no CRL, no sign-in.
    let revocation = RevocationOptionsBuilder::new(&crl_refs)
        .map_err(|_| MethodError::Internal("no identity.certificate_crls configured".into()))?
        .with_depth(RevocationCheckDepth::Chain)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .with_expiration_policy(ExpirationPolicy::Enforce)
        .build();
    let (leaf, intermediates) = chain.split_first().ok_or(Refusal::CertificateInvalid)?;
    let ee = EndEntityCert::try_from(leaf).map_err(|_| Refusal::CertificateInvalid)?;
    let time = UnixTime::since_unix_epoch(Duration::from_millis(
        u64::try_from(now.millis()).unwrap_or(0),
    ));
    ee.verify_for_usage(
        ALGS,
        &anchors,
        intermediates,
        time,
        // Citizen cards carry no extended key usage, or client authentication.
        KeyUsage::client_auth(),
        Some(revocation),
        None,
    )
    .map_err(|e| MethodError::Refused(refusal_of(&e)))?;
    Ok(())
}

#[allow(deprecated)]
fn refusal_of(e: &webpki::Error) -> Refusal {
    match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            Refusal::CertificateExpired
        }
        webpki::Error::CertRevoked => Refusal::CertificateRevoked,
        webpki::Error::UnknownIssuer => Refusal::CertificateUntrusted,
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            Refusal::CertificateUsage
        }
        _ => Refusal::CertificateInvalid,
    }
}

/// 自然人憑證 or 工商憑證 by challenge and signature.
#[derive(Debug)]
pub struct CertificateMethod {
    method: IdentityMethod,
}

impl CertificateMethod {
    pub fn new(method: IdentityMethod) -> Self {
        Self { method }
    }
}

impl Method for CertificateMethod {
    fn method(&self) -> IdentityMethod {
        self.method
    }

    fn fields(&self) -> &'static [&'static str] {
        &["challenge_id", "signature", "x5c"]
    }

    fn account(&self, form: &Form) -> Result<SubjectId, Refusal> {
        let chain = chain(form)?;
        let leaf = chain.first().ok_or(Refusal::CertificateInvalid)?;
        let cert = x509_cert::Certificate::from_der(leaf.as_ref())
            .map_err(|_| Refusal::CertificateInvalid)?;
        let serial = subject_serial(&cert).ok_or(Refusal::CertificateInvalid)?;
        match self.method {
            IdentityMethod::MoeaCert => {
                if IdNumber::parse(&serial).is_ok() {
                    return Err(Refusal::WrongSubjectKind);
                }
                super::methods::business_id(&serial).map(SubjectId::Company)
            }
            _ => match IdNumber::parse(&serial) {
                Ok(id) => Ok(SubjectId::Person(id)),
                Err(_) if super::methods::business_id(&serial).is_ok() => {
                    Err(Refusal::WrongSubjectKind)
                }
                Err(_) => Err(Refusal::InvalidIdNumber),
            },
        }
    }

    fn verify<'a>(
        &'a self,
        cx: &'a MethodContext<'a>,
        form: &'a Form,
        account: &'a SubjectId,
    ) -> MethodFuture<'a, Result<SubjectId, MethodError>> {
        Box::pin(async move {
            let state = cx.state;
            let now = state.clock().now();
            let challenge_id =
                super::methods::field(form, "challenge_id").ok_or(Refusal::MalformedInput)?;
            let signature = super::methods::field(form, "signature")
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .ok_or(Refusal::SignatureInvalid)?;
            let text = match state
                .store()
                .take_challenge(challenge_id, cx.session_hash, now)
                .await
                .map_err(|e| MethodError::Internal(e.to_string()))?
            {
                ChallengeUse::Taken { to_be_signed } => to_be_signed,
                ChallengeUse::Expired => return Err(Refusal::ChallengeExpired.into()),
                ChallengeUse::Unusable => return Err(Refusal::ChallengeUsed.into()),
            };
            let chain = chain(form)?;
            verify_chain(state, &chain, now)?;
            let leaf = chain.first().ok_or(Refusal::CertificateInvalid)?;
            let cert = x509_cert::Certificate::from_der(leaf.as_ref())
                .map_err(|_| Refusal::CertificateInvalid)?;
            if !signs_digitally(&cert) {
                return Err(Refusal::CertificateUsage.into());
            }
            let ee = EndEntityCert::try_from(leaf).map_err(|_| Refusal::CertificateInvalid)?;
            ee.verify_signature(ALGS[0], text.as_bytes(), &signature)
                .map_err(|_| Refusal::SignatureInvalid)?;
            Ok(account.clone())
        })
    }
}
