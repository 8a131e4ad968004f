//! ECDSA P-256 / SHA-256 signing and verification through AWS-LC (aws-lc-rs).
//!
//! The public API keeps RustCrypto `p256` key types (they parse and print PKCS#8, SEC1 and JWK
//! forms); the arithmetic runs in AWS-LC, whose assembly P-256 is several times faster than the
//! pure-Rust one (see docs/PERFORMANCE.md). Output formats are unchanged: ES256 `r || s` (64 bytes)
//! for JWS, DER `Ecdsa-Sig-Value` for `manifest.sig`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm, ParsedPublicKey,
};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};

/// A P-256 private key ready to sign in both encodings.
pub(crate) struct KeyPair {
    fixed: EcdsaKeyPair,
    der: EcdsaKeyPair,
    /// Kept for the public API (verifying key) and as a fallback should AWS-LC report an
    /// internal error: a signature is then still produced, only slower.
    fallback: SigningKey,
}

impl KeyPair {
    pub fn new(key: SigningKey) -> Result<Self, String> {
        let private = key.to_bytes();
        let public = key.verifying_key().to_sec1_point(false);
        let pair = |alg: &'static EcdsaSigningAlgorithm| {
            EcdsaKeyPair::from_private_key_and_public_key(alg, &private, public.as_bytes())
                .map_err(|e| format!("AWS-LC refused the P-256 key: {e}"))
        };
        Ok(Self {
            fixed: pair(&ECDSA_P256_SHA256_FIXED_SIGNING)?,
            der: pair(&ECDSA_P256_SHA256_ASN1_SIGNING)?,
            fallback: key,
        })
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        self.fallback.verifying_key()
    }

    /// ES256: the 64-byte `r || s` signature over SHA-256 of `msg`.
    pub fn sign_fixed(&self, msg: &[u8]) -> Vec<u8> {
        match self.fixed.sign(&SystemRandom::new(), msg) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                let sig: Signature = self.fallback.sign(msg);
                sig.to_bytes().to_vec()
            }
        }
    }

    /// The DER `Ecdsa-Sig-Value` signature over SHA-256 of `msg` (what `openssl dgst -sign` writes).
    pub fn sign_der(&self, msg: &[u8]) -> Vec<u8> {
        match self.der.sign(&SystemRandom::new(), msg) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                let sig: Signature = self.fallback.sign(msg);
                sig.to_der().as_bytes().to_vec()
            }
        }
    }
}

/// A P-256 public key parsed once for AWS-LC, for several verifications.
pub struct PublicKey {
    fixed: ParsedPublicKey,
    der: ParsedPublicKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKey(P-256)")
    }
}

impl PublicKey {
    pub fn new(key: &VerifyingKey) -> Result<Self, String> {
        let point = key.to_sec1_point(false);
        let parse = |alg| {
            ParsedPublicKey::new(alg, point.as_bytes())
                .map_err(|e| format!("AWS-LC refused the P-256 public key: {e}"))
        };
        Ok(Self {
            fixed: parse(&ECDSA_P256_SHA256_FIXED)?,
            der: parse(&ECDSA_P256_SHA256_ASN1)?,
        })
    }

    /// Checks a 64-byte `r || s` signature (anything else is refused).
    pub fn verify_fixed(&self, msg: &[u8], sig: &[u8]) -> bool {
        sig.len() == 64 && self.fixed.verify_sig(msg, sig).is_ok()
    }

    /// Checks a DER signature; AWS-LC refuses non-canonical DER and trailing bytes.
    pub fn verify_der(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.der.verify_sig(msg, sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{DerSignature, Signature};
    use p256::elliptic_curve::Generate;

    // Both encodings must be exactly what RustCrypto (and openssl) produce and accept.
    #[test]
    fn aws_lc_and_rustcrypto_agree_both_ways() {
        let key = SigningKey::generate();
        let vk = *key.verifying_key();
        let pair = KeyPair::new(key.clone()).unwrap();
        let public = PublicKey::new(&vk).unwrap();
        let msg = b"header.payload";

        let fixed = pair.sign_fixed(msg);
        assert_eq!(fixed.len(), 64);
        let sig = Signature::from_slice(&fixed).unwrap();
        assert!(vk.verify(msg, &sig).is_ok());
        let der = pair.sign_der(msg);
        let sig = DerSignature::from_bytes(&der).unwrap();
        assert!(vk.verify(msg, &sig).is_ok());

        let theirs: Signature = key.sign(msg);
        assert!(public.verify_fixed(msg, &theirs.to_bytes()));
        assert!(public.verify_der(msg, theirs.to_der().as_bytes()));
        assert!(!public.verify_fixed(b"other", &theirs.to_bytes()));
        assert!(!public.verify_der(b"other", theirs.to_der().as_bytes()));
        // Wrong encodings are refused rather than reinterpreted.
        assert!(!public.verify_fixed(msg, theirs.to_der().as_bytes()));
        assert!(!public.verify_der(msg, &theirs.to_bytes()));
        let mut trailing = theirs.to_der().as_bytes().to_vec();
        trailing.push(0);
        assert!(!public.verify_der(msg, &trailing));
    }

    #[test]
    fn another_key_does_not_verify() {
        let pair = KeyPair::new(SigningKey::generate()).unwrap();
        let other = PublicKey::new(SigningKey::generate().verifying_key()).unwrap();
        assert!(!other.verify_fixed(b"m", &pair.sign_fixed(b"m")));
        assert!(!other.verify_der(b"m", &pair.sign_der(b"m")));
    }
}
