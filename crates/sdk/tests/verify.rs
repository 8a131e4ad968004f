//! `mydata_sdk::verify` on a real package (as `crates/cli/tests/verify.rs` makes one): the right
//! transfer passes, another transfer says so, a failed check keeps its report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::{Clock, SystemClock, Timestamp};
use mydata_package::{DataFile, PackageBuilder, PlatformSigner, SimulatedCa, TrustStore};
use mydata_sdk::VerifyError;
use p256::ecdsa::{SigningKey, VerifyingKey};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

struct Fixture {
    package: Vec<u8>,
    trust: TrustStore,
    platform: VerifyingKey,
    now: Timestamp,
}

fn ago(now: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millis(now.millis() - d.as_millis() as i64)
}

/// A CA with its CRL, an agency, a platform key and a one-dataset package for transfer `tr-1`.
fn fixture() -> Fixture {
    let now = SystemClock.now();
    let ca = SimulatedCa::new("MyData Simulated Root CA", ago(now, DAY), now.plus(DAY)).unwrap();
    let (agency, _) = ca
        .issue_agency("mohw-social-work", ago(now, DAY), now.plus(DAY))
        .unwrap();
    let crl = ca.crl(&[], ago(now, DAY), now.plus(DAY)).unwrap();
    let key = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let signer = PlatformSigner::new(key.clone(), "platform-test").unwrap();
    let mut b = PackageBuilder::new("tr-1", "pseudo-1", "tuition reduction");
    let files = vec![DataFile {
        name: "data.json".into(),
        media_type: "application/json".into(),
        bytes: r#"{"lic_title":"低收入戶"}"#.as_bytes().to_vec(),
    }];
    b.add_dataset(
        agency
            .sign_dataset("tr-1", "low-income-household", now, files)
            .unwrap(),
    )
    .unwrap();
    let package = b.build(&signer, now).unwrap();
    let mut trust = TrustStore::new();
    trust.add_roots_pem(ca.root_pem().as_bytes()).unwrap();
    trust.add_crl_der(crl.der()).unwrap();
    Fixture {
        package,
        trust,
        platform: *key.verifying_key(),
        now,
    }
}

#[test]
fn a_package_for_another_transfer_says_which() {
    let f = fixture();
    let report = mydata_sdk::verify(&f.package, "tr-1", &f.trust, &f.platform, f.now).unwrap();
    assert_eq!(report.datasets.len(), 1);

    let err = mydata_sdk::verify(&f.package, "tr-2", &f.trust, &f.platform, f.now).unwrap_err();
    match &err {
        VerifyError::WrongTransfer { expected, found } => {
            assert_eq!((expected.as_str(), found.as_str()), ("tr-2", "tr-1"));
        }
        other => panic!("{other:?}"),
    }
    let said = err.to_string();
    assert!(said.contains("tr-1") && said.contains("tr-2"), "{said}");
    // A std error: `?` into anyhow or Box<dyn Error> works.
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert_eq!(boxed.to_string(), said);
}

#[test]
fn a_failed_check_says_which_and_keeps_the_report() {
    let f = fixture();
    let stranger = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let err = mydata_sdk::verify(
        &f.package,
        "tr-1",
        &f.trust,
        stranger.verifying_key(),
        f.now,
    )
    .unwrap_err();
    let VerifyError::Failed(report) = &err else {
        panic!("{err:?}");
    };
    assert!(!report.receipt_signature.is_passed());
    assert!(report.receipt.is_some(), "the report is all there");
    assert!(err.to_string().contains("receipt signature"), "{err}");

    let err = mydata_sdk::verify(b"not a zip", "tr-1", &f.trust, &f.platform, f.now).unwrap_err();
    assert!(matches!(err, VerifyError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("archive"), "{err}");
}
