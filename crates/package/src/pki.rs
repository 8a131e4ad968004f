//! Simulated government PKI: a root CA that issues agency signing certificates and CRLs, and the
//! [`TrustStore`] that checks an agency certificate chain (rustls-webpki, with CRL revocation).

use crate::pem;
use mydata_core::Timestamp;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

/// Arcs of the extended key usage "mydata data signing" (private enterprise arc, simulated).
pub const DATA_SIGNING_EKU_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 1, 1];
/// The same OID as DER content bytes (what rustls-webpki compares against).
pub const DATA_SIGNING_EKU_DER: &[u8] =
    &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb2, 0x03, 0x01, 0x01];

/// Signature algorithms accepted in agency chains: ECDSA P-256 only, as the seed specifies.
static CHAIN_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] =
    &[webpki::ring::ECDSA_P256_SHA256];

/// Failure to issue certificates or CRLs.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("time {0} cannot be expressed in a certificate")]
    Time(Timestamp),
    #[error("key conversion failed: {0}")]
    Key(String),
}

/// Failure to configure a [`TrustStore`].
#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    #[error("root certificate is not usable as a trust anchor: {0}")]
    BadRoot(webpki::Error),
    #[error("CRL cannot be parsed: {0}")]
    BadCrl(webpki::Error),
    #[error("PEM input holds no {0}")]
    EmptyPem(&'static str),
    #[error("PEM input cannot be parsed: {0}")]
    Pem(String),
}

/// Why an agency certificate chain was refused (check 1 of dataset verification).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("chain.pem holds no certificate")]
    NoCertificate,
    #[error("chain.pem cannot be parsed: {0}")]
    Unparseable(String),
    #[error("certificate expired (not after {not_after_s} s, now {now_s} s)")]
    Expired { not_after_s: u64, now_s: u64 },
    #[error("certificate not valid yet (not before {not_before_s} s, now {now_s} s)")]
    NotYetValid { not_before_s: u64, now_s: u64 },
    #[error("certificate does not chain to a trusted root")]
    UntrustedIssuer,
    #[error("certificate has been revoked (listed in the issuer's CRL)")]
    Revoked,
    #[error("certificate lacks the mydata data-signing extended key usage")]
    WrongUsage,
    #[error("revocation status unknown: no CRL from the issuer is configured")]
    RevocationUnknown,
    #[error("the issuer's CRL is out of date")]
    CrlExpired,
    #[error("certificate subject has no common name")]
    NoCommonName,
    #[error("certificate is invalid: {0}")]
    Invalid(String),
}

impl CertError {
    fn from_webpki(e: webpki::Error) -> Self {
        #[allow(deprecated)]
        match e {
            webpki::Error::CertExpired { time, not_after } => Self::Expired {
                not_after_s: not_after.as_secs(),
                now_s: time.as_secs(),
            },
            webpki::Error::CertNotValidYet { time, not_before } => Self::NotYetValid {
                not_before_s: not_before.as_secs(),
                now_s: time.as_secs(),
            },
            webpki::Error::UnknownIssuer => Self::UntrustedIssuer,
            webpki::Error::CertRevoked => Self::Revoked,
            webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
                Self::WrongUsage
            }
            webpki::Error::UnknownRevocationStatus => Self::RevocationUnknown,
            webpki::Error::CrlExpired { .. } => Self::CrlExpired,
            other => Self::Invalid(format!("{other:?}")),
        }
    }
}

fn to_offset(t: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .map_err(|_| PkiError::Time(t))
}

fn to_unix(t: Timestamp) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_millis(
        u64::try_from(t.millis()).unwrap_or(0),
    ))
}

/// A P-256 public key in the form rcgen needs to put it in a certificate.
struct P256Public(Vec<u8>);

impl PublicKeyData for P256Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A certificate the simulated CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    serial: u64,
    der: CertificateDer<'static>,
}

impl IssuedCert {
    /// The serial number, as listed in a CRL to revoke it.
    pub fn serial(&self) -> u64 {
        self.serial
    }
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
    pub fn pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }
}

/// A certificate revocation list the simulated CA signed.
#[derive(Debug, Clone)]
pub struct Crl {
    der: Vec<u8>,
}

impl Crl {
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    pub fn pem(&self) -> String {
        pem::encode("X509 CRL", &self.der)
    }
}

/// A simulated government root CA (ECDSA P-256) issuing agency signing certificates and CRLs.
pub struct SimulatedCa {
    key: KeyPair,
    cert: rcgen::Certificate,
    next_serial: AtomicU64,
}

impl std::fmt::Debug for SimulatedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedCa").finish_non_exhaustive()
    }
}

impl SimulatedCa {
    /// A root CA named `name` with a fresh key, valid from `not_before` to `not_after`.
    pub fn new(name: &str, not_before: Timestamp, not_after: Timestamp) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Self::with_key_pair(name, key, not_before, not_after)
    }

    /// A root CA whose key is `key` (so that a deployment can keep the same root across runs).
    pub fn from_signing_key(
        name: &str,
        key: &SigningKey,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Self, PkiError> {
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| PkiError::Key(e.to_string()))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes());
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ECDSA_P256_SHA256)?;
        Self::with_key_pair(name, key, not_before, not_after)
    }

    fn with_key_pair(
        name: &str,
        key: KeyPair,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(SerialNumber::from(1u64));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            key,
            cert,
            next_serial: AtomicU64::new(2),
        })
    }

    /// The root certificate (DER), to configure in a [`TrustStore`].
    pub fn root_der(&self) -> &CertificateDer<'static> {
        self.cert.der()
    }

    pub fn root_pem(&self) -> String {
        pem::encode("CERTIFICATE", self.cert.der())
    }

    /// Issue an agency signing certificate: subject CN = `agency_id`, the data-signing EKU,
    /// digitalSignature key usage, valid from `not_before` to `not_after` (which may be in the past).
    pub fn issue_agency_cert(
        &self,
        agency_id: &str,
        public_key: &VerifyingKey,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<IssuedCert, PkiError> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, agency_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(
            DATA_SIGNING_EKU_ARCS.to_vec(),
        )];
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let public = P256Public(public_key.to_sec1_point(false).as_bytes().to_vec());
        let cert = params.signed_by(&public, &self.cert, &self.key)?;
        Ok(IssuedCert {
            serial,
            der: cert.der().clone(),
        })
    }

    /// Generate a fresh agency key and certificate and return the signer holding both.
    pub fn issue_agency(
        &self,
        agency_id: &str,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> Result<(crate::AgencySigner, IssuedCert), PkiError> {
        let key = SigningKey::try_generate().map_err(|e| PkiError::Key(e.to_string()))?;
        let cert = self.issue_agency_cert(agency_id, key.verifying_key(), not_before, not_after)?;
        let signer = crate::AgencySigner::new(key, vec![cert.der().clone()])
            .map_err(|e| PkiError::Key(e.to_string()))?;
        Ok((signer, cert))
    }

    /// A CRL listing `revoked` serials, valid from `this_update` until `next_update`.
    pub fn crl(
        &self,
        revoked: &[u64],
        this_update: Timestamp,
        next_update: Timestamp,
    ) -> Result<Crl, PkiError> {
        let revocation_time = to_offset(this_update)?;
        let params = CertificateRevocationListParams {
            this_update: revocation_time,
            next_update: to_offset(next_update)?,
            crl_number: SerialNumber::from(u64::try_from(this_update.millis()).unwrap_or(0)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key)?;
        Ok(Crl {
            der: crl.der().to_vec(),
        })
    }
}

/// Trusted roots and CRLs, parsed once and reused for every verification.
///
/// Chains that verified are remembered (see [`VerifiedChains`]): the datasets of one agency all
/// carry the same chain, so only the first of them pays for the chain's signatures and the CRL's.
#[derive(Debug, Default)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    /// The earliest `nextUpdate` of the CRLs, in Unix seconds (a CRL is stale from then on).
    crls_stale_at: Option<u64>,
    allow_missing_crl: bool,
    verified: VerifiedChains,
}

/// Most verified chains remembered per trust store (a handful of agencies in practice).
const VERIFIED_CHAINS_MAX: usize = 4096;

/// Chains this store verified, by SHA-256 of their certificates, each with the Unix-second window
/// (inclusive) in which that verification holds: within every certificate's validity and before
/// any CRL goes stale. The roots and CRLs cannot change under an entry (changing them clears the
/// cache, and the connector builds a new store when it reloads them), so an entry stands for "this
/// chain, under these roots and this CRL, at any time in the window". Failures are not remembered.
#[derive(Debug, Default)]
struct VerifiedChains(std::sync::Mutex<std::collections::HashMap<[u8; 32], (u64, u64)>>);

impl VerifiedChains {
    fn key(chain: &[CertificateDer<'static>]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for c in chain {
            h.update((c.len() as u64).to_be_bytes());
            h.update(c.as_ref());
        }
        h.finalize().into()
    }

    fn holds(&self, key: &[u8; 32], now: u64) -> bool {
        // A poisoned lock only costs the cache, never a wrong answer.
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(key).copied())
            .is_some_and(|(from, until)| from <= now && now <= until)
    }

    fn remember(&self, key: [u8; 32], window: (u64, u64)) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= VERIFIED_CHAINS_MAX {
                m.clear();
            }
            m.insert(key, window);
        }
    }

    fn clear(&mut self) {
        if let Ok(m) = self.0.get_mut() {
            m.clear();
        }
    }

    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The Unix-second window in which every certificate of `chain` is within its validity, or None
/// when a certificate cannot be read (then the chain is simply not remembered).
fn validity_window(chain: &[CertificateDer<'static>]) -> Option<(u64, u64)> {
    use x509_cert::der::Decode;
    let mut window = (0u64, u64::MAX);
    for der in chain {
        let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
        let v = &cert.tbs_certificate.validity;
        window.0 = window.0.max(v.not_before.to_unix_duration().as_secs());
        window.1 = window.1.min(v.not_after.to_unix_duration().as_secs());
    }
    (window.0 <= window.1).then_some(window)
}

impl TrustStore {
    /// An empty store: trusts nothing, and (by default) requires a CRL from every issuer.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_root_der(&mut self, der: &[u8]) -> Result<(), TrustStoreError> {
        self.verified.clear();
        let cert = CertificateDer::from(der);
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(TrustStoreError::BadRoot)?
            .to_owned();
        self.anchors.push(anchor);
        Ok(())
    }

    /// Add every certificate in a PEM file as a root.
    pub fn add_roots_pem(&mut self, pem_text: &[u8]) -> Result<(), TrustStoreError> {
        let certs = pem::certificates(pem_text).map_err(TrustStoreError::Pem)?;
        if certs.is_empty() {
            return Err(TrustStoreError::EmptyPem("certificate"));
        }
        certs.iter().try_for_each(|c| self.add_root_der(c))
    }

    pub fn add_crl_der(&mut self, der: &[u8]) -> Result<(), TrustStoreError> {
        use x509_cert::der::Decode;
        self.verified.clear();
        let crl = OwnedCertRevocationList::from_der(der).map_err(TrustStoreError::BadCrl)?;
        // webpki checks nextUpdate but does not expose it; read it for the cache's window. A CRL
        // webpki accepts but this parser does not (or one without nextUpdate) makes the window
        // close at once, which only turns the cache off.
        let stale_at = x509_cert::crl::CertificateList::from_der(der)
            .ok()
            .and_then(|c| c.tbs_cert_list.next_update)
            .map_or(0, |t| t.to_unix_duration().as_secs());
        self.crls_stale_at = Some(self.crls_stale_at.map_or(stale_at, |s| s.min(stale_at)));
        self.crls.push(CertRevocationList::from(crl));
        Ok(())
    }

    /// Forgets every remembered chain verification (benchmarks; an operator reacting to a
    /// revocation reloads the CRL instead, which builds a new store).
    pub fn forget_verified_chains(&mut self) {
        self.verified.clear();
    }

    /// How many verified chains are remembered.
    pub fn verified_chains(&self) -> usize {
        self.verified.len()
    }

    /// Accept certificates whose issuer published no configured CRL (revocation unchecked for
    /// them). Off by default: without a CRL "not revoked" cannot be established.
    pub fn allow_missing_crl(&mut self, allow: bool) {
        self.verified.clear();
        self.allow_missing_crl = allow;
    }

    /// Check 1: `chain[0]` chains (through `chain[1..]`) to a trusted root, is valid at `now`, has
    /// the data-signing EKU and is not revoked. Returns the verified end-entity certificate.
    pub(crate) fn verify_agency_chain<'a>(
        &self,
        chain: &'a [CertificateDer<'static>],
        now: Timestamp,
    ) -> Result<EndEntityCert<'a>, CertError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CertError::NoCertificate)?;
        let ee =
            EndEntityCert::try_from(leaf).map_err(|e| CertError::Unparseable(format!("{e:?}")))?;
        // webpki compares whole seconds.
        let now_secs = u64::try_from(now.millis()).unwrap_or(0) / 1000;
        let key = VerifiedChains::key(chain);
        if self.verified.holds(&key, now_secs) {
            return Ok(ee);
        }
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let status = if self.allow_missing_crl {
            UnknownStatusPolicy::Allow
        } else {
            UnknownStatusPolicy::Deny
        };
        let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
            Ok(b) => Some(
                b.with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(status)
                    .with_expiration_policy(ExpirationPolicy::Enforce)
                    .build(),
            ),
            Err(_) if self.allow_missing_crl => None,
            Err(_) => return Err(CertError::RevocationUnknown),
        };
        ee.verify_for_usage(
            CHAIN_ALGS,
            &self.anchors,
            intermediates,
            to_unix(now),
            KeyUsage::required(DATA_SIGNING_EKU_DER),
            revocation,
            None,
        )
        .map_err(CertError::from_webpki)?;
        if let Some((from, until)) = validity_window(chain) {
            // A CRL is stale at its nextUpdate (webpki: `now >= next_update` fails).
            let until = match self.crls_stale_at {
                Some(stale) => until.min(stale.saturating_sub(1)),
                None => until,
            };
            if from <= until {
                self.verified.remember(key, (from, until));
            }
        }
        Ok(ee)
    }
}

/// The subject common name of a certificate, read from the DER subject `Name`.
///
/// A minimal walk (SEQUENCE OF SET OF SEQUENCE {OID, string}); the certificate's signature was
/// already verified by rustls-webpki, so this only reads trusted bytes.
pub(crate) fn common_name(subject: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (tag, set, rest) = der_tlv(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, rest) = der_tlv(atvs)?;
            atvs = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der_tlv(atv)?;
            let (str_tag, s, _) = der_tlv(value)?;
            // UTF8String or PrintableString
            if oid_tag == 0x06 && oid == CN_OID && (str_tag == 0x0c || str_tag == 0x13) {
                return std::str::from_utf8(s).ok().map(str::to_owned);
            }
        }
    }
    None
}

/// One DER tag-length-value: (tag, value, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);
    const DAY: Duration = Duration::from_secs(86_400);

    fn before(d: Duration) -> Timestamp {
        Timestamp::from_millis(NOW.millis() - i64::try_from(d.as_millis()).unwrap())
    }

    /// Encode OID arcs as DER content bytes (base-128, first two arcs combined).
    fn oid_der(arcs: &[u64]) -> Vec<u8> {
        let mut out = vec![u8::try_from(arcs[0] * 40 + arcs[1]).unwrap()];
        for &arc in &arcs[2..] {
            let mut groups = vec![u8::try_from(arc & 0x7f).unwrap()];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push(u8::try_from(rest & 0x7f).unwrap() | 0x80);
                rest >>= 7;
            }
            out.extend(groups.iter().rev());
        }
        out
    }

    #[test]
    fn eku_der_constant_matches_the_arcs() {
        assert_eq!(oid_der(DATA_SIGNING_EKU_ARCS), DATA_SIGNING_EKU_DER);
    }

    #[test]
    fn ca_from_a_given_key_issues_certificates_that_verify_and_name_the_agency() {
        let ca_key = <SigningKey as p256::elliptic_curve::Generate>::generate();
        let ca =
            SimulatedCa::from_signing_key("Root", &ca_key, before(DAY), NOW.plus(DAY)).unwrap();
        let agency_key = <SigningKey as p256::elliptic_curve::Generate>::generate();
        let cert = ca
            .issue_agency_cert(
                "ris-001",
                agency_key.verifying_key(),
                before(DAY),
                NOW.plus(DAY),
            )
            .unwrap();
        let second = ca
            .issue_agency_cert(
                "ris-002",
                agency_key.verifying_key(),
                before(DAY),
                NOW.plus(DAY),
            )
            .unwrap();
        assert_ne!(cert.serial(), second.serial());

        let mut trust = TrustStore::new();
        trust.add_roots_pem(ca.root_pem().as_bytes()).unwrap();
        let crl = ca
            .crl(&[second.serial()], before(DAY), NOW.plus(DAY))
            .unwrap();
        trust.add_crl_der(crl.der()).unwrap();
        let chain = crate::pem::certificates(cert.pem().as_bytes()).unwrap();
        let ee = trust.verify_agency_chain(&chain, NOW).unwrap();
        assert_eq!(common_name(ee.subject()).as_deref(), Some("ris-001"));
        let chain2 = vec![second.der().clone()];
        assert_eq!(
            trust.verify_agency_chain(&chain2, NOW).err(),
            Some(CertError::Revoked)
        );
        assert!(crl.pem().starts_with("-----BEGIN X509 CRL-----\n"));
    }

    #[test]
    fn a_remembered_chain_is_reverified_outside_its_window_and_after_trust_changes() {
        let ca = SimulatedCa::new("Root", before(DAY * 10), NOW.plus(DAY * 10)).unwrap();
        let (_, cert) = ca
            .issue_agency("ris-001", before(DAY), NOW.plus(DAY))
            .unwrap();
        let mut trust = TrustStore::new();
        trust.add_root_der(ca.root_der()).unwrap();
        // The CRL goes stale in 12 hours, before the certificate expires.
        let crl_until = NOW.plus(DAY / 2);
        trust
            .add_crl_der(ca.crl(&[], before(DAY), crl_until).unwrap().der())
            .unwrap();
        let chain = vec![cert.der().clone()];
        assert_eq!(trust.verified_chains(), 0);
        assert!(trust.verify_agency_chain(&chain, NOW).is_ok());
        assert_eq!(trust.verified_chains(), 1);
        // Within the window: answered from memory, same result.
        assert!(trust.verify_agency_chain(&chain, NOW.plus(DAY / 4)).is_ok());
        assert_eq!(trust.verified_chains(), 1);
        // Past the CRL's nextUpdate and past the certificate's end: checked again, and refused.
        assert_eq!(
            trust.verify_agency_chain(&chain, crl_until).err(),
            Some(CertError::CrlExpired)
        );
        assert!(matches!(
            trust.verify_agency_chain(&chain, NOW.plus(DAY * 2)).err(),
            Some(CertError::Expired { .. } | CertError::CrlExpired)
        ));
        // Before the certificate's start too.
        assert!(matches!(
            trust.verify_agency_chain(&chain, before(DAY * 2)).err(),
            Some(CertError::NotYetValid { .. })
        ));
        // A different chain (one byte changed) is not taken for the remembered one.
        let mut forged = cert.der().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(
            trust
                .verify_agency_chain(&[CertificateDer::from(forged)], NOW)
                .is_err()
        );
        // Changing the trust forgets what was remembered.
        assert!(trust.verify_agency_chain(&chain, NOW).is_ok());
        assert_eq!(trust.verified_chains(), 1);
        let other = SimulatedCa::new("Other", before(DAY), NOW.plus(DAY)).unwrap();
        trust.add_root_der(other.root_der()).unwrap();
        assert_eq!(trust.verified_chains(), 0);
        // A store with a CRL revoking the certificate (what the connector builds when it reloads
        // the CRL) refuses it.
        let mut trust = TrustStore::new();
        trust.add_root_der(ca.root_der()).unwrap();
        trust
            .add_crl_der(
                ca.crl(&[cert.serial()], before(DAY), NOW.plus(DAY))
                    .unwrap()
                    .der(),
            )
            .unwrap();
        assert_eq!(
            trust.verify_agency_chain(&chain, NOW).err(),
            Some(CertError::Revoked)
        );
        // Failures are never remembered.
        assert_eq!(trust.verified_chains(), 0);
    }

    #[test]
    fn a_ca_certificate_is_not_an_agency_certificate() {
        let ca = SimulatedCa::new("Root", before(DAY), NOW.plus(DAY)).unwrap();
        let mut trust = TrustStore::new();
        trust.add_root_der(ca.root_der()).unwrap();
        trust.allow_missing_crl(true);
        // The root itself lacks the data-signing EKU (and is a CA): refused.
        let chain = vec![ca.root_der().clone()];
        assert!(trust.verify_agency_chain(&chain, NOW).is_err());
        assert_eq!(
            trust.verify_agency_chain(&[], NOW).err(),
            Some(CertError::NoCertificate)
        );
    }

    #[test]
    fn trust_store_refuses_garbage() {
        let mut trust = TrustStore::new();
        assert!(matches!(
            trust.add_root_der(b"nope"),
            Err(TrustStoreError::BadRoot(_))
        ));
        assert!(matches!(
            trust.add_crl_der(b"nope"),
            Err(TrustStoreError::BadCrl(_))
        ));
        assert!(matches!(
            trust.add_roots_pem(b"no pem here"),
            Err(TrustStoreError::EmptyPem(_))
        ));
    }

    #[test]
    fn common_name_walks_only_well_formed_names() {
        // SET { SEQUENCE { OID 2.5.4.3, UTF8String "ab" } }
        let name = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x02, b'a', b'b',
        ];
        assert_eq!(common_name(&name).as_deref(), Some("ab"));
        assert_eq!(common_name(&name[..name.len() - 1]), None);
        assert_eq!(common_name(&[0x30, 0x00]), None);
        assert_eq!(common_name(&[]), None);
    }
}
