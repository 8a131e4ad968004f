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
