//! Runs the verification script of docs/PACKAGE.md (`scripts/verify-package`), with openssl, unzip, sha256sum and jq
//! on packages this crate builds: a good one must pass, tampered ones must fail at the right command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use std::path::Path;
use std::process::{Command, Output};

const TOOLS: [&str; 5] = ["openssl", "unzip", "sha256sum", "jq", "bash"];

fn require_tools() {
    for tool in TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not installed: this test runs docs/PACKAGE.md's script with {TOOLS:?} \
             and refuses to skip (on Debian: apt-get install openssl unzip jq coreutils)"
        );
    }
}

/// The repository's `scripts/verify-package`, the file docs/PACKAGE.md shows.
fn script_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify-package")
}

/// The script between the verify-script markers of docs/PACKAGE.md, without the code fence.
fn doc_script() -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PACKAGE.md"),
    )
    .unwrap();
    let start = doc
        .find("<!-- verify-script:begin -->")
        .expect("begin marker");
    let end = doc.find("<!-- verify-script:end -->").expect("end marker");
    let block = &doc[start..end];
    let body_start = block.find("```sh\n").expect("sh fence") + "```sh\n".len();
    let body_end = block.rfind("```").expect("closing fence");
    block[body_start..body_end].to_owned()
}

#[test]
fn the_documented_script_is_the_file_the_tests_run() {
    let file = std::fs::read_to_string(script_path()).unwrap();
    let body = &file[file.find("\nset -euo pipefail\n").expect("script body") + 1..];
    assert_eq!(
        body,
        doc_script(),
        "docs/PACKAGE.md and scripts/verify-package differ: copy the file's text below \
         its header comment into the doc"
    );
}

/// Write the package and the trust inputs to a fresh folder and run the script there.
fn run_script(fx: &Fixture, zip: &[u8], crl_revokes: &[u64]) -> Output {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("package.zip"), zip).unwrap();
    std::fs::write(dir.path().join("root.pem"), fx.ca.root_pem()).unwrap();
    let crl = fx.ca.crl(crl_revokes, ago(DAY), NOW.plus(DAY * 7)).unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl.pem()).unwrap();
    let platform_pem = fx
        .platform
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.path().join("platform.pem"), platform_pem).unwrap();
    let out = Command::new("bash")
        .arg(script_path())
        .current_dir(dir.path())
        .env("ATTIME", (NOW.millis() / 1000).to_string())
        .output()
        .unwrap();
    // Keep the folder alive until the script is done.
    drop(dir);
    out
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn documented_openssl_script_verifies_a_good_package() {
    let fx = fixture();
    let zip = build_with(&fx, &fx.agency, &["household", "income-2025"]);
    let out = run_script(&fx, &zip, &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Per dataset: chain OK, manifest.sig and manifest.jws verified; plus the receipt.
    assert!(stdout.matches(": OK\n").count() >= 2, "{all}");
    assert_eq!(stdout.matches("Verified OK").count(), 2 * 2 + 1, "{all}");
    assert!(
        stdout.contains("data.json: OK") && stdout.contains("data.csv: OK"),
        "{all}"
    );
    assert!(stdout.ends_with("ALL CHECKS PASSED\n"), "{all}");
}

#[test]
fn documented_script_fails_on_a_tampered_data_file() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        entry_mut(e, "datasets/household/data.json")[5] ^= 1;
    });
    let out = run_script(&fx, &zip, &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("data.json: FAILED"), "{all}");
    assert!(!all.contains("ALL CHECKS PASSED"), "{all}");
}

#[test]
fn documented_script_fails_on_a_tampered_manifest() {
    let fx = fixture();
    let zip = rewrite(&build(&fx), |e| {
        let m = entry_mut(e, "datasets/household/manifest.json");
        let i = m.len() - 3;
        m[i] ^= 1;
    });
    let out = run_script(&fx, &zip, &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("Verification failure"), "{all}");
}

#[test]
fn documented_script_fails_on_a_revoked_certificate() {
    let fx = fixture();
    let out = run_script(&fx, &build(&fx), &[fx.agency_cert.serial()]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("certificate revoked"), "{all}");
}

#[test]
fn documented_script_fails_on_an_untrusted_ca() {
    let fx = fixture();
    let rogue_ca =
        mydata_package::SimulatedCa::new("Rogue CA", ago(DAY), NOW.plus(DAY * 30)).unwrap();
    let (rogue, _) = rogue_ca
        .issue_agency("moi-household", ago(DAY), NOW.plus(DAY))
        .unwrap();
    let out = run_script(&fx, &build_with(&fx, &rogue, &["household"]), &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("unable to get local issuer certificate"),
        "{all}"
    );
}

#[test]
fn documented_script_fails_on_an_extra_file_and_an_edited_receipt() {
    let fx = fixture();
    let extra = rewrite(&build(&fx), |e| {
        e.insert(0, ("datasets/household/extra.txt".into(), b"x".to_vec()));
    });
    let out = run_script(&fx, &extra, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("extra.txt"), "{}", text(&out));

    let other_platform = mydata_package::PlatformSigner::new(
        <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate(),
        "x",
    )
    .unwrap();
    let zip = receipted_by(&other_platform, &fx.agency, &["household"]);
    let out = run_script(&fx, &zip, &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("== receipt") && all.contains("Verification failure"),
        "{all}"
    );
}
