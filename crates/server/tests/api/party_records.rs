//! The record export for services and agencies over HTTP: each authenticates (client assertion;
//! agency-key token chaining to the agency root) and gets its own records only, in pages, over a
//! bounded range; bad, replayed and expired credentials and wrong bodies are refused.

use crate::fetch::DataApp;
use crate::helpers::Backend;
use mydata_core::Clock;
use mydata_core::transfer::TransferKind;
use mydata_sdk::{Keys, Service, ServiceConfig};
use mydata_server::oauth::clients::Registration;
use mydata_store::NewTransfer;
use std::collections::HashSet;
use std::sync::Arc;

const A: &str = "service-a";
const B: &str = "service-b";
const PERSONAL: &str = "household-register-personal";
const LOW_INCOME: &str = "low-income-household";
const FROM: &str = "2026-09-01T00:00:00Z";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn registration(client_id: &str, keys: &Keys) -> Registration {
    Registration {
        client_id: client_id.into(),
        name: client_id.into(),
        jwks: Some(keys.public_jwks()),
        jwks_uri: None,
        redirect_uris: vec!["http://127.0.0.1:9/cb".into()],
        terms: "terms".into(),
        purpose: "purpose".into(),
        datasets: vec![PERSONAL.into(), LOW_INCOME.into()],
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: false,
        dpop_bound_access_tokens: false,
    }
}

struct World {
    app: DataApp,
    keys_a: Service,
    keys_b: Service,
    http: reqwest::Client,
}

impl World {
    /// The `records.exported` events: every export is on the record.
    async fn exports(&self) -> Vec<mydata_store::AuditEvent> {
        self.app
            .store()
            .audit_events_after(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "records.exported")
            .collect()
    }

    fn now_secs(&self) -> i64 {
        self.app.clock.now().millis() / 1000
    }

    /// A client assertion signed by `keys` with these claims over the defaults.
    fn assertion(&self, keys: &Service, client: &str, tweak: serde_json::Value) -> String {
        let now = self.now_secs();
        let mut claims = serde_json::json!({
            "iss": client, "sub": client, "aud": self.app.base,
            "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
        });
        for (k, v) in tweak.as_object().unwrap() {
            claims[k] = v.clone();
        }
        keys.sign(&claims).unwrap()
    }

    fn service_form(&self, assertion: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut f = vec![
            ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
            ("client_assertion".to_owned(), assertion.to_owned()),
            ("from".to_owned(), FROM.to_owned()),
        ];
        f.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        f
    }

    async fn post(&self, path: &str, form: &[(String, String)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.app.base))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn service(
        &self,
        keys: &Service,
        client: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let a = self.assertion(keys, client, serde_json::json!({}));
        self.post("/api/v1/records/service", &self.service_form(&a, extra))
            .await
    }

    fn agency_token(
        &self,
        signer: &mydata_package::AgencySigner,
        tweak: serde_json::Value,
    ) -> String {
        let now = self.now_secs();
        let mut claims = serde_json::json!({
            "iss": signer.agency_id(), "aud": format!("{}/api/v1/records/agency", self.app.base),
            "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
        });
        for (k, v) in tweak.as_object().unwrap() {
            claims[k] = v.clone();
        }
        signer.sign_token(&claims)
    }

    async fn agency(&self, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut f = vec![
            ("agency_assertion".to_owned(), token.to_owned()),
            ("from".to_owned(), FROM.to_owned()),
        ];
        f.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.post("/api/v1/records/agency", &f).await
    }

    async fn transfer(
        &self,
        kind: TransferKind,
        recipient: Option<&str>,
        datasets: &[&str],
    ) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        self.app
            .store()
            .create_transfer(
                &NewTransfer {
                    id: id.clone(),
                    kind,
                    subject: "platform-pseudonym-of-someone".into(),
                    recipient: recipient.map(str::to_owned),
                    purpose: "審核".into(),
                    datasets: datasets.iter().map(|d| (*d).to_owned()).collect(),
                },
                "platform-pseudonym-of-someone",
                self.app.clock.now(),
            )
            .await
            .unwrap();
        self.app.clock.advance(std::time::Duration::from_secs(1));
        id
    }
}

async fn refused(res: reqwest::Response, status: u16, error: &str) -> String {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
    body["error_description"].as_str().unwrap().to_owned()
}

fn ids(body: &serde_json::Value) -> HashSet<String> {
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["transfer_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A platform on SQLite with services A and B registered.
async fn world() -> World {
    let (keys_a, keys_b) = (Keys::generate(), Keys::generate());
    let regs = vec![registration(A, &keys_a), registration(B, &keys_b)];
    let app = DataApp::spawn(Backend::Sqlite, 1.0, move |s| s.oauth.clients = regs).await;
    let sdk = |client: &str, keys: Keys| {
        let config = ServiceConfig::new(&app.base, client, "http://127.0.0.1:9/cb", keys)
            .unwrap()
            .with_clock(Arc::new(app.clock.clone()));
        Service::discover(config)
    };
    let keys_a = sdk(A, keys_a).await.unwrap();
    let keys_b = sdk(B, keys_b).await.unwrap();
    World {
        app,
        keys_a,
        keys_b,
        http: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn services_and_agencies_export_only_their_own_records() {
    let w = world().await;
    let a1 = w.transfer(TransferKind::Online, Some(A), &[PERSONAL]).await;
    let a2 = w
        .transfer(TransferKind::Online, Some(A), &[PERSONAL, LOW_INCOME])
        .await;
    let a3 = w
        .transfer(TransferKind::Online, Some(A), &[LOW_INCOME])
        .await;
    let b1 = w.transfer(TransferKind::Online, Some(B), &[PERSONAL]).await;
    let own = w
        .transfer(TransferKind::SelfDownload, None, &[LOW_INCOME])
        .await;

    // Service A: its three transfers (four dataset rows), nobody else's, no platform pseudonym.
    let res = w.service(&w.keys_a, A, &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["service"], A);
    assert_eq!(
        ids(&body),
        HashSet::from([a1.clone(), a2.clone(), a3.clone()])
    );
    assert_eq!(body["records"].as_array().unwrap().len(), 4);
    assert!(body["next_cursor"].is_null());
    assert!(!body.to_string().contains("platform-pseudonym"));
    let subject_a = body["records"][0]["subject"].as_str().unwrap().to_owned();
    // Service B: only its own.
    let body: serde_json::Value = w.service(&w.keys_b, B, &[]).await.json().await.unwrap();
    assert_eq!(ids(&body), HashSet::from([b1.clone()]));
    assert_ne!(
        body["records"][0]["subject"],
        subject_a.as_str(),
        "pseudonyms are per party"
    );

    // Pages of one row, followed by cursor to the end (bounded), in creation order; CSV too.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut extra = vec![("limit", "1"), ("format", "csv")];
        if let Some(c) = &cursor {
            extra.push(("cursor", c.as_str()));
        }
        let res = w.service(&w.keys_a, A, &extra).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
        cursor = res
            .headers()
            .get("mydata-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = res.text().await.unwrap();
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("transfer_id,created_at,flow")
        );
        seen.extend(lines.map(|l| l.split(',').next().unwrap().to_owned()));
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "paging did not end");
    assert_eq!(seen, [a1.clone(), a2.clone(), a2.clone(), a3.clone()]);

    // The time range narrows the rows; a range past a year, an empty one, no `from`: refused.
    let body: serde_json::Value = w
        .service(&w.keys_a, A, &[("to", "2026-09-01T00:00:01Z")])
        .await
        .json()
        .await
        .unwrap();
    assert!(body["records"].as_array().unwrap().is_empty());
    let huge = w
        .service(&w.keys_a, A, &[("to", "2030-01-01T00:00:00Z")])
        .await;
    assert!(
        refused(huge, 400, "invalid_request")
            .await
            .contains("366 days")
    );
    let empty = w.service(&w.keys_a, A, &[("to", FROM)]).await;
    refused(empty, 400, "invalid_request").await;
    for (k, v) in [
        ("limit", "100000"),
        ("limit", "0"),
        ("format", "xml"),
        ("cursor", "garbage!"),
        ("from", "yesterday"),
        ("scope", "all"),
    ] {
        let res = w.service(&w.keys_a, A, &[(k, v)]).await;
        refused(res, 400, "invalid_request").await;
    }

    // Credentials: replayed, expired, too long-lived, another service's key, no assertion.
    let once = w.assertion(&w.keys_a, A, serde_json::json!({}));
    assert_eq!(
        w.post("/api/v1/records/service", &w.service_form(&once, &[]))
            .await
            .status(),
        200
    );
    let again = w
        .post("/api/v1/records/service", &w.service_form(&once, &[]))
        .await;
    assert!(
        refused(again, 401, "invalid_client")
            .await
            .contains("replay")
    );
    let now = w.now_secs();
    for tweak in [
        serde_json::json!({"exp": now - 1}),
        serde_json::json!({"exp": now + 100_000}),
        serde_json::json!({"aud": "https://elsewhere.example"}),
    ] {
        let a = w.assertion(&w.keys_a, A, tweak);
        let res = w
            .post("/api/v1/records/service", &w.service_form(&a, &[]))
            .await;
        refused(res, 401, "invalid_client").await;
    }
    let forged = w.assertion(&w.keys_a, B, serde_json::json!({}));
    let res = w
        .post("/api/v1/records/service", &w.service_form(&forged, &[]))
        .await;
    refused(res, 401, "invalid_client").await;
    let res = w
        .post(
            "/api/v1/records/service",
            &[("from".to_owned(), FROM.to_owned())],
        )
        .await;
    refused(res, 401, "invalid_client").await;
    // Wrong content type: JSON instead of a form.
    let a = w.assertion(&w.keys_a, A, serde_json::json!({}));
    let res = w
        .http
        .post(format!("{}/api/v1/records/service", w.app.base))
        .json(&serde_json::json!({"client_assertion_type": JWT_BEARER, "client_assertion": a, "from": FROM}))
        .send()
        .await
        .unwrap();
    assert!(
        refused(res, 400, "invalid_request")
            .await
            .contains("x-www-form-urlencoded")
    );

    // Agencies: the fetches from them only, whatever the flow.
    let catalog = w.app.state.catalog();
    let personal_agency = catalog.dataset(PERSONAL).unwrap().agency.clone();
    let low_agency = catalog.dataset(LOW_INCOME).unwrap().agency.clone();
    assert_ne!(personal_agency, low_agency);
    let sim = &w.app.agencies.sim;
    let signer = sim.agency_signer(&low_agency).unwrap();
    let res = w
        .agency(&w.agency_token(signer, serde_json::json!({})), &[])
        .await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["agency"], low_agency.as_str());
    assert_eq!(
        ids(&body),
        HashSet::from([a2.clone(), a3.clone(), own.clone()])
    );
    assert!(
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["dataset_id"] == LOW_INCOME)
    );
    assert!(!body.to_string().contains("platform-pseudonym"));
    let other = sim.agency_signer(&personal_agency).unwrap();
    let body: serde_json::Value = w
        .agency(&w.agency_token(other, serde_json::json!({})), &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        ids(&body),
        HashSet::from([a1.clone(), a2.clone(), b1.clone()])
    );

    // Agency credentials: replayed, expired certificate, claims of another agency, expired token,
    // wrong audience, not signed at all.
    let token = w.agency_token(signer, serde_json::json!({}));
    assert_eq!(w.agency(&token, &[]).await.status(), 200);
    assert!(
        refused(w.agency(&token, &[]).await, 401, "invalid_client")
            .await
            .contains("replay")
    );
    let old = sim.expired_agency_signer(&low_agency).unwrap();
    let res = w
        .agency(&w.agency_token(old, serde_json::json!({})), &[])
        .await;
    assert!(
        refused(res, 401, "invalid_client")
            .await
            .contains("certificate")
    );
    for tweak in [
        serde_json::json!({"iss": personal_agency}),
        serde_json::json!({"exp": now - 1}),
        serde_json::json!({"aud": "https://elsewhere.example"}),
    ] {
        let res = w.agency(&w.agency_token(signer, tweak), &[]).await;
        refused(res, 401, "invalid_client").await;
    }
    let service_jwt = w.assertion(&w.keys_a, A, serde_json::json!({}));
    refused(w.agency(&service_jwt, &[]).await, 401, "invalid_client").await;

    // Every export is itself on the record, naming the party, never a person.
    let exports = w.exports().await;
    assert!(exports.iter().any(|e| e.actor == format!("service:{A}")));
    assert!(
        exports
            .iter()
            .any(|e| e.actor == format!("agency:{low_agency}"))
    );
    assert!(exports.iter().all(|e| e.subject.is_none()));
}

#[tokio::test]
async fn a_request_refused_for_its_query_leaves_the_credential_unspent() {
    let w = world().await;
    let a1 = w.transfer(TransferKind::Online, Some(A), &[PERSONAL]).await;
    // Service: the same assertion, first with a bad query, then with a good one.
    let once = w.assertion(&w.keys_a, A, serde_json::json!({}));
    for (k, v) in [
        ("format", "xml"),
        ("limit", "0"),
        ("cursor", "garbage!"),
        ("scope", "all"),
    ] {
        let res = w
            .post("/api/v1/records/service", &w.service_form(&once, &[(k, v)]))
            .await;
        refused(res, 400, "invalid_request").await;
    }
    let res = w
        .post("/api/v1/records/service", &w.service_form(&once, &[]))
        .await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(ids(&body), HashSet::from([a1]));
    // A bad credential is still refused as one, whatever the query.
    let expired = w.assertion(&w.keys_a, A, serde_json::json!({"exp": w.now_secs() - 1}));
    let res = w
        .post(
            "/api/v1/records/service",
            &w.service_form(&expired, &[("format", "xml")]),
        )
        .await;
    refused(res, 401, "invalid_client").await;

    // Agency: likewise.
    let catalog = w.app.state.catalog();
    let agency = catalog.dataset(PERSONAL).unwrap().agency.clone();
    let signer = w.app.agencies.sim.agency_signer(&agency).unwrap();
    let token = w.agency_token(signer, serde_json::json!({}));
    for (k, v) in [
        ("format", "xml"),
        ("limit", "0"),
        ("cursor", "garbage!"),
        ("scope", "all"),
    ] {
        refused(w.agency(&token, &[(k, v)]).await, 400, "invalid_request").await;
    }
    let res = w.agency(&token, &[]).await;
    assert_eq!(res.status(), 200);
    let expired = w.agency_token(signer, serde_json::json!({"exp": w.now_secs() - 1}));
    let res = w.agency(&expired, &[("format", "xml")]).await;
    refused(res, 401, "invalid_client").await;

    // Only the two answered requests are on the record.
    assert_eq!(w.exports().await.len(), 2);
}
