//! The citizen home page.

use crate::helpers::{Backend, TestApp};

async fn page(app: &TestApp, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let res = app.get(path).await;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.text().await.unwrap(), headers)
}

#[tokio::test]
async fn home_lists_every_dataset_in_zh_tw_by_default() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, html, h) = page(&app, "/").await;
    assert_eq!(s, 200);
    assert!(
        h.get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(html.contains("<html lang=\"zh-TW\">"));
    assert!(html.contains("name=\"viewport\" content=\"width=device-width, initial-scale=1\""));
    assert_eq!(html.matches("class=\"card\"").count(), 105);
    assert!(html.contains("個人戶籍資料"));
    assert!(html.contains("內政部 戶政司"));
    assert!(html.contains("共 105 項資料集"));
    assert!(
        html.contains("約 60 分鐘"),
        "shows the wait of slow agencies"
    );
    assert!(
        !html.contains("style=\""),
        "no inline styles (CSP forbids them)"
    );
}

#[tokio::test]
async fn english_switch_is_remembered_in_a_cookie() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, html, h) = page(&app, "/?lang=en").await;
    assert_eq!(s, 200);
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.contains("Personal household registration record"));
    assert!(html.contains("Showing 105 of 105 datasets"));
    let cookie = h.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cookie.starts_with("lang=en") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let res = app
        .client
        .get(app.url("/"))
        .header("cookie", "lang=en")
        .send()
        .await
        .unwrap();
    assert!(res.text().await.unwrap().contains("<html lang=\"en\">"));
}

/// The switch's choice is remembered on whatever page it was made (links and forms do not carry
/// `lang`), and every page's switch keeps the request in progress: the sign-in page's `next` (an
/// OAuth request, a download) and its datasets, a search on the home page.
#[tokio::test]
async fn every_page_remembers_the_language_and_its_switch_keeps_the_request() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let switch = |html: &str| {
        let at = html.find("class=\"lang\" href=\"").unwrap() + 19;
        html[at..]
            .split('"')
            .next()
            .unwrap()
            .replace("&amp;", "&")
            .replace("&#38;", "&")
    };
    for path in ["/login?lang=en", "/download?lang=en", "/counter?lang=en"] {
        let (s, html, h) = page(&app, path).await;
        assert_eq!(s, 200, "{path}");
        assert!(html.contains("<html lang=\"en\">"), "{path}");
        let cookie = h.get("set-cookie").map(|c| c.to_str().unwrap().to_owned());
        assert!(
            cookie.as_deref().is_some_and(|c| c.starts_with("lang=en")),
            "{path}: {cookie:?}"
        );
    }
    let next = "%2Foauth%2Fauthorize%3Fclient_id%3Dk12%26request_uri%3Durn%253Ax";
    let (_, html, _) = page(
        &app,
        &format!("/login?next={next}&datasets=low-income-household"),
    )
    .await;
    let href = switch(&html);
    assert!(
        href.contains("next=%2Foauth%2Fauthorize")
            && href.contains("datasets=low-income-household")
            && href.ends_with("lang=en"),
        "{href}"
    );
    let (_, html, _) = page(&app, "/?q=%E6%88%B6%E7%B1%8D&lang=en").await;
    assert_eq!(switch(&html), "?q=%E6%88%B6%E7%B1%8D&lang=zh-TW");
    // A refused scan's page is a form post's answer: its address, asked for again, is the desk.
    let res = app.get("/clerk/scan?lang=en").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/clerk?lang=en");
}

#[tokio::test]
async fn search_and_grouping_work_without_javascript() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, html, _) = page(&app, "/?q=%E4%BD%8E%E6%94%B6").await; // 低收
    assert!(html.contains("低收及中低收列冊資料"));
    assert!(html.matches("class=\"card\"").count() < 105);
    let (_, html, _) = page(&app, "/?group=category&category=welfare").await;
    assert!(html.contains("id=\"g-welfare\""));
    assert!(!html.contains("id=\"g-tax\""));
    assert!(html.contains("<option value=\"welfare\" selected>"));
    let (_, html, _) = page(&app, "/?q=zzzz-nothing").await;
    assert!(html.contains("找不到符合條件的資料集"));
}

#[tokio::test]
async fn bad_page_input_gets_a_readable_page() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for path in [
        "/?group=banana",
        "/?category=space",
        "/?unknown=1",
        "/?lang=klingon",
    ] {
        let (s, html, h) = page(&app, path).await;
        assert_eq!(s, 400, "{path}");
        assert!(
            h.get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(html.contains("查詢條件有誤"), "{path}");
        assert!(html.contains("href=\"/\""), "{path}: offers a way back");
    }
    let (s, html, _) = page(&app, "/no/such/page").await;
    assert_eq!(s, 404);
    assert!(html.contains("找不到此頁面") && html.contains("route_not_found"));
    let (s, html, _) = page(&app, "/no/such/page?lang=en").await;
    assert_eq!(s, 404);
    assert!(html.contains("Page not found"));
}

#[tokio::test]
async fn stylesheet_is_served() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let res = app.get("/static/app.css").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(res.text().await.unwrap().contains("@media"));
}

/// `html` without the other-language dataset names (`<p class="alt">`), which are Chinese text.
fn without_alt_names(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(i) = rest.find("<p class=\"alt\"") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("</p>").unwrap() + i + "</p>".len();
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn english_dataset_cards_list_identity_methods_with_commas() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for path in ["/?lang=en", "/download?lang=en"] {
        let (s, html, _) = page(&app, path).await;
        assert_eq!(s, 200, "{path}");
        let own = without_alt_names(&html);
        assert!(!own.contains('、'), "{path}: {own}");
        assert!(
            own.contains("Citizen digital certificate, TW FidO mobile certificate (passkey)"),
            "{path}: {own}"
        );
    }
    // Chinese pages keep the Chinese enumeration comma.
    let (_, zh, _) = page(&app, "/").await;
    assert!(zh.contains("自然人憑證、"), "{zh}");
}

/// The `lang` of each `<p class="alt"` (the dataset's name in the other language).
fn alt_langs(html: &str) -> Vec<String> {
    html.split("<p class=\"alt\"")
        .skip(1)
        .map(|rest| {
            let tag = rest.split('>').next().unwrap();
            tag.split("lang=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_other_language_names_say_their_language() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for (path, other) in [
        ("/", "en"),
        ("/download", "en"),
        ("/?lang=en", "zh-TW"),
        ("/download?lang=en", "zh-TW"),
    ] {
        let (s, html, _) = page(&app, path).await;
        assert_eq!(s, 200, "{path}");
        let langs = alt_langs(&html);
        assert!(!langs.is_empty(), "{path}: {html}");
        assert!(langs.iter().all(|l| l == other), "{path}: {langs:?}");
    }
}
