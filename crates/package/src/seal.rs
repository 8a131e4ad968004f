//! Encryption at rest: AES-256-GCM with a fresh random key per package; blob = nonce || ciphertext+tag.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Binds every blob to this format, so a blob from another AES-GCM use does not open as a package.
const AAD: &[u8] = b"mydata-package-seal-v1";

/// A package's 256-bit key. Zeroized on drop; Debug never shows it.
pub struct PackageKey(Zeroizing<[u8; 32]>);

impl PackageKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The raw key, to store wrapped elsewhere.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PackageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackageKey(<redacted>)")
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed blob is shorter than nonce and tag")]
    TooShort,
    #[error("sealed blob fails authentication (tampered, or wrong key)")]
    Authentication,
    #[error("encryption failed")]
    Encrypt,
}

/// Encrypt `plaintext` under a fresh random key.
pub fn seal(plaintext: &[u8]) -> Result<(PackageKey, Vec<u8>), SealError> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| SealError::Encrypt)?;
    let mut blob = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), AAD, &mut blob[NONCE_LEN..])
        .map_err(|_| SealError::Encrypt)?;
    blob.extend_from_slice(&tag);
    Ok((PackageKey(key), blob))
}

/// Decrypt a blob made by [`seal`].
pub fn open(key: &PackageKey, blob: &[u8]) -> Result<Vec<u8>, SealError> {
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::TooShort);
    }
    let (nonce, rest) = blob.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let cipher =
        Aes256Gcm::new_from_slice(key.0.as_ref()).map_err(|_| SealError::Authentication)?;
    let mut plain = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), AAD, &mut plain, tag.into())
        .map_err(|_| SealError::Authentication)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_key_per_package() {
        let (k1, b1) = seal(b"hello package").unwrap();
        let (k2, b2) = seal(b"hello package").unwrap();
        assert_ne!(k1.as_bytes(), k2.as_bytes());
        assert_ne!(b1, b2);
        assert_eq!(open(&k1, &b1).unwrap(), b"hello package");
        assert_eq!(open(&k2, &b2).unwrap(), b"hello package");
    }

    #[test]
    fn tampered_blob_wrong_key_and_short_blob_are_refused() {
        let (k, mut b) = seal(b"secret data").unwrap();
        let (other, _) = seal(b"x").unwrap();
        assert_eq!(open(&other, &b), Err(SealError::Authentication));
        b[14] ^= 1;
        assert_eq!(open(&k, &b), Err(SealError::Authentication));
        assert_eq!(open(&k, &b[..20]), Err(SealError::TooShort));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let k = PackageKey::from_bytes([0xab; 32]);
        let s = format!("{k:?}");
        assert!(
            !s.to_lowercase().contains("ab, ") && !s.contains("171"),
            "{s}"
        );
        assert_eq!(s, "PackageKey(<redacted>)");
    }
}
