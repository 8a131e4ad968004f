//! DPoP (RFC 9449): sender-constrained access tokens, as FAPI 2.0 asks. A service signs a fresh
//! proof JWT for each request with a key it holds (`typ` dpop+jwt, ES256 or EdDSA, the public key
//! in `jwk`; `jti`, `htm`, `htu`, `iat`, and `ath` with a token); the token endpoint binds the
//! token to the key's RFC 7638 thumbprint (`oauth_tokens.dpop_jkt`), and the package endpoint
//! accepts a bound token only with a proof by that key. [`check`] is the pure verification;
//! [`spend`] records the `jti` in the database (like client assertions), so a proof is accepted
//! once across processes. No nonces (`use_dpop_nonce` is never asked).

use super::{ErrorCode, OAuthError};
use crate::state::AppState;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

/// The proof algorithms accepted (`dpop_signing_alg_values_supported`).
pub const ALGS: [&str; 2] = ["ES256", "EdDSA"];
/// The HTTP header carrying the proof.
pub const HEADER: &str = "DPoP";
/// How old a proof's `iat` may be; its `jti` is kept this long (and a little more).
pub const MAX_AGE_SECS: i64 = 60;
/// How far ahead of the platform's clock a service's clock may be.
pub const FUTURE_SKEW_SECS: i64 = 10;
/// Longest proof accepted (a P-256 proof is about 600 bytes).
const MAX_PROOF_LEN: usize = 4096;
/// JWK members that only a private (or symmetric) key has (RFC 7517, RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// What the proof of one request must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URI (query and fragment are ignored).
    pub htu: &'a str,
    /// The access token the proof goes with (its hash must be the `ath`), at a resource.
    pub access_token: Option<&'a str>,
    /// The thumbprint the token or code is bound to.
    pub jkt: Option<&'a str>,
}

/// A proof that passed every check but the replay guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
}

/// Why a proof is refused; the text goes to the service as `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the DPoP header must be sent once")]
    Repeated,
    #[error("the DPoP proof is not a signed JWT")]
    Malformed,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    Typ,
    #[error("the DPoP proof's alg must be ES256 or EdDSA")]
    Alg,
    #[error("the DPoP proof's jwk holds a private key")]
    PrivateKey,
    #[error(
        "the DPoP proof's jwk must be a public key for its alg (EC P-256 for ES256, OKP Ed25519 for EdDSA)"
    )]
    Jwk,
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    #[error("the DPoP proof's {0} claim is missing or malformed")]
    Claim(&'static str),
    #[error("the DPoP proof's htm is not this request's method")]
    Htm,
    #[error("the DPoP proof's htu is not this request's URI")]
    Htu,
    #[error("the DPoP proof is too old (iat more than {MAX_AGE_SECS} seconds ago)")]
    Stale,
    #[error("the DPoP proof's iat is in the future")]
    Future,
    #[error("the DPoP proof has no ath (the access token's hash)")]
    AthMissing,
    #[error("the DPoP proof's ath is not the hash of this access token")]
    Ath,
    #[error("the DPoP proof is signed by another key than the one the token or code is bound to")]
    KeyMismatch,
    #[error("the DPoP proof's jti was already used (replay)")]
    Replay,
}

impl From<ProofError> for OAuthError {
    fn from(e: ProofError) -> Self {
        OAuthError::new(ErrorCode::InvalidDpopProof, e.to_string())
    }
}

/// The request's proof: `None` without a DPoP header; refused if sent twice or not text.
pub fn header(headers: &HeaderMap) -> Result<Option<&str>, ProofError> {
    let mut all = headers.get_all(HEADER).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ProofError::Repeated);
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| ProofError::Malformed)
}

/// `ath`: base64url(SHA-256(access token)) (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// The URI without query and fragment, normalised by the URL parser (scheme and host case,
/// default port, dot segments), for the `htu` comparison (RFC 9449 §4.3 step 9).
fn target(uri: &str) -> Option<url::Url> {
    let mut u = url::Url::parse(uri).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    u.set_query(None);
    u.set_fragment(None);
    Some(u)
}

/// Verifies `proof` for one request at `now_secs` (RFC 9449 §4.3): header, signature by the
/// embedded key, claims, and the binding in `expected`. Does not record the `jti`.
pub fn check(proof: &str, expected: &Expected<'_>, now_secs: i64) -> Result<Proof, ProofError> {
    if proof.is_empty() || proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::Malformed);
    }
    let mut parts = proof.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    // The header as sent, so a private member or an alg the JWT library does not know (none)
    // is seen before any typed parsing.
    let head: serde_json::Value = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(ProofError::Malformed)?;
    if head.get("typ").and_then(|t| t.as_str()) != Some("dpop+jwt") {
        return Err(ProofError::Typ);
    }
    let (alg, kty, crv) = match head.get("alg").and_then(|a| a.as_str()) {
        Some("ES256") => (Algorithm::ES256, "EC", "P-256"),
        Some("EdDSA") => (Algorithm::EdDSA, "OKP", "Ed25519"),
        _ => return Err(ProofError::Alg),
    };
    let jwk = head
        .get("jwk")
        .and_then(|j| j.as_object())
        .ok_or(ProofError::Jwk)?;
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let member = |k: &str| jwk.get(k).and_then(|v| v.as_str());
    if member("kty") != Some(kty) || member("crv") != Some(crv) {
        return Err(ProofError::Jwk);
    }
    let jwk: Jwk = serde_json::from_value(serde_json::Value::Object(jwk.clone()))
        .map_err(|_| ProofError::Jwk)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| ProofError::Jwk)?;
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<serde_json::Value>(proof, &key, &v)
        .map_err(|_| ProofError::Signature)?
        .claims;
    let text = |name: &'static str| {
        claims
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 2048)
            .ok_or(ProofError::Claim(name))
    };
    let jti = text("jti")?;
    if jti.len() > 256 {
        return Err(ProofError::Claim("jti"));
    }
    if text("htm")? != expected.htm {
        return Err(ProofError::Htm);
    }
    let htu = target(text("htu")?).ok_or(ProofError::Htu)?;
    if Some(htu) != target(expected.htu) {
        return Err(ProofError::Htu);
    }
    let iat = claims
        .get("iat")
        .and_then(|i| i.as_i64().or_else(|| i.as_f64().map(|f| f.floor() as i64)))
        .ok_or(ProofError::Claim("iat"))?;
    if iat < now_secs.saturating_sub(MAX_AGE_SECS) {
        return Err(ProofError::Stale);
    }
    if iat > now_secs.saturating_add(FUTURE_SKEW_SECS) {
        return Err(ProofError::Future);
    }
    if let Some(token) = expected.access_token {
        let sent = claims
            .get("ath")
            .and_then(|a| a.as_str())
            .ok_or(ProofError::AthMissing)?;
        if sent != ath(token) {
            return Err(ProofError::Ath);
        }
    }
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError::Jwk)?;
    if expected.jkt.is_some_and(|bound| bound != jkt) {
        return Err(ProofError::KeyMismatch);
    }
    Ok(Proof {
        jkt,
        jti: jti.to_owned(),
        iat,
    })
}

/// Checks the request's proof, if it has one, against the platform's clock.
pub fn from_request(
    state: &AppState,
    headers: &HeaderMap,
    expected: &Expected<'_>,
) -> Result<Option<Proof>, ProofError> {
    let Some(proof) = header(headers)? else {
        return Ok(None);
    };
    let now = state.clock().now().millis() / 1000;
    check(proof, expected, now).map(Some)
}

/// Records the proof's `jti` for `client_id` (a second use is a replay), kept until its `iat` is
/// too old to be accepted anyway. The last step, once everything else about the request passed.
pub async fn spend(state: &AppState, client_id: &str, proof: &Proof) -> Result<(), OAuthError> {
    let jti = proof.unspent();
    if !state
        .store()
        .use_jti(client_id, &jti.jti, jti.keep_until)
        .await?
    {
        return Err(ProofError::Replay.into());
    }
    Ok(())
}

impl Proof {
    /// Its `jti` to record: under a key per signing key (RFC 9449 §11.1), kept until its `iat` is
    /// too old to be accepted anyway.
    pub fn unspent(&self) -> super::UnspentJti {
        super::UnspentJti {
            jti: format!("dpop:{}:{}", self.jkt, self.jti),
            keep_until: mydata_core::Timestamp::from_millis(
                self.iat
                    .saturating_add(MAX_AGE_SECS + 1)
                    .saturating_mul(1000),
            ),
        }
    }
}

/// RFC 7638 thumbprints are base64url SHA-256: 43 characters.
fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32)
}

/// The key a pushed request binds its code to (RFC 9449 §10): the `dpop_jkt` parameter, or the
/// key of a DPoP proof sent with the request (both: they must agree). The proof comes back for
/// its `jti` to be spent with the request stored.
pub fn par_binding(
    state: &AppState,
    headers: &HeaderMap,
    par_endpoint: &str,
    dpop_jkt: Option<&str>,
) -> Result<(Option<String>, Option<Proof>), OAuthError> {
    if dpop_jkt.is_some_and(|j| !is_thumbprint(j)) {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "dpop_jkt must be a base64url SHA-256 JWK thumbprint (RFC 7638)",
        ));
    }
    let expected = Expected {
        htm: "POST",
        htu: par_endpoint,
        access_token: None,
        jkt: dpop_jkt,
    };
    match from_request(state, headers, &expected)? {
        Some(proof) => Ok((Some(proof.jkt.clone()), Some(proof))),
        None => Ok((dpop_jkt.map(str::to_owned), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePrivateKey;

    const NOW: i64 = 1_800_000_000;
    const HTU: &str = "https://mydata.example/api/v1/transfers/t1/package";

    fn keypair() -> (EncodingKey, serde_json::Value) {
        let sk = <SigningKey as p256::elliptic_curve::Generate>::generate();
        let der = sk.to_pkcs8_der().map(|d| d.as_bytes().to_vec());
        let der = der.unwrap_or_default();
        let point = sk.verifying_key().to_sec1_point(false);
        let b64 = |c: Option<&[u8]>| c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(point.x().map(|x| x.as_slice())),
            "y": b64(point.y().map(|y| y.as_slice())),
        });
        (EncodingKey::from_ec_der(&der), jwk)
    }

    fn sign(key: &EncodingKey, jwk: &serde_json::Value, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("dpop+jwt".into());
        h.jwk = serde_json::from_value(jwk.clone()).ok();
        jsonwebtoken::encode(&h, claims, key).unwrap_or_default()
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({ "jti": "j1", "htm": "GET", "htu": HTU, "iat": NOW, "ath": ath("tok") })
    }

    fn expected(jkt: Option<&str>) -> Expected<'_> {
        Expected {
            htm: "GET",
            htu: HTU,
            access_token: Some("tok"),
            jkt,
        }
    }

    fn with(claim: &str, value: serde_json::Value) -> serde_json::Value {
        let mut c = claims();
        if value.is_null() {
            c.as_object_mut().map(|o| o.remove(claim));
        } else {
            c[claim] = value;
        }
        c
    }

    /// A JWT from a hand-made header and payload (for headers the library would not write).
    fn raw(header: &serde_json::Value, claims: &serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn a_good_proof_gives_the_rfc7638_thumbprint_of_its_key() {
        let (k, jwk) = keypair();
        let p = check(&sign(&k, &jwk, &claims()), &expected(None), NOW);
        let Ok(p) = p else { panic!("accepted: {p:?}") };
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap_or_default(),
            jwk["y"].as_str().unwrap_or_default()
        );
        assert_eq!(p.jkt, URL_SAFE_NO_PAD.encode(Sha256::digest(canonical)));
        assert_eq!((p.jti.as_str(), p.iat), ("j1", NOW));
        // Bound to that key: accepted; query and fragment of htu are ignored; the host's case too.
        assert!(check(&sign(&k, &jwk, &claims()), &expected(Some(&p.jkt)), NOW).is_ok());
        let c = with(
            "htu",
            serde_json::json!("https://MYDATA.example:443/api/v1/transfers/t1/package?x=1#f"),
        );
        assert!(check(&sign(&k, &jwk, &c), &expected(None), NOW).is_ok());
        // The edges of the iat window.
        for iat in [NOW - MAX_AGE_SECS, NOW + FUTURE_SKEW_SECS] {
            let c = with("iat", serde_json::json!(iat));
            assert!(check(&sign(&k, &jwk, &c), &expected(None), NOW).is_ok());
        }
    }

    #[test]
    fn each_wrong_claim_is_refused_with_its_reason() {
        let (k, jwk) = keypair();
        let cases = [
            (with("htm", "POST".into()), ProofError::Htm),
            (with("htm", "get".into()), ProofError::Htm),
            (
                with(
                    "htu",
                    "https://mydata.example/api/v1/transfers/t2/package".into(),
                ),
                ProofError::Htu,
            ),
            (
                with(
                    "htu",
                    "http://mydata.example/api/v1/transfers/t1/package".into(),
                ),
                ProofError::Htu,
            ),
            (with("htu", "not a url".into()), ProofError::Htu),
            (
                with("iat", (NOW - MAX_AGE_SECS - 1).into()),
                ProofError::Stale,
            ),
            (
                with("iat", (NOW + FUTURE_SKEW_SECS + 1).into()),
                ProofError::Future,
            ),
            (with("iat", "now".into()), ProofError::Claim("iat")),
            (
                with("jti", serde_json::Value::Null),
                ProofError::Claim("jti"),
            ),
            (with("jti", "".into()), ProofError::Claim("jti")),
            (
                with("jti", "x".repeat(257).into()),
                ProofError::Claim("jti"),
            ),
            (
                with("htm", serde_json::Value::Null),
                ProofError::Claim("htm"),
            ),
            (with("ath", serde_json::Value::Null), ProofError::AthMissing),
            (with("ath", ath("another token").into()), ProofError::Ath),
        ];
        for (c, want) in cases {
            assert_eq!(
                check(&sign(&k, &jwk, &c), &expected(None), NOW),
                Err(want.clone()),
                "{c}"
            );
        }
        // Without a token (the token endpoint) no ath is needed.
        let c = with("ath", serde_json::Value::Null);
        let e = Expected {
            access_token: None,
            ..expected(None)
        };
        assert!(check(&sign(&k, &jwk, &c), &e, NOW).is_ok());
    }

    #[test]
    fn another_key_than_the_bound_one_and_a_forged_signature_are_refused() {
        let (k, jwk) = keypair();
        let (other, other_jwk) = keypair();
        let bound = check(&sign(&k, &jwk, &claims()), &expected(None), NOW)
            .map(|p| p.jkt)
            .unwrap_or_default();
        assert_eq!(
            check(
                &sign(&other, &other_jwk, &claims()),
                &expected(Some(&bound)),
                NOW
            ),
            Err(ProofError::KeyMismatch)
        );
        // Signed by one key, naming the other in jwk.
        assert_eq!(
            check(&sign(&other, &jwk, &claims()), &expected(None), NOW),
            Err(ProofError::Signature)
        );
        // A changed payload under the original signature.
        let good = sign(&k, &jwk, &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(with("htm", "POST".into()).to_string()),
            parts[2]
        );
        let post = Expected {
            htm: "POST",
            ..expected(None)
        };
        assert_eq!(check(&forged, &post, NOW), Err(ProofError::Signature));
    }

    #[test]
    fn bad_headers_are_refused_before_any_signature_check() {
        let (k, jwk) = keypair();
        let good = sign(&k, &jwk, &claims());
        let sig = good.rsplit('.').next().unwrap_or_default();
        let h = |v: serde_json::Value| raw(&v, &claims(), sig);
        let mut private = jwk.clone();
        private["d"] = "c2VjcmV0".into();
        let cases = [
            (
                h(serde_json::json!({ "typ": "JWT", "alg": "ES256", "jwk": jwk })),
                ProofError::Typ,
            ),
            (
                h(serde_json::json!({ "alg": "ES256", "jwk": jwk })),
                ProofError::Typ,
            ),
            (
                h(serde_json::json!({ "typ": "dpop+jwt", "alg": "none", "jwk": jwk })),
                ProofError::Alg,
            ),
            (
                h(
                    serde_json::json!({ "typ": "dpop+jwt", "alg": "HS256", "jwk": { "kty": "oct", "k": "c2VjcmV0" } }),
                ),
                ProofError::Alg,
            ),
            (
                h(serde_json::json!({ "typ": "dpop+jwt", "alg": "RS256", "jwk": jwk })),
                ProofError::Alg,
            ),
            (
                h(serde_json::json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": private })),
                ProofError::PrivateKey,
            ),
            (
                h(serde_json::json!({ "typ": "dpop+jwt", "alg": "ES256" })),
                ProofError::Jwk,
            ),
            (
                h(serde_json::json!({ "typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk })),
                ProofError::Jwk,
            ),
            (
                h(
                    serde_json::json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": { "kty": "EC", "crv": "P-384", "x": jwk["x"], "y": jwk["y"] } }),
                ),
                ProofError::Jwk,
            ),
            ("a.b".to_owned(), ProofError::Malformed),
            ("a.b.c.d".to_owned(), ProofError::Malformed),
            ("%%%.b.c".to_owned(), ProofError::Malformed),
            ("x".repeat(MAX_PROOF_LEN + 1), ProofError::Malformed),
        ];
        for (proof, want) in cases {
            assert_eq!(
                check(&proof, &expected(None), NOW),
                Err(want.clone()),
                "{want:?}"
            );
        }
    }

    #[test]
    fn an_eddsa_proof_is_accepted() {
        // An Ed25519 key in PKCS#8 (RFC 8410 test vector's private key).
        let seed = [
            0xd4, 0xee, 0x72, 0xdb, 0xf9, 0x13, 0x58, 0x4a, 0xd5, 0xb6, 0xd8, 0xf1, 0xf7, 0x69,
            0xf8, 0xad, 0x3a, 0xfe, 0x7c, 0x28, 0xcb, 0xf1, 0xd4, 0xfb, 0xe0, 0x97, 0xa8, 0x8f,
            0x44, 0x75, 0x58, 0x42,
        ];
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        let key = EncodingKey::from_ed_der(&der);
        let Ok(public) = Jwk::from_encoding_key(&key, Algorithm::EdDSA) else {
            panic!("an Ed25519 public key")
        };
        let mut jwk = serde_json::to_value(&public).unwrap_or_default();
        jwk.as_object_mut().map(|o| o.remove("alg"));
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(public);
        let proof = jsonwebtoken::encode(&h, &claims(), &key).unwrap_or_default();
        let p = check(&proof, &expected(None), NOW);
        assert!(p.is_ok(), "{p:?} {jwk}");
    }
}
