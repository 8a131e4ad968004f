//! Receipts go to the person they are about, in their signed-in session, and to nobody else: a
//! transfer ID or an event number alone opens nothing, and every refused attempt is logged.

use crate::helpers::{Backend, assert_problem};
use crate::world::FlowWorld;
use mydata_core::Clock;
use mydata_core::transfer::{TransferEvent, TransferKind};
use mydata_server::identity::session;
use mydata_store::NewTransfer;

#[tokio::test]
async fn receipts_are_only_for_the_signed_in_person_of_the_transfer() {
    let world = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let state = &world.app.state;
    let store = world.app.store();
    let (alice, bob) = (&world.people[0], &world.people[1]);
    let alice_pseudonym = session::pseudonym(state, &alice.subject());
    let bob_pseudonym = session::pseudonym(state, &bob.subject());
    let id = uuid::Uuid::new_v4().to_string();
    store
        .create_transfer(
            &NewTransfer {
                id: id.clone(),
                kind: TransferKind::SelfDownload,
                subject: alice_pseudonym.clone(),
                recipient: None,
                purpose: "own records".into(),
                datasets: vec!["household-register-personal".into()],
            },
            &alice_pseudonym,
            world.app.clock.now(),
        )
        .await
        .unwrap();
    store
        .apply_transfer_event(
            &id,
            TransferEvent::Consent,
            &alice_pseudonym,
            world.app.clock.now(),
        )
        .await
        .unwrap();
    let consent_seq = store
        .audit_for_transfer(&id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "transfer.fetching")
        .unwrap()
        .seq;
    let by_transfer = format!("/api/v1/transfers/{id}/receipts/consent");
    let by_event = format!("/api/v1/audit/events/{consent_seq}/receipt");

    // Alice, signed in, gets her receipt both ways.
    let a = world.signed_in(alice, "198.51.100.1").await;
    for path in [&by_transfer, &by_event] {
        let res = a.get(path).await;
        assert_eq!(res.status(), 200, "{path}");
        let file: serde_json::Value = res.json().await.unwrap();
        assert_eq!(file["statement"]["subject"], alice_pseudonym.as_str());
        assert_eq!(file["statement"]["transfer_id"], id.as_str());
    }

    // Bob, signed in, is told exactly what an unknown ID would tell him.
    let b = world.signed_in(bob, "198.51.100.2").await;
    let unknown = assert_problem(
        b.get("/api/v1/transfers/no-such-transfer/receipts/consent")
            .await,
        404,
        "transfer_not_found",
    )
    .await;
    let theirs = assert_problem(b.get(&by_transfer).await, 404, "transfer_not_found").await;
    assert_eq!(theirs["title"], unknown["title"]);
    assert!(!theirs.to_string().contains(&alice_pseudonym));
    assert_problem(b.get(&by_event).await, 404, "audit_event_not_found").await;

    // Nobody signed in: sign in first. Not an event: it names nobody, and anyone could grow the
    // permanent log with such requests.
    let anonymous = world.browser("198.51.100.3");
    let events = || async { store.row_counts().await.unwrap()["audit_events"] };
    let before = events().await;
    for path in [&by_transfer, &by_event] {
        assert_problem(anonymous.get(path).await, 401, "not_signed_in").await;
    }
    assert_eq!(events().await, before);

    // Each refusal is on the record of the transfer, naming only pseudonyms and why.
    let refused: Vec<_> = store
        .audit_for_transfer(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "access.refused")
        .collect();
    let mut seen: Vec<(Option<String>, String, String)> = refused
        .iter()
        .map(|e| {
            (
                e.subject.clone(),
                e.detail["route"].as_str().unwrap().to_owned(),
                e.detail["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (
            Some(bob_pseudonym.clone()),
            "transfer_receipt".to_owned(),
            "not_the_subject".to_owned(),
        ),
        (
            Some(bob_pseudonym.clone()),
            "event_receipt".to_owned(),
            "not_the_subject".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(seen, want);
    for e in &refused {
        let text = format!("{e:?}");
        assert!(
            !text.contains(&alice.id) && !text.contains(&bob.id),
            "{text}"
        );
    }
    // Bob's try with an unknown ID is logged too, without a transfer.
    let bobs = store.audit_for_subject(&bob_pseudonym).await.unwrap();
    assert!(
        bobs.iter().any(|e| e.kind == "access.refused"
            && e.transfer_id.is_none()
            && e.detail["reason"] == "unknown_transfer"),
        "{bobs:?}"
    );
}

/// The usage records page links each transfer's consent receipt and, once its data is gone, its
/// deletion receipt; the files verify offline with the platform's public key; another person gets
/// neither the links nor the files.
#[tokio::test]
async fn usage_records_link_receipts_that_verify_offline() {
    let world = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let state = &world.app.state;
    let store = world.app.store();
    let (alice, bob) = (&world.people[0], &world.people[1]);
    let alice_pseudonym = session::pseudonym(state, &alice.subject());
    let now = world.app.clock.now();
    let id = uuid::Uuid::now_v7().to_string();
    store
        .create_transfer(
            &NewTransfer {
                id: id.clone(),
                kind: TransferKind::SelfDownload,
                subject: alice_pseudonym.clone(),
                recipient: None,
                purpose: "own records".into(),
                datasets: vec!["household-register-personal".into()],
            },
            &alice_pseudonym,
            now,
        )
        .await
        .unwrap();
    let consent_url = format!("/api/v1/transfers/{id}/receipts/consent");
    let deletion_url = format!("/api/v1/transfers/{id}/receipts/deletion");
    let a = world.signed_in(alice, "198.51.100.1").await;

    // Not consented yet: no receipt to link.
    let json: serde_json::Value = a.get("/records.json").await.json().await.unwrap();
    let r0 = &json["records"][0];
    assert_eq!(r0["request_number"], id.as_str());
    assert!(r0["consent_receipt"].is_null() && r0["deletion_receipt"].is_null());

    store
        .apply_transfer_event(&id, TransferEvent::Consent, &alice_pseudonym, now)
        .await
        .unwrap();
    let json: serde_json::Value = a.get("/records.json").await.json().await.unwrap();
    assert_eq!(json["records"][0]["consent_receipt"], consent_url.as_str());
    assert!(json["records"][0]["deletion_receipt"].is_null());

    for event in [
        TransferEvent::Settled,
        TransferEvent::Release,
        TransferEvent::Purge,
    ] {
        store
            .apply_transfer_event(&id, event, "system", now)
            .await
            .unwrap();
    }
    // The page (both languages) links both receipts and says how to check them offline.
    let html = a.get("/records").await.text().await.unwrap();
    assert!(html.contains(&format!("href=\"{consent_url}\"")), "{html}");
    assert!(html.contains(&format!("href=\"{deletion_url}\"")), "{html}");
    assert!(html.contains("下載同意收據") && html.contains("mydata verify-receipt"));
    let en = a.get("/records?lang=en").await.text().await.unwrap();
    assert!(en.contains("Download the deletion receipt") && en.contains("mydata verify-receipt"));
    let json: serde_json::Value = a.get("/records.json").await.json().await.unwrap();
    let links: Vec<String> = ["consent_receipt", "deletion_receipt"]
        .iter()
        .map(|k| json["records"][0][k].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(links, [consent_url.clone(), deletion_url.clone()]);

    // Each linked file checks out offline with only the published key.
    let jwks = world
        .browser("198.51.100.9")
        .get("/.well-known/mydata/jwks.json")
        .await
        .bytes()
        .await
        .unwrap();
    let keys = mydata_server::receipts::read_platform_keys(&jwks).unwrap();
    for (url, kind) in [(&consent_url, "consent"), (&deletion_url, "deletion")] {
        let res = a.get(url).await;
        assert_eq!(res.status(), 200, "{url}");
        let disposition = res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(disposition.starts_with("attachment"), "{disposition}");
        let bytes = res.bytes().await.unwrap();
        let report = mydata_server::receipts::verify_receipt_file(&bytes, &keys).unwrap();
        assert!(report.is_ok(), "{url}: {report:?}");
        let st = report.statement.unwrap();
        assert_eq!(
            (st.kind.code(), st.transfer_id.as_str()),
            (kind, id.as_str())
        );
        assert_eq!(st.subject, alice_pseudonym);
        assert!(!String::from_utf8_lossy(&bytes).contains(&alice.id));
    }

    // Bob sees none of it and cannot fetch the files by their links.
    let b = world.signed_in(bob, "198.51.100.2").await;
    let html = b.get("/records").await.text().await.unwrap();
    assert!(!html.contains(&id));
    let json: serde_json::Value = b.get("/records.json").await.json().await.unwrap();
    assert!(!json.to_string().contains(&id));
    for url in [&consent_url, &deletion_url] {
        assert_problem(b.get(url).await, 404, "transfer_not_found").await;
        assert_problem(
            world.browser("198.51.100.3").get(url).await,
            401,
            "not_signed_in",
        )
        .await;
    }
}
