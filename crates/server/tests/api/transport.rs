//! Request IDs, security headers and TLS.

use crate::helpers::{Backend, TestApp};

#[tokio::test]
async fn every_response_has_a_request_id_and_security_headers() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for path in ["/", "/api/v1/datasets", "/api/v1/nope", "/healthz"] {
        let res = app.get(path).await;
        let h = res.headers();
        assert!(
            h.get("x-request-id").is_some_and(|v| v.len() >= 32),
            "{path}"
        );
        assert_eq!(
            h.get("x-content-type-options").unwrap(),
            "nosniff",
            "{path}"
        );
        let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
        assert!(
            h.get("strict-transport-security").is_none(),
            "no HSTS over plain HTTP"
        );
    }
    // A request ID from the load balancer is kept.
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "lb-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), "lb-1234");
}

#[tokio::test]
async fn tls_serves_https_with_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.tls = Some(mydata_server::config::TlsSettings {
            cert: cert_path.clone(),
            key: key_path.clone(),
        });
    })
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let res = app.get("/api/v1/datasets").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()
            .get("strict-transport-security")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    // Plain HTTP on the TLS port does not get data.
    let plain = reqwest::Client::new()
        .get(app.base.replace("https://", "http://") + "/api/v1/datasets")
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    app.stop().await.unwrap();
}
