//! Background work: durable jobs run by the server's workers, and the 8-hour expiry sweep.

use crate::helpers::{Backend, TestApp, eventually};
use mydata_core::transfer::{TransferKind, TransferState};
use mydata_core::{Clock, limits};
use mydata_server::background::{
    BoxFuture, ExpiryHandler, JobHandler, JobOutcome, run_due_job, schedule_sweep, sweep_expired,
};
use mydata_server::state::AppState;
use mydata_store::{Job, JobState, NewJob, NewTransfer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Fails its first run with a retry ten minutes later, then succeeds.
#[derive(Debug, Default)]
struct Flaky {
    runs: AtomicU32,
}

impl JobHandler for Flaky {
    fn queue(&self) -> &'static str {
        "test"
    }
    fn run(&self, state: AppState, _job: Job) -> BoxFuture<JobOutcome> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if n == 0 {
                JobOutcome::RetryAt {
                    at: state.clock().now().plus(Duration::from_secs(600)),
                    error: "agency not ready".into(),
                }
            } else {
                JobOutcome::Done
            }
        })
    }
}

fn fast(s: &mut mydata_server::Settings) {
    s.jobs.poll_interval_ms = 5;
}

async fn job_state(app: &TestApp, id: &str) -> JobState {
    app.db.store.job(id).await.unwrap().unwrap().state
}

#[tokio::test]
async fn a_job_is_retried_at_its_time_from_the_injected_clock_then_completes() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let handler = Arc::new(Flaky::default());
        let app = TestApp::spawn_full(backend, fast, vec![handler.clone()]).await;
        let now = app.clock.now();
        let job = NewJob {
            id: "j1".into(),
            queue: "test".into(),
            payload: serde_json::json!({}),
            run_at: now,
            max_attempts: 5,
            dedup_key: None,
        };
        app.db.store.enqueue_job(&job, now).await.unwrap();

        eventually("first run", || async {
            handler.runs.load(Ordering::SeqCst) == 1
        })
        .await;
        eventually("job requeued", || async {
            job_state(&app, "j1").await == JobState::Queued
        })
        .await;
        // Real time passes but the clock does not: no second run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
        let stored = app.db.store.job("j1").await.unwrap().unwrap();
        assert_eq!(stored.last_error.as_deref(), Some("agency not ready"));

        app.clock.advance(Duration::from_secs(601));
        eventually("job done", || async {
            job_state(&app, "j1").await == JobState::Done
        })
        .await;
        assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
        app.stop().await.unwrap();
    }
}

/// Holds each run until `release` is signalled, counting runs in flight at once.
#[derive(Debug, Default)]
struct Gate {
    running: Arc<AtomicU32>,
    most: Arc<AtomicU32>,
    release: Arc<tokio::sync::Notify>,
}

impl JobHandler for Gate {
    fn queue(&self) -> &'static str {
        "gate"
    }
    fn run(&self, _state: AppState, _job: Job) -> BoxFuture<JobOutcome> {
        let (running, most, release) = (
            self.running.clone(),
            self.most.clone(),
            self.release.clone(),
        );
        Box::pin(async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            release.notified().await;
            running.fetch_sub(1, Ordering::SeqCst);
            JobOutcome::Done
        })
    }
}

/// A server whose only job queue is `gate`, with `workers` workers and a poll so slow (ten
/// minutes) that only wake-ups start jobs, and `ids` enqueued there through this process.
async fn gated(backend: Backend, workers: u32, ids: &[String]) -> (TestApp, Arc<Gate>) {
    let handler = Arc::new(Gate::default());
    let app = TestApp::spawn_full(
        backend,
        |s| {
            s.jobs.poll_interval_ms = 600_000;
            s.jobs.concurrency = workers;
        },
        vec![handler.clone()],
    )
    .await;
    let now = app.clock.now();
    for id in ids {
        let job = NewJob {
            id: id.clone(),
            queue: "gate".into(),
            payload: serde_json::json!({}),
            run_at: now,
            max_attempts: 1,
            dedup_key: None,
        };
        assert!(
            mydata_server::background::enqueue(&app.state, &job, now)
                .await
                .unwrap()
        );
    }
    (app, handler)
}

#[tokio::test]
async fn a_job_enqueued_by_this_process_runs_at_once_on_one_of_several_workers() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let ids: Vec<String> = (0..3).map(|i| format!("g{i}")).collect();
        let (app, handler) = gated(backend, 3, &ids).await;
        // All three run at once, one per worker.
        eventually("three jobs in flight", || async {
            handler.running.load(Ordering::SeqCst) == 3
        })
        .await;
        for _ in 0..3 {
            handler.release.notify_one();
        }
        for id in &ids {
            eventually("job done", || async {
                job_state(&app, id).await == JobState::Done
            })
            .await;
        }
        assert_eq!(handler.most.load(Ordering::SeqCst), 3);
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn jobs_enqueued_while_every_worker_is_busy_all_run_without_waiting_for_the_poll() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // Six jobs for two workers: each worker must go on to the next job of its own accord.
        let ids: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
        let (app, handler) = gated(backend, 2, &ids).await;
        for finished in 1..=ids.len() {
            eventually("a job in flight", || async {
                handler.running.load(Ordering::SeqCst) >= 1
            })
            .await;
            handler.release.notify_one();
            eventually("one more job done", || async {
                let mut done = 0;
                for id in &ids {
                    if job_state(&app, id).await == JobState::Done {
                        done += 1;
                    }
                }
                done == finished
            })
            .await;
        }
        assert_eq!(handler.most.load(Ordering::SeqCst), 2);
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn transfers_are_ended_once_their_eight_hours_pass() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // The sweep is called here; the server's own periodic sweep would race it.
        let app = TestApp::spawn_with(backend, |s| s.jobs.enabled = false).await;
        let t0 = app.clock.now();
        let new = |id: &str| NewTransfer {
            id: id.into(),
            kind: TransferKind::SelfDownload,
            subject: "p".into(),
            recipient: None,
            purpose: "test".into(),
            datasets: vec!["low-income-household".into()],
        };
        app.db
            .store
            .create_transfer(&new("a"), "p", t0)
            .await
            .unwrap();
        app.clock.advance(Duration::from_secs(3600));
        app.db
            .store
            .create_transfer(&new("b"), "p", app.clock.now())
            .await
            .unwrap();

        // One millisecond before the limit nothing happens.
        app.clock
            .set(t0.plus(limits::PACKAGE_TTL).plus(Duration::ZERO));
        app.clock.set(mydata_core::Timestamp::from_millis(
            app.clock.now().millis() - 1,
        ));
        assert_eq!(sweep_expired(&app.state).await.unwrap(), 0);

        app.clock.advance(Duration::from_millis(1));
        assert_eq!(sweep_expired(&app.state).await.unwrap(), 1);
        assert_eq!(
            app.db.store.transfer("a").await.unwrap().unwrap().state,
            TransferState::Expired
        );
        assert_eq!(
            app.db.store.transfer("b").await.unwrap().unwrap().state,
            TransferState::Created
        );
        let events = app.db.store.audit_for_transfer("a").await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.actor.as_str()),
            ("transfer.expired", "system")
        );
        // A second sweep finds nothing more to do and writes nothing.
        assert_eq!(sweep_expired(&app.state).await.unwrap(), 0);
        assert_eq!(
            app.db.store.audit_for_transfer("a").await.unwrap().len(),
            events.len()
        );
        app.stop().await.unwrap();
    }
}

/// The expiry sweep is a durable job, one per period of the injected clock whichever process
/// enqueues it first: moving the clock past 8 hours makes a sweep due, and a second process in
/// the same period adds none.
#[tokio::test]
async fn the_expiry_sweep_is_one_durable_job_per_period() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn_with(backend, |s| {
            s.jobs.enabled = false;
            s.jobs.sweep_interval_secs = 3600;
        })
        .await;
        let t = NewTransfer {
            id: "x".into(),
            kind: TransferKind::SelfDownload,
            subject: "p".into(),
            recipient: None,
            purpose: "test".into(),
            datasets: vec!["low-income-household".into()],
        };
        let state = &app.state;
        app.db
            .store
            .create_transfer(&t, "p", app.clock.now())
            .await
            .unwrap();
        let run = || run_due_job(state, &ExpiryHandler, "w");
        // Nothing due yet: the period's sweep runs and leaves the transfer alone.
        assert!(schedule_sweep(state).await.unwrap());
        assert!(run().await.unwrap());
        assert!(!run().await.unwrap(), "one job per period");
        app.clock.advance(limits::PACKAGE_TTL);
        assert_eq!(
            app.db.store.transfer("x").await.unwrap().unwrap().state,
            TransferState::Created
        );
        // Eight hours later: a new period, one sweep whoever schedules it, the transfer ended.
        assert!(schedule_sweep(state).await.unwrap());
        assert!(!schedule_sweep(state).await.unwrap(), "another process");
        assert!(run().await.unwrap());
        assert!(!run().await.unwrap());
        assert_eq!(
            app.db.store.transfer("x").await.unwrap().unwrap().state,
            TransferState::Expired
        );
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_running_sweep_expires_transfers_without_being_called() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.jobs.sweep_interval_secs = 1).await;
    let t0 = app.clock.now();
    let t = NewTransfer {
        id: "x".into(),
        kind: TransferKind::Counter,
        subject: "p".into(),
        recipient: Some("counter-1".into()),
        purpose: "test".into(),
        datasets: vec!["household-register-personal".into()],
    };
    app.db.store.create_transfer(&t, "p", t0).await.unwrap();
    app.clock.advance(limits::PACKAGE_TTL);
    eventually("sweep ran", || async {
        app.db.store.transfer("x").await.unwrap().unwrap().state == TransferState::Expired
    })
    .await;
}

#[tokio::test]
async fn disabled_jobs_start_no_tasks_and_shutdown_is_prompt() {
    let handler = Arc::new(Flaky::default());
    let app = TestApp::spawn_full(
        Backend::Sqlite,
        |s| s.jobs.enabled = false,
        vec![handler.clone()],
    )
    .await;
    let now = app.clock.now();
    let job = NewJob {
        id: "j".into(),
        queue: "test".into(),
        payload: serde_json::json!({}),
        run_at: now,
        max_attempts: 1,
        dedup_key: None,
    };
    app.db.store.enqueue_job(&job, now).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        0,
        "an API-only process runs no jobs"
    );
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_running_server_integrates_audit_events_into_tree_heads() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.jobs.audit_interval_secs = 1).await;
    let t = NewTransfer {
        id: "logged".into(),
        kind: TransferKind::SelfDownload,
        subject: "p".into(),
        recipient: None,
        purpose: "test".into(),
        datasets: vec!["household-register-personal".into()],
    };
    app.db
        .store
        .create_transfer(&t, "p", app.clock.now())
        .await
        .unwrap();
    eventually("tree head recorded and signed", || async {
        let head = app.db.store.latest_tree_head().await.unwrap();
        head.is_some_and(|h| h.tree_size >= 1 && h.signature.is_some())
    })
    .await;
    assert!(
        app.db
            .store
            .verify_audit_log()
            .await
            .unwrap()
            .problems
            .is_empty()
    );

    // Anyone can check the published head with the published key.
    let (s, jwks) = app.get_json("/.well-known/mydata/jwks.json").await;
    assert_eq!(s, 200);
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["alg"].as_str()),
        (Some("EC"), Some("ES256"))
    );
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let mut sec1 = vec![4u8];
    sec1.extend(b64(&jwk["x"]));
    sec1.extend(b64(&jwk["y"]));
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    assert_eq!(
        mydata_package::jwk_thumbprint(&key),
        jwk["kid"].as_str().unwrap()
    );
    let (s, head) = app.get_json("/api/v1/audit/tree-head").await;
    assert_eq!(s, 200, "{head}");
    let sig = head["signature"].as_str().unwrap();
    let payload = mydata_package::verify_platform_jws(sig.as_bytes(), &key).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["tree_size"], head["tree_size"]);
    assert_eq!(payload["root_hash"], head["root_hash"]);
}

#[tokio::test]
async fn the_platform_key_is_created_once_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.data_dir = data_dir.clone()).await;
    let (_, first) = app.get_json("/.well-known/mydata/jwks.json").await;
    app.stop().await.unwrap();
    let key_file = dir.path().join("keys/platform-signing.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let data_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.data_dir = data_dir.clone()).await;
    let (_, second) = app.get_json("/.well-known/mydata/jwks.json").await;
    assert_eq!(
        first["keys"][0]["kid"], second["keys"][0]["kid"],
        "same key after restart"
    );
    app.stop().await.unwrap();

    std::fs::write(&key_file, "not a key").unwrap();
    let mut settings = mydata_server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    settings.database.url = format!("sqlite://{}/x.db", dir.path().display());
    let clock = std::sync::Arc::new(mydata_core::SystemClock);
    let err = mydata_server::Server::bind(settings, clock)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("platform-signing.pem"),
        "{err:#}"
    );
}

/// Two processes on one database whose data folders hold different keys (each created its own):
/// the second refuses to start, naming the key, instead of recording the same person under a
/// second pseudonym, sealing fetches and `login_hint`s the first cannot open, or signing receipts
/// with a key the first does not publish. With the first's key files it starts.
#[tokio::test]
async fn a_process_with_other_keys_than_the_database_refuses_to_start() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let settings = |dir: &std::path::Path| {
        let mut s = mydata_server::Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        s.database.url = format!("sqlite://{}/x.db", first.path().display());
        s
    };
    let clock = std::sync::Arc::new(mydata_core::SystemClock);
    let bind = |s| mydata_server::Server::bind(s, clock.clone());
    let a = settings(first.path());
    bind(a.clone()).await.unwrap();
    let b = settings(second.path());
    let err = bind(b.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("keys.pseudonym_key"), "{err:#}");
    std::fs::copy(a.pseudonym_key_path(), b.pseudonym_key_path()).unwrap();
    let err = bind(b.clone()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("keys.identity_hash_key"),
        "{err:#}"
    );
    std::fs::copy(a.identity_hash_key_path(), b.identity_hash_key_path()).unwrap();
    let err = bind(b.clone()).await.unwrap_err();
    assert!(format!("{err:#}").contains("keys.data_key"), "{err:#}");
    std::fs::copy(a.data_key_path(), b.data_key_path()).unwrap();
    let err = bind(b.clone()).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("keys.platform_signing_key"),
        "{err:#}"
    );
    std::fs::copy(a.platform_key_path(), b.platform_key_path()).unwrap();
    bind(b).await.unwrap();
}

#[tokio::test]
async fn no_signed_head_yet_is_a_clear_404() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.jobs.enabled = false).await;
    let res = app.get("/api/v1/audit/tree-head").await;
    crate::helpers::assert_problem(res, 404, "not_found").await;
}
