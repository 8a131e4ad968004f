//! The harness against real Chromium and tiny pages served on loopback: each helper does what a
//! person at the keyboard would see, and each check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use mydata_browser_test::{Browser, BrowserError, Key, Viewport};

const FORM: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Form</title></head>
<body><main><h1>Form</h1>
<label for="name">Name</label> <input id="name">
<button id="go" type="button">Greet</button>
<p id="out" aria-live="polite"></p>
<a id="last" href="/other">Other page</a>
<script>
document.getElementById('go').addEventListener('click', () => {
  document.getElementById('out').textContent = 'Hello, ' + document.getElementById('name').value;
});
document.cookie = 'seen=1; path=/';
</script></main></body></html>"#;

const BAD: &str = r#"<!doctype html><html><head><title>Bad</title></head>
<body><img src="/x.png"><input></body></html>"#;

const PASSKEY: &str = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Passkey</title></head>
<body><main><h1>Passkey</h1><script>
async function register() {
  const cred = await navigator.credentials.create({ publicKey: {
    rp: { name: 'mydata test', id: 'localhost' },
    user: { id: new Uint8Array([1, 2, 3, 4]), name: 'tester', displayName: 'Tester' },
    challenge: crypto.getRandomValues(new Uint8Array(32)),
    pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
    authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
  }});
  const got = await navigator.credentials.get({ publicKey: {
    rpId: 'localhost', challenge: crypto.getRandomValues(new Uint8Array(32)), userVerification: 'required',
  }});
  return { created: cred.id, used: got.id, secure: window.isSecureContext };
}
</script></main></body></html>"#;

async fn serve() -> String {
    let app = Router::new()
        .route("/", get(|| async { Html(FORM) }))
        .route(
            "/other",
            get(|| async { Html("<!doctype html><title>Other</title><p>Other page</p>") }),
        )
        .route("/bad", get(|| async { Html(BAD) }))
        .route("/passkey", get(|| async { Html(PASSKEY) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn typing_clicking_keyboard_and_screenshots_work_like_a_person_using_the_page() {
    let base = serve().await;
    let browser = Browser::shared().unwrap();
    assert!(
        browser.version().contains("Chrome"),
        "{}",
        browser.version()
    );
    let ctx = browser.new_context("harness_form").await.unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    page.goto(&format!("{base}/")).await.unwrap();
    page.fill("#name", "王小明").await.unwrap();
    page.click("#go").await.unwrap();
    page.wait_for_text("Hello, 王小明").await.unwrap();
    assert_eq!(page.text("#out").await.unwrap(), "Hello, 王小明");

    // Keyboard only: from the top, Tab reaches the link; Enter follows it.
    page.goto(&format!("{base}/")).await.unwrap();
    let presses = page.tab_to("#last", 6).await.unwrap();
    assert_eq!(presses, 3, "input, button, link");
    page.press(Key::Enter).await.unwrap();
    page.wait_for_text("Other page").await.unwrap();
    assert!(page.url().await.unwrap().ends_with("/other"));

    let shot = page.screenshot("other").await.unwrap();
    assert!(
        shot.ends_with("harness_form/other-375x812.png"),
        "{}",
        shot.display()
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(page.js_errors().is_empty());
}

#[tokio::test]
async fn waits_are_bounded_and_name_what_they_waited_for() {
    let base = serve().await;
    let ctx = Browser::shared()
        .unwrap()
        .new_context("harness_wait")
        .await
        .unwrap();
    let mut page = ctx.new_page(Viewport::DESKTOP).await.unwrap();
    page.set_timeout(std::time::Duration::from_millis(300));
    page.goto(&format!("{base}/")).await.unwrap();
    let err = page.wait_for("#never").await.unwrap_err();
    assert!(
        matches!(err, BrowserError::Timeout(ref m) if m.contains("#never")),
        "{err}"
    );
    let err = page.tab_to("#never", 2).await.unwrap_err();
    assert!(err.to_string().contains("never focused #never"), "{err}");
    assert!(matches!(
        page.text("#never").await,
        Err(BrowserError::NotFound(_))
    ));
}

#[tokio::test]
async fn accessibility_check_fails_on_a_page_with_serious_violations_and_passes_a_good_one() {
    let base = serve().await;
    let ctx = Browser::shared()
        .unwrap()
        .new_context("harness_axe")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::DESKTOP).await.unwrap();
    page.goto(&format!("{base}/bad")).await.unwrap();
    let err = page.assert_accessible("bad").await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("image-alt") && msg.contains("label"), "{msg}");
    assert!(ctx.artifacts_dir().join("bad-1280x800-axe.json").is_file());

    page.goto(&format!("{base}/")).await.unwrap();
    let report = page.assert_accessible("form").await.unwrap();
    assert!(report.passes > 5);
}

#[tokio::test]
async fn contexts_do_not_share_cookies() {
    let base = serve().await;
    let browser = Browser::shared().unwrap();
    let a = browser.new_context("harness_ctx_a").await.unwrap();
    let b = browser.new_context("harness_ctx_b").await.unwrap();
    let pa = a.new_page(Viewport::DESKTOP).await.unwrap();
    pa.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(pa.eval("document.cookie").await.unwrap(), "seen=1");
    let pb = b.new_page(Viewport::DESKTOP).await.unwrap();
    pb.goto(&format!("{base}/other")).await.unwrap();
    assert_eq!(pb.eval("document.cookie").await.unwrap(), "");
}

#[tokio::test]
async fn virtual_authenticator_creates_and_uses_a_passkey() {
    let base = serve().await.replace("127.0.0.1", "localhost");
    let ctx = Browser::shared()
        .unwrap()
        .new_context("harness_webauthn")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    let auth = page.add_virtual_authenticator().await.unwrap();
    page.goto(&format!("{base}/passkey")).await.unwrap();
    let r = page.eval("register()").await.unwrap();
    assert_eq!(r["secure"], true, "{r}");
    assert_eq!(r["created"], r["used"], "{r}");
    let creds = page.credentials(&auth).await.unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["isResidentCredential"], true);
    assert_eq!(creds[0]["rpId"], "localhost");

    // A failed fingerprint: the ceremony is refused.
    page.set_user_verified(&auth, false).await.unwrap();
    let err = page.eval("register()").await.unwrap_err();
    assert!(err.to_string().contains("NotAllowedError"), "{err}");
}

#[tokio::test]
async fn a_missing_chromium_fails_loudly_with_what_to_do() {
    let err = Browser::launch_at(std::path::Path::new("/nonexistent/chromium"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/chromium") && msg.contains("MYDATA_CHROMIUM"),
        "{msg}"
    );
}
