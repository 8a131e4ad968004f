//! Shared fixtures: a CA, an agency, a platform key and helpers to rewrite package zips.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::Timestamp;
use mydata_package::{
    AgencySigner, DataFile, IssuedCert, PackageBuilder, PlatformSigner, SimulatedCa, TrustStore,
};
use p256::ecdsa::SigningKey;
use std::io::{Cursor, Read, Write};
use std::time::Duration;

pub const DAY: Duration = Duration::from_secs(86_400);
/// 2026-09-21, a fixed "now" for every test.
pub const NOW: Timestamp = Timestamp::from_millis(1_790_000_000_000);

pub fn ago(d: Duration) -> Timestamp {
    Timestamp::from_millis(NOW.millis() - i64::try_from(d.as_millis()).unwrap())
}

pub struct Fixture {
    pub ca: SimulatedCa,
    pub trust: TrustStore,
    pub agency: AgencySigner,
    pub agency_cert: IssuedCert,
    pub platform: PlatformSigner,
}

pub fn fixture() -> Fixture {
    let ca = SimulatedCa::new(
        "MyData Simulated Root CA",
        ago(DAY * 365),
        NOW.plus(DAY * 3650),
    )
    .unwrap();
    let (agency, agency_cert) = ca
        .issue_agency("moi-household", ago(DAY), NOW.plus(DAY * 365))
        .unwrap();
    let trust = trust_for(&ca, &[]);
    let platform = PlatformSigner::new(
        <SigningKey as p256::elliptic_curve::Generate>::generate(),
        "platform-2026",
    )
    .unwrap();
    Fixture {
        ca,
        trust,
        agency,
        agency_cert,
        platform,
    }
}

/// A store trusting `ca`, with its CRL revoking `revoked`.
pub fn trust_for(ca: &SimulatedCa, revoked: &[u64]) -> TrustStore {
    let mut t = TrustStore::new();
    t.add_root_der(ca.root_der()).unwrap();
    let crl = ca.crl(revoked, ago(DAY), NOW.plus(DAY * 7)).unwrap();
    t.add_crl_der(crl.der()).unwrap();
    t
}

pub fn household_files() -> Vec<DataFile> {
    let json = format!(
        "{{\"household\":[{}]}}",
        (0..20)
            .map(|i| format!(
                "{{\"name\":\"member {i}\",\"relation\":\"child\",\"born\":\"2001-01-{:02}\"}}",
                i % 28 + 1
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    vec![
        DataFile {
            name: "data.json".into(),
            media_type: "application/json".into(),
            bytes: json.into_bytes(),
        },
        DataFile {
            name: "data.csv".into(),
            media_type: "text/csv".into(),
            bytes: b"name,relation\nmember 0,child\n".to_vec(),
        },
    ]
}

/// A package with datasets `ids`, all signed by `agency`, for transfer "t-1".
pub fn build_with(fx: &Fixture, agency: &AgencySigner, ids: &[&str]) -> Vec<u8> {
    receipted_by(&fx.platform, agency, ids)
}

/// [`build_with`], its receipt signed by `platform` instead of the fixture's platform key.
pub fn receipted_by(platform: &PlatformSigner, agency: &AgencySigner, ids: &[&str]) -> Vec<u8> {
    let mut b = PackageBuilder::new("t-1", "pseudo-7f3a", "loan application");
    for id in ids {
        let ds = agency
            .sign_dataset("t-1", id, NOW, household_files())
            .unwrap();
        b.add_dataset(ds).unwrap();
    }
    b.build(platform, NOW).unwrap()
}

pub fn build(fx: &Fixture) -> Vec<u8> {
    build_with(fx, &fx.agency, &["household"])
}

/// Every entry of a zip, in order.
pub fn entries(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    (0..a.len())
        .map(|i| {
            let mut f = a.by_index(i).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            (f.name().to_owned(), buf)
        })
        .collect()
}

/// A zip holding exactly `entries` (names written verbatim).
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Rewrite a package, changing entries with `f`.
pub fn rewrite(zip: &[u8], f: impl FnMut(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut e = entries(zip);
    let mut f = f;
    f(&mut e);
    zip_of(&e)
}

pub fn entry_mut<'a>(e: &'a mut [(String, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
    &mut e.iter_mut().find(|(n, _)| n == name).unwrap().1
}
