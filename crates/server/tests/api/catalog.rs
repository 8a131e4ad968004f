//! The public catalogue API on both databases.

use crate::helpers::{Backend, TestApp, assert_problem};

fn ids(body: &serde_json::Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn lists_all_datasets_services_agencies_and_categories() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn(backend).await;
        let (s, body) = app.get_json("/api/v1/datasets").await;
        assert_eq!(s, 200);
        assert_eq!(body["count"], 105);
        assert_eq!(body["datasets"].as_array().unwrap().len(), 105);
        let first = &body["datasets"][0];
        assert_eq!(first["no"], 1);
        assert!(
            first["agency"]["name_zh"]
                .as_str()
                .unwrap()
                .contains("戶政司")
        );
        assert!(first["identity_methods"][0]["code"].is_string());
        let (_, body) = app.get_json("/api/v1/services").await;
        assert_eq!(body["count"], 28);
        let (_, body) = app.get_json("/api/v1/agencies").await;
        let total: u64 = body["agencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["dataset_count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 105);
        let (_, body) = app.get_json("/api/v1/categories").await;
        assert!(body["count"].as_u64().unwrap() >= 10);
    }
}

#[tokio::test]
async fn filters_narrow_the_dataset_list() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, body) = app.get_json("/api/v1/datasets?agency=blf").await;
    assert_eq!(body["count"], 10);
    assert!(
        body["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["agency"]["id"] == "blf")
    );

    let (_, body) = app.get_json("/api/v1/datasets?category=tax").await;
    assert!(
        body["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["category"]["id"] == "tax")
    );
    assert!(body["count"].as_u64().unwrap() > 5);

    let (_, body) = app
        .get_json("/api/v1/datasets?identity_method=dual_id")
        .await;
    assert!(ids(&body, "datasets").contains(&"low-income-household".to_owned()));
    assert!(!ids(&body, "datasets").contains(&"household-register-personal".to_owned()));

    let (_, body) = app.get_json("/api/v1/datasets?format=csv").await;
    assert_eq!(ids(&body, "datasets"), ["land-and-real-price"]);

    // Free text over zh-TW and English names.
    let (_, zh) = app.get_json("/api/v1/datasets?q=%E4%BD%8E%E6%94%B6").await; // 低收
    assert!(ids(&zh, "datasets").contains(&"low-income-household".to_owned()));
    let (_, en) = app.get_json("/api/v1/datasets?q=Low-Income").await;
    assert!(ids(&en, "datasets").contains(&"low-income-household".to_owned()));
    let (_, both) = app
        .get_json("/api/v1/datasets?q=vehicle&agency=motc-highways")
        .await;
    assert!(ids(&both, "datasets").contains(&"vehicle-registration".to_owned()));
    let (_, none) = app.get_json("/api/v1/datasets?q=zzzz-nothing").await;
    assert_eq!(none["count"], 0);
    // An empty value means no filter.
    let (_, all) = app.get_json("/api/v1/datasets?q=&agency=").await;
    assert_eq!(all["count"], 105);
}

#[tokio::test]
async fn one_dataset_and_one_service_by_id() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, d) = app.get_json("/api/v1/datasets/low-income-household").await;
    assert_eq!(s, 200);
    assert_eq!(d["no"], 59);
    assert_eq!(d["min_level"], 4);
    let used_by = ids(&d, "used_by_services");
    assert!(
        used_by.contains(&"k12-tuition-reduction".to_owned()),
        "{used_by:?}"
    );

    let (s, svc) = app.get_json("/api/v1/services/k12-tuition-reduction").await;
    assert_eq!(s, 200);
    assert_eq!(svc["mode"], "online");
    assert_eq!(svc["datasets"][0]["id"], "low-income-household");
}

#[tokio::test]
async fn services_filter_by_mode_and_sector() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, body) = app.get_json("/api/v1/services?mode=counter").await;
    let modes: Vec<&str> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["mode"].as_str().unwrap())
        .collect();
    assert!(!modes.is_empty());
    assert!(modes.iter().all(|m| *m == "both" || *m == "counter"));
    let (_, body) = app
        .get_json("/api/v1/services?sector=education&mode=online")
        .await;
    assert!(
        body["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["sector"]["id"] == "education")
    );
    assert!(body["count"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn unknown_ids_and_filter_values_are_clear_errors() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let b = assert_problem(
        app.get("/api/v1/datasets/no-such-dataset").await,
        404,
        "dataset_not_found",
    )
    .await;
    assert!(b["detail"].as_str().unwrap().contains("no-such-dataset"));
    assert_problem(
        app.get("/api/v1/services/nope").await,
        404,
        "service_not_found",
    )
    .await;
    // A huge ID is named in the error only by its start.
    let long = "a".repeat(20_000);
    for (res, code) in [
        (
            app.get(&format!("/api/v1/datasets/{long}")).await,
            "dataset_not_found",
        ),
        (
            app.get(&format!("/api/v1/services/{long}")).await,
            "service_not_found",
        ),
        (
            app.post_json(
                "/api/v1/selection",
                &serde_json::json!({ "datasets": [long] }),
            )
            .await,
            "dataset_not_found",
        ),
    ] {
        let b = assert_problem(res, 404, code).await;
        let detail = b["detail"].as_str().unwrap();
        assert!(detail.len() <= 200, "{} characters", detail.len());
        assert!(detail.contains(&long[..40]), "{detail}");
        assert!(
            b.to_string().len() < 1000,
            "{} characters",
            b.to_string().len()
        );
    }
    // Likewise a huge filter value.
    for path in [
        "/api/v1/datasets?agency=",
        "/api/v1/datasets?category=",
        "/api/v1/datasets?identity_method=",
        "/api/v1/datasets?format=",
        "/api/v1/services?mode=",
        "/api/v1/services?sector=",
    ] {
        let res = app.get(&format!("{path}{long}")).await;
        let b = assert_problem(res, 400, "invalid_parameter").await;
        let detail = b["detail"].as_str().unwrap();
        assert!(detail.contains(&long[..40]), "{path}: {detail}");
        assert!(!detail.contains(&long[..41]), "{path}: {detail}");
    }

    for (q, param) in [
        ("format=xml", "format"),
        ("identity_method=palm", "identity_method"),
        ("category=space", "category"),
        ("agency=nasa", "agency"),
    ] {
        let b = assert_problem(
            app.get(&format!("/api/v1/datasets?{q}")).await,
            400,
            "invalid_parameter",
        )
        .await;
        assert!(
            b["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{b}"
        );
    }
    let b = assert_problem(
        app.get("/api/v1/datasets?format=xml").await,
        400,
        "invalid_parameter",
    )
    .await;
    assert!(
        b["detail"].as_str().unwrap().contains("json, csv, pdf"),
        "lists allowed values: {b}"
    );
    assert_problem(
        app.get("/api/v1/services?mode=fax").await,
        400,
        "invalid_parameter",
    )
    .await;
    assert_problem(
        app.get("/api/v1/services?sector=space").await,
        400,
        "invalid_parameter",
    )
    .await;
    let long = "x".repeat(201);
    assert_problem(
        app.get(&format!("/api/v1/datasets?q={long}")).await,
        400,
        "invalid_parameter",
    )
    .await;
    // A misspelt parameter name is refused rather than ignored.
    let b = assert_problem(
        app.get("/api/v1/datasets?catgory=tax").await,
        400,
        "invalid_query",
    )
    .await;
    assert!(b["detail"].as_str().unwrap().contains("catgory"), "{b}");
}

#[tokio::test]
async fn selection_explains_identity_choices() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let res = app.post_json("/api/v1/selection", &serde_json::json!({"datasets": ["low-income-household", "household-register-personal"]})).await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let methods: Vec<&str> = body["identity_methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["code"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["moica_cert", "tw_fido"]);
    let nhi = body["excluded_methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"]["code"] == "nhi_card")
        .unwrap();
    assert_eq!(
        nhi["excluded_by"],
        serde_json::json!(["household-register-personal"])
    );
    assert_eq!(body["required_level"], 2);

    let res = app
        .post_json(
            "/api/v1/selection",
            &serde_json::json!({"datasets": ["income-tax-income"]}),
        )
        .await;
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["ready_minutes"], 60);

    assert_problem(
        app.post_json("/api/v1/selection", &serde_json::json!({"datasets": []}))
            .await,
        422,
        "empty_selection",
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/selection",
            &serde_json::json!({"datasets": ["nope"]}),
        )
        .await,
        404,
        "dataset_not_found",
    )
    .await;
}
