//! Self-download (flow 1) over HTTP, as a person's browser does it: choose, terms, sign in,
//! consent (once, whatever the clicks), progress, preview, save, confirm deletion, usage records,
//! and the notice mail; plus another person's transfer, the 8-hour end and an agency that is down.

use crate::helpers::{Backend, eventually_within};
use crate::world::{Browser, CONTACT_EMAIL, FlowWorld, csrf_in};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mydata_core::Clock;
use mydata_core::transfer::TransferState;
use mydata_provider_sim::server::FaultConfig;
use mydata_server::download::TERMS_VERSION;
use mydata_store::fetch_status;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(60);

/// The value of a hidden form field.
pub fn field_in(html: &str, name: &str) -> String {
    let pat = format!("name=\"{name}\" value=\"");
    let i = html.find(&pat).unwrap_or_else(|| panic!("field {name}")) + pat.len();
    html[i..].split('"').next().unwrap().to_owned()
}

/// The text of a received message's body (base64 or quoted-printable).
pub fn mail_body(message: &str) -> String {
    let (headers, body) = message.split_once("\n\n").unwrap();
    let lower = headers.to_ascii_lowercase();
    if lower.contains("content-transfer-encoding: base64") {
        let b64: String = body.split_whitespace().collect();
        String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
    } else if lower.contains("quoted-printable") {
        let joined = body.replace("=\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 2 < bytes.len()
                && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    } else {
        body.to_owned()
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no location on {}", r.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Goes from the basket to a filled consent form; returns (csrf, token).
pub async fn consent_form(b: &Browser, datasets: &[&str]) -> (String, String) {
    let q: String = datasets.iter().map(|d| format!("d={d}&")).collect();
    let r = b.get(&format!("/download?{q}")).await;
    assert_eq!(r.status(), 200);
    let r = b.get(&format!("/download/terms?{q}")).await;
    assert_eq!(r.status(), 200);
    let r = b
        .get(&format!("/download/consent?{q}agree={TERMS_VERSION}"))
        .await;
    assert_eq!(r.status(), 200, "consent page");
    let html = r.text().await.unwrap();
    (csrf_in(&html), field_in(&html, "token"))
}

pub async fn submit(b: &Browser, csrf: &str, token: &str, datasets: &[&str]) -> reqwest::Response {
    let mut form: Vec<(&str, &str)> =
        vec![("csrf", csrf), ("token", token), ("agree", TERMS_VERSION)];
    for d in datasets {
        form.push(("d", d));
    }
    b.post("/download", &form).await
}

fn transfer_of(loc: &str) -> String {
    loc.strip_prefix("/download/t/").unwrap().to_owned()
}

#[tokio::test]
async fn a_person_downloads_previews_saves_and_deletes_and_finds_it_in_the_records() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut w = FlowWorld::spawn(backend, 1.0).await;
        let p = w.people[0].clone();
        let b = w.signed_in(&p, "10.1.0.1").await;
        let sim = w.agencies().sim.clone();
        // A 5-minute dataset with CSV and PDF, and one at once (JSON, PDF) of another agency.
        let a = crate::fetch::dataset_where(&sim, |d| {
            d.formats.iter().any(|f| f.code() == "csv")
                && d.formats.iter().any(|f| f.code() == "pdf")
        });
        let c = crate::fetch::dataset_where(&sim, |d| {
            d.ready_minutes == 0
                && d.agency != a.agency
                && d.formats.iter().any(|f| f.code() == "json")
        });
        let ds = [a.id.as_str(), c.id.as_str()];

        // Terms not ticked: the terms again, with the error.
        let r = b
            .get(&format!("/download/consent?d={}&d={}", a.id, c.id))
            .await;
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("form-error"));

        let (csrf, token) = consent_form(&b, &ds).await;
        // Double submit: both land on the same transfer; one transfer exists.
        let r1 = submit(&b, &csrf, &token, &ds).await;
        assert_eq!(r1.status(), 303);
        let r2 = submit(&b, &csrf, &token, &ds).await;
        assert_eq!(r2.status(), 303);
        assert_eq!(location(&r1), location(&r2));
        let id = transfer_of(&location(&r1));
        let v = mydata_server::identity::subject_pseudonym(&w.app.state, &p.subject());
        assert_eq!(
            w.app
                .store()
                .transfers_for_subject(&v, 10)
                .await
                .unwrap()
                .len(),
            1
        );

        // The progress page tells the wait of the 5-minute agency while it works.
        w.app
            .until_dataset(&id, &c.id, "the instant one", |d| {
                d.status == fetch_status::SUCCEEDED
            })
            .await;
        let html = b
            .get(&format!("/download/t/{id}"))
            .await
            .text()
            .await
            .unwrap();
        assert!(
            html.contains("tone-waiting") && html.contains("5 分鐘"),
            "{html}"
        );
        assert!(html.contains("data-status-url"));
        eventually_within("the 5-minute dataset", BOUND, || async {
            w.app.clock.advance(Duration::from_secs(30));
            w.app.transfer(&id).await.state == TransferState::Ready
        })
        .await;
        let t = w.app.transfer(&id).await;
        assert!(
            t.datasets
                .iter()
                .all(|d| d.status == fetch_status::SUCCEEDED),
            "{t:?}"
        );
        let page = b.get(&format!("/download/t/{id}")).await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        assert!(html.contains("id=\"save-zip\""), "{html}");
        assert!(html.contains("id=\"remaining\""));
        let status: serde_json::Value = b
            .get(&format!("/download/t/{id}/status"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(status["state"], "ready");
        assert_eq!(status["settled"], 2);

        // The notice: datasets, request number, link to the records; never the data.
        let mail = w.next_mail(BOUND).await;
        assert!(mail.contains(CONTACT_EMAIL), "{mail}");
        let body = mail_body(&mail);
        assert!(body.contains(&id), "{body}");
        assert!(
            body.contains(&a.name_zh) && body.contains(&c.name_zh),
            "{body}"
        );
        assert!(body.contains("/records"), "{body}");
        assert!(!body.contains(&p.id) && !body.contains(&p.name), "{body}");

        // Preview: tables and the PDF, each dataset verified.
        let pv = b.get(&format!("/download/t/{id}/preview")).await;
        assert_eq!(pv.status(), 200);
        let html = pv.text().await.unwrap();
        assert_eq!(html.matches("class=\"ok verdict\"").count(), 2, "{html}");
        assert!(html.contains("<table class=\"grid\">") && html.contains("<table class=\"kv\">"));
        assert!(html.contains("iframe class=\"pdf\""));
        let pdf = b
            .get(&format!(
                "/download/t/{id}/files/{}/data.pdf?inline=1",
                a.id
            ))
            .await;
        assert_eq!(pdf.status(), 200);
        assert_eq!(pdf.headers()["content-type"], "application/pdf");
        assert_eq!(pdf.headers()["content-disposition"], "inline");
        assert!(pdf.bytes().await.unwrap().starts_with(b"%PDF"));
        let csv = b
            .get(&format!("/download/t/{id}/files/{}/data.csv", a.id))
            .await;
        assert_eq!(csv.status(), 200);
        assert!(
            csv.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment")
        );
        // Path tricks find nothing.
        for bad in ["..%2Fmanifest.json", "manifest.json", "nope.pdf"] {
            let r = b
                .get(&format!("/download/t/{id}/files/{}/{bad}", a.id))
                .await;
            assert_eq!(r.status(), 404, "{bad}");
        }

        // Save the whole package: it verifies as `mydata verify` checks it.
        let zip = b.get(&format!("/download/t/{id}/package")).await;
        assert_eq!(zip.status(), 200);
        assert_eq!(zip.headers()["cache-control"], "no-store");
        let zip = zip.bytes().await.unwrap();
        let report = mydata_package::verify_package(
            &zip,
            &w.app.trust(),
            Some(w.app.state.platform().verifying_key()),
            w.app.clock.now(),
        );
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.datasets.len(), 2);
        // Saving does not delete by itself: the person confirms.
        assert!(
            w.app
                .store()
                .package(&id)
                .await
                .unwrap()
                .unwrap()
                .sealed_key
                .is_some()
        );

        let del_csrf = csrf_in(
            &b.get(&format!("/download/t/{id}"))
                .await
                .text()
                .await
                .unwrap(),
        );
        let r = b
            .post(&format!("/download/t/{id}/delete"), &[("csrf", "wrong")])
            .await;
        assert_eq!(r.status(), 403);
        let r = b
            .post(&format!("/download/t/{id}/delete"), &[("csrf", &del_csrf)])
            .await;
        assert_eq!(r.status(), 303);
        // A second click changes nothing.
        let r = b
            .post(&format!("/download/t/{id}/delete"), &[("csrf", &del_csrf)])
            .await;
        assert_eq!(r.status(), 303);
        let pkg = w.app.store().package(&id).await.unwrap().unwrap();
        assert!(pkg.sealed_key.is_none() && pkg.deleted_at.is_some());
        assert!(
            !w.app.objects().iter().any(|o| o.contains(&id)),
            "{:?}",
            w.app.objects()
        );
        assert_eq!(w.app.transfer(&id).await.state, TransferState::Deleted);
        let gone = b.get(&format!("/download/t/{id}")).await;
        assert_eq!(gone.status(), 410);
        assert!(gone.text().await.unwrap().contains("id=\"deleted\""));
        assert_eq!(
            b.get(&format!("/download/t/{id}/package")).await.status(),
            410
        );
        assert_eq!(
            b.get(&format!("/download/t/{id}/preview")).await.status(),
            410
        );

        // Usage records: the page, CSV and JSON all hold this transfer and its events.
        let rec = b.get("/records").await;
        assert_eq!(rec.status(), 200);
        let html = rec.text().await.unwrap();
        assert!(html.contains(&format!("data-transfer=\"{id}\"")));
        assert!(html.contains("data-kind=\"download.package_saved\""));
        assert!(html.contains("data-kind=\"package.deleted\""));
        let json: serde_json::Value = b.get("/records.json").await.json().await.unwrap();
        let r0 = &json["records"][0];
        assert_eq!(r0["request_number"], id.as_str());
        assert_eq!(r0["kind"], "self_download");
        assert_eq!(r0["state"], "deleted");
        // What was sent: the dataset by its ID and catalogue name, on every form of the records.
        assert_eq!(r0["datasets"][0]["id"], a.id.as_str(), "{r0}");
        assert_eq!(r0["datasets"][1]["id"], c.id.as_str(), "{r0}");
        let name = r0["datasets"][1]["name"].as_str().unwrap().to_owned();
        assert!(!name.is_empty() && html.contains(&name), "{name}");
        assert!(
            r0["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "download.terms_agreed")
        );
        let csv = b.get("/records.csv").await;
        assert!(
            csv.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let csv = csv.text().await.unwrap();
        assert!(csv.contains(&id) && csv.contains("self_download"), "{csv}");
        assert!(csv.contains(&name), "{csv}");
        crate::fetch::assert_no_id_in_audit(&w.app, &id, &p.id).await;
    }
}

#[tokio::test]
async fn bad_forms_change_nothing() {
    let w = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.1.1.1").await;
    let d = crate::fetch::instant(&w.agencies().sim);
    let (csrf, token) = consent_form(&b, &[&d.id]).await;
    let v = mydata_server::identity::subject_pseudonym(&w.app.state, &p.subject());
    // Wrong CSRF, malformed token, unknown dataset, no dataset, old terms, wrong content type.
    assert_eq!(submit(&b, "x", &token, &[&d.id]).await.status(), 403);
    assert_eq!(submit(&b, &csrf, "short", &[&d.id]).await.status(), 422);
    assert_eq!(
        submit(&b, &csrf, &token, &["no-such-dataset"])
            .await
            .status(),
        404
    );
    assert_eq!(submit(&b, &csrf, &token, &[]).await.status(), 422);
    let r = b
        .post(
            "/download",
            &[
                ("csrf", &csrf),
                ("token", &token),
                ("agree", "old"),
                ("d", &d.id),
            ],
        )
        .await;
    assert_eq!(r.status(), 422);
    let r = b
        .client
        .post(b.url("/download"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let many: String = w
        .app
        .state
        .catalog()
        .datasets()
        .iter()
        .take(21)
        .map(|x| format!("d={}&", x.id))
        .collect();
    assert_eq!(b.get(&format!("/download?{many}")).await.status(), 400);
    assert_eq!(b.get("/download?d=%3Cscript%3E").await.status(), 404);
    assert!(
        w.app
            .store()
            .transfers_for_subject(&v, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The token still works after all that: it was never claimed.
    assert_eq!(submit(&b, &csrf, &token, &[&d.id]).await.status(), 303);
    // Signed out, the consent page and a transfer page send to sign-in and back.
    let anon = w.browser("10.1.1.2");
    let r = anon
        .get(&format!(
            "/download/consent?d={}&agree={TERMS_VERSION}",
            d.id
        ))
        .await;
    assert_eq!(r.status(), 303);
    let to = location(&r);
    assert!(
        to.starts_with("/login?next=%2Fdownload%2Fconsent")
            && to.contains(&format!("datasets={}", d.id)),
        "{to}"
    );
    let r = anon.get("/records").await;
    assert_eq!(location(&r), "/login?next=/records");
}

#[tokio::test]
async fn another_persons_transfer_is_not_found_and_the_attempt_is_recorded() {
    let w = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let (p, q) = (w.people[0].clone(), w.people[1].clone());
    let owner = w.signed_in(&p, "10.2.0.1").await;
    let d = crate::fetch::instant(&w.agencies().sim);
    let (csrf, token) = consent_form(&owner, &[&d.id]).await;
    let id = transfer_of(&location(&submit(&owner, &csrf, &token, &[&d.id]).await));
    w.app.until_state(&id, TransferState::Ready).await;

    let intruder = w.signed_in(&q, "10.2.0.2").await;
    for path in [
        "",
        "/status",
        "/preview",
        "/package",
        &format!("/files/{}/data.json", d.id),
    ] {
        let r = intruder.get(&format!("/download/t/{id}{path}")).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    // The owner's form token is worthless to another person, and so is a delete of their transfer.
    let (icsrf, _) = consent_form(&intruder, &[&d.id]).await;
    let r = intruder
        .post(&format!("/download/t/{id}/delete"), &[("csrf", &icsrf)])
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        submit(&intruder, &icsrf, &token, &[&d.id]).await.status(),
        403
    );
    // Unknown and malformed IDs look the same.
    assert_eq!(
        intruder
            .get("/download/t/00000000-0000-4000-8000-000000000000")
            .await
            .status(),
        404
    );
    assert_eq!(
        intruder.get("/download/t/..%2F..%2Fetc").await.status(),
        404
    );
    let events = w.app.store().audit_for_transfer(&id).await.unwrap();
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "transfer.access_denied")
        .collect();
    assert!(denied.len() >= 5, "{events:?}");
    let qv = mydata_server::identity::subject_pseudonym(&w.app.state, &q.subject());
    assert!(
        denied
            .iter()
            .all(|e| e.subject.as_deref() == Some(qv.as_str()))
    );
    // Untouched for its owner, who sees the attempt in their records.
    assert!(
        w.app
            .store()
            .package(&id)
            .await
            .unwrap()
            .unwrap()
            .sealed_key
            .is_some()
    );
    let html = owner.get("/records").await.text().await.unwrap();
    assert!(html.contains("data-kind=\"transfer.access_denied\""));
}

#[tokio::test]
async fn after_eight_hours_the_page_says_when_it_was_deleted_and_nothing_is_left() {
    let w = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.3.0.1").await;
    let d = crate::fetch::instant(&w.agencies().sim);
    let (csrf, token) = consent_form(&b, &[&d.id]).await;
    let id = transfer_of(&location(&submit(&b, &csrf, &token, &[&d.id]).await));
    w.app.until_state(&id, TransferState::Ready).await;
    // Small, the sealed package rests in its row.
    let before = w.app.store().package(&id).await.unwrap().unwrap();
    assert!(before.body.is_some());

    w.app.clock.advance(Duration::from_secs(8 * 3600 + 60));
    // Before the sweep has run, the platform already refuses to open it.
    mydata_server::packages::purge_expired_data(&w.app.state)
        .await
        .unwrap();
    let pkg = w.app.store().package(&id).await.unwrap().unwrap();
    assert!(pkg.sealed_key.is_none() && pkg.body.is_none() && pkg.deleted_at.is_some());
    assert!(
        !w.app.objects().iter().any(|o| o.contains(&id)),
        "{:?}",
        w.app.objects()
    );
    // The person signs in again (the session ended) and reads when the data went.
    let b = w.signed_in(&p, "10.3.0.1").await;
    let r = b.get(&format!("/download/t/{id}")).await;
    assert_eq!(r.status(), 410);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("id=\"deleted\"") && html.contains("8"),
        "{html}"
    );
    assert_eq!(
        b.get(&format!("/download/t/{id}/package")).await.status(),
        410
    );
}

#[tokio::test]
async fn an_agency_that_is_down_fails_its_dataset_only_with_what_to_do() {
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.agencies.fetch_deadline_secs = 30;
    })
    .await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.4.0.1").await;
    let sim = w.agencies().sim.clone();
    let down = crate::fetch::instant(&sim);
    let fine =
        crate::fetch::dataset_where(&sim, |d| d.ready_minutes == 0 && d.agency != down.agency);
    w.agencies().fault(
        &down.agency,
        FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    let ds = [down.id.as_str(), fine.id.as_str()];
    let (csrf, token) = consent_form(&b, &ds).await;
    let id = transfer_of(&location(&submit(&b, &csrf, &token, &ds).await));
    // Time passes (in steps, so each retry runs) until the fetch deadline gives up.
    eventually_within("the outage settles", BOUND, || async {
        w.app.clock.advance(Duration::from_secs(5));
        w.app.transfer(&id).await.state == TransferState::Ready
    })
    .await;
    let t = w.app.transfer(&id).await;
    let st = |x: &str| {
        t.datasets
            .iter()
            .find(|d| d.dataset_id == x)
            .unwrap()
            .status
            .clone()
    };
    assert_eq!(st(&down.id), fetch_status::FAILED);
    assert_eq!(st(&fine.id), fetch_status::SUCCEEDED);
    let html = b
        .get(&format!("/download/t/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("tone-problem"), "{html}");
    assert!(
        html.contains(&format!("/download/terms?d={}", down.id)),
        "{html}"
    );
    assert!(html.contains("id=\"save-zip\""));
    let zip = b
        .get(&format!("/download/t/{id}/package"))
        .await
        .bytes()
        .await
        .unwrap();
    let report = mydata_package::verify_package(&zip, &w.app.trust(), None, w.app.clock.now());
    assert!(report.is_ok());
    assert_eq!(report.datasets.len(), 1);
}

/// An SMTP receiver that answers the first `reject` messages with a temporary failure (451) whose
/// text repeats the recipient's address, as mail servers often do, and accepts the rest; counts
/// the rejections.
async fn flaky_smtp(
    reject: usize,
) -> (
    u16,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let rejected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = rejected.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, count) = (tx.clone(), count.clone());
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 flaky ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                let mut rcpt = String::new();
                for _ in 0..10_000 {
                    let Ok(Some(line)) = lines.next_line().await else {
                        break;
                    };
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            let msg = data.take().unwrap();
                            if count.load(Ordering::SeqCst) < reject {
                                count.fetch_add(1, Ordering::SeqCst);
                                let refusal = format!("451 4.2.1 {rcpt}: mailbox busy\r\n");
                                w.write_all(refusal.as_bytes()).await.unwrap();
                            } else {
                                tx.send(msg).unwrap();
                                w.write_all(b"250 OK\r\n").await.unwrap();
                            }
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let reply: &[u8] =
                        match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                            "EHLO" => b"250-flaky\r\n250 OK\r\n",
                            "DATA" => {
                                data = Some(String::new());
                                b"354 go ahead\r\n"
                            }
                            "RCPT" => {
                                rcpt = line.get(8..).unwrap_or("").to_owned();
                                b"250 OK\r\n"
                            }
                            "QUIT" => {
                                let _ = w.write_all(b"221 bye\r\n").await;
                                break;
                            }
                            _ => b"250 OK\r\n",
                        };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx, rejected)
}

#[tokio::test]
async fn the_notice_is_retried_until_the_mail_server_takes_it() {
    let (port, mut rx, rejected) = flaky_smtp(2).await;
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.messages.smtp.port = port;
    })
    .await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.5.0.1").await;
    let d = crate::fetch::instant(&w.agencies().sim);
    let (csrf, token) = consent_form(&b, &[&d.id]).await;
    let id = transfer_of(&location(&submit(&b, &csrf, &token, &[&d.id]).await));
    w.app.until_state(&id, TransferState::Ready).await;
    // The back-off runs on the injected clock: move it on until the third attempt is taken.
    let mut got = None;
    for _ in 0..200 {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            got = Some(m);
            break;
        }
        w.app.clock.advance(Duration::from_secs(30));
    }
    let body = mail_body(&got.expect("the notice after retries"));
    assert_eq!(rejected.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The job's record of the refusal keeps its code, not the server's text with the address.
    let file = w.app.db_url.trim_start_matches("sqlite://").to_owned();
    let errors: Vec<String> = tokio::task::spawn_blocking(move || {
        let db = rusqlite::Connection::open(file).unwrap();
        let mut q = db
            .prepare(
                "SELECT last_error FROM jobs WHERE queue = 'messages' AND last_error IS NOT NULL",
            )
            .unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        errors,
        vec!["the mail server deferred the message (451)".to_owned()]
    );
    assert!(body.contains(&id), "{body}");
    // Exactly one notice: no duplicate after the retries.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err()
    );
}

/// A notice per transfer goes out over the connection the last one used: the platform keeps its
/// connections to the mail server open instead of a TCP (and TLS) handshake and a login for each.
#[tokio::test]
async fn notices_reuse_the_connection_to_the_mail_server() {
    let mut w = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.5.0.2").await;
    let d = crate::fetch::instant(&w.agencies().sim);
    for _ in 0..3 {
        let (csrf, token) = consent_form(&b, &[&d.id]).await;
        let id = transfer_of(&location(&submit(&b, &csrf, &token, &[&d.id]).await));
        w.app.until_state(&id, TransferState::Ready).await;
        let body = mail_body(&w.next_mail(BOUND).await);
        assert!(body.contains(&id), "{body}");
    }
    assert_eq!(
        w.smtp_connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// The next message the SMS gateway took (bounded wait).
async fn next_sms(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) -> serde_json::Value {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("an SMS within the bound")
        .expect("the gateway is running")
        .1
}

/// Issue 6: a person who registered a mobile number at first use gets the "data ready" notice by
/// SMS, through the platform's HTTP gateway (here a loopback receiver), and no email.
#[tokio::test]
async fn the_data_ready_notice_goes_by_sms_to_a_registered_mobile_number() {
    let (url, mut sms) = crate::world::sms_gateway(0).await;
    let mut w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.messages.sms.gateway_url = url;
    })
    .await;
    let p = w.people[0].clone();
    let b = w.browser("10.5.1.1");
    // First use: the mobile number is proved with the code the gateway received.
    let r = b.certificate(&w.card(&p), "/").await;
    assert_eq!(location(&r), "/login/first-use");
    let csrf = b.csrf("/login/first-use").await;
    let r = b
        .post(
            "/login/first-use",
            &[
                ("csrf", &csrf),
                ("channel", "sms"),
                ("address", "0912-345-678"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let code_sms = next_sms(&mut sms).await;
    assert_eq!(code_sms["to"], "+886912345678");
    let code = crate::world::code_in(code_sms["text"].as_str().unwrap());
    let csrf = b.csrf("/login/first-use/code").await;
    let r = b
        .post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(b.session().await["level"], 1);

    // Self-download of a dataset ready at once; its notice arrives by SMS.
    let d = crate::fetch::instant(&w.agencies().sim);
    let (csrf, token) = consent_form(&b, &[&d.id]).await;
    let id = transfer_of(&location(&submit(&b, &csrf, &token, &[&d.id]).await));
    w.app.until_state(&id, TransferState::Ready).await;
    let notice = next_sms(&mut sms).await;
    assert_eq!(notice["to"], "+886912345678");
    let text = notice["text"].as_str().unwrap();
    let short: String = id.chars().take(8).collect();
    assert!(
        text.contains("1 項資料") && text.contains("下載完成") && text.contains(&short),
        "{text}"
    );
    assert!(text.contains("/records"), "{text}");
    assert!(
        !text.contains(&p.id) && !text.contains(&p.name) && !text.contains(&d.name_zh),
        "an SMS names no one and no data: {text}"
    );
    // One channel registered, one notice: no email, no second SMS.
    assert!(
        w.mail.try_recv().is_err(),
        "no email without an email address"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sms.recv())
            .await
            .is_err(),
        "one SMS per notice"
    );
}

/// A dataset's verification problem is the package library's English text: on the Chinese
/// preview it says it is English.
#[test]
fn the_preview_marks_the_english_problem_text_as_english() {
    use askama::Template;
    use mydata_server::i18n::Lang;
    use mydata_server::pages::Chrome;
    use mydata_server::routes::download::{PreviewDatasetView, PreviewPage};
    for lang in [Lang::ZhTw, Lang::En] {
        let p = PreviewPage {
            chrome: Chrome::new(lang),
            title: "t",
            id: "tr-1".into(),
            caution: "c",
            receipt: "r".into(),
            receipt_ok: false,
            datasets: vec![PreviewDatasetView {
                id: "household-register-personal".into(),
                name: "n".into(),
                agency: "a".into(),
                verified: false,
                verdict: "v".into(),
                problem: Some("the certificate has expired".into()),
                issued: String::new(),
                files: Vec::new(),
            }],
            issued_label: "i",
            pdf_title: "p",
            pdf_open: "o",
            back: "b",
            remaining: String::new(),
        };
        let html = p.render().unwrap();
        assert!(
            html.contains("<code lang=\"en\">the certificate has expired</code>"),
            "{html}"
        );
    }
}
