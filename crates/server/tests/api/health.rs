//! Liveness, readiness and shutdown.

use crate::helpers::{Backend, TestApp, assert_problem};

async fn ready_then_unready_when_database_is_gone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let expected = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(body["database"], expected);

    match backend {
        Backend::Sqlite => {
            std::fs::remove_file(app.db.dir.as_ref().unwrap().path().join("mydata.db")).unwrap()
        }
        Backend::Postgres => mydata_store::testing::drop_postgres_database(&app.db.url)
            .await
            .unwrap(),
    }
    assert_problem(app.get("/readyz").await, 503, "database_unavailable").await;
    if backend == Backend::Postgres {
        // Any request that needs the database says the same, and when to try again (an open
        // SQLite file still reads after its name is removed, so only PostgreSQL shows it here).
        let res = app.get("/api/v1/audit/tree-heads/1").await;
        assert_eq!(
            res.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"60"[..])
        );
        assert_problem(res, 503, "database_unavailable").await;
    }
    // Liveness does not depend on the database: the process itself is fine.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn readyz_fails_when_sqlite_database_is_gone() {
    ready_then_unready_when_database_is_gone(Backend::Sqlite).await;
}

#[tokio::test]
async fn readyz_fails_when_postgres_database_is_gone() {
    ready_then_unready_when_database_is_gone(Backend::Postgres).await;
}

#[tokio::test]
async fn server_stops_cleanly_and_releases_its_port() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "still listening after stop"
    );
}

const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// The operator's monitoring scrapes `/metrics` with its own token: a transfer whose agency fetch
/// waits in the queue shows as a live transfer and as queue lag that grows with the clock. No
/// token, or another, is refused; without `ops.metrics_token` there is no `/metrics`.
async fn metrics_show_the_queues_and_live_transfers(backend: Backend) {
    let keys = tempfile::tempdir().unwrap();
    let previous_key = keys.path().join("previous-data.key");
    std::fs::write(&previous_key, hex::encode([6u8; 32])).unwrap();
    let app = TestApp::spawn_with(backend, |s| {
        s.jobs.enabled = false;
        s.ops.metrics_token = METRICS_TOKEN.into();
        s.keys.previous_data_keys = vec![previous_key];
    })
    .await;
    let scrape = |token: &str| {
        app.client
            .get(app.url("/metrics"))
            .bearer_auth(token)
            .send()
    };
    assert_problem(app.get("/metrics").await, 401, "metrics_unauthorized").await;
    assert_problem(
        scrape("metrics-token-0123456780").await.unwrap(),
        401,
        "metrics_unauthorized",
    )
    .await;

    let now = mydata_core::Clock::now(&app.clock);
    let job = mydata_store::NewJob {
        id: mydata_store::new_job_id(),
        queue: mydata_server::agencies::FETCH_QUEUE.into(),
        payload: serde_json::json!({}),
        run_at: now,
        max_attempts: 3,
        dedup_key: None,
    };
    app.state
        .store()
        .start_transfer(
            &mydata_store::NewTransfer {
                id: "t-metrics".into(),
                kind: mydata_core::transfer::TransferKind::SelfDownload,
                subject: "subject-p1".into(),
                recipient: None,
                purpose: "self".into(),
                datasets: vec!["low-income-household".into()],
            },
            "sealed",
            mydata_store::StartJobs::queued(std::slice::from_ref(&job)),
            None,
            "subject-p1",
            now,
        )
        .await
        .unwrap();
    app.clock.advance(std::time::Duration::from_secs(90));
    let res = scrape(METRICS_TOKEN).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        res.headers()
    );
    let text = res.text().await.unwrap();
    for sample in [
        "mydata_jobs{queue=\"agency-fetch\",state=\"queued\"} 1\n",
        "mydata_jobs{queue=\"agency-fetch\",state=\"running\"} 0\n",
        "mydata_job_queue_lag_seconds{queue=\"agency-fetch\"} 90\n",
        "mydata_job_queue_lag_seconds{queue=\"package-assemble\"} 0\n",
        "mydata_transfers_live{kind=\"self_download\",state=\"fetching\"} 1\n",
        "mydata_audit_backlog_events 2\n",
    ] {
        assert!(text.contains(sample), "{sample} in:\n{text}");
    }
    // Nothing of the person's: no subject, no transfer ID.
    assert!(
        !text.contains("subject-p1") && !text.contains("t-metrics"),
        "{text}"
    );
    // This process's keys (the data key listed as previous too) and the database's record.
    let kid = app.state.platform().kid();
    let data = &app.state.data().vault.check_value()[..12];
    let previous = mydata_server::vault::Vault::from_key(&[6; 32]);
    let previous = &previous.check_value()[..12];
    for sample in [
        format!(
            "mydata_key_info{{key=\"platform_signing_key\",role=\"current\",check=\"{kid}\"}} 1\n"
        ),
        format!("mydata_key_info{{key=\"data_key\",role=\"current\",check=\"{data}\"}} 1\n"),
        format!("mydata_key_info{{key=\"data_key\",role=\"previous\",check=\"{previous}\"}} 1\n"),
        format!("mydata_key_recorded{{key=\"platform_signing_key\",check=\"{kid}\"}} 1\n"),
        format!("mydata_key_recorded{{key=\"data_key\",check=\"{data}\"}} 1\n"),
    ] {
        assert!(text.contains(&sample), "{sample} in:\n{text}");
    }
    assert!(
        !text.contains(app.state.data().vault.check_value()),
        "check values shown whole"
    );
}

#[tokio::test]
async fn metrics_show_the_queues_and_live_transfers_sqlite() {
    metrics_show_the_queues_and_live_transfers(Backend::Sqlite).await;
}

#[tokio::test]
async fn metrics_show_the_queues_and_live_transfers_postgres() {
    metrics_show_the_queues_and_live_transfers(Backend::Postgres).await;
}

#[tokio::test]
async fn there_is_no_metrics_without_a_metrics_token() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    assert_problem(app.get("/metrics").await, 404, "not_found").await;
}
