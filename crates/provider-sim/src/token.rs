//! The platform's request token: a compact JWS (ES256) whose claims say who asks for what.
//!
//! The platform signs one token per call to an agency; the agency checks the signature with the
//! platform's public key, the issuer, its own ID as audience, the lifetime and that the `jti` was
//! not seen before. Hand-rolled on `p256` + `base64` (the workspace already audits both) because a
//! single algorithm and a fixed claim set are all that is needed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::Timestamp;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The only accepted issuer.
pub const ISSUER: &str = "mydata-platform";
/// The longest lifetime (`exp - iat`) an agency accepts, in seconds.
pub const MAX_LIFETIME_SECS: i64 = 300;
/// Clock skew tolerated on `iat` and `exp`, in seconds.
pub const LEEWAY_SECS: i64 = 30;

/// How the person (or company) proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assurance {
    /// An identity method code (`moica_cert`, `tw_fido`, …).
    pub method: String,
    /// 1 (strongest) to 4.
    pub level: u8,
}

/// The claims of a request token. `transfer_id`, `dataset_id`, `subject` and `assurance` are
/// required to create a request; a token that only polls a request may leave them out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// Seconds since the Unix epoch.
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<String>,
    /// The ID number or 統一編號 the data is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assurance: Option<Assurance>,
}

// Masks the subject: tokens end up in debug output of failing tests and logs.
impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("aud", &self.aud)
            .field("jti", &self.jti)
            .field("dataset_id", &self.dataset_id)
            .field("subject", &self.subject.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. The message never contains the subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a compact ES256 JWS: {0}")]
    Malformed(String),
    #[error("the token signature does not verify with the platform's keys")]
    BadSignature,
    /// Signed by a key whose `kid` is not among the platform keys held, and by none of them:
    /// the platform may have replaced its key since they were read.
    #[error("the token is signed by platform key {0}, which this agency does not hold")]
    UnknownKey(String),
    #[error("the token issuer is not `{ISSUER}`")]
    WrongIssuer,
    #[error("the token is not addressed to this agency")]
    WrongAudience,
    #[error("the token has expired or is not valid yet")]
    Expired,
    #[error("the token lives longer than {MAX_LIFETIME_SECS} seconds")]
    TooLong,
}

/// Sign `claims` with the platform key (what the platform does before each call).
pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String, serde_json::Error> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
    let input = format!("{header}.{payload}");
    let sig: Signature = key.sign(input.as_bytes());
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// Check signature, issuer, audience and lifetime at `now`. Replay (`jti`) is the caller's job,
/// since it needs memory of earlier tokens.
pub fn verify(
    token: &str,
    keys: &mydata_package::PlatformKeys,
    audience: &str,
    now: Timestamp,
) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| TokenError::Malformed(e.to_string()))
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(h)?).map_err(|e| TokenError::Malformed(e.to_string()))?;
    // Pin the algorithm: never let the token choose how it is checked.
    if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
        return Err(TokenError::Malformed("alg must be ES256".into()));
    }
    let sig = decode(s)?;
    if Signature::from_slice(&sig).is_err() {
        return Err(TokenError::Malformed("signature is not 64 bytes".into()));
    }
    let input = &token[..h.len() + 1 + p.len()];
    // Checked by AWS-LC (several times faster than the pure-Rust arithmetic; one call each).
    let verifies = |key: &VerifyingKey| {
        mydata_package::P256PublicKey::new(key)
            .is_ok_and(|k| k.verify_fixed(input.as_bytes(), &sig))
    };
    // The key the header's `kid` names; a `kid` not in the set (or none) is tried against each.
    let kid = header.get("kid").and_then(|k| k.as_str());
    let verified = match kid.and_then(|kid| keys.get(kid)) {
        Some(key) => verifies(key),
        None => keys.iter().any(|(_, key)| verifies(key)),
    };
    if !verified {
        return Err(match kid {
            Some(kid) if keys.get(kid).is_none() => TokenError::UnknownKey(kid.to_owned()),
            _ => TokenError::BadSignature,
        });
    }
    let claims: Claims =
        serde_json::from_slice(&decode(p)?).map_err(|e| TokenError::Malformed(e.to_string()))?;
    if claims.iss != ISSUER {
        return Err(TokenError::WrongIssuer);
    }
    if claims.aud != audience {
        return Err(TokenError::WrongAudience);
    }
    let now_s = now.millis().div_euclid(1000);
    if claims.exp.saturating_sub(claims.iat) > MAX_LIFETIME_SECS {
        return Err(TokenError::TooLong);
    }
    if now_s >= claims.exp.saturating_add(LEEWAY_SECS)
        || now_s.saturating_add(LEEWAY_SECS) < claims.iat
    {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mydata_package::PlatformKeys;
    use p256::elliptic_curve::Generate;

    fn claims(now_s: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: "moi-household".into(),
            iat: now_s,
            exp: now_s + 60,
            jti: "j1".into(),
            transfer_id: None,
            dataset_id: None,
            subject: Some("A123456789".into()),
            assurance: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = SigningKey::try_generate().unwrap();
        let other = SigningKey::try_generate().unwrap();
        let now = Timestamp::from_millis(1_800_000_000_000);
        let t = sign(&key, &claims(1_800_000_000)).unwrap();
        let vk = &PlatformKeys::from(*key.verifying_key());
        assert!(verify(&t, vk, "moi-household", now).is_ok());
        assert_eq!(
            verify(
                &t,
                &PlatformKeys::from(*other.verifying_key()),
                "moi-household",
                now
            ),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&t, vk, "mof-tax", now),
            Err(TokenError::WrongAudience)
        );
        let later = Timestamp::from_millis(now.millis() + 120_000);
        assert_eq!(
            verify(&t, vk, "moi-household", later),
            Err(TokenError::Expired)
        );
        let mut long = claims(1_800_000_000);
        long.exp += 3600;
        let t = sign(&key, &long).unwrap();
        assert_eq!(
            verify(&t, vk, "moi-household", now),
            Err(TokenError::TooLong)
        );
        assert!(format!("{long:?}").contains("***"));
        assert!(!format!("{long:?}").contains("A123456789"));
    }

    /// While the platform replaces its key, its processes sign with either: a token is checked
    /// with the key its `kid` names, one naming a key not in the set with each key, and a key the
    /// set does not hold is refused.
    #[test]
    fn the_key_the_kid_names_checks_the_token() {
        let (old, new) = (
            SigningKey::try_generate().unwrap(),
            SigningKey::try_generate().unwrap(),
        );
        let now = Timestamp::from_millis(1_800_000_000_000);
        let payload = serde_json::to_vec(&claims(1_800_000_000)).unwrap();
        let by = |key: &SigningKey| {
            mydata_package::PlatformSigner::with_thumbprint_kid(key.clone())
                .unwrap()
                .sign(&payload)
        };
        let mut both = PlatformKeys::from(*new.verifying_key());
        both.insert_by_thumbprint(*old.verifying_key());
        for token in [by(&old), by(&new)] {
            assert!(verify(&token, &both, "moi-household", now).is_ok());
        }
        let only_new = PlatformKeys::from(*new.verifying_key());
        assert_eq!(
            verify(&by(&old), &only_new, "moi-household", now),
            Err(TokenError::UnknownKey(mydata_package::jwk_thumbprint(
                old.verifying_key()
            )))
        );
        // A kid naming the new key on a token the old key signed: checked with the new key only.
        let mut lying = PlatformKeys::new();
        lying.insert(
            mydata_package::jwk_thumbprint(old.verifying_key()),
            *new.verifying_key(),
        );
        lying.insert("spare", *old.verifying_key());
        assert_eq!(
            verify(&by(&old), &lying, "moi-household", now),
            Err(TokenError::BadSignature)
        );
        // A kid the set does not name: any key of the set may have signed it.
        let mut renamed = PlatformKeys::new();
        renamed.insert("platform-2026", *old.verifying_key());
        assert!(verify(&by(&old), &renamed, "moi-household", now).is_ok());
    }
}
