//! The audit log over HTTP: receipts (issued, downloaded, verified offline, edited by hand),
//! inclusion and consistency proofs, tree heads on demand, and their bad parameters.

use crate::helpers::{Backend, TestApp, assert_problem};
use mydata_core::identity::SubjectKind;
use mydata_core::merkle::{self, Hash};
use mydata_core::transfer::{TransferEvent, TransferKind};
use mydata_core::{Clock, IdentityMethod, limits};
use mydata_server::identity::session;
use mydata_server::receipts::{
    self, DeletionReason, PlatformKey, ReceiptKind, Step, read_platform_keys, verify_receipt_file,
};
use mydata_store::NewTransfer;
use std::time::Duration;

fn no_jobs(s: &mut mydata_server::Settings) {
    s.jobs.enabled = false;
}

fn transfer(id: &str, kind: TransferKind, recipient: Option<&str>) -> NewTransfer {
    NewTransfer {
        id: id.into(),
        kind,
        subject: "a1b2c3".into(),
        recipient: recipient.map(str::to_owned),
        purpose: "loan application".into(),
        datasets: vec![
            "low-income-household".into(),
            "household-register-personal".into(),
        ],
    }
}

async fn step(app: &TestApp, id: &str, e: TransferEvent) {
    app.db
        .store
        .apply_transfer_event(id, e, "a1b2c3", app.clock.now())
        .await
        .unwrap();
}

async fn keys(app: &TestApp) -> Vec<PlatformKey> {
    let jwks = app
        .get("/.well-known/mydata/jwks.json")
        .await
        .bytes()
        .await
        .unwrap();
    read_platform_keys(&jwks).unwrap()
}

/// Signs `subject` in: a verified session written straight to the store (the sign-in pages have
/// their own tests); returns the `Cookie` header value that carries it.
pub async fn session_of(app: &TestApp, subject: &str) -> String {
    use sha2::Digest;
    let token = uuid::Uuid::new_v4().to_string();
    let now = app.clock.now().millis();
    let row = mydata_store::SessionRow {
        id_hash: hex::encode(sha2::Sha256::digest(token.as_bytes())),
        csrf_token: uuid::Uuid::new_v4().to_string(),
        subject: Some(subject.into()),
        subject_kind: Some(session::kind_code(SubjectKind::Natural).into()),
        method: Some(IdentityMethod::MoicaCert.code().into()),
        level: Some(1),
        verified_at: Some(now),
        pending: None,
        subject_sealed: None,
        created_at: now,
        last_seen_at: now,
        expires_at: now + 3_600_000,
    };
    app.db.store.put_session(&row, None).await.unwrap();
    format!("{}={token}", session::cookie_name(&app.state))
}

/// GET with a `Cookie` header.
pub async fn get_with(app: &TestApp, cookie: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// GET as the person of the test transfers (subject `a1b2c3`), signed in.
async fn get_signed_in(app: &TestApp, path: &str) -> reqwest::Response {
    let cookie = session_of(app, "a1b2c3").await;
    get_with(app, &cookie, path).await
}

async fn download(app: &TestApp, path: &str) -> (serde_json::Value, Vec<u8>) {
    let res = get_signed_in(app, path).await;
    assert_eq!(res.status(), 200, "{path}");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"mydata-receipt-")
    );
    let bytes = res.bytes().await.unwrap().to_vec();
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

fn assert_all_ok(report: &receipts::ReceiptReport) {
    for (name, s) in report.steps() {
        assert!(s.is_ok(), "{name}: {s:?}");
    }
}

#[tokio::test]
async fn consent_and_deletion_receipts_are_signed_logged_and_verify_offline() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn_with(backend, no_jobs).await;
        let store = &app.db.store;
        store
            .create_transfer(
                &transfer("tr-online-1", TransferKind::Online, Some("svc-bank")),
                "a1b2c3",
                app.clock.now(),
            )
            .await
            .unwrap();
        let consent = "/api/v1/transfers/tr-online-1/receipts/consent";
        // No consent yet: nothing to receipt.
        assert_problem(
            get_signed_in(&app, consent).await,
            409,
            "receipt_not_available",
        )
        .await;

        app.clock.advance(Duration::from_secs(5));
        step(&app, "tr-online-1", TransferEvent::Consent).await;
        let consented_at = app.clock.now().millis();
        app.clock.advance(Duration::from_secs(1));
        let (file, bytes) = download(&app, consent).await;
        let st = &file["statement"];
        assert_eq!(st["kind"], "consent");
        assert_eq!(st["transfer_id"], "tr-online-1");
        assert_eq!(st["subject"], "a1b2c3");
        assert_eq!(
            st["recipient"],
            serde_json::json!({"kind": "service", "id": "svc-bank"})
        );
        assert_eq!(st["purpose"], "loan application");
        assert_eq!(st["datasets"][1], "household-register-personal");
        assert_eq!(st["consented_at_ms"], consented_at);
        // The event was not integrated by any background task: a head was issued on demand.
        let report = verify_receipt_file(&bytes, &keys(&app).await).unwrap();
        assert_all_ok(&report);
        assert_eq!(
            report.statement.as_ref().unwrap().kind,
            ReceiptKind::Consent
        );

        // Downloading again gives the same receipt and logs nothing new.
        let (again, _) = download(&app, consent).await;
        assert_eq!(again["statement"]["receipt_id"], st["receipt_id"]);
        let receipt_events = || async {
            store
                .audit_for_transfer("tr-online-1")
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.kind.starts_with("receipt."))
                .count()
        };
        assert_eq!(receipt_events().await, 1);

        // Once the package exists, the flow asks for a receipt naming it: a new, logged receipt.
        let digest = "ab".repeat(32);
        let with_pkg = receipts::consent_receipt(&app.state, "tr-online-1", Some(&digest))
            .await
            .unwrap();
        assert_eq!(with_pkg.statement["package_digest"], digest);
        assert_ne!(with_pkg.statement["receipt_id"], st["receipt_id"]);
        assert_eq!(receipt_events().await, 2);

        // Deletion: refused while data may still exist, issued once it is gone.
        let deletion = "/api/v1/transfers/tr-online-1/receipts/deletion";
        assert_problem(
            get_signed_in(&app, deletion).await,
            409,
            "receipt_not_available",
        )
        .await;
        step(&app, "tr-online-1", TransferEvent::Settled).await;
        step(&app, "tr-online-1", TransferEvent::Release).await;
        app.clock.advance(Duration::from_secs(2));
        step(&app, "tr-online-1", TransferEvent::Purge).await;
        let deleted_at = app.clock.now().millis();
        let (file, bytes) = download(&app, deletion).await;
        assert_eq!(file["statement"]["reason"], "retrieved");
        assert_eq!(file["statement"]["deleted_at_ms"], deleted_at);
        assert_eq!(
            file["statement"]["deleted"],
            serde_json::json!(["package", "package_key"])
        );
        assert_all_ok(&verify_receipt_file(&bytes, &keys(&app).await).unwrap());

        // The receipt of an event: the consent event gives the consent receipt.
        let events = store.audit_for_transfer("tr-online-1").await.unwrap();
        let consent_event = events
            .iter()
            .find(|e| e.kind == "transfer.fetching")
            .unwrap();
        let (by_event, _) = download(
            &app,
            &format!("/api/v1/audit/events/{}/receipt", consent_event.seq),
        )
        .await;
        assert_eq!(by_event["statement"]["kind"], "consent");
        let created = events
            .iter()
            .find(|e| e.kind == "transfer.created")
            .unwrap();
        assert_problem(
            get_signed_in(
                &app,
                &format!("/api/v1/audit/events/{}/receipt", created.seq),
            )
            .await,
            409,
            "receipt_not_available",
        )
        .await;

        // The log, receipts included, still verifies.
        mydata_server::background::integrate_and_sign(&app.state)
            .await
            .unwrap();
        let r = store.verify_audit_log().await.unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }
}

#[tokio::test]
async fn deletion_receipts_say_why() {
    let app = TestApp::spawn_with(Backend::Sqlite, no_jobs).await;
    let store = &app.db.store;
    let now = app.clock.now();
    for id in ["refused", "expired", "cancelled"] {
        store
            .create_transfer(
                &transfer(id, TransferKind::SelfDownload, None),
                "a1b2c3",
                now,
            )
            .await
            .unwrap();
    }
    step(&app, "refused", TransferEvent::Refuse).await;
    step(&app, "cancelled", TransferEvent::Consent).await;
    step(&app, "cancelled", TransferEvent::Cancel).await;
    step(&app, "expired", TransferEvent::Consent).await;
    app.clock.advance(limits::PACKAGE_TTL);
    mydata_server::background::sweep_expired(&app.state)
        .await
        .unwrap();
    for (id, reason, deleted) in [
        ("refused", DeletionReason::Refused, 0),
        ("expired", DeletionReason::Expired, 2),
        ("cancelled", DeletionReason::Cancelled, 2),
    ] {
        let file = receipts::deletion_receipt(&app.state, id).await.unwrap();
        let bytes = serde_json::to_vec(&file).unwrap();
        let report = verify_receipt_file(&bytes, &keys(&app).await).unwrap();
        assert_all_ok(&report);
        let st = report.statement.unwrap();
        assert_eq!(st.reason, Some(reason), "{id}");
        assert_eq!(st.deleted.unwrap().len(), deleted, "{id}");
        assert_eq!(st.recipient.kind, "self");
    }
    assert_problem(
        get_signed_in(&app, "/api/v1/transfers/refused/receipts/consent").await,
        409,
        "receipt_not_available",
    )
    .await;
}

#[tokio::test]
async fn receipt_requests_with_bad_input_are_refused() {
    let app = TestApp::spawn_with(Backend::Sqlite, no_jobs).await;
    for (path, status, code) in [
        (
            "/api/v1/transfers/nope/receipts/consent",
            404,
            "transfer_not_found",
        ),
        (
            "/api/v1/transfers/nope/receipts/invoice",
            400,
            "invalid_parameter",
        ),
        (
            "/api/v1/transfers/a%22b/receipts/consent",
            400,
            "invalid_parameter",
        ),
        ("/api/v1/audit/events/x1/receipt", 400, "invalid_parameter"),
        (
            "/api/v1/audit/events/999/receipt",
            404,
            "audit_event_not_found",
        ),
    ] {
        assert_problem(get_signed_in(&app, path).await, status, code).await;
    }
}

/// Issues a consent receipt and returns it as JSON with the platform's keys.
async fn a_receipt(app: &TestApp) -> (serde_json::Value, Vec<PlatformKey>) {
    app.db
        .store
        .create_transfer(
            &transfer("tr-counter", TransferKind::Counter, Some("counter-7")),
            "a1b2c3",
            app.clock.now(),
        )
        .await
        .unwrap();
    // Other events before and after, so the proof has several hashes.
    for i in 0..20 {
        app.db
            .store
            .create_transfer(
                &transfer(&format!("other-{i}"), TransferKind::SelfDownload, None),
                "zz",
                app.clock.now(),
            )
            .await
            .unwrap();
    }
    step(app, "tr-counter", TransferEvent::Consent).await;
    let (file, _) = download(app, "/api/v1/transfers/tr-counter/receipts/consent").await;
    (file, keys(app).await)
}

fn check(file: &serde_json::Value, keys: &[PlatformKey]) -> receipts::ReceiptReport {
    verify_receipt_file(&serde_json::to_vec(file).unwrap(), keys).unwrap()
}

fn failed(s: &Step) -> &str {
    match s {
        Step::Failed(why) => why,
        Step::Ok(what) => panic!("expected a failure, got OK: {what}"),
    }
}

#[tokio::test]
async fn a_receipt_edited_by_hand_is_caught_at_the_right_step() {
    let app = TestApp::spawn_with(Backend::Sqlite, no_jobs).await;
    let (file, keys) = a_receipt(&app).await;
    assert_all_ok(&check(&file, &keys));
    assert!(file["inclusion_proof"].as_array().unwrap().len() >= 3);

    // A field of the readable statement.
    let mut f = file.clone();
    f["statement"]["purpose"] = "marketing".into();
    let r = check(&f, &keys);
    assert!(failed(&r.receipt_signature).contains("`purpose`"), "{r:?}");
    assert!(r.inclusion_proof.is_ok() && r.tree_head_signature.is_ok());

    // A field inside the signed statement (payload re-encoded, signature kept).
    let mut f = file.clone();
    let jws = f["signed_statement"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = jws.split('.').collect();
    let mut st = f["statement"].clone();
    st["datasets"] = serde_json::json!(["low-income-household"]);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&st).unwrap()),
        parts[2]
    );
    f["signed_statement"] = forged.into();
    f["statement"] = st;
    let r = check(&f, &keys);
    assert!(
        failed(&r.receipt_signature).contains("does not verify"),
        "{r:?}"
    );

    // The audit entry (its time): the leaf no longer matches, so the proof fails at that entry.
    let mut f = file.clone();
    f["audit_entry"]["at"] = (f["audit_entry"]["at"].as_i64().unwrap() + 1).into();
    let r = check(&f, &keys);
    assert!(r.receipt_signature.is_ok() && r.audit_entry.is_ok());
    let index = f["audit_entry"]["leaf_index"].as_u64().unwrap();
    assert!(
        failed(&r.inclusion_proof).contains(&format!("entry {index}")),
        "{r:?}"
    );

    // The audit entry pointing at another receipt.
    let mut f = file.clone();
    f["audit_entry"]["detail"]["receipt_sha256"] = "00".repeat(32).into();
    let r = check(&f, &keys);
    assert!(failed(&r.audit_entry).contains("another receipt"), "{r:?}");

    // One digit of the proof.
    let mut f = file.clone();
    let h = f["inclusion_proof"][1].as_str().unwrap().to_owned();
    let flipped = if h.starts_with('0') { "1" } else { "0" };
    f["inclusion_proof"][1] = format!("{flipped}{}", &h[1..]).into();
    let r = check(&f, &keys);
    assert!(
        failed(&r.inclusion_proof).contains("does not lead to the root"),
        "{r:?}"
    );
    assert!(r.receipt_signature.is_ok() && r.audit_entry.is_ok() && r.tree_head_signature.is_ok());

    // A proof hash that is not hex at all.
    let mut f = file.clone();
    f["inclusion_proof"][0] = "zz".into();
    assert!(failed(&check(&f, &keys).inclusion_proof).contains("hash 1 of the inclusion proof"));

    // The tree size: the proof no longer fits and the head's signature no longer covers it.
    let mut f = file.clone();
    let size = f["tree_head"]["tree_size"].as_u64().unwrap();
    f["tree_head"]["tree_size"] = (size + 7).into();
    let r = check(&f, &keys);
    assert!(!r.inclusion_proof.is_ok(), "{r:?}");
    assert!(
        failed(&r.tree_head_signature).contains("different size, root or time"),
        "{r:?}"
    );
    assert!(r.receipt_signature.is_ok());

    // The head's signature.
    let mut f = file.clone();
    let sig = f["tree_head"]["signature"].as_str().unwrap().to_owned();
    let (rest, last) = sig.rsplit_once('.').unwrap();
    let mut raw = b64.decode(last).unwrap();
    raw[10] ^= 1;
    f["tree_head"]["signature"] = format!("{rest}.{}", b64.encode(raw)).into();
    let r = check(&f, &keys);
    assert!(
        failed(&r.tree_head_signature).contains("tree head at size"),
        "{r:?}"
    );
    assert!(r.receipt_signature.is_ok() && r.inclusion_proof.is_ok());

    // Another platform's key: both signatures fail, the proof itself still holds.
    let other = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let other = vec![PlatformKey {
        kid: None,
        key: *other.verifying_key(),
    }];
    let r = check(&file, &other);
    assert!(!r.receipt_signature.is_ok() && !r.tree_head_signature.is_ok());
    assert!(r.inclusion_proof.is_ok());

    // Not a receipt file at all.
    assert!(verify_receipt_file(b"{}", &keys).is_err());
    assert!(verify_receipt_file(b"not json", &keys).is_err());
}

fn hash(v: &serde_json::Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn proofs_over_http_verify_against_signed_heads() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn_with(backend, no_jobs).await;
        let store = &app.db.store;
        for i in 0..21 {
            store
                .create_transfer(
                    &transfer(&format!("t{i}"), TransferKind::SelfDownload, None),
                    "p",
                    app.clock.now(),
                )
                .await
                .unwrap();
        }
        let res = app
            .client
            .post(app.url("/api/v1/audit/tree-head"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let first: serde_json::Value = res.json().await.unwrap();
        assert_eq!(first["tree_size"], 21);
        for i in 21..40 {
            store
                .create_transfer(
                    &transfer(&format!("t{i}"), TransferKind::SelfDownload, None),
                    "p",
                    app.clock.now(),
                )
                .await
                .unwrap();
        }
        let res = app
            .client
            .post(app.url("/api/v1/audit/tree-head"))
            .send()
            .await
            .unwrap();
        let second: serde_json::Value = res.json().await.unwrap();
        assert_eq!(second["tree_size"], 40);
        let (s, at21) = app.get_json("/api/v1/audit/tree-heads/21").await;
        assert_eq!((s, &at21), (200, &first));

        let (s, p) = app
            .get_json("/api/v1/audit/proofs/inclusion?leaf_index=13&tree_size=21")
            .await;
        assert_eq!(s, 200, "{p}");
        let path: Vec<Hash> = p["audit_path"]
            .as_array()
            .unwrap()
            .iter()
            .map(hash)
            .collect();
        merkle::verify_inclusion(
            &hash(&p["leaf_hash"]),
            13,
            21,
            &path,
            &hash(&first["root_hash"]),
        )
        .unwrap();
        assert_eq!(p["tree_head"], first);
        // By event number, against the current size.
        let seq = store.audit_leaf(30).await.unwrap().unwrap().event.seq;
        let (s, p) = app
            .get_json(&format!("/api/v1/audit/proofs/inclusion?event={seq}"))
            .await;
        assert_eq!(
            (s, p["leaf_index"].as_u64(), p["tree_size"].as_u64()),
            (200, Some(30), Some(40))
        );

        let (s, c) = app
            .get_json("/api/v1/audit/proofs/consistency?first=21&second=40")
            .await;
        assert_eq!(s, 200, "{c}");
        let proof: Vec<Hash> = c["proof"].as_array().unwrap().iter().map(hash).collect();
        merkle::verify_consistency(
            21,
            40,
            &hash(&first["root_hash"]),
            &hash(&second["root_hash"]),
            &proof,
        )
        .unwrap();
        assert_eq!((&c["first_head"], &c["second_head"]), (&first, &second));
    }
}

#[tokio::test]
async fn proof_requests_with_bad_parameters_get_clear_errors() {
    let app = TestApp::spawn_with(Backend::Sqlite, no_jobs).await;
    assert_problem(
        app.client
            .post(app.url("/api/v1/audit/tree-head"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    for i in 0..5 {
        app.db
            .store
            .create_transfer(
                &transfer(&format!("t{i}"), TransferKind::SelfDownload, None),
                "p",
                app.clock.now(),
            )
            .await
            .unwrap();
    }
    mydata_server::background::integrate_and_sign(&app.state)
        .await
        .unwrap();
    let cases = [
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=1&tree_size=6",
            400,
            "tree_size_out_of_range",
            "beyond the audit log, which holds 5",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=5&tree_size=5",
            400,
            "leaf_index_out_of_range",
            "leaf index 5",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=4&tree_size=3",
            400,
            "leaf_index_out_of_range",
            "tree of size 3",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=abc&tree_size=3",
            400,
            "invalid_parameter",
            "`leaf_index`",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=-1",
            400,
            "invalid_parameter",
            "`leaf_index`",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=1&tree_size=1e3",
            400,
            "invalid_parameter",
            "`tree_size`",
        ),
        (
            "/api/v1/audit/proofs/inclusion?tree_size=3",
            400,
            "invalid_parameter",
            "either leaf_index or event",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=1&event=2",
            400,
            "invalid_parameter",
            "not both",
        ),
        (
            "/api/v1/audit/proofs/inclusion?event=424242",
            404,
            "audit_event_not_found",
            "424242",
        ),
        (
            "/api/v1/audit/proofs/inclusion?leaf_index=1&size=3",
            400,
            "invalid_query",
            "unknown parameter `size`",
        ),
        (
            "/api/v1/audit/proofs/consistency?first=4&second=2",
            400,
            "proof_sizes_out_of_order",
            "(4) is larger than the second (2)",
        ),
        (
            "/api/v1/audit/proofs/consistency?first=2&second=99",
            400,
            "tree_size_out_of_range",
            "tree size 99",
        ),
        (
            "/api/v1/audit/proofs/consistency?first=99",
            400,
            "proof_sizes_out_of_order",
            "(99)",
        ),
        (
            "/api/v1/audit/proofs/consistency?second=3",
            400,
            "invalid_parameter",
            "`first`: is required",
        ),
        (
            "/api/v1/audit/proofs/consistency?first=x&second=3",
            400,
            "invalid_parameter",
            "`first`",
        ),
        (
            "/api/v1/audit/proofs/consistency?first=18446744073709551616&second=3",
            400,
            "invalid_parameter",
            "`first`",
        ),
        (
            "/api/v1/audit/tree-heads/3",
            404,
            "tree_head_not_found",
            "`3`",
        ),
        (
            "/api/v1/audit/tree-heads/9",
            400,
            "tree_size_out_of_range",
            "tree size 9",
        ),
        (
            "/api/v1/audit/tree-heads/five",
            400,
            "invalid_parameter",
            "`size`",
        ),
    ];
    for (path, status, code, detail) in cases {
        let body = assert_problem(app.get(path).await, status, code).await;
        assert!(
            body["detail"].as_str().unwrap().contains(detail),
            "{path}: {body}"
        );
    }
    // Refusals change nothing: the log still holds 5 entries and one head.
    assert_eq!(app.db.store.audit_tree_size().await.unwrap(), 5);
    assert_eq!(app.db.store.tree_heads().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_retention_job_runs_through_the_queue_and_keeps_the_log_verifiable() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = TestApp::spawn_with(backend, |s| s.jobs.poll_interval_ms = 5).await;
        let store = &app.db.store;
        let t0 = app.clock.now();
        store
            .create_transfer(
                &transfer("old", TransferKind::SelfDownload, None),
                "a1b2c3",
                t0,
            )
            .await
            .unwrap();
        step(&app, "old", TransferEvent::Refuse).await;
        receipts::deletion_receipt(&app.state, "old").await.unwrap();
        let two_years = Duration::from_secs(730 * 86_400);
        app.clock.advance(two_years - Duration::from_secs(3600));
        store
            .create_transfer(
                &transfer("recent", TransferKind::SelfDownload, None),
                "a1b2c3",
                app.clock.now(),
            )
            .await
            .unwrap();
        step(&app, "recent", TransferEvent::Refuse).await;
        mydata_server::background::integrate_and_sign(&app.state)
            .await
            .unwrap();
        let size = store.audit_tree_size().await.unwrap();
        let root = store.audit_root_at(size).await.unwrap();

        // Two years and a minute after the first transfer: its records go, the recent ones stay.
        app.clock.advance(Duration::from_secs(3660));
        assert!(
            mydata_server::background::schedule_retention(&app.state)
                .await
                .unwrap()
        );
        // Scheduling again in the same period adds nothing (one run per period, any process).
        assert!(
            !mydata_server::background::schedule_retention(&app.state)
                .await
                .unwrap()
        );
        crate::helpers::eventually("retention applied", || async {
            store.transfer("old").await.unwrap().is_none()
                && store.audit_pruned_below().await.unwrap() > 0
        })
        .await;
        assert!(store.transfer("recent").await.unwrap().is_some());
        assert!(store.receipts_for_transfer("old").await.unwrap().is_empty());
        assert!(store.audit_for_transfer("old").await.unwrap().is_empty());
        assert_eq!(store.audit_for_transfer("recent").await.unwrap().len(), 2);
        let r = store.verify_audit_log().await.unwrap();
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(
            r.pruned, 3,
            "created, refused and the receipt event of `old`"
        );
        assert_eq!(store.audit_root_at(size).await.unwrap(), root);
        // Proofs still come out for pruned entries.
        let (s, p) = app
            .get_json(&format!(
                "/api/v1/audit/proofs/inclusion?leaf_index=0&tree_size={size}"
            ))
            .await;
        assert_eq!(s, 200, "{p}");
        app.stop().await.unwrap();
    }
}
