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

    /// Each key as a public JWK (`use` sig, `alg` ES256, its `kid`), in order, for a key set.
    pub fn public_jwks(&self) -> Vec<serde_json::Value> {
        self.iter()
            .map(|(kid, key)| signing_jwk(kid, key))
            .collect()
    }
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
}
