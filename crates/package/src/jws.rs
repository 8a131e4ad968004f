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
