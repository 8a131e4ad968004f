//! JWS compact serialisation (RFC 7515) with ES256 (RFC 7518 §3.4: raw r||s signature).

use crate::ecdsa::{KeyPair, PublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header_b64` is the already-encoded protected header (precomputed by long-lived signers).
pub(crate) fn sign_compact(key: &KeyPair, header_b64: &str, payload: &[u8]) -> String {
    let payload_len = payload.len().div_ceil(3) * 4;
    // + '.' and the 86 base64url characters of the 64-byte signature.
    let mut out = String::with_capacity(header_b64.len() + payload_len + 90);
    out.push_str(header_b64);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let sig = key.sign_fixed(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut out);
    out
}

/// A parsed (not yet verified) compact JWS.
#[derive(Debug)]
pub(crate) struct Compact<'a> {
    pub header: serde_json::Map<String, serde_json::Value>,
    pub payload: Vec<u8>,
    signature: Vec<u8>,
    signing_input: &'a [u8],
}

impl<'a> Compact<'a> {
    pub fn parse(token: &'a [u8]) -> Result<Self, String> {
        let token = token.trim_ascii_end();
        let mut parts = token.split(|b| *b == b'.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not three dot-separated parts".into());
        };
        let decode = |part: &[u8], what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| format!("{what} is not base64url: {e}"))
        };
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&decode(h, "header")?)
                .map_err(|e| format!("header is not a JSON object: {e}"))?;
        match header.get("alg").and_then(|a| a.as_str()) {
            Some("ES256") => {}
            other => return Err(format!("alg must be ES256, found {other:?}")),
        }
        let payload = decode(p, "payload")?;
        let signature = decode(s, "signature")?;
        // Same refusal as before the switch to AWS-LC: r and s must each be in 1..n.
        if p256::ecdsa::Signature::from_slice(&signature).is_err() {
            return Err("signature is not a 64-byte ES256 value".to_owned());
        }
        let signing_input = &token[..h.len() + 1 + p.len()];
        Ok(Self {
            header,
            payload,
            signature,
            signing_input,
        })
    }

    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify_fixed(self.signing_input, &self.signature)
    }
}

/// An ES256 signer of compact JWS for callers that sign many tokens with one key (an online
/// service's client assertions and DPoP proofs): the key is prepared for AWS-LC once, and a
/// protected header that does not change is encoded once.
pub struct Es256Signer {
    key: KeyPair,
}

impl std::fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Es256Signer")
    }
}

impl Es256Signer {
    pub fn new(key: p256::ecdsa::SigningKey) -> Result<Self, String> {
        Ok(Self {
            key: KeyPair::new(key)?,
        })
    }

    /// The base64url encoding of a protected header (`header` as given: set `alg` to `ES256`).
    pub fn header(header: &serde_json::Value) -> String {
        b64url(header.to_string().as_bytes())
    }

    /// The compact JWS of `payload` under the protected header `header_b64` (from
    /// [`Es256Signer::header`]).
    pub fn sign(&self, header_b64: &str, payload: &[u8]) -> String {
        sign_compact(&self.key, header_b64, payload)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use p256::ecdsa::signature::Verifier as _;

    #[test]
    fn an_es256_signer_makes_compact_jws_that_standard_es256_verifies() {
        let key = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate();
        let public = *key.verifying_key();
        let signer = Es256Signer::new(key).unwrap();
        let header = Es256Signer::header(&serde_json::json!({"typ": "JWT", "alg": "ES256"}));
        let token = signer.sign(&header, br#"{"sub":"a"}"#);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], header);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[1]).unwrap(), br#"{"sub":"a"}"#);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(public.verify(signed.as_bytes(), &sig).is_ok());
        assert!(public.verify(b"other", &sig).is_err());
        let parsed = Compact::parse(token.as_bytes()).unwrap();
        assert_eq!(parsed.header["alg"], "ES256");
    }
}
