//! `mydata demo` is wired for every sign-in method: a synthetic person signs in by certificate
//! (a demo card served by the real `mydata card-agent`, PIN 123456, first-use code read from
//! `/dev/outbox`), registers a health-card password, then signs in by health card + password and
//! by dual ID, all checked against the demo's in-process simulated agencies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mydata");

/// Starts `mydata ARGS` and returns it with the first line it prints (its URL).
async fn start(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("MYDATA_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("no URL printed in time")
        .unwrap()
        .unwrap();
    (child, url)
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn csrf_in(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    html[i..].split('"').next().unwrap().to_owned()
}

async fn csrf(b: &reqwest::Client, url: &str) -> String {
    let r = b.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    csrf_in(&r.text().await.unwrap())
}

async fn session(b: &reqwest::Client, base: &str) -> serde_json::Value {
    b.get(format!("{base}/api/v1/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn in_the_demo_a_person_signs_in_by_certificate_health_card_and_dual_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (_demo, base) = start(&["demo", "--listen", "127.0.0.1:0", "--data-dir", data]).await;

    // The first valid citizen card of the demo and that person's records at the simulated agencies.
    let cards = dir.path().join("demo/cards");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cards.join("index.json")).unwrap()).unwrap();
    let card = index["cards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "citizen" && c["status"] == "valid")
        .unwrap();
    let id = card["serial_number"].as_str().unwrap().to_owned();
    let population = mydata_provider_sim::population::Population::generate(
        mydata_provider_sim::server::DEFAULT_SEED,
        mydata_provider_sim::date::Date::new(2025, 12, 31).unwrap(),
    );
    let person = population
        .persons()
        .iter()
        .find(|p| p.id.as_str() == id)
        .unwrap();
    let household = population.household_of(person).unwrap().number.clone();

    // The outbox page tells how to use the cards.
    let outbox = reqwest::get(format!("{base}/dev/outbox"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(outbox.contains("mydata card-agent --card") && outbox.contains("123456"));

    // Certificate: the real card agent signs the platform's challenge.
    let card_file = cards.join(card["file"].as_str().unwrap());
    let (_agent, agent) = start(&[
        "card-agent",
        "--card",
        card_file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--allow-origin",
        &base,
    ])
    .await;
    let b = browser();
    let token = csrf(&b, &format!("{base}/login/moica_cert?next=/")).await;
    let ch: serde_json::Value = b
        .post(format!("{base}/login/moica_cert/challenge"))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed: serde_json::Value = reqwest::Client::new()
        .post(format!("{agent}/v1/sign"))
        .header("origin", &base)
        .json(&serde_json::json!({ "pin": "123456", "to_be_signed": ch["to_be_signed"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = b
        .post(format!("{base}/login/moica_cert"))
        .form(&[
            ("csrf", token.as_str()),
            ("challenge_id", ch["challenge_id"].as_str().unwrap()),
            ("signature", signed["signature"].as_str().unwrap()),
            ("x5c", &signed["x5c"].to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/login/first-use");

    // First use: the code arrives on /dev/outbox.
    let token = csrf(&b, &format!("{base}/login/first-use")).await;
    let r = b
        .post(format!("{base}/login/first-use"))
        .form(&[
            ("csrf", token.as_str()),
            ("channel", "email"),
            ("address", "demo@example.org"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let mut code = None;
    for _ in 0..300 {
        let page = reqwest::get(format!("{base}/dev/outbox"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(i) = page.find("code is ") {
            code = Some(page[i + 8..i + 14].to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let code = code.expect("a code on /dev/outbox");
    let token = csrf(&b, &format!("{base}/login/first-use/code")).await;
    let r = b
        .post(format!("{base}/login/first-use/code"))
        .form(&[("csrf", token.as_str()), ("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let s = session(&b, &base).await;
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("moica_cert"), Some(1))
    );

    // Health card + password, registered in that level-1 session.
    let token = csrf(&b, &format!("{base}/account/password")).await;
    let r = b
        .post(format!("{base}/account/password"))
        .form(&[
            ("csrf", token.as_str()),
            ("password", "demo passphrase"),
            ("confirm", "demo passphrase"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = browser();
    let token = csrf(&b, &format!("{base}/login/nhi_card")).await;
    let r = b
        .post(format!("{base}/login/nhi_card"))
        .form(&[
            ("csrf", token.as_str()),
            ("id_number", id.as_str()),
            ("nhi_card_no", person.nhi_card_no.as_str()),
            ("password", "demo passphrase"),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let s = session(&b, &base).await;
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("nhi_card"), Some(3))
    );

    // Dual ID.
    let b = browser();
    let token = csrf(&b, &format!("{base}/login/dual_id")).await;
    let r = b
        .post(format!("{base}/login/dual_id"))
        .form(&[
            ("csrf", token.as_str()),
            ("id_number", id.as_str()),
            ("nhi_card_no", person.nhi_card_no.as_str()),
            ("household_no", household.as_str()),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let s = session(&b, &base).await;
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("dual_id"), Some(4))
    );
}
