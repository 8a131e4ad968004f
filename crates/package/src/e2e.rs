//! End-to-end encryption to an online service (HPKE, RFC 9180, Auth mode):
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
//!
//! The platform seals a package to the service's X25519 key as soon as it is assembled and keeps
//! only the envelope, so the database and object store together cannot read it. Auth mode binds the
//! platform's own X25519 key in: a package that anyone else encrypted to the service (say, a
//! tampered copy re-encrypted with the service's public key) does not open. The transfer and the
//! service are bound in as associated data, so an envelope moved to another transfer does not open
//! either. The same construction (Base mode, no sender key) carries a `login_hint` to the platform.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;
/// The envelope's `typ`.
pub const PACKAGE_TYP: &str = "mydata-package+hpke";
/// The suite, as named in envelopes and JWKs.
pub const SUITE: &str = "HPKE-Auth-X25519-SHA256-A256GCM";
const PACKAGE_INFO: &[u8] = b"mydata package v1";
const HINT_INFO: &[u8] = b"mydata login_hint v1";

/// Why an envelope could not be made or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum E2eError {
    #[error("the key is not a 32-byte X25519 key")]
    BadKey,
    #[error("the envelope is malformed: {0}")]
    Malformed(String),
    #[error(
        "the envelope does not open with this key, sender and transfer (tampered, re-encrypted or misdirected)"
    )]
    Open,
    #[error("encryption failed")]
    Seal,
}

/// An X25519 key pair for HPKE.
pub struct HpkeKeyPair {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: <Kem as hpke::Kem>::PublicKey,
}

impl std::fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HpkeKeyPair({})", self.kid())
    }
}

impl HpkeKeyPair {
    pub fn generate() -> Self {
        let (secret, public) = Kem::gen_keypair();
        Self { secret, public }
    }

    /// The key pair derived from secret input keying material (RFC 9180 DeriveKeyPair).
    pub fn derive(ikm: &[u8]) -> Self {
        let (secret, public) = Kem::derive_keypair(ikm);
        Self { secret, public }
    }

    /// Reads a 32-byte private key.
    pub fn from_secret(bytes: &[u8]) -> Result<Self, E2eError> {
        let secret =
            <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes).map_err(|_| E2eError::BadKey)?;
        let public = Kem::sk_to_pk(&secret);
        Ok(Self { secret, public })
    }

    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.secret.to_bytes().to_vec())
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.public.to_bytes());
        out
    }

    /// RFC 7638 thumbprint of the public JWK.
    pub fn kid(&self) -> String {
        okp_thumbprint(&self.public_bytes())
    }

    /// The public key as a JWK (`kty` OKP, `crv` X25519, `use` enc).
    pub fn public_jwk(&self) -> serde_json::Value {
        public_jwk(&self.public_bytes())
    }
}

/// The JWK of an X25519 public key.
pub fn public_jwk(public: &[u8; 32]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "X25519",
        "x": URL_SAFE_NO_PAD.encode(public),
        "use": "enc",
        "alg": SUITE,
        "kid": okp_thumbprint(public),
    })
}

/// RFC 7638 thumbprint of an X25519 public key (members in lexicographic order).
pub fn okp_thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"X25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Reads the `x` of an OKP X25519 JWK.
pub fn x25519_from_jwk(jwk: &serde_json::Value) -> Result<[u8; 32], E2eError> {
    if jwk.get("kty").and_then(|v| v.as_str()) != Some("OKP")
        || jwk.get("crv").and_then(|v| v.as_str()) != Some("X25519")
    {
        return Err(E2eError::BadKey);
    }
    let x = jwk
        .get("x")
        .and_then(|v| v.as_str())
        .ok_or(E2eError::BadKey)?;
    let bytes = URL_SAFE_NO_PAD.decode(x).map_err(|_| E2eError::BadKey)?;
    bytes.try_into().map_err(|_| E2eError::BadKey)
}

/// A sealed package as served to the service (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub typ: String,
    pub suite: String,
    /// Thumbprint of the service key it is sealed to.
    pub kid: String,
    /// Thumbprint of the platform key that sealed it.
    pub sender_kid: String,
    pub transfer_id: String,
    pub client_id: String,
    /// Encapsulated key, base64url.
    pub enc: String,
    /// Ciphertext, base64url.
    pub ct: String,
}

fn package_aad(transfer_id: &str, client_id: &str) -> Vec<u8> {
    format!("{PACKAGE_TYP}\n{transfer_id}\n{client_id}").into_bytes()
}

/// Seals `package` to the service key `recipient`, authenticated by the platform key `sender`.
pub fn seal_package(
    sender: &HpkeKeyPair,
    recipient: &[u8; 32],
    transfer_id: &str,
    client_id: &str,
    package: &[u8],
) -> Result<Envelope, E2eError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient).map_err(|_| E2eError::BadKey)?;
    let mode = OpModeS::Auth((sender.secret.clone(), sender.public.clone()));
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem>(
        &mode,
        &pk,
        PACKAGE_INFO,
        package,
        &package_aad(transfer_id, client_id),
    )
    .map_err(|_| E2eError::Seal)?;
    Ok(Envelope {
        typ: PACKAGE_TYP.into(),
        suite: SUITE.into(),
        kid: okp_thumbprint(recipient),
        sender_kid: sender.kid(),
        transfer_id: transfer_id.into(),
        client_id: client_id.into(),
        enc: URL_SAFE_NO_PAD.encode(enc.to_bytes()),
        ct: URL_SAFE_NO_PAD.encode(ct),
    })
}

/// Opens an envelope with the service's key, checking it was sealed by `sender` (the platform's
/// published key) for this transfer and service.
pub fn open_package(
    recipient: &HpkeKeyPair,
    sender: &[u8; 32],
    transfer_id: &str,
    client_id: &str,
    envelope: &Envelope,
) -> Result<Zeroizing<Vec<u8>>, E2eError> {
    if envelope.typ != PACKAGE_TYP || envelope.suite != SUITE {
        return Err(E2eError::Malformed(format!(
            "typ/suite must be {PACKAGE_TYP}/{SUITE}"
        )));
    }
    let spk = <Kem as hpke::Kem>::PublicKey::from_bytes(sender).map_err(|_| E2eError::BadKey)?;
    let decode = |s: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| E2eError::Malformed(format!("{what} is not base64url")))
    };
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&decode(&envelope.enc, "enc")?)
        .map_err(|_| E2eError::Malformed("enc is not an X25519 share".into()))?;
    let ct = decode(&envelope.ct, "ct")?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Auth(spk),
        &recipient.secret,
        &enc,
        PACKAGE_INFO,
        &ct,
        &package_aad(transfer_id, client_id),
    )
    .map(Zeroizing::new)
    .map_err(|_| E2eError::Open)
}

/// Encrypts a person's ID number to the platform for `login_hint` (what a service does):
/// `base64url(enc) "." base64url(ct)`, bound to the service's client ID.
pub fn seal_login_hint(
    platform: &[u8; 32],
    client_id: &str,
    id_number: &str,
) -> Result<String, E2eError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(platform).map_err(|_| E2eError::BadKey)?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        HINT_INFO,
        id_number.as_bytes(),
        client_id.as_bytes(),
    )
    .map_err(|_| E2eError::Seal)?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(enc.to_bytes()),
        URL_SAFE_NO_PAD.encode(ct)
    ))
}

/// Opens a `login_hint` made by [`seal_login_hint`] for `client_id`.
pub fn open_login_hint(
    platform: &HpkeKeyPair,
    client_id: &str,
    hint: &str,
) -> Result<Zeroizing<String>, E2eError> {
    let (enc, ct) = hint
        .split_once('.')
        .ok_or_else(|| E2eError::Malformed("login_hint is not enc.ct".into()))?;
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| E2eError::Malformed("login_hint is not base64url".into()))
    };
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&decode(enc)?)
        .map_err(|_| E2eError::Malformed("login_hint enc is not an X25519 share".into()))?;
    let plain = hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        &platform.secret,
        &enc,
        HINT_INFO,
        &decode(ct)?,
        client_id.as_bytes(),
    )
    .map_err(|_| E2eError::Open)?;
    String::from_utf8(plain)
        .map(Zeroizing::new)
        .map_err(|_| E2eError::Malformed("login_hint is not text".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_package_opens_only_for_its_transfer_service_and_sender() {
        let platform = HpkeKeyPair::generate();
        let service = HpkeKeyPair::generate();
        let env =
            seal_package(&platform, &service.public_bytes(), "t1", "sp", b"zip bytes").unwrap();
        assert_eq!(env.kid, service.kid());
        let plain = open_package(&service, &platform.public_bytes(), "t1", "sp", &env).unwrap();
        assert_eq!(plain.as_slice(), b"zip bytes");
        let sender = platform.public_bytes();
        assert_eq!(
            open_package(&service, &sender, "t2", "sp", &env),
            Err(E2eError::Open)
        );
        assert_eq!(
            open_package(&service, &sender, "t1", "other", &env),
            Err(E2eError::Open)
        );
        // Re-encrypted by someone holding only the service's public key: refused.
        let forger = HpkeKeyPair::generate();
        let forged = seal_package(&forger, &service.public_bytes(), "t1", "sp", b"evil").unwrap();
        assert_eq!(
            open_package(&service, &sender, "t1", "sp", &forged),
            Err(E2eError::Open)
        );
        // A flipped ciphertext byte.
        let mut ct = URL_SAFE_NO_PAD.decode(&env.ct).unwrap();
        ct[3] ^= 1;
        let tampered = Envelope {
            ct: URL_SAFE_NO_PAD.encode(ct),
            ..env.clone()
        };
        assert_eq!(
            open_package(&service, &sender, "t1", "sp", &tampered),
            Err(E2eError::Open)
        );
        assert_eq!(
            open_package(&HpkeKeyPair::generate(), &sender, "t1", "sp", &env),
            Err(E2eError::Open)
        );
    }

    #[test]
    fn login_hint_round_trips_for_its_client_only() {
        let platform = HpkeKeyPair::derive(b"some secret input keying material");
        let hint = seal_login_hint(&platform.public_bytes(), "sp", "A123456789").unwrap();
        assert_eq!(
            open_login_hint(&platform, "sp", &hint).unwrap().as_str(),
            "A123456789"
        );
        assert_eq!(
            open_login_hint(&platform, "other", &hint),
            Err(E2eError::Open)
        );
        assert!(matches!(
            open_login_hint(&platform, "sp", "nodot"),
            Err(E2eError::Malformed(_))
        ));
    }

    #[test]
    fn jwk_round_trip_and_thumbprint() {
        let k = HpkeKeyPair::generate();
        let jwk = k.public_jwk();
        assert_eq!(x25519_from_jwk(&jwk).unwrap(), k.public_bytes());
        assert_eq!(jwk["kid"], k.kid());
        assert_eq!(
            x25519_from_jwk(&serde_json::json!({"kty":"EC"})),
            Err(E2eError::BadKey)
        );
        let again = HpkeKeyPair::from_secret(&k.secret_bytes()).unwrap();
        assert_eq!(again.public_bytes(), k.public_bytes());
    }
}
