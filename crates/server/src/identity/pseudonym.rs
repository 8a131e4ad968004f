//! Keyed hashes of identity state. [`SubjectKey`] makes subject pseudonyms (the only name under
//! which the platform records a person or company: sessions, passwords, passkeys, transfers; used
//! through `identity::subject_pseudonym`). [`Pseudonyms`] hashes client addresses (lockout
//! counters, so no IP address is stored) and one-time codes (stored hashed), each under its own
//! label so the uses never collide.
//!
//! Each secret is 32 random bytes in its own file (mode 0600), created on first start like the
//! platform signing key. Every process sharing a database must share them. The subject key must
//! never be lost or changed: every record, password and passkey is filed under its pseudonyms.

use anyhow::Context;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 under a 32-byte key, through the constructor that cannot fail: the key zero-padded
/// to SHA-256's 64-byte block is what HMAC itself makes of a shorter key (RFC 2104), so every
/// pseudonym and hash stays as it was, and none can come out empty on an error path.
fn keyed(key: &[u8; 32]) -> HmacSha256 {
    let mut block = Zeroizing::new([0u8; 64]);
    for (b, k) in block.iter_mut().zip(key) {
        *b = *k;
    }
    <HmacSha256 as hmac::digest::KeyInit>::new(&(*block).into())
}

/// The long-lived key of subject pseudonyms (`keys.pseudonym_key`). `Debug` never shows it.
pub struct SubjectKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

impl SubjectKey {
    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(key),
        }
    }

    /// Reads the key file, or creates it. Before this key had a file of its own, pseudonyms were
    /// keyed by a key derived from the data key; when that data key file already exists the new
    /// file gets that same derived key, so existing pseudonyms stay valid (and from then on the data
    /// key can be replaced freely). Otherwise the key is fresh and random.
    pub fn load_or_create(path: &Path, legacy_data_key: Option<&Path>) -> anyhow::Result<Self> {
        if path.exists() {
            return Ok(Self::from_key(read_hex_key(path)?));
        }
        let mut key = [0u8; 32];
        let derived = match legacy_data_key.filter(|p| p.exists()) {
            Some(p) => {
                let data_key = read_hex_key(p)?;
                let mut mac = <HmacSha256 as Mac>::new_from_slice(&data_key)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                mac.update(b"mydata pseudonym key v1");
                key.copy_from_slice(&mac.finalize().into_bytes());
                true
            }
            None => {
                rand::rng().fill_bytes(&mut key);
                false
            }
        };
        match create_key_file(path, &key)? {
            true => {
                tracing::info!(path = %path.display(), from_data_key = derived, "created the subject pseudonym key; never lose it");
                Ok(Self::from_key(key))
            }
            // Another process created it meanwhile: use theirs.
            false => Self::load_or_create(path, None),
        }
    }

    /// The pseudonym (HMAC-SHA256, hex) of an ID number or 統一編號.
    pub fn pseudonym(&self, raw: &str) -> String {
        let mut mac = keyed(&self.key);
        mac.update(raw.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Equal for equal keys and nothing else (the pseudonym of a label no ID number can be).
    pub fn check_value(&self) -> String {
        self.pseudonym("mydata:v1:key-check")
    }
}

/// 32 bytes written as 64 hexadecimal characters.
fn read_hex_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let raw = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read the key {}", path.display()))?,
    );
    let text = String::from_utf8_lossy(&raw);
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} must hold 64 hexadecimal characters (32 bytes)",
                path.display()
            )
        })
}

/// Creates a key file (mode 0600) that must not exist yet; false when another process was first.
fn create_key_file(path: &Path, key: &[u8; 32]) -> anyhow::Result<bool> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::keyfile::create_once(path, Zeroizing::new(hex::encode(key)).as_bytes())
        .with_context(|| format!("cannot create {}", path.display()))
}

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
        let mut m = keyed(&self.key);
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

    /// Equal for equal keys and nothing else.
    pub fn check_value(&self) -> String {
        self.mac("key-check", "v1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_size_key_gives_the_same_hmac_as_the_key_itself() {
        // Existing pseudonyms were made with the 32-byte key as given: they must not change.
        for (key, msg) in [
            ([0u8; 32], ""),
            ([7; 32], "A123456789"),
            ([0xff; 32], "12345678"),
        ] {
            let mut padded = keyed(&key);
            padded.update(msg.as_bytes());
            let mut plain = <HmacSha256 as Mac>::new_from_slice(&key).unwrap();
            plain.update(msg.as_bytes());
            assert_eq!(
                padded.finalize().into_bytes(),
                plain.finalize().into_bytes()
            );
        }
        let p = SubjectKey::from_key([7; 32]).pseudonym("A123456789");
        assert_eq!(p.len(), 64);
    }

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
    fn subject_key_is_kept_in_its_own_file_and_continues_the_data_key_pseudonyms() {
        let dir = tempfile::tempdir().unwrap();
        // Fresh: random, read back the same, mode 0600.
        let path = dir.path().join("keys/pseudonym.key");
        let a = SubjectKey::load_or_create(&path, Some(&dir.path().join("none"))).unwrap();
        let again = SubjectKey::load_or_create(&path, None).unwrap();
        assert_eq!(a.pseudonym("A123456789"), again.pseudonym("A123456789"));
        assert_ne!(a.pseudonym("A123456789"), a.pseudonym("A123456780"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // An installation from before the file: the data key's pseudonyms carry on.
        let data = dir.path().join("data.key");
        std::fs::write(&data, hex::encode([7u8; 32])).unwrap();
        let k = SubjectKey::load_or_create(&dir.path().join("p2.key"), Some(&data)).unwrap();
        // The formula of the data key's pseudonyms (vault.rs before the subject key existed).
        let mut inner = <HmacSha256 as Mac>::new_from_slice(&[7u8; 32]).unwrap();
        inner.update(b"mydata pseudonym key v1");
        let mut outer =
            <HmacSha256 as Mac>::new_from_slice(&inner.finalize().into_bytes()).unwrap();
        outer.update(b"A123456789");
        let old = hex::encode(outer.finalize().into_bytes());
        assert_eq!(k.pseudonym("A123456789"), old);
        assert_eq!(format!("{k:?}"), "SubjectKey(..)");
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
