//! `mydata_sdk::verify` on a real package (as `crates/cli/tests/verify.rs` makes one): the right
//! transfer passes, another transfer says so, a failed check keeps its report, and the receipt is
//! checked with the platform key its `kid` names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::{Clock, SystemClock, Timestamp};
use mydata_package::{DataFile, PackageBuilder, PlatformSigner, SimulatedCa, TrustStore};
use mydata_sdk::{PlatformKeys, VerifyError};
use p256::ecdsa::SigningKey;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

struct Fixture {
    package: Vec<u8>,
    trust: TrustStore,
    platform: PlatformKeys,
    now: Timestamp,
    agency: mydata_package::AgencySigner,
}

fn ago(now: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millis(now.millis() - d.as_millis() as i64)
}

/// A CA with its CRL, an agency, a platform key and a one-dataset package for transfer `tr-1`.
fn fixture() -> Fixture {
    fixture_signed_by(&<SigningKey as p256::elliptic_curve::Generate>::generate())
}

/// [`fixture`] with the receipt signed by `key` (named by its thumbprint, as the platform does).
fn fixture_signed_by(key: &SigningKey) -> Fixture {
    let now = SystemClock.now();
    let ca = SimulatedCa::new("MyData Simulated Root CA", ago(now, DAY), now.plus(DAY)).unwrap();
    let (agency, _) = ca
        .issue_agency("mohw-social-work", ago(now, DAY), now.plus(DAY))
        .unwrap();
    let crl = ca.crl(&[], ago(now, DAY), now.plus(DAY)).unwrap();
    let mut trust = TrustStore::new();
    trust.add_roots_pem(ca.root_pem().as_bytes()).unwrap();
    trust.add_crl_der(crl.der()).unwrap();
    Fixture {
        package: package(&agency, key, now),
        trust,
        platform: PlatformKeys::from(*key.verifying_key()),
        now,
        agency,
    }
}

/// A one-dataset package for transfer `tr-1` receipted with `key`.
fn package(agency: &mydata_package::AgencySigner, key: &SigningKey, now: Timestamp) -> Vec<u8> {
    let signer = PlatformSigner::with_thumbprint_kid(key.clone()).unwrap();
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
    b.build(&signer, now).unwrap()
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
    // The receipt's kid names another key than the one that signed it.
    let stranger = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let (kid, _) = f.platform.current().unwrap();
    let mut lying = PlatformKeys::new();
    lying.insert(kid, *stranger.verifying_key());
    let err = mydata_sdk::verify(&f.package, "tr-1", &f.trust, &lying, f.now).unwrap_err();
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

/// The platform replaced its key: a package receipted with the previous key verifies as long as
/// the keys given hold it (the platform publishes it beside the current one); a receipt naming a
/// key not given says which, and what to do.
#[test]
fn the_receipt_is_checked_with_the_key_its_kid_names_and_an_unknown_one_says_to_refresh() {
    let previous = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let current = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let f = fixture_signed_by(&previous);
    let by_current = package(&f.agency, &current, f.now);

    // What a service read before the rotation: the previous key only.
    let err = mydata_sdk::verify(&by_current, "tr-1", &f.trust, &f.platform, f.now).unwrap_err();
    let kid = mydata_package::jwk_thumbprint(current.verifying_key());
    match &err {
        VerifyError::UnknownPlatformKey { kid: named } => assert_eq!(named, &kid),
        other => panic!("{other:?}"),
    }
    let said = err.to_string();
    assert!(
        said.contains(&kid) && said.contains("refresh_platform_keys"),
        "{said}"
    );

    // What it reads after: the current key, then the previous one.
    let mut keys = PlatformKeys::from(*current.verifying_key());
    keys.insert_by_thumbprint(*previous.verifying_key());
    for zip in [&f.package, &by_current] {
        let report = mydata_sdk::verify(zip, "tr-1", &f.trust, &keys, f.now).unwrap();
        assert!(report.receipt_signature.is_passed());
    }
    // Once the platform stops publishing the previous key, its receipts are no longer trusted.
    let err = mydata_sdk::verify(
        &f.package,
        "tr-1",
        &f.trust,
        &PlatformKeys::from(*current.verifying_key()),
        f.now,
    )
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::UnknownPlatformKey { .. }),
        "{err:?}"
    );
}
