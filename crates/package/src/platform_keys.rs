//! The platform's public signing keys by key ID: each receipt names the key that signed it (`kid`),
//! so receipts signed before the platform replaced its key still verify against the previous one.

use crate::package::{jwk_thumbprint, signing_jwk};
use p256::ecdsa::VerifyingKey;

/// The platform's public signing keys by key ID, the current one first (as published in its JWK
/// set: the current key, then the keys it replaced that it still vouches for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformKeys {
    // A handful of keys at most: a list keeps the published order and is quick to search.
    keys: Vec<(String, VerifyingKey)>,
}

impl PlatformKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` under `kid`; false (and nothing changed) when `kid` is taken already, so the
    /// key listed first, the current one, keeps its name.
    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) -> bool {
        let kid = kid.into();
        if self.get(&kid).is_some() {
            return false;
        }
        self.keys.push((kid, key));
        true
    }

    /// Adds `key` under its RFC 7638 thumbprint, the `kid` the platform signs with.
    pub fn insert_by_thumbprint(&mut self, key: VerifyingKey) -> bool {
        self.insert(jwk_thumbprint(&key), key)
    }

    /// Adds `key` under `kid`, or under its thumbprint when it names none (as the platform names
    /// its keys); false when that name is taken already.
    pub fn insert_named(&mut self, kid: Option<&str>, key: VerifyingKey) -> bool {
        match kid {
            Some(kid) => self.insert(kid, key),
            None => self.insert_by_thumbprint(key),
        }
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }

    /// The key listed first (the one the platform signs with now) and its `kid`.
    pub fn current(&self) -> Option<(&str, &VerifyingKey)> {
        self.iter().next()
    }

    /// Every `(kid, key)`, in the published order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VerifyingKey)> {
        self.keys.iter().map(|(kid, key)| (kid.as_str(), key))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The signing keys of a JWK set (`{"keys": [...]}`) as the platform publishes it: each EC
    /// P-256 key not declared for another use or algorithm, under its `kid` (its thumbprint when
    /// it names none), in order. Other keys (its X25519 keys for encryption) are passed over.
    pub fn from_jwk_set(jwks: &serde_json::Value) -> Self {
        let mut keys = Self::new();
        let listed = jwks.get("keys").and_then(|k| k.as_array());
        for jwk in listed.into_iter().flatten() {
            let declared =
                |name: &str, want: &str| jwk.get(name).is_none_or(|v| v.as_str() == Some(want));
            if !declared("use", "sig") || !declared("alg", "ES256") {
                continue;
            }
            let Some(key) = ec_public_key(jwk) else {
                continue;
            };
            keys.insert_named(jwk.get("kid").and_then(|k| k.as_str()), key);
        }
        keys
    }

    /// Each key as a public JWK (`use` sig, `alg` ES256, its `kid`), in order, for a key set.
    pub fn public_jwks(&self) -> Vec<serde_json::Value> {
        self.iter()
            .map(|(kid, key)| signing_jwk(kid, key))
            .collect()
    }
}

/// The P-256 public key of an EC JWK (`kty` EC, `crv` P-256, `x` and `y` of 32 bytes), if it is one.
pub fn ec_public_key(jwk: &serde_json::Value) -> Option<VerifyingKey> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if jwk.get("kty")?.as_str()? != "EC" || jwk.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let x = b64.decode(jwk.get("x")?.as_str()?).ok()?;
    let y = b64.decode(jwk.get("y")?.as_str()?).ok()?;
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(4);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    VerifyingKey::from_sec1_bytes(&sec1).ok()
}

/// One key, under its thumbprint.
impl From<VerifyingKey> for PlatformKeys {
    fn from(key: VerifyingKey) -> Self {
        let mut keys = Self::new();
        keys.insert_by_thumbprint(key);
        keys
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::SigningKey;

    fn key() -> VerifyingKey {
        *<SigningKey as p256::elliptic_curve::Generate>::generate().verifying_key()
    }

    #[test]
    fn keys_are_found_by_kid_and_the_first_named_keeps_its_name() {
        let (current, previous) = (key(), key());
        let mut keys = PlatformKeys::from(current);
        assert!(keys.insert_by_thumbprint(previous));
        assert!(!keys.insert_by_thumbprint(previous), "listed once");
        assert!(
            !keys.insert(jwk_thumbprint(&current), previous),
            "kid taken"
        );
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&jwk_thumbprint(&previous)), Some(&previous));
        assert_eq!(keys.current().map(|(_, k)| *k), Some(current));
        assert_eq!(keys.get("unknown"), None);
        let jwks = keys.public_jwks();
        assert_eq!(jwks[0]["kid"], jwk_thumbprint(&current));
        assert_eq!(jwks[1]["kid"], jwk_thumbprint(&previous));
        assert!(
            jwks.iter()
                .all(|j| j["use"] == "sig" && j["alg"] == "ES256")
        );
    }

    #[test]
    fn a_published_key_set_reads_back_its_signing_keys_only() {
        let (current, previous, unnamed) = (key(), key(), key());
        let mut keys = PlatformKeys::from(current);
        keys.insert_by_thumbprint(previous);
        let mut listed = keys.public_jwks();
        // What else a platform's set holds: an encryption key, a key for another algorithm or
        // use, a broken key, and a signing key without a kid (read under its thumbprint).
        listed.push(serde_json::json!({"kty": "OKP", "crv": "X25519", "use": "enc", "x": "AAAA"}));
        let mut other_alg = signing_jwk("rs", &key());
        other_alg["alg"] = "ES384".into();
        let mut for_enc = signing_jwk("enc", &key());
        for_enc["use"] = "enc".into();
        let mut short = signing_jwk("short", &key());
        short["x"] = "AAAA".into();
        let mut bare = signing_jwk("", &unnamed);
        bare.as_object_mut().map(|o| o.remove("kid"));
        listed.extend([other_alg, for_enc, short, bare]);
        let read = PlatformKeys::from_jwk_set(&serde_json::json!({ "keys": listed }));
        let mut expected = keys.clone();
        expected.insert_by_thumbprint(unnamed);
        assert_eq!(read, expected);
        assert!(PlatformKeys::from_jwk_set(&serde_json::json!({"keys": "none"})).is_empty());
        assert!(PlatformKeys::from_jwk_set(&serde_json::json!([])).is_empty());
    }
}
