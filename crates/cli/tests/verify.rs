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
    agency: mydata_package::AgencySigner,
    now: Timestamp,
}

impl Fixture {
    /// The fixture's two datasets, receipted by `platform`.
    fn package_by(&self, platform: &PlatformSigner) -> Vec<u8> {
        let mut b = PackageBuilder::new("tr-1", "pseudo-1", "self download");
        for id in ["low-income-household", "disability-status"] {
            let files = vec![DataFile {
                name: "data.json".into(),
                media_type: "application/json".into(),
                bytes: br#"{"status":"listed"}"#.to_vec(),
            }];
            b.add_dataset(
                self.agency
                    .sign_dataset("tr-1", id, self.now, files)
                    .unwrap(),
            )
            .unwrap();
        }
        b.build(platform, self.now).unwrap()
    }
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
    let mut fx = Fixture {
        dir,
        package: Vec::new(),
        agency,
        now,
    };
    fx.package = fx.package_by(&platform);
    let dir = fx.dir.path();
    std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
    std::fs::write(dir.join("crl.pem"), crl.pem()).unwrap();
    let pubkey = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.join("platform.pem"), pubkey).unwrap();
    let other = <SigningKey as p256::elliptic_curve::Generate>::generate();
    std::fs::write(
        dir.join("other.pem"),
        other
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let stranger = SimulatedCa::new("Somebody Else CA", ago(now, DAY), now.plus(DAY)).unwrap();
    std::fs::write(dir.join("stranger.pem"), stranger.root_pem()).unwrap();
    fx
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

/// The platform replaced its key: with its saved JWK set (the new key, then the one it replaced,
/// named by thumbprint, beside its X25519 key), a receipt by either verifies by its `kid`; a set
/// without the receipt's key says which key is missing, and a key listed under another key's
/// `kid` does not pass for it.
#[test]
fn a_saved_jwk_set_checks_the_receipt_with_the_key_its_kid_names() {
    let fx = fixture();
    let generate = <SigningKey as p256::elliptic_curve::Generate>::generate;
    let (old, new) = (generate(), generate());
    let signer = |k: &SigningKey| PlatformSigner::with_thumbprint_kid(k.clone()).unwrap();
    let (by_old, by_new) = (fx.package_by(&signer(&old)), fx.package_by(&signer(&new)));
    let mut published = mydata_package::PlatformKeys::from(*new.verifying_key());
    published.insert_by_thumbprint(*old.verifying_key());
    let mut keys = published.public_jwks();
    keys.push(serde_json::json!({ "kty": "OKP", "crv": "X25519", "x": "AAAA", "use": "enc" }));
    let write = |name: &str, keys: &[serde_json::Value]| {
        let set = serde_json::json!({ "keys": keys }).to_string();
        std::fs::write(fx.dir.path().join(name), set).unwrap();
    };
    write("jwks.json", &keys);
    let with = |file: &'static str| {
        [
            "--trust",
            "{dir}/root.pem",
            "--crl",
            "{dir}/crl.pem",
            "--platform-key",
            file,
        ]
    };
    for zip in [&by_old, &by_new] {
        let o = verify(fx.dir.path(), zip, &with("{dir}/jwks.json"));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout(&o).ends_with("verdict: VALID\n"));
    }

    // Saved before the rotation: the new key is not in it.
    write("before.jwks.json", &published.public_jwks()[1..]);
    let e = one_line_error(&verify(
        fx.dir.path(),
        &by_new,
        &with("{dir}/before.jwks.json"),
    ));
    let kid = mydata_package::jwk_thumbprint(new.verifying_key());
    assert!(e.contains("receipt") && e.contains(&kid), "{e}");

    // The old key listed under the new key's kid.
    let mut lying = published.public_jwks()[1].clone();
    lying["kid"] = kid.clone().into();
    write("lying.jwks.json", &[lying]);
    let e = one_line_error(&verify(
        fx.dir.path(),
        &by_new,
        &with("{dir}/lying.jwks.json"),
    ));
    assert!(e.contains("receipt"), "{e}");

    // Not a key at all.
    write("empty.jwks.json", &[]);
    let e = one_line_error(&verify(
        fx.dir.path(),
        &by_new,
        &with("{dir}/empty.jwks.json"),
    ));
    assert!(e.contains("not a usable platform key"), "{e}");
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
