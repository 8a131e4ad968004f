//! A test card: the PKCS#12 file (private key and certificate chain, protected by the PIN) and
//! beside it the card's public certificate chain in PEM, which a card reader can read without the
//! PIN (as a real smart card shows its certificate to anyone).

use mydata_core::Timestamp;
use p12_keystore::{
    Certificate, KeyStore, KeyStoreEntry, Pkcs12ImportPolicy, PrivateKey, PrivateKeyChain,
};
use p256::ecdsa::SigningKey;
use p256::pkcs8::DecodePrivateKey;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The PIN of every demo card.
pub const DEMO_PIN: &str = "123456";

/// Why a card cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("wrong PIN")]
    WrongPin,
    #[error("the card file is not a usable PKCS#12 card: {0}")]
    Malformed(String),
    #[error("the card's certificate cannot be read: {0}")]
    Certificate(String),
    #[error("the card's key does not belong to its certificate")]
    KeyMismatch,
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What anyone can read from a card's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardInfo {
    /// Subject CN: the person's or company's name.
    pub subject: String,
    /// Subject serialNumber: the ID number or 統一編號.
    pub serial_number: String,
    /// Issuer CN.
    pub issuer: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// Certificate serial number (as the CRL lists it), hex.
    pub cert_serial: String,
    /// SHA-256 of the leaf certificate DER, hex: identifies the physical card.
    pub fingerprint: String,
}

/// Reads the fields of a leaf certificate.
pub fn info_of(leaf_der: &[u8]) -> Result<CardInfo, CardError> {
    let (_, cert) =
        X509Certificate::from_der(leaf_der).map_err(|e| CardError::Certificate(e.to_string()))?;
    let attr = |name: &x509_parser::x509::X509Name<'_>, oid: &x509_parser::der_parser::Oid<'_>| {
        name.iter_by_oid(oid)
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    };
    let cn = x509_parser::oid_registry::OID_X509_COMMON_NAME;
    let serial = x509_parser::oid_registry::OID_X509_SERIALNUMBER;
    let subject = attr(cert.subject(), &cn)
        .ok_or_else(|| CardError::Certificate("subject has no common name".into()))?;
    let serial_number = attr(cert.subject(), &serial)
        .ok_or_else(|| CardError::Certificate("subject has no serialNumber".into()))?;
    let issuer = attr(cert.issuer(), &cn).unwrap_or_default();
    let v = cert.validity();
    Ok(CardInfo {
        subject,
        serial_number,
        issuer,
        not_before: Timestamp::from_millis(v.not_before.timestamp() * 1000),
        not_after: Timestamp::from_millis(v.not_after.timestamp() * 1000),
        cert_serial: hex::encode(cert.raw_serial()),
        fingerprint: hex::encode(Sha256::digest(leaf_der)),
    })
}

/// Builds the PKCS#12 file of a card: `key_pkcs8` and `chain` (leaf first), encrypted under `pin`
/// (PBES2 with AES-256-CBC and PBKDF2-HMAC-SHA256, MAC HMAC-SHA256).
pub fn to_pkcs12(key_pkcs8: &[u8], chain: &[Vec<u8>], pin: &str) -> Result<Vec<u8>, CardError> {
    let malformed = |e: p12_keystore::error::Error| CardError::Malformed(e.to_string());
    let key = PrivateKey::from_der(key_pkcs8).map_err(malformed)?;
    let certs = chain
        .iter()
        .map(|der| Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()
        .map_err(malformed)?;
    let leaf = chain
        .first()
        .ok_or(CardError::Certificate("empty chain".into()))?;
    let local_key_id = Sha256::digest(leaf)[..20].to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        "card",
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    store.writer(pin).write().map_err(malformed)
}

/// A card opened with its PIN: it can sign.
pub struct OpenedCard {
    key: SigningKey,
    chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for OpenedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedCard").finish_non_exhaustive()
    }
}

impl OpenedCard {
    /// Opens a PKCS#12 card. A wrong PIN is [`CardError::WrongPin`]; anything else wrong with the
    /// file is [`CardError::Malformed`].
    pub fn open(p12: &[u8], pin: &str) -> Result<Self, CardError> {
        let store =
            KeyStore::from_pkcs12(p12, pin, Pkcs12ImportPolicy::Strict).map_err(|e| match e {
                p12_keystore::error::Error::MacError(_) => CardError::WrongPin,
                other => CardError::Malformed(other.to_string()),
            })?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| CardError::Malformed("no private key with a certificate".into()))?;
        let key = SigningKey::from_pkcs8_der(chain.key().as_der())
            .map_err(|e| CardError::Malformed(format!("not a P-256 key: {e}")))?;
        let certs: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
        let leaf = certs
            .first()
            .ok_or(CardError::Malformed("no certificate".into()))?;
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| CardError::Certificate(e.to_string()))?;
        let public = key.verifying_key().to_sec1_point(false);
        if cert.public_key().subject_public_key.data.as_ref() != public.as_bytes() {
            return Err(CardError::KeyMismatch);
        }
        Ok(Self { key, chain: certs })
    }

    /// Certificate chain, leaf first, DER.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// ECDSA P-256 with SHA-256 over `message`, DER-encoded.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        sig.to_der().as_bytes().to_vec()
    }
}

/// The public chain file that goes with `card` (`X.p12` → `X.pem`).
pub fn chain_path(card: &Path) -> PathBuf {
    card.with_extension("pem")
}

/// Reads every certificate of a PEM file (DER, in file order).
pub fn read_chain_pem(path: &Path) -> Result<Vec<Vec<u8>>, CardError> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).map_err(|source| CardError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b = body.take().unwrap_or_default();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| CardError::Certificate(format!("{}: {e}", path.display())))?;
            out.push(der);
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if out.is_empty() {
        return Err(CardError::Certificate(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(out)
}
