//! The simulated identity PKI and its test cards, checked the way the platform and standard tools
//! will check them: rustls-webpki chain + CRL verification, openssl reading the PKCS#12 files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_card::card::{OpenedCard, chain_path, info_of, read_chain_pem, to_pkcs12};
use mydata_card::demo::{CardSpec, CardStatus, Index, ensure_cards};
use mydata_card::{CardError, CardKind, DEMO_PIN, IdentityPki, Subject};
use mydata_core::Timestamp;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::path::Path;
use std::time::Duration;
use webpki::{
    EndEntityCert, KeyUsage, RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);

fn specs() -> Vec<CardSpec> {
    let citizen = |name: &str, id: &str, status| CardSpec {
        subject: Subject {
            kind: CardKind::Citizen,
            name: name.into(),
            serial_number: id.into(),
        },
        status,
    };
    vec![
        citizen("王小明", "A123456789", CardStatus::Valid),
        citizen("陳美玲", "B234567890", CardStatus::Valid),
        CardSpec {
            subject: Subject {
                kind: CardKind::Business,
                name: "好運股份有限公司".into(),
                serial_number: "04595257".into(),
            },
            status: CardStatus::Valid,
        },
        citizen("陳美玲", "B234567890", CardStatus::Revoked),
        citizen("王小明", "A123456789", CardStatus::Expired),
    ]
}

fn pem_der(path: &Path, label: &str) -> Vec<u8> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).unwrap();
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(text.starts_with(&format!("-----BEGIN {label}-----")));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// Verifies a card's chain as the platform would: identity root, CRLs of every CA, client auth.
fn verify(dir: &Path, card: &str, at: Timestamp) -> Result<(), webpki::Error> {
    let chain = read_chain_pem(&chain_path(&dir.join(card))).unwrap();
    let root = CertificateDer::from(pem_der(&dir.join("ca/root.pem"), "CERTIFICATE"));
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap().to_owned();
    let crls: Vec<webpki::CertRevocationList<'static>> = ["root", "moica", "moeaca"]
        .iter()
        .map(|s| {
            let der = pem_der(&dir.join(format!("ca/{s}.crl.pem")), "X509 CRL");
            webpki::OwnedCertRevocationList::from_der(&der)
                .unwrap()
                .into()
        })
        .collect();
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = RevocationOptionsBuilder::new(&crl_refs)
        .unwrap()
        .with_depth(RevocationCheckDepth::Chain)
        .with_status_policy(UnknownStatusPolicy::Deny)
        .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
        .build();
    let leaf = CertificateDer::from(chain[0].clone());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    let now =
        UnixTime::since_unix_epoch(Duration::from_millis(u64::try_from(at.millis()).unwrap()));
    ee.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &intermediates,
        now,
        KeyUsage::client_auth(),
        Some(revocation),
        None,
    )
    .map(|_| ())
}

#[test]
fn cards_chain_to_the_identity_root_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let report = ensure_cards(dir.path(), &specs(), NOW).unwrap();
    assert!(report.created);
    assert_eq!(report.cards, 5);

    assert_eq!(verify(dir.path(), "A123456789.p12", NOW), Ok(()));
    assert_eq!(verify(dir.path(), "04595257.p12", NOW), Ok(()));
    assert_eq!(
        verify(dir.path(), "negative/B234567890-revoked.p12", NOW),
        Err(webpki::Error::CertRevoked)
    );
    assert!(matches!(
        verify(dir.path(), "negative/A123456789-expired.p12", NOW),
        Err(webpki::Error::CertExpired { .. })
    ));
    // The CRLs say when they go stale: a week later revocation cannot be established.
    let later = NOW.plus(Duration::from_secs(8 * 86_400));
    assert!(matches!(
        verify(dir.path(), "A123456789.p12", later),
        Err(webpki::Error::CrlExpired { .. })
    ));

    let index: Index =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index.pin, DEMO_PIN);
    assert_eq!(
        index
            .cards
            .iter()
            .filter(|c| c.status == CardStatus::Valid)
            .count(),
        3
    );
    // Keys and cards are for their owner only.
    use std::os::unix::fs::PermissionsExt;
    for f in ["A123456789.p12", "ca/root.key.pem", "ca/moica.key.pem"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
}

#[test]
fn certificates_carry_the_subject_fields_of_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    ensure_cards(dir.path(), &specs(), NOW).unwrap();
    let citizen = read_chain_pem(&dir.path().join("A123456789.pem")).unwrap();
    assert_eq!(citizen.len(), 2, "leaf and issuing CA");
    let info = info_of(&citizen[0]).unwrap();
    assert_eq!(info.subject, "王小明");
    assert_eq!(info.serial_number, "A123456789");
    assert!(info.issuer.contains("MOICA"), "{}", info.issuer);
    assert!(
        info.not_before < NOW && info.not_after > NOW.plus(Duration::from_secs(4 * 365 * 86_400))
    );
    let business = info_of(&read_chain_pem(&dir.path().join("04595257.pem")).unwrap()[0]).unwrap();
    assert_eq!(business.subject, "好運股份有限公司");
    assert_eq!(business.serial_number, "04595257");
    assert!(business.issuer.contains("MOEACA"));

    // Key usage: digitalSignature + nonRepudiation, client auth, not a CA.
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(&citizen[0]).unwrap();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.non_repudiation() && !ku.key_cert_sign());
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
    assert!(!cert.is_ca());
}

#[test]
fn the_pin_opens_the_card_and_its_signature_verifies_against_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    ensure_cards(dir.path(), &specs(), NOW).unwrap();
    let p12 = std::fs::read(dir.path().join("A123456789.p12")).unwrap();
    assert!(matches!(
        OpenedCard::open(&p12, "654321"),
        Err(CardError::WrongPin)
    ));
    assert!(matches!(
        OpenedCard::open(b"not a card", DEMO_PIN),
        Err(CardError::Malformed(_))
    ));
    let card = OpenedCard::open(&p12, DEMO_PIN).unwrap();
    assert_eq!(
        card.chain(),
        read_chain_pem(&dir.path().join("A123456789.pem")).unwrap()
    );

    let msg = b"mydata-login-v1\nhttp://127.0.0.1:8080\nc1\nbm9uY2U";
    let sig = card.sign(msg);
    let leaf = CertificateDer::from(card.chain()[0].clone());
    let ee = EndEntityCert::try_from(&leaf).unwrap();
    let alg = webpki::ring::ECDSA_P256_SHA256;
    assert!(ee.verify_signature(alg, msg, &sig).is_ok());
    assert!(ee.verify_signature(alg, b"other bytes", &sig).is_err());
}

#[test]
fn a_card_whose_key_is_not_its_certificates_is_refused() {
    let pki = IdentityPki::generate(NOW).unwrap();
    let subject = Subject {
        kind: CardKind::Citizen,
        name: "甲".into(),
        serial_number: "A123456789".into(),
    };
    let a = pki
        .issue(&subject, NOW, NOW.plus(Duration::from_secs(86_400)))
        .unwrap();
    let b = pki
        .issue(&subject, NOW, NOW.plus(Duration::from_secs(86_400)))
        .unwrap();
    assert_ne!(a.serial, b.serial);
    let p12 = to_pkcs12(&b.key_pkcs8, std::slice::from_ref(&a.der), DEMO_PIN).unwrap();
    assert!(matches!(
        OpenedCard::open(&p12, DEMO_PIN),
        Err(CardError::KeyMismatch)
    ));
}

#[test]
fn a_second_start_keeps_the_cards_and_refreshes_the_crls() {
    let dir = tempfile::tempdir().unwrap();
    ensure_cards(dir.path(), &specs(), NOW).unwrap();
    let card_before = std::fs::read(dir.path().join("A123456789.p12")).unwrap();
    let crl_before = std::fs::read(dir.path().join("ca/moica.crl.pem")).unwrap();
    let later = NOW.plus(Duration::from_secs(10 * 86_400));
    let report = ensure_cards(dir.path(), &specs(), later).unwrap();
    assert!(!report.created);
    assert_eq!(
        std::fs::read(dir.path().join("A123456789.p12")).unwrap(),
        card_before
    );
    assert_ne!(
        std::fs::read(dir.path().join("ca/moica.crl.pem")).unwrap(),
        crl_before
    );
    // Re-signed by the restored CA: still verifies, still lists the revoked card.
    assert_eq!(verify(dir.path(), "A123456789.p12", later), Ok(()));
    assert_eq!(
        verify(dir.path(), "negative/B234567890-revoked.p12", later),
        Err(webpki::Error::CertRevoked)
    );
}

#[test]
fn openssl_reads_the_cards_with_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    ensure_cards(dir.path(), &specs(), NOW).unwrap();
    let card = dir.path().join("A123456789.p12");
    let out = std::process::Command::new("openssl")
        .args(["pkcs12", "-in"])
        .arg(&card)
        .args([
            "-passin",
            &format!("pass:{DEMO_PIN}"),
            "-nokeys",
            "-clcerts",
        ])
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("serialNumber=A123456789") || text.contains("serialNumber = A123456789"),
        "{text}"
    );
    let wrong = std::process::Command::new("openssl")
        .args(["pkcs12", "-in"])
        .arg(&card)
        .args(["-passin", "pass:000000", "-nokeys"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}
