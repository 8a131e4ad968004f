//! Build → verify round trip, and every tampering or trust failure refused with its own error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use mydata_package::{
    AgencySigner, ArchiveError, CertError, DatasetError, PackageReport, PlatformKeys, ReadLimits,
    ReceiptError, Verdict, verify_package, verify_package_with_keys, verify_package_with_limits,
};
use p256::ecdsa::SigningKey;

fn verify(fx: &Fixture, zip: &[u8]) -> PackageReport {
    verify_package(zip, &fx.trust, Some(fx.platform.verifying_key()), NOW)
}

fn dataset_error(r: &PackageReport) -> DatasetError {
    assert!(!r.is_ok(), "{r:#?}");
    r.datasets
        .iter()
        .find_map(|d| d.error().cloned())
        .unwrap_or_else(|| panic!("no dataset error in {r:#?}"))
}

fn archive_error(r: &PackageReport) -> ArchiveError {
    match &r.archive {
        Verdict::Failed(e) => e.clone(),
        other => panic!("archive verdict {other:?}"),
    }
}

#[test]
fn round_trip_verifies_every_step() {
    let fx = fixture();
    let zip = build_with(&fx, &fx.agency, &["household", "income-2025"]);
    let r = verify(&fx, &zip);
    assert!(r.is_ok(), "{r:#?}");
    assert_eq!(r.datasets.len(), 2);
    for d in &r.datasets {
        assert_eq!(d.agency_id.as_deref(), Some("moi-household"));
        assert!(d.steps().iter().all(|(_, v)| v.is_passed()));
    }
    let receipt = r.receipt.unwrap();
    assert_eq!(receipt.transfer_id, "t-1");
    assert_eq!(receipt.subject, "pseudo-7f3a");
    assert_eq!(receipt.datasets, ["household", "income-2025"]);
    let names: Vec<String> = entries(&zip).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"datasets/household/manifest.sig".to_owned()));
    assert_eq!(names.last().map(String::as_str), Some("receipt.jws"));
}

#[test]
fn without_platform_key_receipt_signature_is_not_run_but_package_ok() {
    let fx = fixture();
    let r = verify_package(&build(&fx), &fx.trust, None, NOW);
    assert_eq!(r.receipt_signature, Verdict::NotRun);
    assert!(r.is_ok(), "{r:#?}");
}

#[test]
fn flipped_byte_in_data_file_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        entry_mut(e, "datasets/household/data.json")[10] ^= 1
    });
    let r = verify(&fx, &zip);
    assert_eq!(
        dataset_error(&r),
        DatasetError::FileDigestMismatch("data.json".into())
    );
    // Earlier checks still passed: the failure is pinned to step 4.
    assert!(r.datasets[0].manifest_signature.is_passed());
    assert_eq!(
        r.receipt_contents,
        Verdict::Failed(ReceiptError::DigestMismatch)
    );
}

#[test]
fn flipped_byte_in_manifest_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        let m = entry_mut(e, "datasets/household/manifest.json");
        let i = m.iter().position(|b| *b == b'9').unwrap_or(20);
        m[i] ^= 1;
    });
    let r = verify(&fx, &zip);
    assert_eq!(dataset_error(&r), DatasetError::JwsPayloadMismatch);
    assert_eq!(r.datasets[0].files, Verdict::NotRun);
}

#[test]
fn manifest_edited_consistently_in_json_and_jws_payload_fails_signature() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        let jws =
            String::from_utf8(entry_mut(e, "datasets/household/manifest.jws").clone()).unwrap();
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        let other = fx
            .agency
            .sign_dataset(
                "t-1",
                "household",
                NOW,
                vec![mydata_package::DataFile {
                    name: "data.json".into(),
                    media_type: "application/json".into(),
                    bytes: b"{}".to_vec(),
                }],
            )
            .unwrap();
        let other_jws = String::from_utf8(other.manifest_jws).unwrap();
        parts[1] = other_jws.split('.').nth(1).unwrap().to_owned();
        *entry_mut(e, "datasets/household/manifest.jws") = parts.join(".").into_bytes();
    });
    assert_eq!(
        dataset_error(&verify(&fx, &zip)),
        DatasetError::JwsSignatureInvalid
    );
}

#[test]
fn manifest_sig_from_other_bytes_is_refused() {
    let fx = fixture();
    let other = build_with(&fx, &fx.agency, &["other"]);
    let other_sig = entries(&other)
        .into_iter()
        .find(|(n, _)| n == "datasets/other/manifest.sig")
        .unwrap()
        .1;
    let zip = rewrite(&build(&fx), |e| {
        *entry_mut(e, "datasets/household/manifest.sig") = other_sig.clone()
    });
    assert_eq!(dataset_error(&verify(&fx, &zip)), DatasetError::SigInvalid);
}

#[test]
fn swapped_files_between_datasets_are_refused() {
    let fx = fixture();
    let mut b = mydata_package::PackageBuilder::new("t-1", "p", "purpose");
    for (id, content) in [("a", "alpha"), ("b", "bravo")] {
        let files = vec![mydata_package::DataFile {
            name: "data.json".into(),
            media_type: "application/json".into(),
            bytes: format!("{{\"v\":\"{content}\"}}").into_bytes(),
        }];
        b.add_dataset(fx.agency.sign_dataset("t-1", id, NOW, files).unwrap())
            .unwrap();
    }
    let zip = rewrite(&b.build(&fx.platform, NOW).unwrap(), |e| {
        let a = entry_mut(e, "datasets/a/data.json").clone();
        let bb = entry_mut(e, "datasets/b/data.json").clone();
        *entry_mut(e, "datasets/a/data.json") = bb;
        *entry_mut(e, "datasets/b/data.json") = a;
    });
    let r = verify(&fx, &zip);
    for d in &r.datasets {
        assert_eq!(
            d.error(),
            Some(&DatasetError::FileDigestMismatch("data.json".into())),
            "{d:#?}"
        );
    }
}

#[test]
fn extra_file_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.insert(
            0,
            ("datasets/household/extra.txt".into(), b"sneaky".to_vec()),
        );
    });
    assert_eq!(
        dataset_error(&verify(&fx, &zip)),
        DatasetError::FileUnexpected("extra.txt".into())
    );
}

#[test]
fn missing_file_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.retain(|(n, _)| n != "datasets/household/data.csv")
    });
    assert_eq!(
        dataset_error(&verify(&fx, &zip)),
        DatasetError::FileMissing("data.csv".into())
    );
}

#[test]
fn missing_manifest_is_refused_as_incomplete() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.retain(|(n, _)| n != "datasets/household/manifest.sig")
    });
    assert_eq!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::IncompleteDataset {
            dataset: "household".into(),
            file: "manifest.sig"
        }
    );
}

#[test]
fn signature_by_another_key_is_refused() {
    let fx = fixture();
    // Same certificate, different private key: the chain is fine, the signatures are not.
    let rogue_key = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let genuine = build(&fx);
    let (rogue, _) = fx
        .ca
        .issue_agency("moi-household", ago(DAY), NOW.plus(DAY))
        .unwrap();
    let rogue_zip = build_with(&fx, &rogue, &["household"]);
    let zip = rewrite(&rogue_zip, |e| {
        let chain = entries(&genuine)
            .into_iter()
            .find(|(n, _)| n == "datasets/household/chain.pem")
            .unwrap()
            .1;
        *entry_mut(e, "datasets/household/chain.pem") = chain;
    });
    let r = verify(&fx, &zip);
    assert!(r.datasets[0].certificate.is_passed());
    // The signature is checked with the key of the validated certificate, before x5c is compared.
    assert_eq!(dataset_error(&r), DatasetError::JwsSignatureInvalid);
    // And an AgencySigner refuses a key that does not match its certificate.
    assert!(AgencySigner::new(rogue_key, vec![fx.agency_cert.der().clone()]).is_err());
}

#[test]
fn expired_certificate_is_refused() {
    let fx = fixture();
    let (old, _) = fx
        .ca
        .issue_agency("moi-household", ago(DAY * 400), ago(DAY * 35))
        .unwrap();
    let r = verify(&fx, &build_with(&fx, &old, &["household"]));
    assert!(matches!(
        dataset_error(&r),
        DatasetError::Certificate(CertError::Expired { .. })
    ));
    assert_eq!(r.datasets[0].public_key, Verdict::NotRun);
}

#[test]
fn not_yet_valid_certificate_is_refused() {
    let fx = fixture();
    let (future, _) = fx
        .ca
        .issue_agency("moi-household", NOW.plus(DAY), NOW.plus(DAY * 30))
        .unwrap();
    assert!(matches!(
        dataset_error(&verify(&fx, &build_with(&fx, &future, &["household"]))),
        DatasetError::Certificate(CertError::NotYetValid { .. })
    ));
}

#[test]
fn certificate_from_untrusted_ca_is_refused() {
    let fx = fixture();
    let other_ca =
        mydata_package::SimulatedCa::new("Rogue CA", ago(DAY), NOW.plus(DAY * 30)).unwrap();
    let (rogue, _) = other_ca
        .issue_agency("moi-household", ago(DAY), NOW.plus(DAY))
        .unwrap();
    assert_eq!(
        dataset_error(&verify(&fx, &build_with(&fx, &rogue, &["household"]))),
        DatasetError::Certificate(CertError::UntrustedIssuer)
    );
}

#[test]
fn revoked_certificate_is_refused() {
    let fx = fixture();
    let trust = trust_for(&fx.ca, &[fx.agency_cert.serial()]);
    let r = verify_package(&build(&fx), &trust, Some(fx.platform.verifying_key()), NOW);
    assert_eq!(
        dataset_error(&r),
        DatasetError::Certificate(CertError::Revoked)
    );
}

#[test]
fn missing_or_stale_crl_is_refused_unless_allowed() {
    let fx = fixture();
    let zip = build(&fx);
    let mut no_crl = mydata_package::TrustStore::new();
    no_crl.add_root_der(fx.ca.root_der()).unwrap();
    let r = verify_package(&zip, &no_crl, None, NOW);
    assert_eq!(
        dataset_error(&r),
        DatasetError::Certificate(CertError::RevocationUnknown)
    );
    no_crl.allow_missing_crl(true);
    assert!(verify_package(&zip, &no_crl, None, NOW).is_ok());

    let mut stale = mydata_package::TrustStore::new();
    stale.add_root_der(fx.ca.root_der()).unwrap();
    let crl = fx.ca.crl(&[], ago(DAY * 30), ago(DAY * 20)).unwrap();
    stale.add_crl_der(crl.der()).unwrap();
    let r = verify_package(&zip, &stale, None, NOW);
    assert_eq!(
        dataset_error(&r),
        DatasetError::Certificate(CertError::CrlExpired)
    );
}

#[test]
fn report_names_the_certified_agency_for_the_caller_to_match() {
    let fx = fixture();
    let (tax, _) = fx
        .ca
        .issue_agency("mof-tax", ago(DAY), NOW.plus(DAY))
        .unwrap();
    let ds = tax
        .sign_dataset("t-1", "household", NOW, household_files())
        .unwrap();
    let r = mydata_package::verify_dataset(&ds, &fx.trust, NOW);
    assert!(r.is_ok(), "{r:#?}");
    assert_eq!(r.agency_id.as_deref(), Some("mof-tax"));
    assert_eq!(r.manifest.unwrap().agency_id, "mof-tax");
}

#[test]
fn manifest_claiming_another_agency_than_its_certificate_is_refused() {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let fx = fixture();
    // A validly signed manifest whose agency_id is not the certificate's CN.
    let key = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let cert = fx
        .ca
        .issue_agency_cert(
            "moi-household",
            key.verifying_key(),
            ago(DAY),
            NOW.plus(DAY),
        )
        .unwrap();
    let genuine = fx
        .agency
        .sign_dataset("t-1", "household", NOW, household_files())
        .unwrap();
    let mut manifest: mydata_package::Manifest =
        serde_json::from_slice(&genuine.manifest_json).unwrap();
    manifest.agency_id = "mof-tax".into();
    let manifest_json = serde_json::to_vec(&manifest).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let header = b64.encode(format!(r#"{{"alg":"ES256","x5c":["{x5c}"]}}"#));
    let input = format!("{header}.{}", b64.encode(&manifest_json));
    let jws_sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let sig: p256::ecdsa::Signature = key.sign(&manifest_json);
    let ds = mydata_package::SignedDataset {
        manifest_json,
        manifest_jws: format!("{input}.{}", b64.encode(jws_sig.to_bytes())).into_bytes(),
        manifest_sig: sig.to_der().as_bytes().to_vec(),
        chain_pem: cert.pem().into_bytes(),
        ..genuine
    };
    let r = mydata_package::verify_dataset(&ds, &fx.trust, NOW);
    assert_eq!(
        r.error(),
        Some(&DatasetError::AgencyMismatch {
            manifest: "mof-tax".into(),
            certificate: "moi-household".into()
        })
    );
}

#[test]
fn entry_with_parent_dir_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.push(("datasets/../../etc/passwd".into(), b"x".to_vec()))
    });
    assert_eq!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::ParentDirPath("datasets/../../etc/passwd".into())
    );
}

#[test]
fn entry_with_absolute_path_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.push(("/etc/passwd".into(), b"x".to_vec()))
    });
    assert_eq!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::AbsolutePath("/etc/passwd".into())
    );
}

#[test]
fn entry_with_backslash_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.push(("datasets\\household\\x".into(), b"x".to_vec()))
    });
    assert!(matches!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::BackslashPath(_)
    ));
}

#[test]
fn unexpected_entry_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        e.push(("README.txt".into(), b"x".to_vec()))
    });
    assert_eq!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::UnexpectedEntry("README.txt".into())
    );
}

#[test]
fn too_many_entries_are_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        for i in 0..20 {
            e.push((format!("datasets/household/f{i}.json"), b"{}".to_vec()));
        }
    });
    let limits = ReadLimits {
        max_entries: 10,
        ..ReadLimits::default()
    };
    let r = verify_package_with_limits(&zip, &fx.trust, None, NOW, &limits);
    assert_eq!(
        archive_error(&r),
        ArchiveError::TooManyEntries {
            count: 27,
            limit: 10
        }
    );
}

#[test]
fn zip_bomb_is_refused_by_declared_size() {
    let fx = fixture();
    let zeros = vec![0u8; 100 * 1024 * 1024];
    let zip = rewrite(&build(&fx), |e| {
        e.push(("datasets/household/bomb.bin".into(), zeros.clone()))
    });
    assert!(zip.len() < 1024 * 1024, "compressed to {} bytes", zip.len());
    assert_eq!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::TooLarge {
            limit: 64 * 1024 * 1024
        }
    );
}

#[test]
fn zip_bomb_lying_about_its_size_is_refused_by_bytes_read() {
    let fx = fixture();
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let mut zip = zip_of(&[
        ("datasets/household/bomb.bin".into(), zeros),
        ("receipt.jws".into(), b"x".to_vec()),
    ]);
    // Patch the declared uncompressed size (8 MiB = 0x00800000) to 1 KiB in both headers.
    let mut patched = 0;
    for i in 0..zip.len() - 4 {
        if zip[i..i + 4] == [0x00, 0x00, 0x80, 0x00] {
            zip[i..i + 4].copy_from_slice(&[0x00, 0x04, 0x00, 0x00]);
            patched += 1;
        }
    }
    assert!(patched >= 2, "patched {patched}");
    let limits = ReadLimits {
        max_total_bytes: 1024 * 1024,
        ..ReadLimits::default()
    };
    let r = verify_package_with_limits(&zip, &fx.trust, None, NOW, &limits);
    // Either our bounded reader or the zip reader's own size/CRC check must stop it.
    assert!(
        matches!(
            archive_error(&r),
            ArchiveError::TooLarge { .. } | ArchiveError::Corrupt(_)
        ),
        "{r:#?}"
    );
}

#[test]
fn duplicate_entry_is_refused() {
    let fx = fixture();
    // The zip writer refuses duplicate names, so write a near-duplicate and patch the bytes.
    let mut bytes = zip_of(&[
        ("datasets/household/data.json".into(), b"a".to_vec()),
        ("datasets/household/data.jsoX".into(), b"b".to_vec()),
        ("receipt.jws".into(), b"x".to_vec()),
    ]);
    let from = b"data.jsoX";
    let mut patched = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i + from.len() - 1] = b'n';
            patched += 1;
        }
    }
    assert_eq!(patched, 2);
    let r = verify_package(&bytes, &fx.trust, None, NOW);
    assert_eq!(
        archive_error(&r),
        ArchiveError::DuplicateEntries {
            declared: 3,
            distinct: 2
        }
    );
}

#[test]
fn truncated_archive_is_refused() {
    let fx = fixture();
    let zip = build(&fx);
    for cut in [zip.len() / 2, zip.len() - 10, 30, 0] {
        assert!(
            matches!(
                archive_error(&verify(&fx, &zip[..cut])),
                ArchiveError::Corrupt(_)
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn corrupt_compressed_data_is_refused() {
    let fx = fixture();
    let mut zip = build(&fx);
    // Flip a byte inside the first entry's compressed data (after its 30-byte local header + name).
    zip[80] ^= 0xff;
    let r = verify(&fx, &zip);
    assert!(
        matches!(archive_error(&r), ArchiveError::Corrupt(_)),
        "{r:#?}"
    );
}

#[test]
fn missing_receipt_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| e.retain(|(n, _)| n != "receipt.jws"));
    assert_eq!(
        archive_error(&verify(&fx, &zip)),
        ArchiveError::MissingReceipt
    );
}

#[test]
fn edited_receipt_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        let jws = String::from_utf8(entry_mut(e, "receipt.jws").clone()).unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
        let edited = payload.replace("loan application", "marketing");
        assert_ne!(payload, edited);
        *entry_mut(e, "receipt.jws") =
            format!("{}.{}.{}", parts[0], b64.encode(edited), parts[2]).into_bytes();
    });
    let r = verify(&fx, &zip);
    assert_eq!(
        r.receipt_signature,
        Verdict::Failed(ReceiptError::SignatureInvalid)
    );
    assert!(!r.is_ok());
}

#[test]
fn receipt_signed_by_another_key_is_refused() {
    let fx = fixture();
    let other = mydata_package::PlatformSigner::new(
        <SigningKey as p256::elliptic_curve::Generate>::generate(),
        "platform-2026",
    )
    .unwrap();
    let zip = receipted_by(&other, &fx.agency, &["household"]);
    let r = verify(&fx, &zip);
    assert_eq!(
        r.receipt_signature,
        Verdict::Failed(ReceiptError::SignatureInvalid)
    );
    assert!(r.receipt_contents.is_passed());
    assert!(!r.is_ok());
}

/// With a key set, the receipt's `kid` picks the key: a package receipted before the platform
/// replaced its key verifies with the previous key, and a `kid` the set lacks says which it is.
#[test]
fn receipt_is_checked_with_the_key_its_kid_names() {
    let fx = fixture();
    let generate = || <SigningKey as p256::elliptic_curve::Generate>::generate();
    let (previous, current, stranger) = (generate(), generate(), generate());
    let mut keys = PlatformKeys::from(*current.verifying_key());
    keys.insert_by_thumbprint(*previous.verifying_key());
    let package_by = |key: &SigningKey| {
        let signer = mydata_package::PlatformSigner::with_thumbprint_kid(key.clone()).unwrap();
        receipted_by(&signer, &fx.agency, &["household"])
    };
    for key in [&previous, &current] {
        let r = verify_package_with_keys(&package_by(key), &fx.trust, &keys, NOW);
        assert!(r.is_ok(), "{r:#?}");
    }
    let r = verify_package_with_keys(&package_by(&stranger), &fx.trust, &keys, NOW);
    let kid = mydata_package::jwk_thumbprint(stranger.verifying_key());
    assert_eq!(
        r.receipt_signature,
        Verdict::Failed(ReceiptError::UnknownKey { kid })
    );
    assert!(!r.is_ok());

    // A key set naming the stranger's key under another key's kid: the signature does not hold.
    let mut lying = PlatformKeys::new();
    lying.insert(
        mydata_package::jwk_thumbprint(stranger.verifying_key()),
        *current.verifying_key(),
    );
    let r = verify_package_with_keys(&package_by(&stranger), &fx.trust, &lying, NOW);
    assert_eq!(
        r.receipt_signature,
        Verdict::Failed(ReceiptError::SignatureInvalid)
    );
}

#[test]
fn dataset_from_another_transfer_is_refused() {
    let fx = fixture();
    let mut b = mydata_package::PackageBuilder::new("t-1", "p", "purpose");
    b.add_dataset(
        fx.agency
            .sign_dataset("t-OTHER", "household", NOW, household_files())
            .unwrap(),
    )
    .unwrap();
    let r = verify(&fx, &b.build(&fx.platform, NOW).unwrap());
    assert!(matches!(
        r.receipt_contents,
        Verdict::Failed(ReceiptError::TransferMismatch { .. })
    ));
    assert!(!r.is_ok());
}

#[test]
fn dataset_moved_to_another_folder_is_refused() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        for (n, _) in e.iter_mut() {
            *n = n.replace("datasets/household/", "datasets/income/");
        }
    });
    assert_eq!(
        dataset_error(&verify(&fx, &zip)),
        DatasetError::DatasetIdMismatch {
            manifest: "household".into(),
            folder: "income".into()
        }
    );
}
