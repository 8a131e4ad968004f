//! The simulated identity PKI, separate from the agency PKI that signs datasets:
//!
//! ```text
//! mydata simulated GRCA (root, the platform's configured identity trust anchor)
//! ├── mydata simulated MOICA  (citizen certificates: CN = name, serialNumber = ID number)
//! └── mydata simulated MOEACA (business certificates: CN = company, serialNumber = 統一編號)
//! ```
//!
//! Leaf certificates are ECDSA P-256, keyUsage digitalSignature + nonRepudiation, extended key
//! usage clientAuth, not CAs. Each issuing CA publishes a CRL; the root publishes one for the
//! issuing CAs (empty unless one is revoked), so a chain can be checked for revocation end to end.

use mydata_core::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// Object identifier of the X.520 `serialNumber` attribute (2.5.4.5).
pub const SERIAL_NUMBER_OID: &[u64] = &[2, 5, 4, 5];

/// Failure to issue certificates, CRLs or cards.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("time {0} cannot be expressed in a certificate")]
    Time(Timestamp),
    #[error("{0:?} is not a valid certificate serialNumber (letters, digits, space only)")]
    SerialNumber(String),
}

/// Which identity CA a certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    /// 自然人憑證 analogue: a natural person, by national ID or resident certificate number.
    Citizen,
    /// 工商憑證 analogue: a company, by its 統一編號.
    Business,
}

impl CardKind {
    /// Short name of the issuing CA, used in file names.
    pub fn ca_file_stem(self) -> &'static str {
        match self {
            CardKind::Citizen => "moica",
            CardKind::Business => "moeaca",
        }
    }

    fn ca_name(self) -> &'static str {
        match self {
            CardKind::Citizen => "mydata simulated MOICA (citizen certificates)",
            CardKind::Business => "mydata simulated MOEACA (business certificates)",
        }
    }
}

/// Common name of the identity root.
pub const ROOT_NAME: &str = "mydata simulated GRCA (identity root)";
const ORG: &str = "mydata simulated identity PKI";

/// Who a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: CardKind,
    /// Person's or company's name (subject CN).
    pub name: String,
    /// ID number or 統一編號 (subject serialNumber).
    pub serial_number: String,
}

pub(crate) fn to_offset(t: Timestamp) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .map_err(|_| CaError::Time(t))
}

/// One certificate authority: its key, its certificate, the serials it issued.
pub struct Authority {
    key: KeyPair,
    cert: rcgen::Certificate,
    der: Vec<u8>,
    next_serial: AtomicU64,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.der
    }

    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The CA's private key (PKCS#8 PEM), to keep a demo's CA across restarts.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CA restored from its certificate and key (as saved by [`Authority::cert_pem`] and
    /// [`Authority::key_pem`]); new serials start at `next_serial`.
    pub fn restore(cert_der: &[u8], key_pem: &str, next_serial: u64) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_der(&cert_der.to_vec().into())?;
        // Re-signing yields an issuer with the same name and key identifier; the published
        // certificate stays the original DER.
        let cert = params.self_signed(&key)?;
        Ok(Self {
            key,
            cert,
            der: cert_der.to_vec(),
            next_serial: AtomicU64::new(next_serial),
        })
    }

    fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// The next serial this CA would give (saved with the CA so restored CAs do not repeat one).
    pub fn peek_serial(&self) -> u64 {
        self.next_serial.load(Ordering::Relaxed)
    }

    /// A CRL listing `revoked` serials, valid from `this_update` until `next_update`.
    pub fn crl(
        &self,
        revoked: &[u64],
        this_update: Timestamp,
        next_update: Timestamp,
    ) -> Result<Vec<u8>, CaError> {
        let at = to_offset(this_update)?;
        let params = CertificateRevocationListParams {
            this_update: at,
            next_update: to_offset(next_update)?,
            crl_number: SerialNumber::from(u64::try_from(this_update.millis()).unwrap_or(0)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: at,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.der().to_vec())
    }
}

fn ca_params(
    name: &str,
    path_len: u8,
    nb: Timestamp,
    na: Timestamp,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CountryName, "TW");
    params
        .distinguished_name
        .push(DnType::OrganizationName, ORG);
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(nb)?;
    params.not_after = to_offset(na)?;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// An issued end-entity certificate with its freshly generated key.
#[derive(Debug)]
pub struct IssuedCert {
    pub serial: u64,
    pub der: Vec<u8>,
    /// The subject's private key, PKCS#8 DER (goes into the card, nowhere else).
    pub key_pkcs8: Vec<u8>,
}

/// The whole identity PKI: root and the two issuing CAs.
#[derive(Debug)]
pub struct IdentityPki {
    pub root: Authority,
    pub citizen: Authority,
    pub business: Authority,
}

impl IdentityPki {
    /// A fresh PKI: root valid 20 years and issuing CAs 10 years from a day before `now`.
    pub fn generate(now: Timestamp) -> Result<Self, CaError> {
        const YEAR_MS: i64 = 365 * 86_400_000;
        let nb = Timestamp::from_millis(now.millis() - 86_400_000);
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut root_params = ca_params(
            ROOT_NAME,
            1,
            nb,
            Timestamp::from_millis(now.millis() + 20 * YEAR_MS),
        )?;
        root_params.serial_number = Some(SerialNumber::from(1u64));
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Authority {
            der: root_cert.der().to_vec(),
            key: root_key,
            cert: root_cert,
            next_serial: AtomicU64::new(2),
        };
        let issuing = |kind: CardKind| -> Result<Authority, CaError> {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = ca_params(
                kind.ca_name(),
                0,
                nb,
                Timestamp::from_millis(now.millis() + 10 * YEAR_MS),
            )?;
            params.serial_number = Some(SerialNumber::from(root.next_serial()));
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &root.cert, &root.key)?;
            Ok(Authority {
                der: cert.der().to_vec(),
                key,
                cert,
                next_serial: AtomicU64::new(0x1000),
            })
        };
        let citizen = issuing(CardKind::Citizen)?;
        let business = issuing(CardKind::Business)?;
        Ok(Self {
            root,
            citizen,
            business,
        })
    }

    /// The CA that issues certificates of `kind`.
    pub fn issuer(&self, kind: CardKind) -> &Authority {
        match kind {
            CardKind::Citizen => &self.citizen,
            CardKind::Business => &self.business,
        }
    }

    /// Issues a signing certificate for `subject` with a fresh P-256 key, valid from `not_before`
    /// to `not_after` (which may lie in the past, for expired test cards).
    pub fn issue(
        &self,
        subject: &Subject,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<IssuedCert, CaError> {
        self.issue_with(
            subject,
            not_before,
            not_after,
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::ContentCommitment,
            ],
        )
    }

    /// Issues the other certificate a real citizen card carries: the encryption certificate
    /// (keyEncipherment only), which must never sign anyone in.
    pub fn issue_encryption(
        &self,
        subject: &Subject,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<IssuedCert, CaError> {
        self.issue_with(
            subject,
            not_before,
            not_after,
            vec![KeyUsagePurpose::KeyEncipherment],
        )
    }

    fn issue_with(
        &self,
        subject: &Subject,
        not_before: Timestamp,
        not_after: Timestamp,
        key_usages: Vec<KeyUsagePurpose>,
    ) -> Result<IssuedCert, CaError> {
        let issuer = self.issuer(subject.kind);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let serial = issuer.next_serial();
        let printable = rcgen::PrintableString::try_from(subject.serial_number.as_str())
            .map_err(|_| CaError::SerialNumber(subject.serial_number.clone()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CountryName, "TW");
        params
            .distinguished_name
            .push(DnType::CommonName, subject.name.as_str());
        params.distinguished_name.push(
            DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()),
            DnValue::PrintableString(printable),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = key_usages;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer.cert, &issuer.key)?;
        Ok(IssuedCert {
            serial,
            der: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
        })
    }
}

/// PEM armour (64-column base64).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
