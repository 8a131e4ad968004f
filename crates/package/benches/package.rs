//! Throughput of one small package (one dataset, ~2 KiB JSON): build+sign+encrypt, and verify,
//! plus the parts, to see what dominates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mydata_core::Timestamp;
use mydata_package::{
    DataFile, PackageBuilder, PlatformSigner, SimulatedCa, TrustStore, seal, verify_dataset,
    verify_package,
};
use p256::ecdsa::SigningKey;
use std::hint::black_box;
use std::time::Duration;

const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);
const DAY: Duration = Duration::from_secs(86_400);

fn json_2k() -> Vec<u8> {
    let mut s = String::from("{\"household\":[");
    let mut i = 0;
    while s.len() < 2000 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"name\":\"member {i}\",\"relation\":\"child\",\"born\":\"2001-01-{:02}\"}}",
            i % 28 + 1
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn benches(c: &mut Criterion) {
    let ca = SimulatedCa::new("Root", Timestamp::from_millis(0), NOW.plus(DAY * 3650)).unwrap();
    let (agency, _) = ca
        .issue_agency("moi-household", Timestamp::from_millis(0), NOW.plus(DAY))
        .unwrap();
    let platform = PlatformSigner::new(
        <SigningKey as p256::elliptic_curve::Generate>::generate(),
        "platform",
    )
    .unwrap();
    let mut trust = TrustStore::new();
    trust.add_root_der(ca.root_der()).unwrap();
    trust
        .add_crl_der(ca.crl(&[], NOW, NOW.plus(DAY)).unwrap().der())
        .unwrap();
    let data = json_2k();
    let files = || {
        vec![DataFile {
            name: "data.json".into(),
            media_type: "application/json".into(),
            bytes: data.clone(),
        }]
    };

    let mut g = c.benchmark_group("small_package");
    g.throughput(Throughput::Elements(1));
    g.bench_function("build_sign_encrypt", |b| {
        b.iter(|| {
            let ds = agency
                .sign_dataset("t-1", "household", NOW, files())
                .unwrap();
            let mut pb = PackageBuilder::new("t-1", "pseudo", "purpose");
            pb.add_dataset(ds).unwrap();
            let zip = pb.build(&platform, NOW).unwrap();
            black_box(seal(&zip).unwrap())
        })
    });
    let ds = agency
        .sign_dataset("t-1", "household", NOW, files())
        .unwrap();
    let mut pb = PackageBuilder::new("t-1", "pseudo", "purpose");
    pb.add_dataset(ds.clone()).unwrap();
    let zip = pb.build(&platform, NOW).unwrap();
    assert!(verify_package(&zip, &trust, Some(platform.verifying_key()), NOW).is_ok());
    // `verify` uses one trust store throughout, as the connector does for an agency's datasets:
    // the chain is verified once and remembered. `verify_cold` forgets it before every run (the
    // first dataset of an agency after a trust reload), i.e. the cost before chains were cached.
    g.bench_function("verify", |b| {
        b.iter(|| {
            let r = verify_package(black_box(&zip), &trust, Some(platform.verifying_key()), NOW);
            black_box(r.is_ok())
        })
    });
    let mut cold = TrustStore::new();
    cold.add_root_der(ca.root_der()).unwrap();
    cold.add_crl_der(ca.crl(&[], NOW, NOW.plus(DAY)).unwrap().der())
        .unwrap();
    g.bench_function("verify_cold", |b| {
        b.iter(|| {
            cold.forget_verified_chains();
            let r = verify_package(black_box(&zip), &cold, Some(platform.verifying_key()), NOW);
            black_box(r.is_ok())
        })
    });
    // The parts.
    g.bench_function("part_sign_dataset", |b| {
        b.iter(|| {
            black_box(
                agency
                    .sign_dataset("t-1", "household", NOW, files())
                    .unwrap(),
            )
        })
    });
    g.bench_function("part_zip_and_receipt", |b| {
        b.iter(|| black_box(pb.build(&platform, NOW).unwrap()))
    });
    g.bench_function("part_seal", |b| b.iter(|| black_box(seal(&zip).unwrap())));
    // End-to-end encryption to a service (HPKE, auth mode: three X25519 operations to seal, two
    // to open), the platform's and the service's share of a transfer.
    let (platform_kem, service_kem) = (
        mydata_package::e2e::HpkeKeyPair::generate(),
        mydata_package::e2e::HpkeKeyPair::generate(),
    );
    let to_service = |zip: &[u8]| {
        mydata_package::e2e::seal_package(
            &platform_kem,
            &service_kem.public_bytes(),
            "t-1",
            "svc",
            zip,
        )
        .unwrap()
    };
    let envelope = to_service(&zip);
    g.bench_function("part_hpke_seal", |b| b.iter(|| black_box(to_service(&zip))));
    g.bench_function("part_hpke_open", |b| {
        b.iter(|| {
            black_box(
                mydata_package::e2e::open_package(
                    &service_kem,
                    &platform_kem.public_bytes(),
                    "t-1",
                    "svc",
                    &envelope,
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("part_verify_dataset", |b| {
        b.iter(|| black_box(verify_dataset(&ds, &trust, NOW).is_ok()))
    });
    g.bench_function("part_verify_dataset_cold", |b| {
        b.iter(|| {
            cold.forget_verified_chains();
            black_box(verify_dataset(&ds, &cold, NOW).is_ok())
        })
    });
    // The primitives: AWS-LC (what the crate uses) and RustCrypto p256 (what it used before).
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
    )
    .unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let aws_sig = pair.sign(&rng, &data).unwrap();
    let aws_pub = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref(),
    )
    .unwrap();
    g.bench_function("prim_awslc_sign", |b| {
        b.iter(|| black_box(pair.sign(&rng, black_box(&data)).unwrap()))
    });
    g.bench_function("prim_awslc_verify", |b| {
        b.iter(|| {
            black_box(
                aws_pub
                    .verify_sig(black_box(&data), aws_sig.as_ref())
                    .is_ok(),
            )
        })
    });
    let key = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&key, &data);
    g.bench_function("prim_p256_sign", |b| {
        b.iter(|| {
            let s: p256::ecdsa::Signature =
                p256::ecdsa::signature::Signer::sign(&key, black_box(&data));
            black_box(s)
        })
    });
    g.bench_function("prim_p256_verify", |b| {
        b.iter(|| {
            black_box(
                p256::ecdsa::signature::Verifier::verify(
                    key.verifying_key(),
                    black_box(&data),
                    &sig,
                )
                .is_ok(),
            )
        })
    });
    // Where the zip's time goes: the same eight entries as a one-dataset package, each method.
    let entries: Vec<(String, Vec<u8>)> = [
        ("datasets/household/chain.pem", ds.chain_pem.clone()),
        ("datasets/household/data.json", data.clone()),
        ("datasets/household/manifest.json", ds.manifest_json.clone()),
        ("datasets/household/manifest.jws", ds.manifest_jws.clone()),
        ("datasets/household/manifest.sig", ds.manifest_sig.clone()),
        ("receipt.jws", ds.manifest_jws.clone()),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_owned(), b))
    .collect();
    for (label, method) in [
        ("prim_zip_stored", zip::CompressionMethod::Stored),
        ("prim_zip_deflate1", zip::CompressionMethod::Deflated),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let opts = zip::write::SimpleFileOptions::default()
                    .compression_method(method)
                    .compression_level((method == zip::CompressionMethod::Deflated).then_some(1));
                let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::with_capacity(8192)));
                for (name, bytes) in &entries {
                    w.start_file(name.as_str(), opts).unwrap();
                    std::io::Write::write_all(&mut w, bytes).unwrap();
                }
                black_box(w.finish().unwrap().into_inner())
            })
        });
    }
    g.bench_function("prim_sha256_2k", |b| {
        b.iter(|| black_box(<sha2::Sha256 as sha2::Digest>::digest(black_box(&data))))
    });
    g.finish();
}

criterion_group!(package, benches);
criterion_main!(package);
