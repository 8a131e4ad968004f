//! Tokens an agency signs with its data-signing key to call the platform (for example to export its
//! transfer records): a compact JWS (ES256) carrying its certificate chain in `x5c`, accepted only
//! when that chain leads to a trusted root (the same [`TrustStore`] checks as a signed dataset).
//! Claims (`aud`, `exp`, `jti`) are the caller's to check; this module proves who signed.

use crate::dataset::AgencySigner;
use crate::ecdsa::PublicKey;
use crate::jws::{self, Compact};
use crate::pki::{CertError, TrustStore, common_name};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mydata_core::Timestamp;
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use rustls_pki_types::CertificateDer;

/// Most certificates accepted in `x5c` (agency certificate and intermediates).
const MAX_CHAIN: usize = 4;

/// Why an agency token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgencyTokenError {
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    #[error("the header has no x5c certificate chain")]
    NoChain,
    #[error("the x5c certificate chain is not base64 DER or too long")]
    BadChain,
    #[error("the certificate is not trusted: {0}")]
    Certificate(#[from] CertError),
    #[error("the certificate's key cannot be read: {0}")]
    PublicKey(String),
    #[error("the signature does not verify with the certificate's key")]
    Signature,
}

/// A token whose signature and certificate chain hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAgencyToken {
    /// The agency ID: the subject CN of the verified certificate.
    pub agency_id: String,
    /// The signed claims (bytes as signed).
    pub payload: Vec<u8>,
}

impl AgencySigner {
    /// Signs `claims` as a JWT (`typ: JWT`, ES256, `x5c` = this agency's certificate chain).
    pub fn sign_token(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": self.chain_b64()});
        let header_b64 = jws::b64url(header.to_string().as_bytes());
        jws::sign_compact(self.key_pair(), &header_b64, claims.to_string().as_bytes())
    }
}

/// Verifies an agency token: `x5c[0]` chains to a trusted root, is valid at `now` with the
/// data-signing usage and is not revoked, and its key signed the token.
pub fn verify_agency_token(
    token: &[u8],
    trust: &TrustStore,
    now: Timestamp,
) -> Result<VerifiedAgencyToken, AgencyTokenError> {
    let jws = Compact::parse(token).map_err(AgencyTokenError::Malformed)?;
    let x5c = jws
        .header
        .get("x5c")
        .and_then(|v| v.as_array())
        .filter(|a| !a.is_empty())
        .ok_or(AgencyTokenError::NoChain)?;
    if x5c.len() > MAX_CHAIN {
        return Err(AgencyTokenError::BadChain);
    }
    let chain = x5c
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .map(CertificateDer::from)
                .ok_or(AgencyTokenError::BadChain)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ee = trust.verify_agency_chain(&chain, now)?;
    let agency_id = common_name(ee.subject()).ok_or(CertError::NoCommonName)?;
    let key = VerifyingKey::from_public_key_der(ee.subject_public_key_info().as_ref())
        .map_err(|e| e.to_string())
        .and_then(|k| PublicKey::new(&k))
        .map_err(AgencyTokenError::PublicKey)?;
    if !jws.verify(&key) {
        return Err(AgencyTokenError::Signature);
    }
    Ok(VerifiedAgencyToken {
        agency_id,
        payload: jws.payload,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pki::SimulatedCa;

    const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);
    const DAY: i64 = 86_400_000;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_millis(NOW.millis() + offset)
    }

    fn trust_of(ca: &SimulatedCa) -> TrustStore {
        let mut trust = TrustStore::new();
        trust.add_root_der(ca.root_der()).unwrap();
        trust
            .add_crl_der(ca.crl(&[], at(-DAY), at(DAY)).unwrap().der())
            .unwrap();
        trust
    }

    #[test]
    fn a_token_verifies_only_with_a_trusted_valid_certificate_and_untouched_claims() {
        let ca = SimulatedCa::new("Root", at(-10 * DAY), at(10 * DAY)).unwrap();
        let trust = trust_of(&ca);
        let (signer, _) = ca.issue_agency("ris-001", at(-DAY), at(DAY)).unwrap();
        let claims = serde_json::json!({"iss": "ris-001", "jti": "1"});
        let token = signer.sign_token(&claims);
        let ok = verify_agency_token(token.as_bytes(), &trust, NOW).unwrap();
        assert_eq!(ok.agency_id, "ris-001");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&ok.payload).unwrap(),
            claims
        );

        // Claims edited after signing.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            jws::b64url(br#"{"iss":"other","jti":"1"}"#),
            parts[2]
        );
        assert!(matches!(
            verify_agency_token(forged.as_bytes(), &trust, NOW),
            Err(AgencyTokenError::Signature)
        ));
        // A certificate from another CA, an expired one, no chain, garbage.
        let other = SimulatedCa::new("Other", at(-DAY), at(DAY)).unwrap();
        let (stranger, _) = other.issue_agency("ris-001", at(-DAY), at(DAY)).unwrap();
        assert!(matches!(
            verify_agency_token(stranger.sign_token(&claims).as_bytes(), &trust, NOW),
            Err(AgencyTokenError::Certificate(_))
        ));
        let (expired, _) = ca.issue_agency("ris-001", at(-3 * DAY), at(-DAY)).unwrap();
        assert!(matches!(
            verify_agency_token(expired.sign_token(&claims).as_bytes(), &trust, NOW),
            Err(AgencyTokenError::Certificate(_))
        ));
        let no_chain = format!(
            "{}.{}.{}",
            jws::b64url(br#"{"alg":"ES256"}"#),
            parts[1],
            parts[2]
        );
        assert!(matches!(
            verify_agency_token(no_chain.as_bytes(), &trust, NOW),
            Err(AgencyTokenError::NoChain)
        ));
        assert!(matches!(
            verify_agency_token(b"not.a-token", &trust, NOW),
            Err(AgencyTokenError::Malformed(_))
        ));
    }
}
