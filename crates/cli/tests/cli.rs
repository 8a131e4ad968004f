//! Tests of the `mydata` binary as an operator uses it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mydata");
const REPO_CATALOG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../catalog");

fn mydata(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MYDATA_CONFIG")
        .output()
        .unwrap()
}

fn stderr_line(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(
        text.lines().count(),
        1,
        "failure must be one line on stderr: {text}"
    );
    text
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["demo", "--help"],
        vec!["migrate", "--help"],
        vec!["catalog", "check", "--help"],
        vec!["bench", "catalog", "--help"],
        vec!["provider-sim", "--help"],
        vec!["verify-receipt", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["audit", "export", "--help"],
        vec!["counter", "add-office", "--help"],
        vec!["counter", "add-counter", "--help"],
        vec!["counter", "add-clerk", "--help"],
        vec!["counter", "list", "--help"],
    ] {
        let o = mydata(&args);
        assert!(o.status.success(), "{args:?}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let top = String::from_utf8_lossy(&mydata(&["--help"]).stdout).to_string();
    for sub in [
        "serve",
        "demo",
        "migrate",
        "catalog",
        "bench",
        "provider-sim",
        "verify-receipt",
    ] {
        assert!(top.contains(sub), "{sub} missing from --help");
    }
    let serve = String::from_utf8_lossy(&mydata(&["serve", "--help"]).stdout).to_string();
    assert!(
        serve.contains("--listen") && serve.contains("--data-dir") && serve.contains("--config")
    );
}

#[test]
fn catalog_check_accepts_the_shipped_catalogue() {
    let o = mydata(&["catalog", "check", REPO_CATALOG]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("105 datasets") && out.contains("28 services"),
        "{out}"
    );
}

/// A folder that is not there is named as such (it was "not a catalogue file name").
#[test]
fn catalog_check_says_when_a_path_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("catalgoue");
    let o = mydata(&["catalog", "check", gone.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr_line(&o);
    assert!(err.contains("No such file or directory"), "{err}");
}

#[test]
fn catalog_check_lists_every_problem_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new(REPO_CATALOG).join("services.tsv")).unwrap();
    let broken = text
        .replacen(
            "\tonline\tlow-income-household\t",
            "\tonline\tno-such-dataset\t",
            1,
        )
        .replacen("\tboth\t", "\tkiosk\t", 1);
    let file = dir.path().join("services.tsv");
    std::fs::write(&file, broken).unwrap();
    let o = mydata(&["catalog", "check", file.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let shown = file.display().to_string();
    assert!(
        out.lines().any(|l| l.starts_with(&shown)
            && l.contains(": field `datasets`: unknown dataset `no-such-dataset`")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(": field `mode`: unknown mode `kiosk`")),
        "{out}"
    );
    assert!(stderr_line(&o).contains("2 problem(s)"));

    let o = mydata(&["catalog", "check", "/etc/hostname"]);
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("not a catalogue file name"));
}

#[test]
fn bad_configuration_stops_start_up_with_one_line_naming_the_key() {
    let o = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MYDATA_LOG__FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("log.format") && line.contains("MYDATA_LOG__FORMAT"),
        "{line}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mydata.toml");
    std::fs::write(&cfg, "[database]\nurl = \"mysql://x\"\n").unwrap();
    let o = mydata(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("database.url"));
}

/// `serve` is for real services: it will not take its issuer from each request's Host header,
/// nor publish a plain-http one beyond loopback, and refusing creates nothing.
#[test]
fn serve_needs_an_https_issuer() {
    let data = tempfile::tempdir().unwrap();
    let run = |issuer: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ]);
        if let Some(i) = issuer {
            c.env("MYDATA_OAUTH__ISSUER", i);
        }
        c.output().unwrap()
    };
    for (issuer, says) in [
        (None, "must be set"),
        (Some("http://mydata.example"), "must be https"),
        (Some("not a url"), "URL"),
    ] {
        let o = run(issuer);
        assert!(!o.status.success());
        let line = stderr_line(&o);
        assert!(
            line.contains("oauth.issuer") && line.contains(says),
            "{issuer:?}: {line}"
        );
    }
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn a_broken_catalogue_folder_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "categories.tsv",
        "sectors.tsv",
        "agencies.tsv",
        "datasets.tsv",
        "services.tsv",
    ] {
        std::fs::copy(Path::new(REPO_CATALOG).join(f), dir.path().join(f)).unwrap();
    }
    let ds = std::fs::read_to_string(dir.path().join("datasets.tsv")).unwrap();
    std::fs::write(
        dir.path().join("datasets.tsv"),
        ds.replacen("\tjson,pdf\t", "\tjson,docx\t", 1),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ])
        .env("MYDATA_CATALOG__DIR", dir.path())
        .env("MYDATA_OAUTH__ISSUER", "http://127.0.0.1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let line = stderr_line(&o);
    assert!(
        line.contains("datasets.tsv:") && line.contains("field `formats`") && line.contains("docx"),
        "{line}"
    );
}

/// More signed-in persons than transfers in flight cannot be used: said, not cut silently.
#[test]
fn bench_transfers_refuses_more_persons_than_workers() {
    for persons in ["0", "17"] {
        let o = mydata(&[
            "bench",
            "transfers",
            "--url",
            "http://127.0.0.1:9",
            "--cards",
            "/nonexistent",
            "--admin-token",
            "t",
            "--concurrency",
            "16",
            "--persons",
            persons,
        ]);
        assert!(!o.status.success());
        assert!(stderr_line(&o).contains("--persons"), "{persons}");
    }
}

#[test]
fn bench_refuses_a_measuring_time_it_cannot_keep() {
    // A deadline beyond what the clock can represent used to panic mid-run.
    for cmd in ["catalog", "transfers"] {
        for seconds in ["0", "86401", "18446744073709551615"] {
            let o = mydata(&[
                "bench",
                cmd,
                "--seconds",
                seconds,
                "--url",
                "http://127.0.0.1:9",
            ]);
            assert!(!o.status.success());
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("not in 1..=86400"), "{cmd} {seconds}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn demo_refuses_to_listen_beyond_loopback() {
    let o = mydata(&["demo", "--listen", "0.0.0.0:0"]);
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("loopback"));
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let o = mydata(&["migrate", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("mydata.db").is_file());
    // A second run is a no-op.
    assert!(
        mydata(&["migrate", "--data-dir", dir.path().to_str().unwrap()])
            .status
            .success()
    );
}

/// The embedded database lives in the folder given, whatever characters its name holds (a `%`,
/// a `?`); an empty folder setting is refused rather than put at `/mydata.db`.
#[test]
fn the_database_is_where_the_data_dir_says() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a%62c?x#y");
    let o = mydata(&["migrate", "--data-dir", odd.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(odd.join("mydata.db").is_file());
    assert!(!dir.path().join("abc").exists());
    let o = Command::new(BIN)
        .arg("migrate")
        .env_remove("MYDATA_CONFIG")
        .env("MYDATA_DATA_DIR", "")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("data_dir"));
}

#[tokio::test]
async fn migrate_works_on_postgres() {
    let db = mydata_store::testing::fresh_postgres().await.unwrap();
    let o = Command::new(BIN)
        .arg("migrate")
        .env("MYDATA_DATABASE__URL", &db.url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("up to date"));
}

/// Starts `mydata demo` (or `serve`), waits for the line with its URL, and returns the child and URL.
async fn start(
    sub: &str,
    data_dir: &Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    start_on(sub, "127.0.0.1:0", data_dir, env).await
}

/// [`start`] on the `--listen` address given.
async fn start_on(
    sub: &str,
    listen: &str,
    data_dir: &Path,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args([
        sub,
        "--listen",
        listen,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ])
    .env_remove("MYDATA_CONFIG")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("no URL printed in time")
        .unwrap()
        .unwrap();
    (child, url)
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn demo_prints_its_url_once_healthy_serves_the_catalogue_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = start("demo", dir.path(), &[]).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // Ready when printed: no retry needed.
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = reqwest::get(format!("{url}/api/v1/datasets"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["count"], 105);
    let body: serde_json::Value = reqwest::get(format!("{url}/api/v1/services"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["count"], 28);
    let home = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(home.contains("個人戶籍資料"));
    assert!(
        dir.path().join("mydata.db").is_file(),
        "embedded SQLite lives in --data-dir"
    );

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A demo started again on the running one's port and folder (a common slip) fails in one line
/// and leaves the running one alone: its example service's registration, demo cards and database.
#[tokio::test]
async fn a_second_demo_on_a_taken_port_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = start("demo", dir.path(), &[]).await;
    let port = url.rsplit(':').next().unwrap().to_owned();
    let store = mydata_store::Store::connect(
        &format!("sqlite://{}/mydata.db", dir.path().display()),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = || async {
        store
            .client("k12-tuition-reduction")
            .await
            .unwrap()
            .unwrap()
    };
    let before = client().await;
    let cards = std::fs::read_dir(dir.path().join("demo"))
        .map(|d| d.count())
        .unwrap_or(0);
    let o = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .env_remove("MYDATA_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("cannot listen"), "{err}");
    let after = client().await;
    assert_eq!(
        (after.jwks, after.redirect_uris, after.updated_at),
        (before.jwks, before.redirect_uris, before.updated_at)
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("demo"))
            .map(|d| d.count())
            .unwrap_or(0),
        cards
    );
    store.close().await;
    drop(child);
}

#[tokio::test]
async fn serve_runs_on_postgres_selected_by_url() {
    let db = mydata_store::testing::fresh_postgres().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // `serve` prints nothing on stdout; use demo's readiness line via serve's JSON log instead.
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .env("MYDATA_DATABASE__URL", &db.url)
        .env("MYDATA_OAUTH__ISSUER", "http://127.0.0.1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("serve logs JSON lines");
            if v["message"] == "listening (HTTP)" {
                return v["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .unwrap();
    let ready: serde_json::Value = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["database"], "postgres");
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn audit_verify_passes_on_an_intact_log_and_names_a_tampered_entry() {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mydata.db", dir.path().display());
    let store = mydata_store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    for i in 0..5 {
        let e = mydata_store::NewAuditEvent {
            at: mydata_core::Timestamp::from_millis(1_000 + i),
            kind: "identity.verified".into(),
            subject: Some("p".into()),
            transfer_id: None,
            actor: "p".into(),
            detail: serde_json::json!({"method": "moica_cert"}),
        };
        store.append_audit(&e).await.unwrap();
    }
    store
        .integrate_audit(100, mydata_core::Timestamp::from_millis(2_000))
        .await
        .unwrap();

    let key = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate();
    let signer = mydata_package::PlatformSigner::with_thumbprint_kid(key).unwrap();
    let pub_pem = dir.path().join("platform.pub.pem");
    std::fs::write(
        &pub_pem,
        signer
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let args = [
        "audit",
        "verify",
        "--data-dir",
        &data_dir,
        "--platform-key",
        pub_pem.to_str().unwrap(),
    ];

    // The head is not signed yet: that alone fails verification.
    let o = mydata(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL tree head at size 5: is not signed"));

    for head in store.unsigned_tree_heads(10).await.unwrap() {
        store
            .set_tree_head_signature(head.tree_size, &signer.sign(&head.signing_payload()))
            .await
            .unwrap();
    }
    let o = mydata(&args);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}");
    assert!(out.contains("5 entries") && out.contains("OK"), "{out}");

    // A head checked against someone else's key is refused.
    let other = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate();
    let other_pem = dir.path().join("other.pub.pem");
    std::fs::write(
        &other_pem,
        other
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    let o = mydata(&[
        "audit",
        "verify",
        "--data-dir",
        &data_dir,
        "--platform-key",
        other_pem.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("signature does not verify"));
    // Without --platform-key and without a key file, it says what to give.
    let o = mydata(&["audit", "verify", "--data-dir", &data_dir]);
    assert!(stderr_line(&o).contains("--platform-key"));

    // The platform replaced its key: heads signed before verify once the old public key is
    // listed as a previous key, and not without it.
    use p256::pkcs8::EncodePrivateKey;
    let replacement = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(
        dir.path().join("keys/platform-signing.pem"),
        replacement.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let o = mydata(&["audit", "verify", "--data-dir", &data_dir]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("signature does not verify"));
    let config = dir.path().join("rotated.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nprevious_platform_signing_keys = [{:?}]\n",
            pub_pem.to_str().unwrap()
        ),
    )
    .unwrap();
    let rotated = [
        "audit",
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        &data_dir,
    ];
    let o = mydata(&rotated);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}");

    let seq = store.audit_leaves().await.unwrap()[2].event.seq;
    store
        .execute_raw(&format!(
            "UPDATE audit_events SET actor = 'someone-else' WHERE seq = {seq}"
        ))
        .await
        .unwrap();
    store.close().await;
    let o = mydata(&args);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "FAIL entry 2 (event {seq}) does not match its recorded hash"
        )),
        "{out}"
    );
    assert!(stderr_line(&o).contains("audit log verification failed"));
}

/// The next line `mydata provider-sim` printed, within 30 s.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("nothing printed in time")
        .unwrap()
        .unwrap()
}

/// `mydata provider-sim` on a loopback port with `args`: the child, its further output lines and
/// the URL it printed first.
async fn provider_sim(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    String,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "provider-sim",
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            "60",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = next_line(&mut lines).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, lines, url)
}

/// A request token for `moi-household`'s household register, with `jti`.
fn sim_claims(jti: &str) -> mydata_provider_sim::token::Claims {
    use mydata_provider_sim::token::{self, Assurance, Claims};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Claims {
        iss: token::ISSUER.into(),
        aud: "moi-household".into(),
        iat: now,
        exp: now + 60,
        jti: jti.into(),
        transfer_id: Some("t1".into()),
        dataset_id: Some("household-register-personal".into()),
        subject: Some("A123456789".into()),
        assurance: Some(Assurance {
            method: "moica_cert".into(),
            level: 1,
        }),
    }
}

/// While the platform replaces its key, the simulated agencies take every key they are given
/// (a PEM key and the platform's JWK set), a token checked with the key its `kid` names; a key
/// they were not given is refused, and a file that holds no key stops them with one line.
#[tokio::test]
async fn provider_sim_accepts_tokens_by_every_platform_key_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let generate = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate;
    let (old, new, stranger) = (generate(), generate(), generate());
    let old_pem = dir.path().join("old.pub.pem");
    let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
        old.verifying_key(),
        p256::pkcs8::LineEnding::LF,
    )
    .unwrap();
    std::fs::write(&old_pem, pem).unwrap();
    let jwks = dir.path().join("jwks.json");
    let set = mydata_package::PlatformKeys::from(*new.verifying_key()).public_jwks();
    std::fs::write(&jwks, serde_json::json!({ "keys": set }).to_string()).unwrap();
    let (child, _lines, url) = provider_sim(&[
        "--platform-key",
        old_pem.to_str().unwrap(),
        "--platform-key",
        jwks.to_str().unwrap(),
    ])
    .await;
    let ask = |key: &p256::ecdsa::SigningKey, jti: &str| {
        let signer = mydata_package::PlatformSigner::with_thumbprint_kid(key.clone()).unwrap();
        let token = signer.sign(&serde_json::to_vec(&sim_claims(jti)).unwrap());
        reqwest::Client::new()
            .post(format!("{url}/agencies/moi-household/v1/requests"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(ask(&old, "by-old").await.unwrap().status(), 200);
    assert_eq!(ask(&new, "by-new").await.unwrap().status(), 200);
    assert_eq!(ask(&stranger, "by-stranger").await.unwrap().status(), 401);
    drop(child);

    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "the key is in the safe").unwrap();
    let o = mydata(&[
        "provider-sim",
        "--listen",
        "127.0.0.1:0",
        "--platform-key",
        notes.to_str().unwrap(),
    ]);
    assert!(stderr_line(&o).contains("notes.txt"), "{}", stderr_line(&o));
}

/// `mydata provider-sim --platform-jwks URL` reads the platform's keys from its published JWK set
/// (no key generated) and accepts tokens by them; a URL that is not http(s) stops it with one line.
#[tokio::test]
async fn provider_sim_reads_the_platforms_keys_from_its_jwk_set_url() {
    let dir = tempfile::tempdir().unwrap();
    let key = <p256::ecdsa::SigningKey as p256::elliptic_curve::Generate>::generate();
    let set = mydata_package::PlatformKeys::from(*key.verifying_key()).public_jwks();
    let jwks = serde_json::json!({ "keys": set });
    let app = axum::Router::new().route(
        "/.well-known/mydata/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!(
        "http://{}/.well-known/mydata/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (child, _lines, url) = provider_sim(&[
        "--platform-jwks",
        &jwks_url,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .await;
    let signer = mydata_package::PlatformSigner::with_thumbprint_kid(key).unwrap();
    let token = signer.sign(&serde_json::to_vec(&sim_claims("by-published")).unwrap());
    let res = reqwest::Client::new()
        .post(format!("{url}/agencies/moi-household/v1/requests"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        !dir.path().join("provider-sim-platform-key.pem").exists(),
        "no key generated"
    );
    drop(child);

    let o = mydata(&[
        "provider-sim",
        "--listen",
        "127.0.0.1:0",
        "--platform-jwks",
        "ftp://platform.example/jwks.json",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr_line(&o).contains("not an http(s) URL"),
        "{}",
        stderr_line(&o)
    );
}

#[tokio::test]
async fn provider_sim_serves_signed_datasets_to_the_generated_platform_key() {
    use mydata_provider_sim::token;
    use p256::pkcs8::DecodePrivateKey;

    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut lines, url) =
        provider_sim(&["--data-dir", dir.path().to_str().unwrap()]).await;
    let key_line: String = next_line(&mut lines).await;
    let key_path = dir.path().join("provider-sim-platform-key.pem");
    assert!(key_line.contains(key_path.to_str().unwrap()), "{key_line}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }

    let root = reqwest::get(format!("{url}/ca/root.pem")).await.unwrap();
    assert_eq!(root.status(), 200);
    assert!(root.text().await.unwrap().contains("BEGIN CERTIFICATE"));

    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key_path).unwrap())
        .unwrap();
    let res = reqwest::Client::new()
        .post(format!("{url}/agencies/moi-household/v1/requests"))
        .bearer_auth(token::sign(&key, &sim_claims("cli-test-1")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["manifest_jws"].is_string(), "{body}");

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Issues a real consent receipt from a platform on a temporary data folder, then removes the
/// folder (database, private key and all): the receipt is checked with the public key alone.
#[tokio::test]
async fn verify_receipt_checks_a_receipt_offline_with_only_the_public_key() {
    use mydata_core::transfer::{TransferEvent, TransferKind};
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let keep = tempfile::tempdir().unwrap();
    let platform_dir = tempfile::tempdir().unwrap();
    let settings = mydata_server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: platform_dir.path().to_path_buf(),
        ..Default::default()
    };
    let clock =
        mydata_core::ManualClock::new(mydata_core::Timestamp::from_millis(1_790_000_000_000));
    let server = mydata_server::Server::bind(settings, std::sync::Arc::new(clock))
        .await
        .unwrap();
    let state = server.state().clone();
    let now = mydata_core::Clock::now(state.clock());
    let t = mydata_store::NewTransfer {
        id: "tr-receipt".into(),
        kind: TransferKind::Counter,
        subject: "f00d".into(),
        recipient: Some("counter-12".into()),
        purpose: "tax relief at the counter".into(),
        datasets: vec!["low-income-household".into()],
    };
    state
        .store()
        .create_transfer(&t, "f00d", now)
        .await
        .unwrap();
    state
        .store()
        .apply_transfer_event("tr-receipt", TransferEvent::Consent, "f00d", now)
        .await
        .unwrap();
    let file = mydata_server::receipts::consent_receipt(&state, "tr-receipt", None)
        .await
        .unwrap();
    let receipt = keep.path().join("receipt.json");
    std::fs::write(&receipt, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let jwks = keep.path().join("jwks.json");
    let set = serde_json::json!({"keys": [state.platform().public_jwk()]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let pem = keep.path().join("platform.pub.pem");
    let pub_pem = state
        .platform()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&pem, pub_pem).unwrap();
    state.store().close().await;
    drop(server);
    drop(state);
    platform_dir.close().unwrap();

    for key in [&jwks, &pem] {
        let o = mydata(&[
            "verify-receipt",
            receipt.to_str().unwrap(),
            "--platform-key",
            key.to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for step in [
            "1. OK   receipt signature",
            "2. OK   audit entry matches the receipt",
            "3. OK   inclusion proof against the tree head",
            "4. OK   tree head signature",
            "consent receipt for transfer tr-receipt",
        ] {
            assert!(out.contains(step), "{step}: {out}");
        }
    }

    // Edited by hand: the tree size. Fails at steps 3 and 4, exits non-zero, one line on stderr.
    let mut edited: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    edited["tree_head"]["tree_size"] = 1000.into();
    let bad = keep.path().join("edited.json");
    std::fs::write(&bad, edited.to_string()).unwrap();
    let o = mydata(&[
        "verify-receipt",
        bad.to_str().unwrap(),
        "--platform-key",
        jwks.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("1. OK   receipt signature"), "{out}");
    assert!(
        out.contains("3. FAIL inclusion proof against the tree head"),
        "{out}"
    );
    assert!(out.contains("4. FAIL tree head signature"), "{out}");
    assert!(stderr_line(&o).contains("receipt verification failed (2 of 4 checks)"));

    // Not a key, not a receipt: one clear line each.
    let o = mydata(&[
        "verify-receipt",
        receipt.to_str().unwrap(),
        "--platform-key",
        receipt.to_str().unwrap(),
    ]);
    assert!(stderr_line(&o).contains("not a usable platform key"));
    let o = mydata(&[
        "verify-receipt",
        jwks.to_str().unwrap(),
        "--platform-key",
        jwks.to_str().unwrap(),
    ]);
    assert!(stderr_line(&o).contains("not a receipt file"));
}

#[tokio::test]
async fn audit_export_writes_an_agencys_and_a_services_records_as_csv_and_json() {
    use mydata_core::transfer::TransferKind;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mydata.db", dir.path().display());
    let store = mydata_store::Store::connect(&url, &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let service = std::fs::read_to_string(format!("{REPO_CATALOG}/services.tsv"))
        .unwrap()
        .lines()
        .find(|l| !l.starts_with('#') && !l.starts_with("id\t"))
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    // 2026-11-20 10:00 Taiwan time, and one the next day.
    let day1 = mydata_core::Timestamp::from_millis(1_795_140_000_000);
    let day2 = day1.plus(Duration::from_secs(86_400));
    for (id, at, recipient, purpose) in [
        (
            "t-one",
            day1,
            Some(service.as_str()),
            "=HYPERLINK(\"http://evil\")",
        ),
        ("t-two", day2, None, "self download"),
    ] {
        let t = mydata_store::NewTransfer {
            id: id.into(),
            kind: if recipient.is_some() {
                TransferKind::Online
            } else {
                TransferKind::SelfDownload
            },
            subject: "platform-pseudonym".into(),
            recipient: recipient.map(str::to_owned),
            purpose: purpose.into(),
            datasets: vec![
                "low-income-household".into(),
                "household-register-personal".into(),
            ],
        };
        store.create_transfer(&t, "x", at).await.unwrap();
    }
    store.close().await;
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let export = |extra: &[&str]| {
        let mut args = vec!["audit", "export", "--data-dir", &data_dir];
        args.extend_from_slice(extra);
        mydata(&args)
    };

    let o = export(&[
        "--agency",
        "mohw-social-work",
        "--from",
        "2026-11-20",
        "--to",
        "2026-11-21",
    ]);
    let csv = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("transfer_id,created_at,flow,recipient,purpose,agency_id,dataset_id")
    );
    assert!(
        lines[1].starts_with("t-one,2026-11-20T02:00:00Z,online,"),
        "{csv}"
    );
    // The formula is neutralised; only the agency's dataset appears; the platform pseudonym does not.
    assert!(
        lines[1].contains("\"'=HYPERLINK(\"\"http://evil\"\")\""),
        "{csv}"
    );
    assert!(
        lines
            .iter()
            .skip(1)
            .all(|l| l.contains("low-income-household")
                && !l.contains("household-register-personal"))
    );
    assert!(!csv.contains("platform-pseudonym"));
    assert!(
        lines[2].starts_with("t-two,") && lines[2].contains(",self,"),
        "{csv}"
    );

    // The day range is inclusive of whole days in Taiwan time.
    let o = export(&[
        "--agency",
        "mohw-social-work",
        "--from",
        "2026-11-21",
        "--to",
        "2026-11-21",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);

    let out = dir.path().join("svc.json");
    let o = export(&[
        "--service",
        &service,
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-30",
        "--format",
        "json",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(json["service"], service.as_str());
    let records = json["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{json}");
    assert!(records.iter().all(|r| r["transfer_id"] == "t-one"));
    assert_eq!(records[0]["dataset_name"], "低收及中低收列冊資料");
    assert_eq!(records[0]["subject"].as_str().unwrap().len(), 32);

    for (args, msg) in [
        (
            vec![
                "--agency",
                "no-such-agency",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-30",
            ],
            "no agency `no-such-agency`",
        ),
        (
            vec![
                "--agency",
                "mohw-social-work",
                "--from",
                "20261101",
                "--to",
                "2026-11-30",
            ],
            "--from `20261101`",
        ),
        (
            vec![
                "--agency",
                "mohw-social-work",
                "--from",
                "2026-12-01",
                "--to",
                "2026-11-30",
            ],
            "time range is empty",
        ),
        (
            vec![
                "--agency",
                "a",
                "--service",
                "b",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-30",
            ],
            "cannot be used with",
        ),
    ] {
        let o = export(&args);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

/// A wrong argument is one line on stderr with exit status 2, as a script expects; `--listen`
/// takes a host name as its `HOST:PORT` says.
#[tokio::test]
async fn a_wrong_argument_is_one_line_and_listen_takes_a_host_name() {
    for args in [
        vec!["serve", "--bogus"],
        vec!["serve", "--listen", "nohost:x"],
        vec!["counter", "add-office", "--id", "o1"],
    ] {
        let o = mydata(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr_line(&o);
        assert!(
            err.starts_with("mydata: error: ") && err.ends_with("(see --help)"),
            "{err}"
        );
    }
    let missing = stderr_line(&mydata(&["counter", "add-office", "--id", "o1"]));
    assert!(
        missing.contains("--agency"),
        "names what is missing: {missing}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_child, url) = start_on("demo", "localhost:0", dir.path(), &[]).await;
    assert!(url.starts_with("http://"), "{url}");
    assert_eq!(
        reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A demo whose server stops while starting (a TLS certificate it cannot read) names that cause,
/// not a health check that timed out; and an `http_proxy` in the environment does not stand
/// between the demo and its own loopback health check.
#[tokio::test]
async fn a_demo_that_cannot_start_says_why_and_a_proxy_is_not_asked() {
    let dir = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("MYDATA_CONFIG")
        .env("MYDATA_TLS__CERT", "/nonexistent/cert.pem")
        .env("MYDATA_TLS__KEY", "/nonexistent/key.pem")
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("/nonexistent/") && !last.contains("healthz"),
        "{err}"
    );
    // A proxy nobody answers at: the demo still finds itself ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_child, url) = start(
        "demo",
        dir.path(),
        &[
            ("http_proxy", &proxy),
            ("HTTP_PROXY", &proxy),
            ("NO_PROXY", ""),
        ],
    )
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
}

/// An operator command pointed at a folder with no platform in it (a mistyped `--data-dir`) says
/// so in one line and creates nothing there: no keys, no empty database to report on or change.
#[test]
fn operator_commands_refuse_a_data_dir_without_a_platform() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("mydta");
    let typo_s = typo.to_str().unwrap();
    for args in [
        vec!["counter", "list", "--data-dir", typo_s],
        vec![
            "counter",
            "add-counter",
            "--office",
            "o1",
            "--id",
            "c1",
            "--data-dir",
            typo_s,
        ],
        vec!["audit", "verify", "--data-dir", typo_s],
        vec![
            "audit",
            "export",
            "--agency",
            "moi",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-30",
            "--format",
            "csv",
            "--data-dir",
            typo_s,
        ],
    ] {
        let o = mydata(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr_line(&o);
        // (audit verify first asks for the platform key it would check against)
        assert!(
            (err.contains("no mydata database") || err.contains("no platform key"))
                && err.contains("mydta"),
            "{args:?}: {err}"
        );
        assert!(!typo.exists(), "{args:?} created {typo_s}");
    }
}

#[test]
fn counter_registration_of_offices_counters_and_clerks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The operator commands work on an existing platform; `migrate` creates one.
    assert!(mydata(&["migrate", "--data-dir", data]).status.success());
    let run = |args: &[&str], password: Option<&str>| {
        let mut c = Command::new(BIN);
        c.arg("counter")
            .args(args)
            .args(["--data-dir", data])
            .env_remove("MYDATA_CONFIG");
        match password {
            Some(p) => c.env("MYDATA_CLERK_PASSWORD", p),
            None => c.env_remove("MYDATA_CLERK_PASSWORD"),
        };
        c.stdin(Stdio::null()).output().unwrap()
    };
    // An online-only or unknown service is refused with one line naming it.
    let o = run(
        &[
            "add-office",
            "--id",
            "o1",
            "--agency",
            "a",
            "--name-zh",
            "一",
            "--name-en",
            "One",
            "--service",
            "no-such",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("no-such"));
    let o = run(
        &[
            "add-office",
            "--id",
            "o1",
            "--agency",
            "a",
            "--name-zh",
            "一",
            "--name-en",
            "One",
            "--service",
            "chiayi-emergency-relief",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["add-counter", "--office", "nowhere", "--id", "c1"], None);
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("nowhere"));
    let o = run(
        &[
            "add-counter",
            "--office",
            "o1",
            "--id",
            "c1",
            "--name",
            "1 號櫃檯",
        ],
        None,
    );
    assert!(o.status.success());
    // A short password is refused; a good one prints the TOTP secret once.
    let o = run(
        &["add-clerk", "--office", "o1", "--username", "lin"],
        Some("short"),
    );
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("password"));
    let o = run(
        &[
            "add-clerk",
            "--office",
            "o1",
            "--username",
            "lin",
            "--role",
            "supervisor",
        ],
        Some("a long enough password"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("otpauth://totp/MyData:lin?secret="), "{out}");
    let o = run(
        &["add-clerk", "--office", "o1", "--username", "lin"],
        Some("a long enough password"),
    );
    assert!(!o.status.success());
    assert!(stderr_line(&o).contains("taken"));
    let o = run(&["list"], None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("o1\ta\t一\tchiayi-emergency-relief"), "{out}");
    assert!(out.contains("  c1\t1 號櫃檯"), "{out}");
}
