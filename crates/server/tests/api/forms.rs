//! Every page form of a person and of a clerk refuses a post without the session's form token, or
//! with a body that is not a form, with the localized error page, and changes nothing.

use crate::counter::{clerk_login, register_desks};
use crate::fetch::{DataApp, person};
use crate::helpers::Backend;
use mydata_core::{Clock, IdNumber};
use mydata_server::identity::SubjectId;
use mydata_server::identity::session;
use mydata_store::SessionRow;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Forms of a signed-in person (each needs the session's `csrf` field).
const PERSON_FORMS: &[&str] = &[
    "/logout",
    "/account/password",
    "/account/passkeys",
    "/account/passkeys/pk-1/delete",
    "/login/first-use",
    "/login/first-use/code",
    "/login/nhi_card",
    "/download",
    "/download/t/tr-1/delete",
    "/counter/services/chiayi-senior-concession-card",
    "/oauth/consent/req-1",
    "/oauth/consent/req-1/confirm",
];

/// Forms of a signed-in clerk.
const CLERK_FORMS: &[&str] = &[
    "/clerk/counter",
    "/clerk/scan",
    "/clerk/passwords/pw-1",
    "/clerk/transfers/tr-1/package",
    "/clerk/logout",
];

const PERSON_CSRF: &str = "person-form-token";

/// A browser holding a live, verified (level 1) session whose form token is [`PERSON_CSRF`].
async fn signed_in_person(app: &DataApp) -> reqwest::Client {
    let st = &app.state;
    let subject = SubjectId::Person(IdNumber::parse(&person(&app.agencies.sim)).unwrap());
    let pseudonym = session::pseudonym(st, &subject);
    let now = app.clock.now();
    let store = st.store();
    store
        .ensure_subject(&pseudonym, "natural", now)
        .await
        .unwrap();
    let token = format!("forms-{}", uuid::Uuid::new_v4());
    store
        .put_session(
            &SessionRow {
                id_hash: hex::encode(Sha256::digest(token.as_bytes())),
                csrf_token: PERSON_CSRF.into(),
                subject: Some(pseudonym),
                subject_kind: Some("natural".into()),
                method: Some("moica_cert".into()),
                level: Some(1),
                verified_at: Some(now.millis()),
                pending: None,
                subject_sealed: Some(session::seal_subject(st, &subject).unwrap()),
                created_at: now.millis(),
                last_seen_at: now.millis(),
                expires_at: now.plus(Duration::from_secs(9 * 3600)).millis(),
            },
            None,
        )
        .await
        .unwrap();
    let jar = Arc::new(reqwest::cookie::Jar::default());
    jar.add_cookie_str(
        &format!("{}={token}; Path=/", session::cookie_name(st)),
        &app.base.parse().unwrap(),
    );
    reqwest::Client::builder()
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The page's form token (the value of its `csrf` field).
async fn csrf_of(c: &reqwest::Client, url: &str) -> String {
    let html = c.get(url).send().await.unwrap().text().await.unwrap();
    let marker = "name=\"csrf\" value=\"";
    let i = html.find(marker).expect("a form with a csrf field") + marker.len();
    html[i..].split('"').next().unwrap().to_owned()
}

/// Rows per table, without the job queue (the server's own periodic jobs come and go meanwhile).
async fn rows(app: &DataApp) -> std::collections::BTreeMap<String, i64> {
    let mut counts = app.state.store().row_counts().await.unwrap();
    counts.remove("jobs");
    counts
}

/// Posts the bad variants of one form and checks each is refused with the error page.
async fn refuses_bad_posts(c: &reqwest::Client, url: &str, good_csrf: &str) {
    let wrong = format!("{good_csrf}x");
    let forms: [(&str, &[(&str, &str)]); 3] = [
        ("no token", &[("next", "/")]),
        ("empty token", &[("csrf", "")]),
        ("wrong token", &[("csrf", wrong.as_str())]),
    ];
    for (what, form) in forms {
        let res = c.post(url).form(form).send().await.unwrap();
        expect_page(
            res,
            StatusCode::FORBIDDEN,
            "csrf_failed",
            &format!("{url}: {what}"),
        )
        .await;
    }
    let json = c
        .post(url)
        .json(&serde_json::json!({ "csrf": good_csrf }))
        .send()
        .await
        .unwrap();
    expect_page(
        json,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        url,
    )
    .await;
    let text = c
        .post(url)
        .header("content-type", "text/plain")
        .body(format!("csrf={good_csrf}"))
        .send()
        .await
        .unwrap();
    expect_page(
        text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        url,
    )
    .await;
}

async fn expect_page(res: reqwest::Response, status: StatusCode, code: &str, what: &str) {
    assert_eq!(res.status(), status, "{what}");
    let h = res.headers();
    assert!(
        h.get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html")),
        "{what}: an error page, not {h:?}"
    );
    assert_eq!(
        h.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{what}"
    );
    let html = res.text().await.unwrap();
    assert!(
        html.contains(&format!("<code>{code}</code>")),
        "{what}: {html}"
    );
    assert!(
        html.contains("<html lang=\"zh-TW\""),
        "{what}: in zh-TW by default"
    );
}

#[tokio::test]
async fn person_forms_refuse_missing_or_wrong_tokens_and_non_form_bodies() {
    person_forms_refuse_bad_posts(Backend::Sqlite).await;
}

#[tokio::test]
async fn person_forms_refuse_missing_or_wrong_tokens_and_non_form_bodies_postgres() {
    person_forms_refuse_bad_posts(Backend::Postgres).await;
}

async fn person_forms_refuse_bad_posts(backend: Backend) {
    let app = DataApp::spawn(backend, 1.0, |_| {}).await;
    let c = signed_in_person(&app).await;
    let base = app.base.clone();
    let session_before: serde_json::Value = c
        .get(format!("{base}/api/v1/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session_before["level"], 1, "{session_before}");
    let before = rows(&app).await;
    for path in PERSON_FORMS {
        refuses_bad_posts(&c, &format!("{base}{path}"), PERSON_CSRF).await;
    }
    // A body over the limit is refused before anything reads it.
    let big = "a".repeat(2 * 1024 * 1024);
    let res = c
        .post(format!("{base}/logout"))
        .form(&[("csrf", PERSON_CSRF), ("x", big.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Still signed in as before, and no row was added or removed anywhere.
    let session_after: serde_json::Value = c
        .get(format!("{base}/api/v1/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session_after, session_before);
    assert_eq!(rows(&app).await, before);
    // The right token does go through (the refusals above were about the token).
    let res = c
        .post(format!("{base}/logout"))
        .form(&[("csrf", PERSON_CSRF)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn clerk_forms_refuse_missing_or_wrong_tokens_and_non_form_bodies() {
    let app = DataApp::spawn(Backend::Sqlite, 1.0, |_| {}).await;
    let clerks = register_desks(&app.state).await;
    let (user, secret) = &clerks[0];
    let c = clerk_login(&app.base, &app.clock, user, secret).await;
    let base = app.base.clone();
    let csrf = csrf_of(&c, &format!("{base}/clerk")).await;
    let before = rows(&app).await;
    for path in CLERK_FORMS {
        refuses_bad_posts(&c, &format!("{base}{path}"), &csrf).await;
    }
    // The sign-in form has no session yet, but it must still be a form.
    let res = reqwest::Client::new()
        .post(format!("{base}/clerk/login"))
        .json(&serde_json::json!({ "username": user }))
        .send()
        .await
        .unwrap();
    expect_page(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "/clerk/login",
    )
    .await;
    assert_eq!(rows(&app).await, before);
    // Still signed in: the desk opens, and the right token signs out.
    let res = c.get(format!("{base}/clerk")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = c
        .post(format!("{base}/clerk/logout"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = c.get(format!("{base}/clerk")).send().await.unwrap();
    assert_eq!(
        res.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/clerk/login")
    );
}
