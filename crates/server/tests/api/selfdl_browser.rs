//! Self-download in real Chromium at phone and laptop sizes: choose (with a 60-minute dataset) →
//! terms → certificate sign-in → consent → live progress while the ManualClock moves an hour →
//! preview → save → confirm deletion → usage records. Screenshots of each step and an axe-core
//! check of each page (no serious or critical findings) under `target/screenshots/`.

use crate::helpers::Backend;
use crate::world::{Card, FlowWorld};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_browser_test::{Browser as Chromium, Key, Page, Viewport};
use std::sync::Arc;
use std::time::Duration;

/// A stand-in for `mydata card-agent` on loopback: signs the login challenge with the card once
/// the PIN is right.
pub(crate) async fn card_agent(card: Arc<std::sync::Mutex<Option<Card>>>) -> String {
    use axum::http::{HeaderValue, StatusCode, header};
    let sign = move |axum::Json(b): axum::Json<serde_json::Value>| {
        let card = card.clone();
        async move {
            if b["pin"] != "123456" {
                let body = serde_json::json!({"error": "wrong_pin", "tries_left": 2});
                return (StatusCode::UNAUTHORIZED, axum::Json(body));
            }
            let text = URL_SAFE_NO_PAD
                .decode(b["to_be_signed"].as_str().unwrap_or_default())
                .unwrap();
            let guard = card.lock().unwrap();
            let c = guard.as_ref().unwrap();
            let body = serde_json::json!({"signature": c.sign(&text), "x5c": c.x5c});
            (StatusCode::OK, axum::Json(body))
        }
    };
    let cors = |mut res: axum::response::Response| async move {
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        res
    };
    let router = axum::Router::new()
        .route(
            "/v1/sign",
            axum::routing::post(sign).options(|| async { StatusCode::NO_CONTENT }),
        )
        .layer(axum::middleware::map_response(cors));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

pub(crate) async fn step(page: &Page, name: &str) {
    page.wait_loaded().await.unwrap();
    assert_eq!(
        page.horizontal_overflow().await.unwrap(),
        0,
        "{name} scrolls sideways"
    );
    page.screenshot(name).await.unwrap();
    page.assert_accessible(name).await.unwrap();
}

/// Clicks `selector` (or presses Enter on it when `key`) and waits until a new document has loaded.
pub(crate) async fn navigate(page: &Page, selector: &str, key: bool) {
    page.eval("window.__before = true").await.unwrap();
    if key {
        page.press(Key::Enter).await.unwrap();
    } else {
        page.click(selector).await.unwrap();
    }
    page.wait_until(
        "window.__before !== true && document.readyState === 'complete'",
        selector,
    )
    .await
    .unwrap();
}

pub(crate) async fn at_path(page: &Page, path: &str, what: &str) {
    page.wait_until(
        &format!("location.pathname === '{path}' && document.readyState === 'complete'"),
        what,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn self_download_in_chromium_at_phone_and_laptop_sizes() {
    for (n, viewport) in [(0usize, Viewport::MOBILE), (1, Viewport::DESKTOP)] {
        let slot: Arc<std::sync::Mutex<Option<Card>>> = Arc::default();
        let agent = card_agent(slot.clone()).await;
        let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
            s.identity.card_agent_url = agent;
        })
        .await;
        let p = w.people[n].clone();
        w.known(&p).await;
        *slot.lock().unwrap() = Some(w.card(&p));
        let sim = w.agencies().sim.clone();
        let slow = crate::fetch::dataset_where(&sim, |d| d.ready_minutes == 60);
        let quick = crate::fetch::dataset_where(&sim, |d| {
            d.ready_minutes == 0 && d.formats.iter().any(|f| f.code() == "json")
        });
        let ctx = Chromium::shared()
            .unwrap()
            .new_context(&format!("selfdl_{}", viewport.label()))
            .await
            .unwrap();
        let page = ctx.new_page(viewport).await.unwrap();
        let base = &w.app.base;

        // 1. Choose: search, tick two datasets (one by keyboard), update the basket.
        page.goto(&format!("{base}/download")).await.unwrap();
        page.wait_loaded().await.unwrap();
        page.fill("#q", &slow.name_zh).await.unwrap();
        navigate(&page, "#update", false).await;
        let slow_box = format!("#ds-{} input[type=checkbox]", slow.id);
        page.tab_to(&slow_box, 60).await.unwrap();
        page.press(Key::Space).await.unwrap();
        navigate(&page, "#update", false).await;
        assert_eq!(
            page.count(&format!(".basket input[value='{}']", slow.id))
                .await
                .unwrap(),
            1
        );
        page.fill("#q", &quick.name_zh).await.unwrap();
        navigate(&page, "#update", false).await;
        page.click(&format!("#ds-{} input[type=checkbox]", quick.id))
            .await
            .unwrap();
        navigate(&page, "#update", false).await;
        assert_eq!(page.count(".basket input[name=d]").await.unwrap(), 2);
        step(&page, "1-choose").await;

        // 2. Terms: explicit agreement.
        navigate(&page, "#next", false).await;
        at_path(&page, "/download/terms", "the terms").await;
        step(&page, "2-terms").await;
        page.click("input[name=agree]").await.unwrap();
        navigate(&page, "form.login button[type=submit]", false).await;

        // 3. Sign in: only methods every dataset accepts; the certificate with its PIN.
        at_path(&page, "/login", "the method choice").await;
        step(&page, "3-login").await;
        assert_eq!(page.count("a[data-method=dual_id]").await.unwrap(), 0);
        navigate(&page, "a[data-method=moica_cert]", false).await;
        at_path(&page, "/login/moica_cert", "the certificate page").await;
        page.fill("#pin", "123456").await.unwrap();
        page.click("button[type=submit]").await.unwrap();

        // 4. Consent.
        at_path(&page, "/download/consent", "the consent page").await;
        step(&page, "4-consent").await;
        navigate(&page, "#consent", false).await;
        page.wait_until(
            "location.pathname.startsWith('/download/t/') && document.readyState === 'complete'",
            "the progress page",
        )
        .await
        .unwrap();
        let id = page.text("#request-id").await.unwrap();

        // 5. Progress: the quick one done, the 60-minute one waiting with its expected time.
        page.wait_for(&format!("tr[data-ds='{}'].tone-done", quick.id))
            .await
            .unwrap();
        assert_eq!(
            page.count(&format!("tr[data-ds='{}'].tone-waiting", slow.id))
                .await
                .unwrap(),
            1
        );
        assert!(page.text("#main").await.unwrap().contains("60"));
        step(&page, "5-progress").await;
        // An hour passes on the platform's clock; the page follows by itself. (Slower than the
        // page polls, so its polling keeps the 15-minute idle session alive, as it does for a
        // person watching the page.)
        let mut ready = false;
        for _ in 0..150 {
            w.app.clock.advance(Duration::from_secs(60));
            tokio::time::sleep(Duration::from_millis(250)).await;
            if page.count("#save-zip").await.unwrap_or(0) == 1 {
                ready = true;
                break;
            }
        }
        assert!(ready, "the page never showed the ready data");
        page.wait_loaded().await.unwrap();
        step(&page, "6-ready").await;

        // 6. Preview: both datasets with a valid agency signature.
        navigate(&page, "#preview-link", false).await;
        at_path(&page, &format!("/download/t/{id}/preview"), "the preview").await;
        assert_eq!(page.count(".ok.verdict").await.unwrap(), 2);
        assert!(page.count("iframe.pdf").await.unwrap() >= 1);
        step(&page, "7-preview").await;

        // 7. Save the package (as the download link does), then confirm deletion.
        let size = page
            .eval(&format!(
                "fetch('/download/t/{id}/package').then(r => r.status === 200 ? r.arrayBuffer() : null).then(b => b ? b.byteLength : 0)"
            ))
            .await
            .unwrap();
        assert!(size.as_u64().unwrap() > 1000, "{size}");
        page.goto(&format!("{base}/download/t/{id}")).await.unwrap();
        page.wait_for("#delete").await.unwrap();
        navigate(&page, "#delete", false).await;
        page.wait_for("#deleted").await.unwrap();
        step(&page, "8-deleted").await;
        let pkg = w.app.store().package(&id).await.unwrap().unwrap();
        assert!(pkg.sealed_key.is_none());

        // 8. Usage records: this download, with its events.
        page.goto(&format!("{base}/records")).await.unwrap();
        page.wait_for(&format!("li[data-transfer='{id}']"))
            .await
            .unwrap();
        step(&page, "9-records").await;
        page.goto(&format!("{base}/records?lang=en")).await.unwrap();
        page.wait_for_text("My usage records").await.unwrap();
        step(&page, "10-records-en").await;
        assert!(page.js_errors().is_empty(), "{:?}", page.js_errors());
    }
}
