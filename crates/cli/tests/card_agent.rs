//! `mydata demo` writes the test cards; `mydata card-agent` serves one of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mydata");

/// Starts the binary with `args`, waits for the URL line on stdout.
async fn start(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("MYDATA_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("no URL printed in time")
        .unwrap()
        .unwrap();
    (child, url)
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn card_agent_has_help_and_fails_in_one_line() {
    let o = Command::new(BIN)
        .args(["card-agent", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in ["--card", "--listen", "--allow-origin", "--state"] {
        assert!(help.contains(flag), "{flag} missing: {help}");
    }
    let top = String::from_utf8_lossy(&Command::new(BIN).arg("--help").output().unwrap().stdout)
        .to_string();
    assert!(top.contains("card-agent"));

    let o = Command::new(BIN)
        .args(["card-agent", "--card", "/nonexistent/x.p12"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/x.p12"), "{err}");
    let o = Command::new(BIN)
        .args(["card-agent", "--card", "x.p12", "--listen", "0.0.0.0:61161"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback only"));
}

#[tokio::test]
async fn demo_writes_a_card_per_person_and_company_and_the_agent_serves_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (demo, _) = start(&["demo", "--listen", "127.0.0.1:0", "--data-dir", data]).await;
    stop(demo).await;

    let cards = Path::new(data).join("demo/cards");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cards.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["pin"], "123456");
    let list = index["cards"].as_array().unwrap();
    let kinds = |k: &str| {
        list.iter()
            .filter(|c| c["kind"] == k && c["status"] == "valid")
            .count()
    };
    assert!(kinds("citizen") >= 200, "a card per synthetic person");
    assert_eq!(kinds("business"), 24, "a card per synthetic company");
    for status in ["revoked", "expired"] {
        assert!(
            list.iter().any(|c| c["status"] == status),
            "a {status} card for negative tests"
        );
    }
    assert!(cards.join("ca/root.pem").is_file() && cards.join("ca/moica.crl.pem").is_file());
    let person = list.iter().find(|c| c["kind"] == "citizen").unwrap();
    let serial = person["serial_number"].as_str().unwrap();
    let card = cards.join(format!("{serial}.p12"));
    assert!(card.is_file());

    let (agent, url) = start(&[
        "card-agent",
        "--card",
        card.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--allow-origin",
        "http://127.0.0.1:8080",
    ])
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let info: serde_json::Value = reqwest::get(format!("{url}/v1/card"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["serial_number"], serial);
    assert_eq!(info["subject"], person["subject"]);
    assert_eq!(info["pin_tries_left"], 3);
    stop(agent).await;
}
