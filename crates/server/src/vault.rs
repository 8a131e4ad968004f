//! The platform's data key and what it protects: the keys of packages and fetched datasets (stored
//! in the database apart from their blobs) and the sealed identity a fetch needs. AES-256-GCM with a
//! random nonce; the context (what the value is and which transfer it belongs to) is bound in as
//! associated data, so a value moved to another row does not open.
//!
//! The key file is created on first start (mode 0600) like the platform signing key; every process
//! sharing a database needs the same file. Losing it makes every stored package unreadable, which
//! is safe: packages live at most 8 hours. Subject pseudonyms do not depend on it (they have their
//! own key, `identity::pseudonym::SubjectKey`), so it can be replaced.

use crate::config::Settings;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("sealed value is not base64")]
    Encoding,
    #[error("sealed value does not open with this data key and context")]
    Open,
    #[error("encryption failed")]
    Seal,
}

/// The data key, and the keys that open but never seal: those announced to replace it
/// (`keys.next_data_keys`) and those it replaced (`keys.previous_data_keys`), so that processes
/// switch keys one at a time and what was sealed before a switch still opens. `Debug` never shows
/// them.
pub struct Vault {
    current: DataKey,
    /// The next keys, then the previous ones.
    others: Vec<DataKey>,
    /// Check values of the next keys.
    next: Vec<String>,
    /// Check values of the previous keys.
    previous: Vec<String>,
}

/// One data key and what is derived from it.
struct DataKey {
    cipher: Aes256Gcm,
    /// The platform's HPKE key (derived, so every process sharing the data key has it): opens
    /// `login_hint`s and authenticates packages sealed to online services.
    kem: mydata_package::e2e::HpkeKeyPair,
    /// Equal for equal keys and nothing else (an HMAC of a fixed label), for the database's
    /// `key_checks`.
    check: String,
}

impl DataKey {
    fn new(key: &[u8; 32]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        mac.update(b"mydata platform hpke key v1");
        let kem = mydata_package::e2e::HpkeKeyPair::derive(&mac.finalize().into_bytes());
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        mac.update(b"mydata:v1:key-check");
        Self {
            cipher: Aes256Gcm::new(key.into()),
            kem,
            check: hex::encode(mac.finalize().into_bytes()),
        }
    }

    fn open(&self, context: &str, nonce: &[u8], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let payload = Payload {
            msg: ct,
            aad: context.as_bytes(),
        };
        self.cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()
            .map(Zeroizing::new)
    }
}

/// Which of a vault's keys opened a value (see [`Vault::reseal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    Current,
    Next,
    Previous,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(<redacted>)")
    }
}

impl Vault {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            current: DataKey::new(key),
            others: Vec::new(),
            next: Vec::new(),
            previous: Vec::new(),
        }
    }

    /// Adds keys that open what they sealed but seal nothing: `next` (to replace the current key)
    /// and `previous` (replaced by it). A key given twice, or the current key again, is skipped.
    pub fn with_other_keys<'k>(
        mut self,
        next: impl IntoIterator<Item = &'k [u8; 32]>,
        previous: impl IntoIterator<Item = &'k [u8; 32]>,
    ) -> Self {
        let next = next.into_iter().map(|k| (k, true));
        let previous = previous.into_iter().map(|k| (k, false));
        for (key, is_next) in next.chain(previous) {
            let k = DataKey::new(key);
            let known =
                k.check == self.current.check || self.others.iter().any(|o| o.check == k.check);
            if known {
                tracing::warn!("a data key is listed twice, or it is the current key");
                continue;
            }
            if is_next {
                self.next.push(k.check.clone());
            } else {
                self.previous.push(k.check.clone());
            }
            self.others.push(k);
        }
        self
    }

    /// Loads the key file, creating it when it does not exist yet.
    pub fn load_or_create(settings: &Settings) -> anyhow::Result<Self> {
        let path = settings.data_key_path();
        let key = if path.exists() {
            read_key(&path)?
        } else {
            let mut key = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(key.as_mut());
            if write_key(&path, &key)? {
                tracing::info!(path = %path.display(), "created a new data key");
                key
            } else {
                // Another process starting at the same time created it first: use theirs.
                read_key(&path)?
            }
        };
        let read_all = |setting: &str, paths: &[std::path::PathBuf]| {
            paths
                .iter()
                .map(|p| read_key(p).with_context(|| format!("config key `keys.{setting}`")))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let next = read_all("next_data_keys", &settings.keys.next_data_keys)?;
        let previous = read_all("previous_data_keys", &settings.keys.previous_data_keys)?;
        Ok(Self::from_key(&key)
            .with_other_keys(next.iter().map(|k| &**k), previous.iter().map(|k| &**k)))
    }

    /// Encrypts `plain` for `context`; the result is base64 text for a database column.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    /// Opens a value made by [`Vault::seal`] for the same `context`, with the current key or, for
    /// a value sealed before or during a switch of keys, one of the others.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.open_telling(context, sealed).map(|(plain, _)| plain)
    }

    /// A value sealed with a key the current one replaced (`previous`), sealed again with the
    /// current key (the same plaintext, a fresh nonce); `None` for a value the current key sealed,
    /// and for one a `next` key sealed: in a process not yet switched, sealing back with the old
    /// key what a switched process sealed with the new one would lock it out once the old key goes.
    pub fn reseal(&self, context: &str, sealed: &str) -> Result<Option<String>, VaultError> {
        match self.open_telling(context, sealed)? {
            (plain, Opener::Previous) => self.seal(context, &plain).map(Some),
            (_, Opener::Current | Opener::Next) => Ok(None),
        }
    }

    /// [`Vault::open`], and which of the keys opened it.
    fn open_telling(
        &self,
        context: &str,
        sealed: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, Opener), VaultError> {
        let raw = STANDARD.decode(sealed).map_err(|_| VaultError::Encoding)?;
        if raw.len() < NONCE_LEN {
            return Err(VaultError::Open);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        // The current key first: the others only for what it did not seal (AES-GCM tells).
        let (plain, key) = std::iter::once(&self.current)
            .chain(&self.others)
            .find_map(|k| Some((k.open(context, nonce, ct)?, k)))
            .ok_or(VaultError::Open)?;
        let opener = if std::ptr::eq(key, &self.current) {
            Opener::Current
        } else if self.next.contains(&key.check) {
            Opener::Next
        } else {
            Opener::Previous
        };
        Ok((plain, opener))
    }

    /// The current data key's check value (see `crate::keys::check_switchable`).
    pub fn check_value(&self) -> &str {
        &self.current.check
    }

    /// Check values of the keys announced to replace the current one.
    pub fn next_checks(&self) -> &[String] {
        &self.next
    }

    /// Check values of the keys the current one replaced.
    pub fn previous_checks(&self) -> &[String] {
        &self.previous
    }

    /// The platform's HPKE (X25519) key pair, from the current data key: it seals packages.
    pub fn platform_kem(&self) -> &mydata_package::e2e::HpkeKeyPair {
        &self.current.kem
    }

    /// Every HPKE key pair, the current one first: all are published, so that envelopes sealed
    /// before or during a switch still open at the service, and each opens `login_hint`s
    /// encrypted to it.
    pub fn platform_kems(&self) -> impl Iterator<Item = &mydata_package::e2e::HpkeKeyPair> {
        std::iter::once(&self.current.kem).chain(self.others.iter().map(|k| &k.kem))
    }
}

fn read_key(path: &Path) -> anyhow::Result<Zeroizing<[u8; 32]>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the data key {}", path.display()))?,
    );
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
        anyhow::anyhow!("{} must hold 64 hex digits (a 256-bit key)", path.display())
    })?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        anyhow::bail!("{} must hold 64 hex digits (a 256-bit key)", path.display());
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Writes a new key file; false when one appeared meanwhile (see [`crate::keyfile`]).
fn write_key(path: &Path, key: &[u8; 32]) -> anyhow::Result<bool> {
    let text = Zeroizing::new(format!("{}\n", hex::encode(key)));
    crate::keyfile::create_once(path, text.as_bytes())
        .with_context(|| format!("cannot create the data key {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_context_and_with_their_key() {
        let v = Vault::from_key(&[7; 32]);
        let s = v.seal("secret:t1", b"A123456789").unwrap();
        assert!(!s.contains("A123456789"));
        assert_eq!(v.open("secret:t1", &s).unwrap().as_slice(), b"A123456789");
        assert!(v.open("secret:t2", &s).is_err());
        assert!(Vault::from_key(&[8; 32]).open("secret:t1", &s).is_err());
        // The check value tells keys apart without being either.
        let check = Vault::from_key(&[7; 32]).check_value().to_owned();
        assert_eq!(check, v.check_value());
        assert_ne!(check, Vault::from_key(&[8; 32]).check_value());
        assert!(!check.contains(&hex::encode([7u8; 32])));
        assert!(v.open("secret:t1", "not base64!").is_err());
        assert_ne!(v.seal("c", b"x").unwrap(), v.seal("c", b"x").unwrap());
    }

    #[test]
    fn other_keys_open_but_never_seal_and_come_after_the_current_one() {
        let (old, new, next) = ([1; 32], [2; 32], [3; 32]);
        let v = Vault::from_key(&new).with_other_keys(&[next, new], &[old, old]);
        // The current key and repeats are skipped; the others keep their roles.
        assert_eq!(v.next_checks(), [Vault::from_key(&next).check_value()]);
        assert_eq!(v.previous_checks(), [Vault::from_key(&old).check_value()]);
        let kems: Vec<_> = v.platform_kems().map(|k| k.public_bytes()).collect();
        let kem_of = |k: &[u8; 32]| Vault::from_key(k).platform_kem().public_bytes();
        assert_eq!(kems, [kem_of(&new), kem_of(&next), kem_of(&old)]);
        assert_eq!(v.platform_kem().public_bytes(), kem_of(&new));
        for key in [&old, &new, &next] {
            let sealed = Vault::from_key(key).seal("c:t1", b"A123456789").unwrap();
            assert_eq!(v.open("c:t1", &sealed).unwrap().as_slice(), b"A123456789");
            assert!(
                v.open("c:t2", &sealed).is_err(),
                "still bound to its context"
            );
        }
        let sealed = v.seal("c:t1", b"x").unwrap();
        assert!(Vault::from_key(&new).open("c:t1", &sealed).is_ok());
        assert!(Vault::from_key(&old).open("c:t1", &sealed).is_err());
        assert!(
            Vault::from_key(&[9; 32])
                .with_other_keys(&[], &[old])
                .open("c:t1", &sealed)
                .is_err()
        );
    }

    /// Only what a replaced key sealed is sealed again: a process not yet switched (the new key
    /// listed as next) leaves what the new key sealed as it is.
    #[test]
    fn reseal_moves_what_a_previous_key_sealed_and_nothing_else() {
        let (old, new) = ([1; 32], [2; 32]);
        let by = |key: &[u8; 32]| Vault::from_key(key).seal("c:t1", b"secret").unwrap();
        let switched = Vault::from_key(&new).with_other_keys(&[], &[old]);
        let again = switched.reseal("c:t1", &by(&old)).unwrap().unwrap();
        assert!(Vault::from_key(&new).open("c:t1", &again).is_ok());
        assert!(Vault::from_key(&old).open("c:t1", &again).is_err());
        assert_eq!(switched.reseal("c:t1", &by(&new)).unwrap(), None);
        let lagging = Vault::from_key(&old).with_other_keys(&[new], &[]);
        assert_eq!(lagging.reseal("c:t1", &by(&new)).unwrap(), None);
        assert_eq!(lagging.reseal("c:t1", &by(&old)).unwrap(), None);
        assert!(lagging.reseal("c:t2", &by(&old)).is_err(), "wrong context");
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", Vault::from_key(&[7; 32])),
            "Vault(<redacted>)"
        );
    }
}
