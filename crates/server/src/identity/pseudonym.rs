//! Keyed hashes of identity state: client addresses (lockout counters, so no IP address is stored)
//! and one-time codes (stored hashed), each under its own label so the uses never collide. Subject
//! pseudonyms themselves come from the data path's vault (see `identity::subject_pseudonym`).
//!
//! The secret is 32 random bytes in a file (mode 0600), created on first start like the platform
//! signing key. Every process sharing a database must share it.

use anyhow::Context;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// The keyed hash of the platform.
pub struct Pseudonyms {
    key: [u8; 32],
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonyms(..)")
    }
}

impl Pseudonyms {
    pub fn from_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// Reads the key file, or creates it with a fresh random key.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            let raw = std::fs::read(path)
                .with_context(|| format!("cannot read the pseudonym key {}", path.display()))?;
            let text = String::from_utf8_lossy(&raw);
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            let key = bytes.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} must hold 64 hexadecimal characters (32 bytes)",
                    path.display()
                )
            })?;
            return Ok(Self { key });
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let created = crate::keyfile::create_once(path, hex::encode(key).as_bytes())
            .with_context(|| format!("cannot create {}", path.display()))?;
        if created {
            tracing::info!(path = %path.display(), "created a new subject pseudonym key");
            Ok(Self { key })
        } else {
            // Another process created it meanwhile (complete, see keyfile): use theirs.
            Self::load_or_create(path)
        }
    }

    fn mac(&self, label: &str, value: &str) -> String {
        // new_from_slice accepts any key length; 32 bytes cannot fail.
        let mut m = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(value.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// The lockout key of a client address.
    pub fn address(&self, addr: &str) -> String {
        format!("addr-{}", &self.mac("address", addr)[..32])
    }

    /// The stored form of a one-time code, bound to its record.
    pub fn code(&self, code_id: &str, code: &str) -> String {
        self.mac("code", &format!("{code_id}:{code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_separate_by_use() {
        let a = Pseudonyms::from_key([1; 32]);
        let b = Pseudonyms::from_key([2; 32]);
        assert_eq!(a.address("10.0.0.1"), a.address("10.0.0.1"));
        assert_ne!(a.address("10.0.0.1"), b.address("10.0.0.1"));
        assert!(!a.address("10.0.0.1").contains("10.0.0.1"));
        assert_ne!(a.code("x", "123456"), a.code("y", "123456"));
        assert_ne!(a.code("x", "123456"), b.code("x", "123456"));
    }

    #[test]
    fn key_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/pseudonym.key");
        let first = Pseudonyms::load_or_create(&path).unwrap();
        let again = Pseudonyms::load_or_create(&path).unwrap();
        assert_eq!(first.key, again.key);
        std::fs::write(&path, "short").unwrap();
        assert!(Pseudonyms::load_or_create(&path).is_err());
    }
}
