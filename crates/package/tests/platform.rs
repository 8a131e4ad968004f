//! The platform's own signatures (tree heads, receipts): sign, verify, key IDs, published JWK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_package::{PlatformJwsError, PlatformSigner, jwk_thumbprint, verify_platform_jws};
use p256::ecdsa::SigningKey;

fn key() -> SigningKey {
    <SigningKey as p256::elliptic_curve::Generate>::generate()
}

#[test]
fn signatures_verify_only_with_their_key_and_payload() {
    let s = PlatformSigner::with_thumbprint_kid(key()).unwrap();
    let token = s.sign(br#"{"tree_size":7}"#);
    assert_eq!(
        verify_platform_jws(token.as_bytes(), s.verifying_key()).unwrap(),
        br#"{"tree_size":7}"#
    );
    let other = PlatformSigner::with_thumbprint_kid(key()).unwrap();
    assert_eq!(
        verify_platform_jws(token.as_bytes(), other.verifying_key()),
        Err(PlatformJwsError::SignatureInvalid)
    );
    // A payload swapped under the same signature fails.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = base64_url(br#"{"tree_size":8}"#);
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verify_platform_jws(forged.as_bytes(), s.verifying_key()),
        Err(PlatformJwsError::SignatureInvalid)
    );
    assert!(matches!(
        verify_platform_jws(b"not a jws", s.verifying_key()),
        Err(PlatformJwsError::Malformed(_))
    ));
}

#[test]
fn kid_is_the_rfc7638_thumbprint_and_appears_in_the_jwk() {
    let k = key();
    let s = PlatformSigner::with_thumbprint_kid(k.clone()).unwrap();
    let kid = jwk_thumbprint(k.verifying_key());
    assert_eq!(s.kid(), kid);
    assert_eq!(kid.len(), 43, "base64url of 32 bytes");
    assert_eq!(jwk_thumbprint(k.verifying_key()), kid, "deterministic");
    let jwk = s.public_jwk();
    assert_eq!(
        (
            jwk["kty"].as_str(),
            jwk["crv"].as_str(),
            jwk["alg"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert_eq!(jwk["kid"], kid.as_str());
    assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
    // The JWS header names the key.
    let token = s.sign(b"{}");
    let header = String::from_utf8(base64_decode(token.split('.').next().unwrap())).unwrap();
    assert!(header.contains(&format!("\"kid\":\"{kid}\"")), "{header}");
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}
