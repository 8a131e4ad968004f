//! `mydata verify` on real packages: a valid one, and each kind of tampering caught at its step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::{Clock, SystemClock, Timestamp};
use mydata_package::{DataFile, PackageBuilder, PlatformSigner, SimulatedCa};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mydata");
const DAY: Duration = Duration::from_secs(86_400);

struct Fixture {
    dir: tempfile::TempDir,
    package: Vec<u8>,
}

fn ago(now: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millis(now.millis() - d.as_millis() as i64)
}

/// A CA, an agency, a platform key and a two-dataset package, written to a temporary folder.
fn fixture() -> Fixture {
    let now = SystemClock.now();
    let dir = tempfile::tempdir().unwrap();
    let ca = SimulatedCa::new(
        "MyData Simulated Root CA",
        ago(now, DAY * 30),
        now.plus(DAY * 3650),
    )
    .unwrap();
    let (agency, _) = ca
        .issue_agency("mohw-social-work", ago(now, DAY), now.plus(DAY * 365))
        .unwrap();
    let crl = ca.crl(&[], ago(now, DAY), now.plus(DAY * 7)).unwrap();
    let key = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let platform = PlatformSigner::new(key.clone(), "platform-test").unwrap();
    let mut b = PackageBuilder::new("tr-1", "pseudo-1", "self download");
    for id in ["low-income-household", "disability-status"] {
        let files = vec![DataFile {
            name: "data.json".into(),
            media_type: "application/json".into(),
            bytes: br#"{"status":"listed"}"#.to_vec(),
        }];
        b.add_dataset(agency.sign_dataset("tr-1", id, now, files).unwrap())
            .unwrap();
    }
    let package = b.build(&platform, now).unwrap();
    std::fs::write(dir.path().join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl.pem()).unwrap();
    let pubkey = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.path().join("platform.pem"), pubkey).unwrap();
    let other = <SigningKey as p256::elliptic_curve::Generate>::generate();
    std::fs::write(
        dir.path().join("other.pem"),
        other
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let stranger = SimulatedCa::new("Somebody Else CA", ago(now, DAY), now.plus(DAY)).unwrap();
    std::fs::write(dir.path().join("stranger.pem"), stranger.root_pem()).unwrap();
    Fixture { dir, package }
}

fn verify(dir: &Path, package: &[u8], extra: &[&str]) -> Output {
    let file = dir.join("package.zip");
    std::fs::write(&file, package).unwrap();
    let mut args = vec!["verify".to_string(), file.display().to_string()];
    args.extend(
        extra
            .iter()
            .map(|a| a.replace("{dir}", &dir.display().to_string())),
    );
    Command::new(BIN).args(&args).output().unwrap()
}

const FULL: &[&str] = &[
    "--trust",
    "{dir}/root.pem",
    "--crl",
    "{dir}/crl.pem",
    "--platform-key",
    "{dir}/platform.pem",
];

fn rewrite(zip: &[u8], f: impl Fn(&str, &mut Vec<u8>)) -> Vec<u8> {
    let mut a = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for i in 0..a.len() {
        let mut e = a.by_index(i).unwrap();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        let name = e.name().to_owned();
        f(&name, &mut buf);
        w.start_file(name, opts).unwrap();
        w.write_all(&buf).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure: {}", stdout(o));
    let e = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn a_valid_package_passes_every_step_in_order() {
    let fx = fixture();
    let o = verify(fx.dir.path(), &fx.package, FULL);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let steps = [
        "1. certificate valid",
        "2. public key from certificate",
        "3. manifest not tampered",
        "4. files not tampered",
    ];
    let mut last = 0;
    for s in steps {
        let at = out.find(s).unwrap_or_else(|| panic!("{s} missing: {out}"));
        assert!(at > last, "steps out of order: {out}");
        last = at;
    }
    assert_eq!(out.matches(" ok\n").count(), 3 + 2 * 4, "{out}");
    assert!(out.contains("signed by agency mohw-social-work"));
    assert!(out.ends_with("verdict: VALID\n"), "{out}");
}

#[test]
fn a_changed_file_fails_at_step_four() {
    let fx = fixture();
    let tampered = rewrite(&fx.package, |name, bytes| {
        if name == "datasets/disability-status/data.json" {
            bytes[2] ^= 1;
        }
    });
    let o = verify(fx.dir.path(), &tampered, FULL);
    let out = stdout(&o);
    assert!(
        out.contains("4. files not tampered") && out.contains("FAIL"),
        "{out}"
    );
    let e = one_line_error(&o);
    assert!(
        e.contains("dataset disability-status: check 4 (files not tampered) failed"),
        "{e}"
    );
}

#[test]
fn an_untrusted_root_fails_at_step_one_and_skips_the_rest() {
    let fx = fixture();
    let o = verify(
        fx.dir.path(),
        &fx.package,
        &[
            "--trust",
            "{dir}/stranger.pem",
            "--allow-missing-crl",
            "--platform-key",
            "{dir}/platform.pem",
        ],
    );
    let out = stdout(&o);
    assert!(
        out.contains("2. public key from certificate") && out.contains("not run"),
        "{out}"
    );
    assert!(one_line_error(&o).contains("check 1 (certificate valid) failed"));
}

#[test]
fn a_missing_crl_is_not_silently_accepted() {
    let fx = fixture();
    let o = verify(fx.dir.path(), &fx.package, &["--trust", "{dir}/root.pem"]);
    assert!(one_line_error(&o).contains("check 1"));
    // Explicitly waiving revocation is the operator's choice, and then the package verifies.
    let o = verify(
        fx.dir.path(),
        &fx.package,
        &["--trust", "{dir}/root.pem", "--allow-missing-crl"],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("not checked (give --platform-key)"));
}

#[test]
fn a_receipt_from_another_key_is_refused() {
    let fx = fixture();
    let o = verify(
        fx.dir.path(),
        &fx.package,
        &[
            "--trust",
            "{dir}/root.pem",
            "--crl",
            "{dir}/crl.pem",
            "--platform-key",
            "{dir}/other.pem",
        ],
    );
    assert!(one_line_error(&o).contains("receipt"));
}

#[test]
fn path_tricks_and_garbage_are_refused_as_archives() {
    let fx = fixture();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.start_file("../../etc/evil", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"x").unwrap();
    let evil = w.finish().unwrap().into_inner();
    let e = one_line_error(&verify(fx.dir.path(), &evil, FULL));
    assert!(e.contains("archive refused"), "{e}");
    let e = one_line_error(&verify(
        fx.dir.path(),
        &fx.package[..fx.package.len() / 2],
        FULL,
    ));
    assert!(e.contains("archive refused"), "{e}");
}

#[test]
fn bad_arguments_give_one_line() {
    let fx = fixture();
    let e = one_line_error(&verify(
        fx.dir.path(),
        &fx.package,
        &["--trust", "{dir}/nope.pem"],
    ));
    assert!(e.contains("nope.pem"), "{e}");
    let e = one_line_error(&verify(
        fx.dir.path(),
        &fx.package,
        &["--trust", "{dir}/crl.pem"],
    ));
    assert!(e.contains("root certificate"), "{e}");
}
