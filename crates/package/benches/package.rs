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
    g.bench_function("verify", |b| {
        b.iter(|| {
            let r = verify_package(black_box(&zip), &trust, Some(platform.verifying_key()), NOW);
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
    g.bench_function("part_verify_dataset", |b| {
        b.iter(|| black_box(verify_dataset(&ds, &trust, NOW).is_ok()))
    });
    // The primitives (RustCrypto p256), to show what dominates.
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
    g.finish();
}

criterion_group!(package, benches);
criterion_main!(package);
