//! The card agent called from real Chromium, as the platform's login page will call it: CORS lets
//! the allowed page through and stops any other, and the signature made from the browser verifies
//! against the card's certificate for the exact challenge bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::response::Html;
use axum::routing::get;
use base64::Engine as _;
use mydata_browser_test::{Browser, Key, Viewport};
use mydata_card::agent::{Agent, AgentConfig, bind};
use mydata_card::demo::{CardSpec, CardStatus, ensure_cards};
use mydata_card::{CardKind, Subject};
use mydata_core::Timestamp;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;

/// A stand-in for the login page: reads the card, asks for the PIN, has the challenge signed.
const PAGE: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Card login</title></head>
<body><main><h1>Sign in with your card</h1>
<p id="card">Reading the card…</p>
<form id="f"><label for="pin">Card PIN</label> <input id="pin" type="password" inputmode="numeric" autocomplete="off">
<button type="submit">Sign in</button></form>
<p id="result" role="status"></p>
<script>
const agent = new URLSearchParams(location.search).get('agent');
const b64url = s => btoa(String.fromCharCode(...new TextEncoder().encode(s))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const challenge = 'mydata-login-v1\n' + location.origin + '\nch-42\n' + b64url('nonce-bytes-0123456789abcdef0123');
window.challenge = challenge;
fetch(agent + '/v1/card').then(r => r.json()).then(c => {
  document.getElementById('card').textContent = 'Card of ' + c.subject + ' (' + c.serial_number + '), tries left ' + c.pin_tries_left;
}).catch(e => { document.getElementById('card').textContent = 'Card agent unreachable: ' + e.name; });
document.getElementById('f').addEventListener('submit', async ev => {
  ev.preventDefault();
  const out = document.getElementById('result');
  try {
    const r = await fetch(agent + '/v1/sign', { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ pin: document.getElementById('pin').value, to_be_signed: b64url(challenge) }) });
    const body = await r.json();
    window.signed = body;
    out.textContent = r.ok ? 'Signed' : (body.error + (body.tries_left !== undefined ? ', tries left ' + body.tries_left : ''));
  } catch (e) { out.textContent = 'Card agent unreachable: ' + e.name; }
});
</script></main></body></html>"#;

async fn serve_page() -> String {
    let app = axum::Router::new().route("/", get(|| async { Html(PAGE) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn the_allowed_page_gets_a_signature_that_verifies_and_another_site_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CardSpec {
        subject: Subject {
            kind: CardKind::Citizen,
            name: "林雅婷".into(),
            serial_number: "F223456781".into(),
        },
        status: CardStatus::Valid,
    };
    ensure_cards(
        dir.path(),
        &[spec],
        Timestamp::from_millis(1_790_000_000_000),
    )
    .unwrap();
    let page_origin = serve_page().await;
    let other_origin = serve_page().await;

    let agent = Agent::open(&AgentConfig {
        card: dir.path().join("F223456781.p12"),
        state: None,
        allowed_origins: vec![page_origin.clone()],
    })
    .unwrap();
    let (listener, router) = bind(Arc::new(agent), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let agent_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let ctx = Browser::shared()
        .unwrap()
        .new_context("card_agent_login")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    page.goto(&format!("{page_origin}/?agent={agent_url}"))
        .await
        .unwrap();
    page.wait_for_text("Card of 林雅婷 (F223456781), tries left 3")
        .await
        .unwrap();

    // A wrong PIN typed by keyboard: the page learns how many tries are left.
    page.fill("#pin", "000000").await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_for_text("wrong_pin, tries left 2").await.unwrap();

    page.fill("#pin", "123456").await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_for_text("Signed").await.unwrap();
    page.screenshot("signed").await.unwrap();
    page.assert_accessible("signed").await.unwrap();

    let signed = page.eval("window.signed").await.unwrap();
    let challenge = page.eval("window.challenge").await.unwrap();
    let challenge = challenge.as_str().unwrap().as_bytes().to_vec();
    assert!(challenge.starts_with(format!("mydata-login-v1\n{page_origin}\n").as_bytes()));
    let b64 = base64::engine::general_purpose::STANDARD;
    let leaf = b64.decode(signed["x5c"][0].as_str().unwrap()).unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signed["signature"].as_str().unwrap())
        .unwrap();
    let leaf = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, &challenge, &sig)
        .unwrap();

    // The same page from another origin: the browser's CORS check stops both calls.
    let other = ctx.new_page(Viewport::DESKTOP).await.unwrap();
    other
        .goto(&format!("{other_origin}/?agent={agent_url}"))
        .await
        .unwrap();
    other
        .wait_for_text("Card agent unreachable: TypeError")
        .await
        .unwrap();
    other.fill("#pin", "000000").await.unwrap();
    other.press(Key::Enter).await.unwrap();
    // The page clears `#result` while its second call is under way: wait for that call's verdict.
    let mut result = String::new();
    for _ in 0..200 {
        result = other.text("#result").await.unwrap();
        if !result.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(result, "Card agent unreachable: TypeError");

    // ...and spent none of the card's tries.
    let info: serde_json::Value = reqwest::get(format!("{agent_url}/v1/card"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["pin_tries_left"], 3);
}
