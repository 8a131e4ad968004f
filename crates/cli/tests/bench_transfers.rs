//! `mydata bench transfers` against a real `mydata demo`: a few complete online transfers (PAR,
//! consent and confirmation through the pages, agency fetch, package, token, retrieval, the
//! package checks) succeed and are reported, so the benchmark cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mydata");
const ADMIN: &str = "bench-admin-token-0123456789";

#[tokio::test]
async fn the_transfer_benchmark_runs_complete_transfers_against_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut demo = tokio::process::Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env_remove("MYDATA_CONFIG")
        .env("MYDATA_OAUTH__ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The agencies' address is on stderr, the platform's on stdout once it is ready.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut err = BufReader::new(demo.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = err.next_line().await {
            if let Some(rest) = line.split("simulated agencies at ").nth(1)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let mut out = BufReader::new(demo.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(120), out.next_line())
        .await
        .expect("the demo printed its URL in time")
        .unwrap()
        .unwrap();
    let agencies = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .unwrap()
        .unwrap();

    let cards = dir.path().join("demo/cards");
    let platform = format!("platform={}", demo.id().unwrap());
    let run = tokio::process::Command::new(BIN)
        .args([
            "bench",
            "transfers",
            "--url",
            &base,
            "--cards",
            cards.to_str().unwrap(),
            "--concurrency",
            "2",
            "--seconds",
            "30",
            "--max-transfers",
            "4",
            "--no-warmup",
            "--verify-with",
            &agencies,
            "--cpu-of",
            &platform,
        ])
        .env("MYDATA_OAUTH__ADMIN_TOKEN", ADMIN)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the bench finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("transfers    4 complete, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("transfers/s") && stdout.contains("p99"),
        "{stdout}"
    );
    assert!(stdout.contains("package verification"), "{stdout}");
    // What each process spent per transfer: the bench client itself and the platform it was
    // pointed at (this is Linux; elsewhere the line is left out).
    if cfg!(target_os = "linux") {
        let cpu = stdout
            .lines()
            .find(|l| l.starts_with("cpu per transfer"))
            .unwrap_or_else(|| panic!("no CPU line in {stdout}"));
        assert!(
            cpu.contains("bench client ") && cpu.contains(", platform "),
            "{cpu}"
        );
    }

    // A wrong admin token is refused with a one-line reason, before anything is measured.
    let out = tokio::process::Command::new(BIN)
        .args(["bench", "transfers", "--url", &base, "--cards"])
        .arg(&cards)
        .env("MYDATA_OAUTH__ADMIN_TOKEN", "wrong-token-0123456789")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin API refused the bench service"),
        "{stderr}"
    );
}
