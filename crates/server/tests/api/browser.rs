//! The citizen pages in real headless Chromium: phone and desktop sizes, keyboard alone, no
//! sideways scrolling at 360 px, axe-core without serious violations, screenshots for review
//! under `target/screenshots/<test>/`.

use crate::helpers::{Backend, TestApp};
use mydata_browser_test::{Browser, Key, Page, Viewport};

async fn open(test: &str, viewport: Viewport) -> (mydata_browser_test::Context, Page) {
    let ctx = Browser::shared().unwrap().new_context(test).await.unwrap();
    let page = ctx.new_page(viewport).await.unwrap();
    (ctx, page)
}

#[tokio::test]
async fn home_page_works_on_a_phone_and_a_laptop_in_both_languages() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_ctx, mut page) = open("home_page", Viewport::MOBILE).await;
    for viewport in [Viewport::MOBILE, Viewport::DESKTOP] {
        page.set_viewport(viewport).await.unwrap();
        page.goto(&app.url("/")).await.unwrap();
        page.wait_for("h1").await.unwrap();
        assert_eq!(
            page.attribute("html", "lang").await.unwrap().as_deref(),
            Some("zh-TW")
        );
        assert_eq!(page.count("li.card").await.unwrap(), 105);
        page.wait_for_text("共 105 項資料集").await.unwrap();
        page.screenshot("home-zh").await.unwrap();
        page.assert_accessible("home-zh").await.unwrap();

        page.goto(&app.url("/?lang=en")).await.unwrap();
        assert_eq!(
            page.attribute("html", "lang").await.unwrap().as_deref(),
            Some("en")
        );
        page.wait_for_text("Showing 105 of 105 datasets")
            .await
            .unwrap();
        page.screenshot("home-en").await.unwrap();
        page.assert_accessible("home-en").await.unwrap();
        // The choice is remembered: back to zh-TW only through the switch.
        page.goto(&app.url("/?lang=zh-TW")).await.unwrap();
    }
    assert!(page.js_errors().is_empty(), "{:?}", page.js_errors());
    assert!(page.screenshot_path("home-zh").is_file());
}

#[tokio::test]
async fn nothing_scrolls_sideways_on_a_360_px_phone() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_ctx, page) = open("narrow_phone", Viewport::NARROW).await;
    for path in [
        "/",
        "/?lang=en",
        "/?q=%E6%88%B6%E7%B1%8D&group=category",
        "/no-such-page",
        "/no-such-page?lang=en",
    ] {
        page.goto(&app.url(path)).await.unwrap();
        page.wait_for("h1").await.unwrap();
        assert_eq!(
            page.horizontal_overflow().await.unwrap(),
            0,
            "{path} is wider than a 360 px screen"
        );
    }
    page.goto(&app.url("/")).await.unwrap();
    page.screenshot("home").await.unwrap();
}

#[tokio::test]
async fn keyboard_alone_skips_to_content_switches_language_and_searches() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_ctx, page) = open("keyboard", Viewport::DESKTOP).await;
    page.goto(&app.url("/")).await.unwrap();

    // The first Tab shows the skip link; Enter moves on to the main content.
    page.press(Key::Tab).await.unwrap();
    assert!(
        page.focused_matches("a.skip").await.unwrap(),
        "{}",
        page.focused().await.unwrap()
    );
    assert!(
        page.focus_is_visible().await.unwrap(),
        "focus must be visible"
    );
    page.screenshot("skip-link").await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.press(Key::Tab).await.unwrap();
    assert!(
        page.focused_matches("main #q").await.unwrap(),
        "after the skip link, Tab goes to the search field, not {}",
        page.focused().await.unwrap()
    );
    page.goto(&app.url("/")).await.unwrap();

    // The language switch is reached within a few presses and works with Enter.
    page.tab_to("a.lang", 4).await.unwrap();
    assert!(page.focus_is_visible().await.unwrap());
    page.press(Key::Enter).await.unwrap();
    page.wait_until("document.documentElement.lang === 'en'", "the English page")
        .await
        .unwrap();
    page.wait_for_text("Showing 105 of 105 datasets")
        .await
        .unwrap();

    // Search by keyboard: Tab to the search field, type, Enter submits.
    page.tab_to("#q", 8).await.unwrap();
    page.type_text("household").await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_until(
        "location.search.includes('q=household')",
        "the search results",
    )
    .await
    .unwrap();
    page.wait_loaded().await.unwrap();
    let shown = page.count("li.card").await.unwrap();
    assert!(
        shown > 0 && shown < 105,
        "search narrowed the list to {shown}"
    );
    page.screenshot("search").await.unwrap();
    page.assert_accessible("search").await.unwrap();
}

#[tokio::test]
async fn error_pages_are_readable_accessible_and_localised() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_ctx, mut page) = open("error_page", Viewport::MOBILE).await;
    for viewport in [Viewport::MOBILE, Viewport::DESKTOP] {
        page.set_viewport(viewport).await.unwrap();
        page.goto(&app.url("/no-such-page")).await.unwrap();
        page.wait_for("[role=alert] h1").await.unwrap();
        assert_eq!(
            page.attribute("html", "lang").await.unwrap().as_deref(),
            Some("zh-TW")
        );
        page.wait_for_text("route_not_found").await.unwrap();
        page.screenshot("not-found-zh").await.unwrap();
        page.assert_accessible("not-found-zh").await.unwrap();

        page.goto(&app.url("/no-such-page?lang=en")).await.unwrap();
        assert_eq!(
            page.attribute("html", "lang").await.unwrap().as_deref(),
            Some("en")
        );
        page.screenshot("not-found-en").await.unwrap();
        page.assert_accessible("not-found-en").await.unwrap();
        page.goto(&app.url("/?lang=zh-TW")).await.unwrap();
    }
    // Switching language keeps the person on the page they were reading.
    page.goto(&app.url("/no-such-page")).await.unwrap();
    page.tab_to("a.lang", 4).await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_for_text("Page not found").await.unwrap();
    assert!(page.url().await.unwrap().ends_with("/no-such-page?lang=en"));

    // The way out works from the keyboard.
    page.goto(&app.url("/no-such-page")).await.unwrap();
    page.tab_to("main a[href='/']", 6).await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_for("li.card").await.unwrap();
}
