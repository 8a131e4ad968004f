//! `mydata demo` is wired for every sign-in method: a synthetic person signs in by certificate
//! (a demo card served by the real `mydata card-agent`, PIN 123456, first-use code read from
//! `/dev/outbox`), registers a health-card password, then signs in by health card + password and
//! by dual ID, all checked against the demo's in-process simulated agencies; a synthetic company
//! signs in by its business certificate and is offered company data only. In Chromium, at the
//! demo's `localhost` address, a person registers a passkey after a card sign-in and signs in
//! with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_mydata");

/// Starts `mydata ARGS` and returns it with the first line it prints (its URL).
async fn start(args: &[&str]) -> (tokio::process::Child, String) {
    start_with(args, &[]).await
}

/// [`start`] with environment variables set.
async fn start_with(args: &[&str], env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
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

/// The demo's cards (`index.json`) and the first valid card of `kind` (citizen or business).
fn demo_card(dir: &std::path::Path, kind: &str) -> (std::path::PathBuf, String) {
    let cards = dir.join("demo/cards");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cards.join("index.json")).unwrap()).unwrap();
    let card = index["cards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == kind && c["status"] == "valid")
        .unwrap();
    assert_eq!(index["pin"], "123456");
    (
        cards.join(card["file"].as_str().unwrap()),
        card["serial_number"].as_str().unwrap().to_owned(),
    )
}

/// The real card agent holding `card`, on `listen`, serving `origin`; returns it and its URL.
async fn card_agent(
    card: &std::path::Path,
    listen: &str,
    origins: &[&str],
) -> (tokio::process::Child, String) {
    let mut args = vec![
        "card-agent",
        "--card",
        card.to_str().unwrap(),
        "--listen",
        listen,
    ];
    for o in origins {
        args.extend(["--allow-origin", o]);
    }
    start(&args).await
}

/// Signs in by certificate (`moica_cert` or `moea_cert`) the way `login.js` does: challenge from
/// the page, signature from the card agent, form posted back. Returns the final response.
async fn certificate(
    b: &reqwest::Client,
    base: &str,
    agent: &str,
    method: &str,
) -> reqwest::Response {
    let token = csrf(b, &format!("{base}/login/{method}?next=/")).await;
    let ch: serde_json::Value = b
        .post(format!("{base}/login/{method}/challenge"))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let signed: serde_json::Value = reqwest::Client::new()
        .post(format!("{agent}/v1/sign"))
        .header("origin", base)
        .json(&serde_json::json!({ "pin": "123456", "to_be_signed": ch["to_be_signed"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    b.post(format!("{base}/login/{method}"))
        .form(&[
            ("csrf", token.as_str()),
            ("challenge_id", ch["challenge_id"].as_str().unwrap()),
            ("signature", signed["signature"].as_str().unwrap()),
            ("x5c", &signed["x5c"].to_string()),
        ])
        .send()
        .await
        .unwrap()
}

/// The newest one-time code sent to `address`, read from `/dev/outbox` (bounded wait).
async fn outbox_code(base: &str, address: &str) -> String {
    for _ in 0..300 {
        let page = reqwest::get(format!("{base}/dev/outbox"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(i) = page.find(&format!("→ {address}"))
            && let Some(j) = page[i..].find("code is ")
        {
            let at = i + j + 8;
            return page[at..at + 6].to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no code for {address} on /dev/outbox");
}

/// Registers `address` for first use and enters the code from the outbox.
async fn first_use(b: &reqwest::Client, base: &str, address: &str) -> reqwest::Response {
    let token = csrf(b, &format!("{base}/login/first-use")).await;
    let r = b
        .post(format!("{base}/login/first-use"))
        .form(&[
            ("csrf", token.as_str()),
            ("channel", "email"),
            ("address", address),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let code = outbox_code(base, address).await;
    let token = csrf(b, &format!("{base}/login/first-use/code")).await;
    b.post(format!("{base}/login/first-use/code"))
        .form(&[("csrf", token.as_str()), ("code", code.as_str())])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn in_the_demo_a_person_signs_in_by_certificate_health_card_and_dual_id_and_a_company_by_business_certificate()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (_demo, base) = start(&["demo", "--listen", "127.0.0.1:0", "--data-dir", data]).await;

    // The first valid citizen card of the demo and that person's records at the simulated agencies.
    let (card_file, id) = demo_card(dir.path(), "citizen");
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

    // The outbox page tells how to use the cards, a company's among them, at both loopback names.
    let outbox = reqwest::get(format!("{base}/dev/outbox"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let by_name = base.replace("127.0.0.1", "localhost");
    assert!(outbox.contains("mydata card-agent --card") && outbox.contains("123456"));
    assert!(outbox.contains("工商憑證"), "a business card is listed");
    assert!(
        outbox.contains(&format!("--allow-origin {base} --allow-origin {by_name}")),
        "{outbox}"
    );
    assert!(outbox.contains(&format!("{by_name}/account/passkeys")));
    assert!(
        outbox.contains(&format!(
            "健保卡號 {}；戶號 {household}",
            person.nhi_card_no
        )),
        "what dual ID asks for is shown beside the person's card"
    );

    // Certificate: the real card agent signs the platform's challenge.
    let (_agent, agent) = card_agent(&card_file, "127.0.0.1:0", &[&base]).await;
    let b = browser();
    let r = certificate(&b, &base, &agent, "moica_cert").await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/login/first-use");

    // First use: the code arrives on /dev/outbox.
    let r = first_use(&b, &base, "demo@example.org").await;
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

    // A company: its business card in the agent, the citizen method refuses it, the business one
    // signs it in (first use included) as a legal person.
    let (biz_file, ban) = demo_card(dir.path(), "business");
    assert_eq!(ban.len(), 8, "a 統一編號");
    let (_biz_agent, biz_agent) = card_agent(&biz_file, "127.0.0.1:0", &[&base]).await;
    let c = browser();
    let r = certificate(&c, &base, &biz_agent, "moica_cert").await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("wrong_subject_kind"));
    let r = certificate(&c, &base, &biz_agent, "moea_cert").await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(r.headers()["location"], "/login/first-use");
    assert_eq!(
        first_use(&c, &base, "company@example.org").await.status(),
        303
    );
    let s = session(&c, &base).await;
    assert_eq!(
        (
            s["method"].as_str(),
            s["level"].as_u64(),
            s["subject_kind"].as_str()
        ),
        (Some("moea_cert"), Some(1), Some("legal"))
    );

    // What the catalogue says the company may ask for: a dataset that accepts business
    // certificates is offered (its consent page), a person's dataset is not (back to the method
    // choice, which offers no business certificate for it and says why).
    let list: serde_json::Value =
        reqwest::get(format!("{base}/api/v1/datasets?identity_method=moea_cert"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let accepting: Vec<&str> = list["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let company_ds = accepting[0];
    let person_ds = "household-register-personal";
    assert!(!accepting.contains(&person_ds));
    let terms = "agree=selfdl-terms-2026-11";
    let r = c
        .get(format!("{base}/download/consent?d={company_ds}&{terms}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the company's own data is offered");
    let r = c
        .get(format!("{base}/download/consent?d={person_ds}&{terms}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "a person's data is not the company's");
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.starts_with("/login?"), "{to}");
    let choice = c
        .get(format!("{base}{to}&lang=en"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(choice.contains("data-method=\"moica_cert\""), "{choice}");
    assert!(!choice.contains("data-method=\"moea_cert\""), "{choice}");
    assert!(
        choice.contains("the data you chose is a person&#39;s, which a company cannot request")
            || choice.contains("the data you chose is a person's, which a company cannot request"),
        "{choice}"
    );
}

/// A loopback port free at the moment (for a process that must be told its address in advance).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn in_the_demo_at_localhost_a_person_registers_a_passkey_after_a_card_sign_in_and_signs_in_with_it()
 {
    use mydata_browser_test::{Browser as Chromium, Key, Viewport};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The page finds the card agent where the configuration says; the agent serves the demo's
    // `localhost` origin, the one passkeys work at.
    let agent_port = free_port();
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    let (_demo, base) = start_with(
        &["demo", "--listen", "127.0.0.1:0", "--data-dir", data],
        &[("MYDATA_IDENTITY__CARD_AGENT_URL", &agent_url)],
    )
    .await;
    let local = base.replace("127.0.0.1", "localhost");
    let (card_file, id) = demo_card(dir.path(), "citizen");
    let (_agent, _) = card_agent(
        &card_file,
        &format!("127.0.0.1:{agent_port}"),
        &[&base, &local],
    )
    .await;

    let ctx = Chromium::shared()
        .unwrap()
        .new_context("demo_passkey")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    let auth = page.add_virtual_authenticator().await.unwrap();

    // The method choice links to passkeys.
    page.goto(&format!("{local}/login")).await.unwrap();
    assert_eq!(page.count("a[data-method=tw_fido]").await.unwrap(), 1);

    // Level 1 by the demo card (PIN 123456), first use with the code from the outbox, then on to
    // the passkey page.
    page.goto(&format!("{local}/login/moica_cert?next=/account/passkeys"))
        .await
        .unwrap();
    page.fill("#pin", "123456").await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/login/first-use' && document.readyState === 'complete'",
        "the first-use page",
    )
    .await
    .unwrap();
    page.fill("#f-address", "passkey@example.org")
        .await
        .unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/login/first-use/code' && document.readyState === 'complete'",
        "the code page",
    )
    .await
    .unwrap();
    let code = outbox_code(&base, "passkey@example.org").await;
    page.fill("#f-code", &code).await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/account/passkeys' && document.readyState === 'complete'",
        "the passkey page after the card sign-in",
    )
    .await
    .unwrap();
    page.wait_for("#passkey-form").await.unwrap();

    // Register: the virtual authenticator creates the passkey for `localhost`.
    page.fill("#f-name", "示範手機").await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_for_text("通行密鑰已註冊").await.unwrap();
    let held = page.credentials(&auth).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["rpId"], "localhost");

    // Sign out with the page's button, then sign in with the passkey alone.
    page.click("#sign-out button").await.unwrap();
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete'",
        "the home page after sign-out",
    )
    .await
    .unwrap();
    let s = page
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(s["signed_in"], false);
    page.goto(&format!("{local}/login/tw_fido?next=/"))
        .await
        .unwrap();
    page.fill("#f-id_number", &id).await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete'",
        "the home page after the passkey sign-in",
    )
    .await
    .unwrap();
    let s = page
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("tw_fido"), Some(2))
    );
    assert!(page.js_errors().is_empty(), "{:?}", page.js_errors());
}
