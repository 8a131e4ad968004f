//! Flow 3 in real Chromium through the example service (`mydata-example-service`, as `mydata demo`
//! runs it): the person starts on the service's page (served as `localhost`, so the platform on
//! `127.0.0.1` is another site and every hop is a cross-site redirect), is sent to the platform by
//! PAR, signs in by certificate, consents, waits, confirms, and is back on the service, which shows
//! the verified record and the eligibility verdict. Then the refusal path: `access_denied` shown as
//! such. axe-core on the service page and on every consent step, at phone and laptop sizes, in
//! zh-TW and English.

use crate::helpers::Backend;
use crate::selfdl_browser::{at_path, card_agent, navigate, step};
use crate::world::{Card, FlowWorld, Person};
use mydata_browser_test::{Browser as Chromium, Page, Viewport};
use mydata_example_service as ex;
use mydata_provider_sim::population::Welfare;
use mydata_server::oauth::clients::Registration;
use std::sync::{Arc, Mutex};

struct ServiceWorld {
    w: FlowWorld,
    /// The example service's base URL (`http://localhost:PORT`).
    sp: String,
    card: Arc<Mutex<Option<Card>>>,
}

async fn spawn() -> ServiceWorld {
    let card: Arc<Mutex<Option<Card>>> = Arc::default();
    let agent = card_agent(card.clone()).await;
    let (listener, bound) = ex::bind().await.unwrap();
    let sp = bound.replace("127.0.0.1", "localhost");
    let keys = mydata_sdk::Keys::generate();
    let reg = Registration {
        client_id: ex::CLIENT_ID.into(),
        name: ex::NAME.into(),
        jwks: Some(keys.public_jwks()),
        jwks_uri: None,
        redirect_uris: vec![format!("{sp}/callback")],
        terms: ex::TERMS.into(),
        purpose: ex::PURPOSE.into(),
        datasets: vec![ex::DATASET.into()],
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: false,
        dpop_bound_access_tokens: true,
    };
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.identity.card_agent_url = agent;
        s.oauth.clients = vec![reg];
    })
    .await;
    ex::serve(
        listener,
        &sp,
        &w.app.base,
        &w.agencies().base,
        keys,
        Arc::new(w.app.clock.clone()),
    )
    .unwrap();
    ServiceWorld { w, sp, card }
}

/// A person of the world whose household is (or is not) on the low-income registers.
fn person(w: &FlowWorld, low_income: bool) -> Person {
    let sim = &w.agencies().sim;
    let pop = sim.population();
    w.people
        .iter()
        .find(|p| {
            let sp = pop
                .persons()
                .iter()
                .find(|x| x.id.as_str() == p.id)
                .unwrap();
            (pop.household_of(sp).unwrap().welfare != Welfare::None) == low_income
        })
        .cloned()
        .expect("a person of that kind among the world's households")
}

/// From the service's home page to the platform's consent page, signing in by certificate.
async fn to_consent(s: &ServiceWorld, page: &Page, p: &Person, shots: bool) {
    s.w.known(p).await;
    *s.card.lock().unwrap() = Some(s.w.card(p));
    page.goto(&format!("{}/", s.sp)).await.unwrap();
    page.wait_loaded().await.unwrap();
    if shots {
        step(page, "0-service").await;
    }
    // PAR, then the platform: not signed in there, so the method choice first.
    navigate(page, "#use-mydata", false).await;
    at_path(page, "/login", "the platform's sign-in").await;
    let url = page.url().await.unwrap();
    assert!(url.starts_with(&s.w.app.base), "{url}");
    if shots {
        step(page, "1-login").await;
    }
    navigate(page, "a[data-method=moica_cert]", false).await;
    at_path(page, "/login/moica_cert", "the certificate page").await;
    page.fill("#pin", "123456").await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/oauth/authorize' && document.querySelector('h1[data-step=consent]') !== null && document.readyState === 'complete'",
        "the consent question, at the authorize URL itself",
    )
    .await
    .unwrap();
}

/// The confirmation step, once the agencies have answered (the wait page refreshes itself).
async fn until_confirm(page: &Page) {
    page.wait_until(
        "document.querySelector('h1[data-step=confirm]') !== null && document.readyState === 'complete'",
        "the confirmation step",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_person_brings_verified_data_to_the_example_service_in_chromium() {
    let s = spawn().await;
    let w = &s.w;
    let p = person(w, true);
    let catalog = w.app.state.catalog();
    let ds = catalog.dataset(ex::DATASET).unwrap();
    let agency = catalog.agency(&ds.agency).unwrap();
    let ctx = Chromium::shared()
        .unwrap()
        .new_context("online_service")
        .await
        .unwrap();
    let mut page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    to_consent(&s, &page, &p, true).await;

    // Consent, zh-TW by default: service, purpose, terms, dataset with its agency.
    assert_eq!(
        page.attribute("html", "lang").await.unwrap().as_deref(),
        Some("zh-TW")
    );
    assert_eq!(page.text("[data-field=service]").await.unwrap(), ex::NAME);
    assert!(
        page.text("[data-field=purpose]")
            .await
            .unwrap()
            .contains(ex::PURPOSE)
    );
    assert_eq!(page.text("[data-field=terms]").await.unwrap(), ex::TERMS);
    let table = page.text("table.datasets").await.unwrap();
    assert!(
        table.contains(&ds.name_zh) && table.contains(&agency.name_zh),
        "{table}"
    );
    step(&page, "2-consent").await;
    page.set_viewport(Viewport::DESKTOP).await.unwrap();
    step(&page, "2-consent").await;
    // English on request, and it stays for the next steps.
    navigate(&page, "a.lang", false).await;
    page.wait_for_text("Consent to share data").await.unwrap();
    let table = page.text("table.datasets").await.unwrap();
    assert!(
        table.contains(&ds.name_en) && table.contains(&agency.name_en),
        "{table}"
    );
    step(&page, "3-consent-en").await;
    page.set_viewport(Viewport::MOBILE).await.unwrap();
    step(&page, "3-consent-en").await;

    // Whose data this would be, masked: a person on a shared device sees it is not theirs.
    let who = page.text("[data-field=signed-in]").await.unwrap();
    assert!(
        who.contains(&format!("{}******{}", &p.id[..2], &p.id[8..])) && !who.contains(&p.id),
        "{who}"
    );
    // The platform's terms are agreed to with the consent, as the seeds' flow has it.
    page.click("#platform-terms").await.unwrap();
    navigate(&page, "button[value=agree]", false).await;
    until_confirm(&page).await;
    page.wait_for_text("Confirm sending your data")
        .await
        .unwrap();
    let table = page.text("table.datasets").await.unwrap();
    assert!(table.contains("fetched"), "{table}");
    step(&page, "4-confirm-en").await;
    page.set_viewport(Viewport::DESKTOP).await.unwrap();
    step(&page, "4-confirm-en").await;
    page.goto(&format!(
        "{}?lang=zh-TW",
        page.url().await.unwrap().split('?').next().unwrap()
    ))
    .await
    .unwrap();
    page.wait_for_text("確認傳送資料").await.unwrap();
    step(&page, "5-confirm").await;
    page.set_viewport(Viewport::MOBILE).await.unwrap();
    step(&page, "5-confirm").await;

    // Send: back on the service, which shows the verified record and its verdict.
    page.click("button[value=send]").await.unwrap();
    page.wait_until(
        &format!(
            "location.href.startsWith('{}/callback') && document.querySelector('#outcome') !== null",
            s.sp
        ),
        "the service's result page",
    )
    .await
    .unwrap();
    let outcome = page.text("#outcome").await.unwrap();
    assert!(outcome.contains("符合學雜費減免資格"), "{outcome}");
    assert_eq!(page.count("#outcome.ok").await.unwrap(), 1);
    let main = page.text("main").await.unwrap();
    assert!(
        main.contains("lic_title") && main.contains("收入戶"),
        "{main}"
    );
    step(&page, "6-service-result").await;
    assert!(page.js_errors().is_empty(), "{:?}", page.js_errors());

    // The platform kept nothing: the package was retrieved once and deleted.
    let id = page.text("#transfer-id").await.unwrap();
    let t = w.app.transfer(&id).await;
    assert_eq!(t.state, mydata_core::transfer::TransferState::Deleted);
    let kinds: Vec<String> = w
        .app
        .store()
        .audit_for_transfer(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in ["service.consent", "service.release", "service.retrieval"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
}

#[tokio::test]
async fn refusing_on_the_consent_page_returns_access_denied_to_the_example_service() {
    let s = spawn().await;
    let p = person(&s.w, false);
    let ctx = Chromium::shared()
        .unwrap()
        .new_context("online_service_refused")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    to_consent(&s, &page, &p, false).await;
    page.click("button[value=decline]").await.unwrap();
    page.wait_until(
        &format!(
            "location.href.startsWith('{}/callback') && document.querySelector('#outcome') !== null",
            s.sp
        ),
        "the service's page after the refusal",
    )
    .await
    .unwrap();
    assert_eq!(
        page.attribute("#outcome", "data-error")
            .await
            .unwrap()
            .as_deref(),
        Some("access_denied")
    );
    assert!(
        page.text("#outcome")
            .await
            .unwrap()
            .contains("您未同意提供資料")
    );
    step(&page, "refused").await;
    let pseudonym = mydata_server::identity::subject_pseudonym(&s.w.app.state, &p.subject());
    let kinds: Vec<String> =
        s.w.app
            .store()
            .audit_for_subject(&pseudonym)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
    assert!(kinds.iter().any(|k| k == "service.refused"), "{kinds:?}");
    assert!(!kinds.iter().any(|k| k == "service.consent"), "{kinds:?}");
}

/// A slow agency: the person agrees and waits; the wait step (accessible: it does not reload
/// itself) turns into the confirmation by itself once the agency has answered, its script looking
/// again in the background.
#[tokio::test]
async fn the_wait_step_turns_into_the_confirmation_once_the_agency_answers() {
    // Ready 60 minutes after the request at the agency.
    const SLOW: &str = "income-tax-income";
    const CLIENT: &str = "slow-service";
    let card: Arc<Mutex<Option<Card>>> = Arc::default();
    let agent = card_agent(card.clone()).await;
    let keys = mydata_sdk::Keys::generate();
    let reg = Registration {
        client_id: CLIENT.into(),
        name: "所得稅試算".into(),
        jwks: Some(keys.public_jwks()),
        jwks_uri: None,
        redirect_uris: vec!["http://127.0.0.1:9/callback".into()],
        terms: "僅用於試算。".into(),
        purpose: "所得稅試算".into(),
        datasets: vec![SLOW.into()],
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: false,
        dpop_bound_access_tokens: false,
    };
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.identity.card_agent_url = agent;
        s.oauth.clients = vec![reg];
        // The test moves the clock an hour in a few seconds, between the page's looks: the
        // session must outlast that (a person's looks every few seconds keep it alive).
        s.identity.session_idle_minutes = 240;
        s.identity.session_absolute_minutes = 240;
    })
    .await;
    let config =
        mydata_sdk::ServiceConfig::new(&w.app.base, CLIENT, "http://127.0.0.1:9/callback", keys)
            .unwrap()
            .with_clock(Arc::new(w.app.clock.clone()));
    let service = mydata_sdk::Service::discover(config).await.unwrap();
    let pending = service
        .push(&mydata_sdk::AuthorizationRequest::new(
            &[SLOW],
            "所得稅試算",
        ))
        .await
        .unwrap();
    let p = w.people[0].clone();
    w.known(&p).await;
    *card.lock().unwrap() = Some(w.card(&p));
    let ctx = Chromium::shared()
        .unwrap()
        .new_context("online_wait")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    page.goto(&pending.authorize_url).await.unwrap();
    at_path(&page, "/login", "the platform's sign-in").await;
    navigate(&page, "a[data-method=moica_cert]", false).await;
    at_path(&page, "/login/moica_cert", "the certificate page").await;
    page.fill("#pin", "123456").await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "document.querySelector('h1[data-step=consent]') !== null && document.readyState === 'complete'",
        "the consent question",
    )
    .await
    .unwrap();
    page.click("#platform-terms").await.unwrap();
    navigate(&page, "button[value=agree]", false).await;
    page.wait_until(
        "document.querySelector('h1[data-step=wait]') !== null && document.readyState === 'complete'",
        "the wait step",
    )
    .await
    .unwrap();
    step(&page, "wait").await;
    // Once the agency has said "not yet", its hour passes; nobody touches the page.
    let id = w.newest_transfer_of(&p).await;
    w.app
        .until_dataset(&id, SLOW, "not ready", |d| {
            d.status == mydata_store::fetch_status::NOT_READY
        })
        .await;
    // Five minutes at a time (the agency's retry interval; at most two hours), leaving the workers
    // real time to act.
    for _ in 0..24 {
        if w.five_minutes_later(&id).await != mydata_core::transfer::TransferState::Fetching {
            break;
        }
    }
    assert_eq!(
        w.app.transfer(&id).await.state,
        mydata_core::transfer::TransferState::Ready
    );
    until_confirm(&page).await;
    assert!(
        page.text("table.datasets")
            .await
            .unwrap()
            .contains("已取得並驗證")
    );
}
