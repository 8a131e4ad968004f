//! Bad input of every kind gets a problem+json answer with a stable code, and changes nothing.

use crate::helpers::{Backend, TestApp, assert_problem};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn too_large_body_is_413_with_or_without_content_length() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.http.body_limit_bytes = 1024).await;
    let big = format!("{{\"datasets\": [\"{}\"]}}", "a".repeat(4096));
    let res = app
        .client
        .post(app.url("/api/v1/selection"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let b = assert_problem(res, 413, "payload_too_large").await;
    assert!(
        b["detail"].as_str().unwrap().contains("1024"),
        "names the limit: {b}"
    );

    // Streamed without a length: refused while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(256).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let res = app
        .client
        .post(app.url("/api/v1/selection"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let b = assert_problem(res, 413, "payload_too_large").await;
    assert!(
        b["detail"].as_str().unwrap().contains("1024-byte limit"),
        "names the limit: {b}"
    );

    // Within the limit the same endpoint works.
    let ok = app
        .post_json(
            "/api/v1/selection",
            &serde_json::json!({"datasets": ["low-income-household"]}),
        )
        .await;
    assert_eq!(ok.status(), 200);
}

/// A refusal made before an OAuth endpoint's handler (body limit, method) is RFC 6749 JSON as the
/// endpoint's own errors are (the records exports authenticate as the token endpoint does), and the sign-in pages' script endpoints answer problem+json, not a
/// page: a service's client and the page's script can read what went wrong.
#[tokio::test]
async fn oauth_and_script_endpoints_answer_layer_refusals_in_their_own_shape() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.http.body_limit_bytes = 1024).await;
    let big = format!("client_id=x&client_assertion={}", "a".repeat(4096));
    let oauth_error = |res: reqwest::Response, status: u16| async move {
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(res.headers()["content-type"], "application/json");
        assert_eq!(res.headers()["cache-control"], "no-store");
        let b: serde_json::Value = res.json().await.unwrap();
        assert_eq!(b["error"], "invalid_request", "{b}");
        b["error_description"].as_str().unwrap().to_owned()
    };
    for path in [
        "/oauth/par",
        "/oauth/token",
        "/api/v1/records/service",
        "/api/v1/records/agency",
    ] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let d = oauth_error(res, 413).await;
        assert!(d.contains("1024"), "names the limit: {d}");
        // Streamed without a length: refused while reading, the same way.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            big.as_bytes().chunks(256).map(|c| Ok(c.to_vec())).collect();
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        let d = oauth_error(res, 413).await;
        assert!(d.contains("1024"), "names the limit: {d}");
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.headers()["allow"], "POST");
        oauth_error(res, 405).await;
    }
    for path in [
        "/login/tw_fido/options",
        "/account/passkeys/options",
        "/login/moica_cert/challenge",
    ] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(format!("{{\"x\": \"{}\"}}", "a".repeat(4096)))
            .send()
            .await
            .unwrap();
        assert_problem(res, 413, "payload_too_large").await;
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_problem(res, 405, "method_not_allowed").await;
    }
}

/// A path segment that does not decode (bytes that are not UTF-8) is 400 `invalid_parameter` in
/// the platform's shape: problem+json for the API, the error page for the web, a long segment not
/// repeated. axum's plain-text refusal had come out as 422 `invalid_body` for a request without one.
#[tokio::test]
async fn a_path_segment_that_does_not_decode_is_an_invalid_parameter() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let long = format!("%FF{}", "a".repeat(5000));
    for path in [
        "/api/v1/datasets/%FF".to_owned(),
        "/api/v1/services/%C3%28".to_owned(),
        format!("/api/v1/datasets/{long}"),
        "/api/v1/admin/services/%FF".to_owned(),
    ] {
        let b = assert_problem(app.get(&path).await, 400, "invalid_parameter").await;
        assert!(b["detail"].as_str().unwrap().len() < 300, "{b}");
    }
    for path in [
        "/download/t/%FF",
        "/oauth/consent/%FF",
        "/clerk/passwords/%FF",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 400, "{path}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let html = res.text().await.unwrap();
        assert!(
            html.contains("<code>invalid_parameter</code> (400)"),
            "{path}: {html}"
        );
    }
}

/// An unknown query parameter is named back cut short, with the parameters the endpoint takes.
#[tokio::test]
async fn an_unknown_query_parameter_is_not_repeated_whole() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let long = "q".repeat(5000);
    let b = assert_problem(
        app.get(&format!("/api/v1/datasets?{long}=1")).await,
        400,
        "invalid_query",
    )
    .await;
    let detail = b["detail"].as_str().unwrap();
    assert!(detail.len() < 400, "{detail}");
    assert!(
        detail.contains(&"q".repeat(40)) && detail.contains("expected"),
        "{detail}"
    );
}

#[tokio::test]
async fn wrong_content_type_malformed_and_unexpected_json_are_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let url = app.url("/api/v1/selection");
    let res = app
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body(r#"{"datasets":["low-income-household"]}"#)
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "unsupported_media_type").await;
    let res = app
        .client
        .post(&url)
        .body(r#"{"datasets":["low-income-household"]}"#)
        .send()
        .await
        .unwrap();
    assert_problem(res, 415, "unsupported_media_type").await;

    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"datasets\": [")
        .send()
        .await
        .unwrap();
    let b = assert_problem(res, 400, "malformed_json").await;
    assert!(b["detail"].as_str().unwrap().contains("line 1"), "{b}");

    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"datasets": "all"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "invalid_body").await;
    let res = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"datasets": [], "extra": 1}"#)
        .send()
        .await
        .unwrap();
    let b = assert_problem(res, 422, "invalid_body").await;
    assert!(b["detail"].as_str().unwrap().contains("extra"), "{b}");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problems_on_the_api() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    assert_problem(
        app.get("/api/v1/nothing-here").await,
        404,
        "route_not_found",
    )
    .await;
    let res = app
        .client
        .delete(app.url("/api/v1/datasets"))
        .send()
        .await
        .unwrap();
    let allow = res
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_problem(res, 405, "method_not_allowed").await;
    assert!(
        allow.is_some_and(|a| a.contains("GET")),
        "Allow header kept"
    );
    // Path tricks do not escape the router.
    assert_problem(
        app.get("/api/v1/datasets/..%2F..%2Fetc%2Fpasswd").await,
        404,
        "dataset_not_found",
    )
    .await;
    let res = app.get("/api/v1/../../etc/passwd").await;
    assert_eq!(res.status(), 404);
    assert!(!res.text().await.unwrap().contains("root:"));
}

#[tokio::test]
async fn bad_input_changes_nothing_in_the_store() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let before = app
        .db
        .store
        .audit_for_subject("anyone")
        .await
        .unwrap()
        .len();
    let _ = app
        .client
        .post(app.url("/api/v1/selection"))
        .header("content-type", "application/json")
        .body("nope")
        .send()
        .await
        .unwrap();
    let _ = app.get("/api/v1/datasets?format=xml").await;
    assert_eq!(
        app.db
            .store
            .audit_for_subject("anyone")
            .await
            .unwrap()
            .len(),
        before
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out_with_408() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.http.request_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Promise 100 bytes, send 10, then stall.
    let head = format!(
        "POST /api/v1/selection HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"datasets"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "server never answered the stalled request");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
}
