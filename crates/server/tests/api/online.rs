//! Flow 3, online services, end to end: a registered service uses `mydata-sdk` against a real
//! server and the simulated agencies; a person signs in, consents, confirms; the service gets the
//! package once, opens and verifies it. Then every bad input of the issue, each refused with the
//! standard error and nothing changed.

use crate::helpers::{Backend, assert_problem};
use crate::world::{Browser, FlowWorld, csrf_in, form_action};
use mydata_core::Clock;
use mydata_core::transfer::TransferState;
use mydata_sdk::{AuthorizationRequest, Keys, Pending, Service, ServiceConfig, Token};
use mydata_server::oauth::clients::Registration;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const CLIENT: &str = "k12-tuition-reduction";
/// The service's return address: never followed by the tests (they read the redirect), https as
/// trial and production services must have.
pub(crate) const REDIRECT: &str = "https://sp.example/callback";
pub(crate) const DATASET: &str = "low-income-household";
pub(crate) const ADMIN: &str = "admin-token-for-tests-0123456789";

pub(crate) fn registration(client_id: &str, keys: &Keys, datasets: &[&str]) -> Registration {
    Registration {
        client_id: client_id.into(),
        name: "高級中等學校學雜費減免".into(),
        jwks: Some(keys.public_jwks()),
        jwks_uri: None,
        redirect_uris: vec![REDIRECT.into()],
        terms: "本服務僅將資料用於學雜費減免審核。".into(),
        purpose: "學雜費減免資格審核".into(),
        datasets: datasets.iter().map(|d| (*d).to_owned()).collect(),
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: false,
        dpop_bound_access_tokens: false,
    }
}

struct Online {
    w: FlowWorld,
    service: Service,
}

impl Online {
    async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// [`Online::spawn`] with settings of the test's own.
    async fn spawn_with(
        backend: Backend,
        tweak: impl FnOnce(&mut mydata_server::Settings),
    ) -> Self {
        let keys = Keys::generate();
        let reg = registration(CLIENT, &keys, &[DATASET, "household-register-personal"]);
        let w = FlowWorld::spawn_with(backend, 1.0, |s| {
            s.oauth.clients = vec![reg];
            s.oauth.admin_token = ADMIN.into();
            tweak(s);
        })
        .await;
        let service = sdk(&w, CLIENT, keys).await;
        Self { w, service }
    }
}

pub(crate) async fn sdk(w: &FlowWorld, client_id: &str, keys: Keys) -> Service {
    let config = ServiceConfig::new(&w.app.base, client_id, REDIRECT, keys)
        .unwrap()
        .with_clock(Arc::new(w.app.clock.clone()));
    Service::discover(config).await.unwrap()
}

pub(crate) fn path_of(url: &str, base: &str) -> String {
    url.strip_prefix(base).unwrap().to_owned()
}

pub(crate) fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// The authorize URL in the person's browser: the consent question itself, no redirect. Returns
/// the request's own page (where the question is answered) and the page shown.
pub(crate) async fn open_consent(
    w: &FlowWorld,
    b: &Browser,
    pending: &Pending,
) -> (String, String) {
    let r = b.get(&path_of(&pending.authorize_url, &w.app.base)).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("data-step=\"consent\""), "{page}");
    let consent = form_action(&page);
    assert!(consent.starts_with("/oauth/consent/"), "{consent}");
    (consent, page)
}

/// Runs the person's side from the authorize URL to the redirect back; returns its query string.
pub(crate) async fn consent_and_confirm(w: &FlowWorld, b: &Browser, pending: &Pending) -> String {
    let (consent, page) = open_consent(w, b, pending).await;
    assert!(page.contains("學雜費減免資格審核") && page.contains("低收及中低收列冊資料"));
    let catalog = w.app.state.catalog();
    let agency = catalog
        .agency(&catalog.dataset(DATASET).unwrap().agency)
        .unwrap();
    assert!(page.contains(&agency.name_zh), "agency shown: {page}");
    let r = b
        .post(
            &consent,
            &[
                ("csrf", &csrf_in(&page)),
                ("decision", "agree"),
                (
                    "platform_terms",
                    mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
                ),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let confirm_page = until_confirm(b, &consent).await;
    let back = send(b, &consent, &confirm_page).await;
    back.split_once('?').unwrap().1.to_owned()
}

/// "Send" on the confirmation (or the wait page's early answer): the redirect back to the service.
async fn send(b: &Browser, consent: &str, page: &str) -> String {
    send_to(b, consent, page, REDIRECT).await
}

/// [`send`] for a service whose redirect URI is `redirect`.
pub(crate) async fn send_to(b: &Browser, consent: &str, page: &str, redirect: &str) -> String {
    let r = b
        .post(
            &format!("{consent}/confirm"),
            &[("csrf", &csrf_in(page)), ("decision", "send")],
        )
        .await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap_or_default());
    let back = location(&r);
    assert!(back.starts_with(redirect), "{back}");
    back
}

/// The confirmation page, once the agencies have answered (real time, bounded).
pub(crate) async fn until_confirm(b: &Browser, consent: &str) -> String {
    for _ in 0..600 {
        let page = b.get(consent).await.text().await.unwrap();
        if page.contains("data-step=\"confirm\"") {
            return page;
        }
        assert!(page.contains("data-step=\"wait\""), "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the data was not ready within 60 s");
}

async fn audit_kinds(w: &FlowWorld, transfer: &str) -> Vec<String> {
    w.app
        .store()
        .audit_for_transfer(transfer)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn end_to_end(backend: Backend) {
    let mut o = Online::spawn(backend).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.1").await;
    let mut req = AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核");
    req.login_hint = Some(p.id.clone());
    let pending = o.service.push(&req).await.unwrap();
    let query = consent_and_confirm(w, &b, &pending).await;
    assert!(
        query.contains("iss="),
        "RFC 9207 iss in the response: {query}"
    );
    let token = o.service.callback(&pending, &query).await.unwrap();
    assert_eq!(token.datasets, vec![DATASET]);

    // What the platform holds before retrieval is ciphertext it cannot open.
    let package_row = || async {
        let found = w.app.store().package(&token.transfer_id).await.unwrap();
        found.expect("the transfer's package row")
    };
    let rec = package_row().await;
    assert_eq!(
        rec.sealed_key.as_deref(),
        Some(mydata_server::oauth::delivery::E2E_MARKER)
    );
    // A package this small rests in its row, not in the object store.
    let stored = rec.body.clone().expect("a small package lives in its row");
    assert!(w.app.state.data().blobs.get(&rec.object_key).await.is_err());
    let env: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(env["typ"], "mydata-package+hpke");

    let zip = o
        .service
        .package(&token, Duration::from_secs(10))
        .await
        .unwrap();
    let report = mydata_sdk::verify(
        &zip,
        &token.transfer_id,
        &w.app.trust(),
        &o.service.platform_signing_keys(),
        w.app.clock.now(),
    )
    .unwrap_or_else(|r| panic!("package verifies: {r:?}"));
    assert_eq!(report.datasets.len(), 1);

    // Once only: then 410, and nothing of it is left on the platform.
    assert!(matches!(
        o.service.package(&token, Duration::from_secs(10)).await,
        Err(mydata_sdk::Error::Gone)
    ));
    let t = w.app.transfer(&token.transfer_id).await;
    assert_eq!(t.state, TransferState::Deleted);
    let after = package_row().await;
    assert!(after.body.is_none() && after.sealed_key.is_none());
    let kinds = audit_kinds(w, &token.transfer_id).await;
    for k in ["service.consent", "service.release", "service.retrieval"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    crate::fetch::assert_no_id_in_audit(&w.app, &token.transfer_id, &p.id).await;

    // The person is told which service received which data, and where the records are; never
    // the data (資料取用通知). Earlier mail (the sign-in's) is passed over, boundedly.
    let mut notice = None;
    for _ in 0..5 {
        let body = crate::selfdl::mail_body(&o.w.next_mail(Duration::from_secs(20)).await);
        if body.contains(&token.transfer_id) {
            notice = Some(body);
            break;
        }
    }
    let body = notice.expect("a notice naming the transfer");
    assert!(body.contains("傳送給「高級中等學校學雜費減免」"), "{body}");
    assert!(
        body.contains("低收及中低收列冊資料") && body.contains("/records"),
        "{body}"
    );
    assert!(!body.contains(&p.id) && !body.contains(&p.name), "{body}");
}

/// A token outlived by its package's 8 hours answers as the package does (410, gone), not as an
/// unknown credential; one whose own hour ran out while the package waits is refused (401).
#[tokio::test]
async fn after_the_transfers_8_hours_the_service_is_told_the_package_is_gone() {
    let o = Online::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.2").await;
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let query = consent_and_confirm(w, &b, &pending).await;
    let token = o.service.callback(&pending, &query).await.unwrap();
    let url = format!(
        "{}/api/v1/transfers/{}/package",
        w.app.base, token.transfer_id
    );
    let get = || async {
        o.service
            .resource_get(&token, &url)
            .unwrap()
            .send()
            .await
            .unwrap()
    };

    w.app.clock.advance(Duration::from_secs(2 * 3600));
    let r = get().await;
    assert_eq!(
        r.status(),
        401,
        "the token's hour is over, the package is not"
    );
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    w.app.clock.advance(Duration::from_secs(6 * 3600));
    let r = get().await;
    assert_eq!(r.status(), 410);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "package_gone", "{problem}");
    // Another transfer's ID with this token is still a wrong credential, not news of it.
    let other = format!(
        "{}/api/v1/transfers/{}x/package",
        w.app.base, token.transfer_id
    );
    let r = o
        .service
        .resource_get(&token, &other)
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_service_receives_verified_data_once_with_the_sdk_sqlite() {
    end_to_end(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_service_receives_verified_data_once_with_the_sdk_postgres() {
    end_to_end(Backend::Postgres).await;
}

/// Pushes a request for `dataset`, agrees on the person's consent page and returns that page's
/// address (where the agreement redirects).
async fn agree(
    w: &FlowWorld,
    service: &Service,
    b: &Browser,
    person: &str,
    dataset: &str,
) -> String {
    let mut req = AuthorizationRequest::new(&[dataset], "學雜費減免資格審核");
    req.login_hint = Some(person.to_owned());
    let pending = service.push(&req).await.unwrap();
    let (consent, page) = open_consent(w, b, &pending).await;
    let r = b
        .post(
            &consent,
            &[
                ("csrf", &csrf_in(&page)),
                ("decision", "agree"),
                (
                    "platform_terms",
                    mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
                ),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), consent);
    consent
}

async fn instant_agencies_lead_straight_to_the_confirmation(backend: Backend) {
    // Held (default oauth.ready_hold_ms): the first look answers once the package is sealed.
    let o = Online::spawn(backend).await;
    let p = o.w.people[0].clone();
    let b = o.w.signed_in(&p, "10.8.0.1").await;
    let consent = agree(&o.w, &o.service, &b, &p.id, DATASET).await;
    let page = b.get(&consent).await.text().await.unwrap();
    assert!(page.contains("data-step=\"confirm\""), "{page}");

    // A visit long after the consent is answered at once even though the data is not ready:
    // the hold is for the first look only (a browser's reloads of the wait page are not held).
    const SLOW: &str = "income-tax-income";
    let keys = Keys::generate();
    let reg = registration(CLIENT, &keys, &[SLOW]);
    let w = FlowWorld::spawn_with(backend, 1.0, |s| {
        s.oauth.clients = vec![reg];
        s.oauth.ready_hold_ms = 30_000;
    })
    .await;
    let service = sdk(&w, CLIENT, keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.1").await;
    let consent = agree(&w, &service, &b, &p.id, SLOW).await;
    w.app.clock.advance(Duration::from_secs(31));
    let look = tokio::time::timeout(Duration::from_secs(10), b.get(&consent))
        .await
        .expect("a later look is not held");
    let page = look.text().await.unwrap();
    assert!(page.contains("data-step=\"wait\""), "{page}");
    // It looks again by script, not by reloading itself (which moves a screen reader back to the
    // top every few seconds); only without script does the page refresh.
    assert!(
        page.contains("<script src=\"/static/consent.js\""),
        "{page}"
    );
    let outside = page.replace(
        "<noscript><meta http-equiv=\"refresh\" content=\"3\"></noscript>",
        "",
    );
    assert!(!outside.contains("http-equiv=\"refresh\""), "{page}");
    let js = b.get("/static/consent.js").await;
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
}

#[tokio::test]
async fn instant_agencies_lead_straight_to_the_confirmation_sqlite() {
    instant_agencies_lead_straight_to_the_confirmation(Backend::Sqlite).await;
}

#[tokio::test]
async fn instant_agencies_lead_straight_to_the_confirmation_postgres() {
    instant_agencies_lead_straight_to_the_confirmation(Backend::Postgres).await;
}

/// The raw token endpoint, for bad inputs the SDK never sends (with the SDK's DPoP proof: the
/// SDK's pushed requests bind the code to its DPoP key).
async fn token_call(o: &Online, form: &[(&str, String)]) -> (u16, serde_json::Value) {
    let url = format!("{}/oauth/token", o.w.app.base);
    let proof = o.service.dpop_proof("POST", &url, None).unwrap();
    let r = reqwest::Client::new()
        .post(url)
        .header("DPoP", proof)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap())
}

fn grant(o: &Online, code: &str, verifier: &str, redirect: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.into()),
        ("redirect_uri", redirect.into()),
        ("code_verifier", verifier.into()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ),
        (
            "client_assertion",
            o.service.client_assertion(&o.w.app.base).unwrap(),
        ),
    ]
}

pub(crate) fn code_of(query: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

pub(crate) fn refused_with(e: mydata_sdk::Error, code: &str) {
    match e {
        mydata_sdk::Error::Refused { error, .. } => assert_eq!(error, code),
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// The fields of a pushed authorization request by [`CLIENT`] for [`DATASET`], with a fixed PKCE
/// S256 challenge and `client_assertion`.
pub(crate) fn par_fields(client_assertion: String) -> Vec<(&'static str, String)> {
    vec![
        ("response_type", "code".to_owned()),
        ("client_id", CLIENT.to_owned()),
        ("redirect_uri", REDIRECT.to_owned()),
        (
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        ),
        ("code_challenge_method", "S256".to_owned()),
        (
            "authorization_details",
            serde_json::json!([{ "type": "mydata_transfer", "datasets": [DATASET] }]).to_string(),
        ),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
        ),
        ("client_assertion", client_assertion),
    ]
}

/// A pushed authorization request by `o`'s service for [`DATASET`], as a form post of its own:
/// `extra` replaces a parameter (an empty value removes it; `+name` sends it a second time).
/// Returns the status and the JSON body.
async fn par_form(o: &Online, extra: Vec<(&'static str, String)>) -> (u16, serde_json::Value) {
    let mut form = par_fields(o.service.client_assertion(&o.w.app.base).unwrap());
    for (k, v) in extra {
        // `+name` sends the parameter a second time.
        if let Some(again) = k.strip_prefix('+') {
            form.push((again, v));
            continue;
        }
        form.retain(|(name, _)| *name != k);
        if !v.is_empty() {
            form.push((k, v));
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/par", o.w.app.base))
        .form(&form)
        .send()
        .await
        .unwrap();
    (
        r.status().as_u16(),
        r.json::<serde_json::Value>().await.unwrap(),
    )
}

/// The platform replaced its data key, listing the old one in `keys.previous_data_keys`: its
/// X25519 keys are both published, the new one first (it seals packages and SDKs encrypt
/// `login_hint`s to it), and a `login_hint` encrypted to either opens; one to a key the platform
/// does not hold is refused. What the old key sealed still opens; what is sealed now is sealed
/// with the new key.
#[tokio::test]
async fn after_a_data_key_switch_both_keys_open_and_the_new_one_seals() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, stranger) = ([3u8; 32], [4u8; 32], [5u8; 32]);
    let key_file = |name: &str, key: &[u8; 32]| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{}\n", hex::encode(key))).unwrap();
        path
    };
    let (old_file, new_file) = (key_file("old.key", &old), key_file("new.key", &new));
    let o = Online::spawn_with(Backend::Sqlite, |s| {
        s.keys.data_key = new_file.display().to_string();
        s.keys.previous_data_keys = vec![old_file];
    })
    .await;
    let w = &o.w;
    let vault = |k: &[u8; 32]| mydata_server::vault::Vault::from_key(k);

    let jwks: serde_json::Value = reqwest::get(format!("{}/oauth/jwks.json", w.app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let x25519: Vec<&serde_json::Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["crv"] == "X25519")
        .collect();
    assert_eq!(
        x25519,
        [
            &vault(&new).platform_kem().public_jwk(),
            &vault(&old).platform_kem().public_jwk()
        ],
        "{jwks}"
    );

    let hint_to = |key: &[u8; 32]| {
        let kem = vault(key);
        let public = kem.platform_kem().public_bytes();
        mydata_package::e2e::seal_login_hint(&public, CLIENT, &w.people[0].id).unwrap()
    };
    for key in [&new, &old] {
        let (s, body) = par_form(&o, vec![("login_hint", hint_to(key))]).await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, body) = par_form(&o, vec![("login_hint", hint_to(&stranger))]).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_request")));

    let platform = &w.app.state.data().vault;
    let sealed_before = vault(&old).seal("secret:t1", b"A123456789").unwrap();
    assert_eq!(
        platform
            .open("secret:t1", &sealed_before)
            .unwrap()
            .as_slice(),
        b"A123456789"
    );
    let sealed_now = platform.seal("secret:t2", b"B223456789").unwrap();
    assert!(vault(&new).open("secret:t2", &sealed_now).is_ok());
    assert!(vault(&old).open("secret:t2", &sealed_now).is_err());
}

#[tokio::test]
async fn bad_inputs_are_refused_with_the_standard_error_and_change_nothing() {
    let o = Online::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.2").await;
    let par = |extra: Vec<(&'static str, String)>| par_form(&o, extra);
    let (s, ok) = par(vec![]).await;
    assert_eq!(s, 201, "{ok}");
    for (extra, status, error) in [
        (vec![("redirect_uri", "https://evil.example/cb".to_owned())], 400, "invalid_request"),
        (vec![("code_challenge", String::new())], 400, "invalid_request"),
        (vec![("code_challenge_method", "plain".to_owned())], 400, "invalid_request"),
        (
            vec![("authorization_details", serde_json::json!([{ "type": "mydata_transfer", "datasets": ["income-tax-income"] }]).to_string())],
            400,
            "invalid_authorization_details",
        ),
        (vec![("authorization_details", "not json".to_owned())], 400, "invalid_authorization_details"),
        (
            vec![("authorization_details", serde_json::json!([{ "type": "mydata_transfer", "datasets": [DATASET], "purpos": "typo" }]).to_string())],
            400,
            "invalid_authorization_details",
        ),
        (vec![("client_assertion", "a.b.c".to_owned())], 401, "invalid_client"),
        (vec![("client_assertion_type", String::new())], 401, "invalid_client"),
        (vec![("login_hint", "garbage".to_owned())], 400, "invalid_request"),
        // RFC 6749 §3.1: a parameter at most once, even the same value twice.
        (vec![("+redirect_uri", REDIRECT.to_owned())], 400, "invalid_request"),
    ] {
        let (s, body) = par(extra.clone()).await;
        assert_eq!((s, body["error"].as_str().unwrap()), (status, error), "{extra:?}: {body}");
    }
    // A replayed assertion, and one signed by a key the service never registered.
    let assertion = o.service.client_assertion(&w.app.base).unwrap();
    assert_eq!(
        par(vec![("client_assertion", assertion.clone())]).await.0,
        201
    );
    let (s, body) = par(vec![("client_assertion", assertion)]).await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (401, "invalid_client"),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
    let impostor = sdk(w, CLIENT, Keys::generate()).await;
    let (s, body) = par(vec![(
        "client_assertion",
        impostor.client_assertion(&w.app.base).unwrap(),
    )])
    .await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (401, "invalid_client"),
        "{body}"
    );
    // FAPI 2.0: aud is the issuer identifier, one string; not the endpoint's URL, not an array
    // that holds it beside another server's.
    let now = mydata_core::Clock::now(&w.app.clock).millis() / 1000;
    for aud in [
        serde_json::json!(format!("{}/oauth/par", w.app.base)),
        serde_json::json!(["https://other-as.example", w.app.base]),
    ] {
        let assertion = o
            .service
            .sign(&serde_json::json!({
                "iss": CLIENT, "sub": CLIENT, "aud": aud,
                "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
            }))
            .unwrap();
        let (s, body) = par(vec![("client_assertion", assertion)]).await;
        assert_eq!(
            (s, body["error"].as_str().unwrap()),
            (401, "invalid_client"),
            "{aud}: {body}"
        );
        assert!(
            body["error_description"].as_str().unwrap().contains("aud"),
            "{body}"
        );
    }

    // Too many datasets: a registration of six without a legal basis is refused by the admin API.
    let admin = reqwest::Client::new();
    let six = [
        "household-register-personal",
        "household-register-full",
        "kinship-relations",
        DATASET,
        "disability-status",
        "income-tax-income",
    ];
    let mut reg = registration("six", &Keys::generate(), &six);
    let r = admin
        .put(format!("{}/api/v1/admin/services/six", w.app.base))
        .bearer_auth(ADMIN)
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
    let r = admin
        .put(format!("{}/api/v1/admin/services/six", w.app.base))
        .bearer_auth("wrong-token-wrong-token")
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    reg.legal_basis = Some("學生就學補助辦法".into());
    let r = admin
        .put(format!("{}/api/v1/admin/services/six", w.app.base))
        .bearer_auth(ADMIN)
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // A login_hint naming someone else: back to the service with access_denied, no transfer.
    let mut req = AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核");
    req.login_hint = Some(w.people[1].id.clone());
    let pending = o.service.push(&req).await.unwrap();
    let r = b.get(&path_of(&pending.authorize_url, &w.app.base)).await;
    assert_eq!(r.status(), 303);
    let back = location(&r);
    assert!(
        back.starts_with(REDIRECT) && back.contains("error=access_denied"),
        "{back}"
    );
    refused_with(
        o.service
            .callback(&pending, back.split_once('?').unwrap().1)
            .await
            .unwrap_err(),
        "access_denied",
    );
    let me = mydata_server::identity::subject_pseudonym(&w.app.state, &p.subject());
    assert!(
        w.app
            .store()
            .transfers_for_subject(&me, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The same, once the named person has opened the request in their own browser: the other
    // browser gets a page, not a redirect carrying the service's state, and the named person's
    // authorization goes on.
    let named = w.signed_in(&w.people[1], "10.8.0.12").await;
    let pending = o.service.push(&req).await.unwrap();
    let (consent, page) = open_consent(w, &named, &pending).await;
    let r = b.get(&path_of(&pending.authorize_url, &w.app.base)).await;
    assert_eq!(r.status(), 400, "{:?}", r.headers().get("location"));
    let r = named
        .post(
            &consent,
            &[
                ("csrf", &csrf_in(&page)),
                ("decision", "agree"),
                (
                    "platform_terms",
                    mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
                ),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);

    // One full authorization, then every bad use of its code.
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let query = consent_and_confirm(w, &b, &pending).await;
    let code = code_of(&query);
    let v = pending.code_verifier.clone();
    for (form, what) in [
        (
            grant(
                &o,
                &code,
                "wrong-verifier-wrong-verifier-wrong-verifier-0000",
                REDIRECT,
            ),
            "wrong verifier",
        ),
        (grant(&o, &code, "", REDIRECT), "missing verifier"),
        (
            grant(&o, &code, &v, "http://127.0.0.1:9/other"),
            "wrong redirect",
        ),
        (grant(&o, "not-a-code", &v, REDIRECT), "unknown code"),
    ] {
        let (s, body) = token_call(&o, &form).await;
        assert_eq!(
            (s, body["error"].as_str().unwrap()),
            (400, "invalid_grant"),
            "{what}: {body}"
        );
    }
    // RFC 6749 §5.2: no grant_type is a malformed request; another one is not supported.
    for (grant_type, error) in [
        (None, "invalid_request"),
        (Some("client_credentials"), "unsupported_grant_type"),
    ] {
        let mut form = grant(&o, &code, &v, REDIRECT);
        form.retain(|(k, _)| *k != "grant_type");
        if let Some(g) = grant_type {
            form.push(("grant_type", g.into()));
        }
        let (s, body) = token_call(&o, &form).await;
        assert_eq!((s, body["error"].as_str().unwrap()), (400, error), "{body}");
    }
    // Nothing changed: the code still works once.
    let form = grant(&o, &code, &v, REDIRECT);
    let (s, body) = token_call(&o, &form).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    // The same client assertion again: a replay, refused before the code's reuse is looked at.
    let (s, replayed) = token_call(&o, &form).await;
    assert_eq!(
        (s, replayed["error"].as_str().unwrap()),
        (401, "invalid_client"),
        "{replayed}"
    );
    assert!(
        replayed["error_description"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
    let token = Token {
        access_token: body["access_token"].as_str().unwrap().into(),
        token_type: "DPoP".into(),
        transfer_id: body["authorization_details"][0]["transfer_id"]
            .as_str()
            .unwrap()
            .into(),
        datasets: vec![DATASET.into()],
        expires_in: 0,
    };
    // Reused: refused, and the token it issued is revoked.
    let (s, body) = token_call(&o, &grant(&o, &code, &v, REDIRECT)).await;
    assert_eq!((s, body["error"].as_str().unwrap()), (400, "invalid_grant"));
    refused_with(
        o.service
            .package(&token, Duration::from_secs(10))
            .await
            .unwrap_err(),
        "invalid_token",
    );
    assert_eq!(
        w.app.transfer(&token.transfer_id).await.state,
        TransferState::Ready,
        "nothing released"
    );

    // An expired code (60 s).
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let query = consent_and_confirm(w, &b, &pending).await;
    w.app.clock.advance(Duration::from_secs(61));
    let (s, body) = token_call(
        &o,
        &grant(&o, &code_of(&query), &pending.code_verifier, REDIRECT),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (400, "invalid_grant"),
        "{body}"
    );

    // A token used for another transfer; a tampered and a re-encrypted envelope.
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let query = consent_and_confirm(w, &b, &pending).await;
    let good = o.service.callback(&pending, &query).await.unwrap();
    let crossed = Token {
        transfer_id: token.transfer_id.clone(),
        ..good.clone()
    };
    refused_with(
        o.service
            .package(&crossed, Duration::from_secs(10))
            .await
            .unwrap_err(),
        "invalid_token",
    );
    let env = o
        .service
        .fetch_envelope(&good, Duration::from_secs(10))
        .await
        .unwrap();
    let mut ct = env.ct.clone().into_bytes();
    ct[10] = if ct[10] == b'A' { b'B' } else { b'A' };
    let tampered = mydata_package::e2e::Envelope {
        ct: String::from_utf8(ct).unwrap(),
        ..env.clone()
    };
    assert!(matches!(
        o.service.open(&good, &tampered),
        Err(mydata_sdk::Error::Envelope(_))
    ));
    let zip = o.service.open(&good, &env).unwrap();
    let forger = mydata_package::e2e::HpkeKeyPair::generate();
    let service_key = mydata_package::e2e::x25519_from_jwk(&o.service_jwk_enc()).unwrap();
    let re =
        mydata_package::e2e::seal_package(&forger, &service_key, &good.transfer_id, CLIENT, &zip)
            .unwrap();
    assert!(matches!(
        o.service.open(&good, &re),
        Err(mydata_sdk::Error::Envelope(_))
    ));
    assert!(
        mydata_sdk::verify(
            &zip,
            &token.transfer_id,
            &w.app.trust(),
            &o.service.platform_signing_keys(),
            w.app.clock.now()
        )
        .is_err(),
        "a package for another transfer"
    );
}

impl Online {
    fn service_jwk_enc(&self) -> serde_json::Value {
        let reg = self.w.app.state.settings().oauth.clients[0].clone();
        reg.jwks.unwrap()["keys"][1].clone()
    }
}

#[tokio::test]
async fn refusing_at_either_question_returns_access_denied_and_deletes_the_data() {
    let o = Online::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.3").await;
    // At the first question.
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let (consent, page) = open_consent(w, &b, &pending).await;
    let r = b
        .post(
            &consent,
            &[("csrf", &csrf_in(&page)), ("decision", "decline")],
        )
        .await;
    let back = location(&r);
    assert!(
        back.contains("error=access_denied") && back.contains("iss="),
        "{back}"
    );
    // The request cannot be reopened.
    assert_eq!(
        b.get(&path_of(&pending.authorize_url, &w.app.base))
            .await
            .status(),
        400
    );

    // At the second: the fetched data is destroyed.
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let (consent, page) = open_consent(w, &b, &pending).await;
    b.post(
        &consent,
        &[
            ("csrf", &csrf_in(&page)),
            ("decision", "agree"),
            (
                "platform_terms",
                mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
            ),
        ],
    )
    .await;
    let confirm = until_confirm(&b, &consent).await;
    let r = b
        .post(
            &format!("{consent}/confirm"),
            &[("csrf", &csrf_in(&confirm)), ("decision", "dont_send")],
        )
        .await;
    let back = location(&r);
    assert!(back.contains("error=access_denied"), "{back}");
    let me = mydata_server::identity::subject_pseudonym(&w.app.state, &p.subject());
    let transfers = w.app.store().transfers_for_subject(&me, 10).await.unwrap();
    let t = transfers.first().expect("the refused transfer is recorded");
    assert_eq!(t.state, TransferState::Expired);
    // The records say the person ended it, not the clock.
    let json: serde_json::Value = b.get("/records.json?lang=en").await.json().await.unwrap();
    let rec = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_number"] == t.id.as_str())
        .unwrap();
    assert_eq!(rec["state_label"], "Cancelled and deleted", "{rec}");
    assert_eq!(
        rec["recipient"], "高級中等學校學雜費減免",
        "the registered name: {rec}"
    );
    let labels: Vec<&str> = rec["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["label"].as_str().unwrap())
        .collect();
    assert!(labels.contains(&"Cancelled; data deleted"), "{labels:?}");
    assert!(
        !labels.iter().any(|l| l.contains("Time limit")),
        "{labels:?}"
    );
    mydata_server::packages::purge_expired_data(&w.app.state)
        .await
        .unwrap();
    let rec = w.app.store().package(&t.id).await.unwrap().unwrap();
    assert!(rec.sealed_key.is_none(), "the package is destroyed");
}

/// A person signed in a way the datasets do not take (dual ID, level 4, for the household
/// register) is sent to sign in again with one they do, and comes back to the request.
#[tokio::test]
async fn a_sign_in_too_weak_for_the_datasets_leads_to_a_stronger_one() {
    const STRICT: &str = "household-register-personal";
    let o = Online::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let p = w.people[0].clone();
    w.known(&p).await;
    let b = w.browser("10.8.0.5");
    assert_eq!(b.dual_id(&p, "/").await.status(), 303);
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[STRICT], "學雜費減免資格審核"))
        .await
        .unwrap();
    let authorize = path_of(&pending.authorize_url, &w.app.base);
    let r = b.get(&authorize).await;
    assert_eq!(r.status(), 303, "no consent page at level 4");
    let login = location(&r);
    assert!(
        login.starts_with("/login?next=") && login.ends_with(&format!("&datasets={STRICT}")),
        "{login}"
    );
    let page = b.get(&login).await.text().await.unwrap();
    assert!(page.contains("/login/moica_cert?next="), "{page}");
    assert!(
        !page.contains("/login/dual_id?"),
        "dual ID is not offered: {page}"
    );
    // Signed in by certificate in the same browser: the consent question.
    let r = b.certificate(&w.card(&p), "/").await;
    assert_eq!(r.status(), 303);
    open_consent(w, &b, &pending).await;
}

/// A request_uri lasts a few minutes until it is used; a person whose first sign-in (card, code,
/// contacts) takes longer still finds the request once signed in. One never opened expires.
async fn a_long_first_sign_in_keeps_the_request_it_started_from(backend: Backend) {
    let o = Online::spawn(backend).await;
    let w = &o.w;
    let p = w.people[0].clone();
    w.known(&p).await;
    let push = || async {
        o.service
            .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
            .await
            .unwrap()
    };
    let (used, unused) = (push().await, push().await);
    let b = w.browser("10.8.0.6");
    let r = b.get(&path_of(&used.authorize_url, &w.app.base)).await;
    assert_eq!(r.status(), 303);
    assert!(location(&r).starts_with("/login?next="));
    let par_ttl = w.app.state.settings().oauth.par_ttl_secs;
    w.app.clock.advance(Duration::from_secs(par_ttl + 60));
    let r = b.certificate(&w.card(&p), "/").await;
    assert_eq!(r.status(), 303);
    open_consent(w, &b, &used).await;
    let r = b.get(&path_of(&unused.authorize_url, &w.app.base)).await;
    assert_eq!(
        r.status(),
        400,
        "a request_uri never used expires as pushed"
    );
}

#[tokio::test]
async fn a_long_first_sign_in_keeps_the_request_it_started_from_sqlite() {
    a_long_first_sign_in_keeps_the_request_it_started_from(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_long_first_sign_in_keeps_the_request_it_started_from_postgres() {
    a_long_first_sign_in_keeps_the_request_it_started_from(Backend::Postgres).await;
}

/// A double tap on either answer: the browser shows the second response, so it must carry the
/// outcome (the page after "agree", a code that works after "send", access_denied again).
async fn a_repeated_answer_gives_the_same_outcome(backend: Backend) {
    let o = Online::spawn(backend).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.7").await;
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let (consent, page) = open_consent(w, &b, &pending).await;
    let agree = [
        ("csrf", csrf_in(&page)),
        ("decision", "agree".to_owned()),
        (
            "platform_terms",
            mydata_server::oauth::flow::PLATFORM_TERMS_VERSION.to_owned(),
        ),
    ];
    let agree: Vec<(&str, &str)> = agree.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..2 {
        let r = b.post(&consent, &agree).await;
        assert_eq!(r.status(), 303);
        assert_eq!(location(&r), consent);
    }
    let confirm = until_confirm(&b, &consent).await;
    let first = send(&b, &consent, &confirm).await;
    let second = send(&b, &consent, &confirm).await;
    let (q1, q2) = (
        first.split_once('?').unwrap().1,
        second.split_once('?').unwrap().1,
    );
    assert_ne!(code_of(q1), code_of(q2), "a fresh code");
    // Only the last code works: it is the one the browser took to the service.
    let token = o.service.callback(&pending, q2).await.unwrap();
    assert!(
        o.service
            .package(&token, Duration::from_secs(10))
            .await
            .is_ok()
    );
    let stale = o.service.callback(&pending, q1).await.unwrap_err();
    refused_with(stale, "invalid_grant");
    // Once the code is spent, "send" again is over.
    let r = b
        .post(
            &format!("{consent}/confirm"),
            &[("csrf", &csrf_in(&confirm)), ("decision", "send")],
        )
        .await;
    assert_eq!(r.status(), 400);

    // "Do not send" twice: access_denied both times.
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let (consent, page) = open_consent(w, &b, &pending).await;
    b.post(
        &consent,
        &[
            ("csrf", &csrf_in(&page)),
            ("decision", "agree"),
            (
                "platform_terms",
                mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
            ),
        ],
    )
    .await;
    let confirm = until_confirm(&b, &consent).await;
    for _ in 0..2 {
        let r = b
            .post(
                &format!("{consent}/confirm"),
                &[("csrf", &csrf_in(&confirm)), ("decision", "dont_send")],
            )
            .await;
        assert_eq!(r.status(), 303);
        assert!(location(&r).contains("error=access_denied"));
    }
}

#[tokio::test]
async fn a_repeated_answer_gives_the_same_outcome_sqlite() {
    a_repeated_answer_gives_the_same_outcome(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_repeated_answer_gives_the_same_outcome_postgres() {
    a_repeated_answer_gives_the_same_outcome(Backend::Postgres).await;
}

/// A person whose session ends while an agency takes its hour (a phone locked on the wait page)
/// signs in again and finds the request; someone else signing in does not.
#[tokio::test]
async fn the_same_person_signing_in_again_finds_the_request_waiting() {
    const SLOW: &str = "income-tax-income";
    let keys = Keys::generate();
    let reg = registration(CLIENT, &keys, &[DATASET, SLOW]);
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.clients = vec![reg];
    })
    .await;
    let service = sdk(&w, CLIENT, keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.8").await;
    let pending = service
        .push(&AuthorizationRequest::new(
            &[DATASET, SLOW],
            "學雜費減免資格審核",
        ))
        .await
        .unwrap();
    let (consent, page) = open_consent(&w, &b, &pending).await;
    // Before agreeing the person sees how long each agency is expected to take.
    let minutes = w.app.state.catalog().dataset(SLOW).unwrap().ready_minutes;
    assert!(
        minutes > 0 && page.contains(&format!("約 {minutes} 分鐘")),
        "{page}"
    );
    b.post(
        &consent,
        &[
            ("csrf", &csrf_in(&page)),
            ("decision", "agree"),
            (
                "platform_terms",
                mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
            ),
        ],
    )
    .await;
    // The quick agency has answered and the slow one has said "not yet".
    let tid = w.newest_transfer_of(&p).await;
    w.app
        .until_dataset(&tid, DATASET, "fetched", |d| {
            d.status == mydata_store::fetch_status::SUCCEEDED
        })
        .await;
    w.session_ends_while_waiting(&b, &consent, &tid, SLOW).await;
    // Someone else, in another browser, is not given the request.
    let other = w.people[1].clone();
    let stranger = w.signed_in(&other, "10.8.0.9").await;
    assert_eq!(stranger.get(&consent).await.status(), 400);
    // The person, signed in again: the request's page (waiting or confirming), and the answers
    // work.
    let r = b.certificate(&w.card(&p), "/").await;
    assert_eq!(r.status(), 303);
    let page = b.get(&consent).await.text().await.unwrap();
    assert!(
        page.contains("data-step=\"wait\"") || page.contains("data-step=\"confirm\""),
        "{page}"
    );
    let back = send(&b, &consent, &page).await;
    assert!(back.contains("code="), "{back}");
}

/// A service writes its name, purpose and terms in one language; the consent page marks each with
/// that language, so a screen reader on a page in the other reads it with the right voice.
#[tokio::test]
async fn the_services_own_texts_carry_their_language() {
    let o = Online::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let b = w.signed_in(&w.people[0], "10.8.2.1").await;
    let pending = o
        .service
        .push(&AuthorizationRequest::new(
            &[DATASET],
            "Tuition reduction eligibility",
        ))
        .await
        .unwrap();
    let (_, page) = open_consent(w, &b, &pending).await;
    assert!(page.contains("<html lang=\"zh-TW\">"), "{page}");
    assert!(
        page.contains("data-field=\"service\" lang=\"zh-TW\"")
            && page.contains("<span lang=\"en\">Tuition reduction eligibility</span>")
            && page.contains("<small lang=\"zh-TW\">學雜費減免資格審核</small>")
            && page.contains("data-field=\"terms\" lang=\"zh-TW\""),
        "{page}"
    );
}

/// The consent question names who is signed in (masked) and takes the platform's terms with the
/// agreement: untick them and nothing starts. "Not you?" signs out and lets the next person who
/// signs in on the device open the request as their own.
#[tokio::test]
async fn consent_shows_whose_data_and_takes_the_platform_terms() {
    let o = Online::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let (owner, other) = (w.people[0].clone(), w.people[1].clone());
    // Someone else is still signed in on the shared device.
    let b = w.signed_in(&other, "10.8.1.1").await;
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let (_, page) = open_consent(w, &b, &pending).await;
    let masked = format!("{}******{}", &other.id[..2], &other.id[8..]);
    assert!(
        page.contains(&masked) && !page.contains(&other.id),
        "{page}"
    );
    assert!(page.contains(mydata_server::oauth::flow::PLATFORM_TERMS_VERSION));
    let r = b
        .post(
            "/logout",
            &[
                ("csrf", csrf_in(&page).as_str()),
                ("next", &path_of(&pending.authorize_url, &w.app.base)),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(location(&r), path_of(&pending.authorize_url, &w.app.base));
    // The owner signs in on the same device and gets the question as their own.
    w.known(&owner).await;
    let r = b.certificate(&w.card(&owner), "/").await;
    assert_eq!(r.status(), 303);
    let (consent, page) = open_consent(w, &b, &pending).await;
    assert!(page.contains(&format!("{}******{}", &owner.id[..2], &owner.id[8..])));

    // Agreeing without ticking the platform's terms: the question again, nothing started.
    let r = b
        .post(
            &consent,
            &[("csrf", &csrf_in(&page)), ("decision", "agree")],
        )
        .await;
    assert_eq!(r.status(), 422);
    let again = r.text().await.unwrap();
    assert!(again.contains("data-step=\"consent\"") && again.contains("id=\"form-error\""));
    let me = mydata_server::identity::subject_pseudonym(&w.app.state, &owner.subject());
    assert!(
        w.app
            .store()
            .transfers_for_subject(&me, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Ticked: the consent records which terms were shown.
    let r = b
        .post(
            &consent,
            &[
                ("csrf", &csrf_in(&page)),
                ("decision", "agree"),
                (
                    "platform_terms",
                    mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
                ),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let tid = w.newest_transfer_of(&owner).await;
    let consent_event = w
        .app
        .store()
        .audit_for_transfer(&tid)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "service.consent")
        .unwrap();
    assert_eq!(
        consent_event.detail["platform_terms"],
        mydata_server::oauth::flow::PLATFORM_TERMS_VERSION
    );
    assert_eq!(
        consent_event.detail["service_terms_sha256"]
            .as_str()
            .map(str::len),
        Some(64)
    );
}

/// "Do not send" is two writes (the transfer's end, the request's answer); should a process stop
/// between them in either order, the expiry sweep ends a refused request's live transfer.
async fn a_refusal_whose_transfer_stayed_live_is_ended_by_the_sweep(backend: Backend) {
    let o = Online::spawn(backend).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.4").await;
    let pending = o
        .service
        .push(&AuthorizationRequest::new(&[DATASET], "學雜費減免資格審核"))
        .await
        .unwrap();
    let (consent, page) = open_consent(w, &b, &pending).await;
    b.post(
        &consent,
        &[
            ("csrf", &csrf_in(&page)),
            ("decision", "agree"),
            (
                "platform_terms",
                mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
            ),
        ],
    )
    .await;
    until_confirm(&b, &consent).await;
    let t = w.app.transfer(&w.newest_transfer_of(&p).await).await;
    assert_eq!(t.state, TransferState::Ready);
    // The request's answer written, the transfer's end lost.
    let request = consent.strip_prefix("/oauth/consent/").unwrap();
    let now = w.app.clock.now();
    assert!(
        w.app
            .store()
            .advance_request(request, "consented", "refused", None, None, now)
            .await
            .unwrap()
    );
    let report = mydata_server::background::sweep(&w.app.state)
        .await
        .unwrap();
    assert_eq!(report.transfers_expired, 1, "{report:?}");
    assert_eq!(w.app.transfer(&t.id).await.state, TransferState::Expired);
    let rec = w.app.store().package(&t.id).await.unwrap().unwrap();
    assert!(
        rec.sealed_key.is_none() && rec.body.is_none(),
        "the package is destroyed"
    );
    // Nothing more to end on the next round.
    let report = mydata_server::background::sweep(&w.app.state)
        .await
        .unwrap();
    assert_eq!(report.transfers_expired, 0, "{report:?}");
}

#[tokio::test]
async fn a_refusal_whose_transfer_stayed_live_is_ended_by_the_sweep_sqlite() {
    a_refusal_whose_transfer_stayed_live_is_ended_by_the_sweep(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_refusal_whose_transfer_stayed_live_is_ended_by_the_sweep_postgres() {
    a_refusal_whose_transfer_stayed_live_is_ended_by_the_sweep(Backend::Postgres).await;
}

/// Metadata, keys and OpenAPI documents a service reads, and the admin API's other verbs.
#[tokio::test]
async fn metadata_keys_openapi_and_the_admin_api() {
    let o = Online::spawn(Backend::Sqlite).await;
    let base = &o.w.app.base;
    let http = reqwest::Client::new();
    let m: serde_json::Value = http
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["issuer"], base.as_str());
    assert_eq!(m["require_pushed_authorization_requests"], true);
    assert_eq!(
        m["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        serde_json::json!(["private_key_jwt"])
    );
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
    let keys: serde_json::Value = http
        .get(format!("{base}/oauth/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kty"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["EC", "OKP"]);
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none()),
        "public keys only"
    );
    for path in ["/api/v1/openapi.yaml", "/api/v1/agency-api.yaml"] {
        let text = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "{path}");
    }
    let doc: serde_json::Value = serde_norway::from_str(
        &http
            .get(format!("{base}/api/v1/openapi.yaml"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    for p in [
        "/oauth/par",
        "/oauth/token",
        "/api/v1/transfers/{transfer_id}/package",
        "/api/v1/admin/services/{client_id}",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} documented");
    }

    let list = http
        .get(format!("{base}/api/v1/admin/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 401, "no token");
    let list: serde_json::Value = http
        .get(format!("{base}/api/v1/admin/services"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["services"][0]["client_id"], CLIENT);
    let one = http
        .get(format!("{base}/api/v1/admin/services/{CLIENT}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let mut reg: Registration = one.json().await.unwrap();
    let configured = reg.clone();
    reg.jwks = Some(
        serde_json::json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "secret" }] }),
    );
    let r = http
        .put(format!("{base}/api/v1/admin/services/{CLIENT}"))
        .bearer_auth(ADMIN)
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a private key is refused");
    // A service the configuration registers is changed there: through the API the next process
    // to start would undo the change.
    let admin = |m: reqwest::Method, id: &str| {
        http.request(m, format!("{base}/api/v1/admin/services/{id}"))
            .bearer_auth(ADMIN)
    };
    let r = admin(reqwest::Method::PUT, CLIENT)
        .json(&configured)
        .send()
        .await
        .unwrap();
    assert_problem(r, 409, "service_managed_by_config").await;
    let r = admin(reqwest::Method::DELETE, CLIENT).send().await.unwrap();
    assert_problem(r, 409, "service_managed_by_config").await;
    o.service
        .push(&AuthorizationRequest::new(&[DATASET], "x"))
        .await
        .unwrap();
    // One registered through the API is removed through it.
    let keys = Keys::generate();
    let made = registration("admin-made", &keys, &[DATASET]);
    let r = admin(reqwest::Method::PUT, "admin-made")
        .json(&made)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let service = sdk(&o.w, "admin-made", keys).await;
    service
        .push(&AuthorizationRequest::new(&[DATASET], "x"))
        .await
        .unwrap();
    let r = admin(reqwest::Method::DELETE, "admin-made")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = admin(reqwest::Method::DELETE, "admin-made")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A removed service can no longer start anything.
    refused_with(
        service
            .push(&AuthorizationRequest::new(&[DATASET], "x"))
            .await
            .unwrap_err(),
        "invalid_client",
    );
}

/// Every process stores the configuration's registrations when it starts, but writes one (with
/// its `service.registered` event, actor `config`) only when the stored one differs: a second
/// process, or a restart with the same configuration, changes nothing.
#[tokio::test]
async fn configured_services_are_written_only_when_they_change() {
    let keys = Keys::generate();
    let mut reg = registration(CLIENT, &keys, &[DATASET]);
    let r1 = reg.clone();
    let app =
        crate::fetch::DataApp::spawn(Backend::Sqlite, 1.0, |s| s.oauth.clients = vec![r1]).await;
    let registered = |app: &crate::fetch::DataApp| {
        let store = app.store().clone();
        async move {
            store
                .audit_events_after(0, 10_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == "service.registered")
                .map(|e| (e.actor, e.detail["client_id"].as_str().unwrap().to_owned()))
                .collect::<Vec<_>>()
        }
    };
    let once = vec![("config".to_owned(), CLIENT.to_owned())];
    assert_eq!(registered(&app).await, once);
    let r2 = reg.clone();
    let app = app.restart(|s| s.oauth.clients = vec![r2]).await;
    assert_eq!(registered(&app).await, once, "the same configuration again");
    reg.name = "學雜費減免（新版）".into();
    let r3 = reg.clone();
    let app = app.restart(|s| s.oauth.clients = vec![r3]).await;
    assert_eq!(registered(&app).await.len(), 2, "a changed one is written");
    let stored = app.store().client(CLIENT).await.unwrap().unwrap();
    assert_eq!(stored.name, reg.name);
}

/// A slow agency (a 60-minute dataset): the person answers the second question early ("send when
/// ready") instead of keeping the page open; the service's poll gets 202 with `Retry-After` until
/// the package is sealed, then 200 once, then 410.
#[tokio::test]
async fn send_when_ready_gives_the_service_202_retry_after_then_the_package_once_then_410() {
    const SLOW: &str = "income-tax-income";
    let keys = Keys::generate();
    let reg = registration(CLIENT, &keys, &[DATASET, SLOW]);
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.clients = vec![reg];
    })
    .await;
    let service = sdk(&w, CLIENT, keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.9").await;
    let pending = service
        .push(&AuthorizationRequest::new(
            &[DATASET, SLOW],
            "學雜費減免資格審核",
        ))
        .await
        .unwrap();
    let (consent, page) = open_consent(&w, &b, &pending).await;
    let r = b
        .post(
            &consent,
            &[
                ("csrf", &csrf_in(&page)),
                ("decision", "agree"),
                (
                    "platform_terms",
                    mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
                ),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);

    // The wait page offers the early answer; the slow dataset is still being fetched.
    let page = b.get(&consent).await.text().await.unwrap();
    assert!(page.contains("data-step=\"wait\""), "{page}");
    assert!(page.contains("id=\"send-when-ready\""), "{page}");
    // Too early to send without data is not a reason to refuse: the answer is recorded now.
    let back = send(&b, &consent, &page).await;
    let token = service
        .callback(&pending, back.split_once('?').unwrap().1)
        .await
        .unwrap();
    let url = format!(
        "{}/api/v1/transfers/{}/package",
        w.app.base, token.transfer_id
    );
    // Each poll with its own DPoP proof (the SDK binds the token to its key).
    assert!(token.is_dpop());
    let get = || service.resource_get(&token, &url).unwrap().send();

    // Slow agency: 202 with Retry-After (seconds, within 1..=300) and the state in the body.
    let r = get().await.unwrap();
    assert_eq!(r.status(), 202);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&wait), "{wait}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["transfer_id"], token.transfer_id.as_str());
    assert!(
        matches!(body["state"].as_str(), Some("created" | "fetching")),
        "{body}"
    );
    assert_eq!(body["retry_after"].as_u64(), Some(wait));
    // The SDK, given less time than the platform asks for, reports not ready and spends nothing.
    assert!(matches!(
        service.package(&token, Duration::from_millis(10)).await,
        Err(mydata_sdk::Error::NotReady)
    ));

    // The agency has said "not yet"; an hour passes on the platform's clock, it answers and the
    // package is sealed.
    w.app
        .until_dataset(&token.transfer_id, SLOW, "not ready", |d| {
            d.status == mydata_store::fetch_status::NOT_READY
        })
        .await;
    // Five minutes at a time (bounded: at most two hours), leaving the workers real time to act.
    let mut state = TransferState::Fetching;
    for _ in 0..24 {
        state = w.five_minutes_later(&token.transfer_id).await;
        if state != TransferState::Fetching {
            break;
        }
    }
    assert_eq!(state, TransferState::Ready);
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let envelope: mydata_package::e2e::Envelope = r.json().await.unwrap();
    let zip = service.open(&token, &envelope).unwrap();
    let report = mydata_sdk::verify(
        &zip,
        &token.transfer_id,
        &w.app.trust(),
        &service.platform_signing_keys(),
        w.app.clock.now(),
    )
    .unwrap_or_else(|r| panic!("package verifies: {r:?}"));
    assert_eq!(report.datasets.len(), 2);

    // Once only.
    let r = get().await.unwrap();
    assert_eq!(r.status(), 410);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "package_gone", "{problem}");
    let release = w
        .app
        .store()
        .audit_for_transfer(&token.transfer_id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "service.release")
        .unwrap();
    assert_eq!(release.detail["when_ready"], true);
}

/// A person who keeps the wait page open while an agency prepares a 60-minute dataset can still
/// send once it is ready: consenting gives the request the dataset's wait on top of the hour it
/// had from opening (oauth.authorization_ttl_secs), which would otherwise run out first.
#[tokio::test]
async fn a_person_waiting_for_a_60_minute_dataset_can_still_send_once_it_is_ready() {
    const SLOW: &str = "income-tax-income";
    let keys = Keys::generate();
    let reg = registration(CLIENT, &keys, &[SLOW]);
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.clients = vec![reg];
    })
    .await;
    let service = sdk(&w, CLIENT, keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.10").await;
    let consent = agree(&w, &service, &b, &p.id, SLOW).await;
    let id = w.newest_transfer_of(&p).await;
    w.app
        .until_dataset(&id, SLOW, "not ready", |d| {
            d.status == mydata_store::fetch_status::NOT_READY
        })
        .await;
    let page = w.confirmation_in_time(&b, &consent, &id).await;
    let back = send(&b, &consent, &page).await;
    assert!(back.contains("code="), "{back}");
}

/// A consent that loses the race to answer the request (two "agree" posts at once: both passed
/// the page's check, the other's write moved the request first) creates nothing that lasts: its
/// transfer is cancelled before any fetch runs, the request keeps the winner's transfer, and the
/// answer is refused as already given.
#[tokio::test]
async fn a_consent_that_loses_the_race_to_answer_is_cancelled_and_refused() {
    use mydata_server::agencies::{StartError, StartFetch, start_fetch};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let o = Online::spawn(backend).await;
        let p = o.w.people[0].clone();
        let b = o.w.signed_in(&p, "10.8.0.1").await;
        let consent = agree(&o.w, &o.service, &b, &p.id, DATASET).await;
        let request_id = consent.rsplit('/').next().unwrap().to_owned();
        let store = o.w.app.store();
        let winner = store.request(&request_id).await.unwrap().unwrap();
        assert_eq!(winner.status, "consented");
        let winner_transfer = winner.transfer_id.clone().unwrap();

        // The second answer's start, as the page's handler makes it once past its check.
        let state = &o.w.app.state;
        let subject = mydata_core::IdNumber::parse(&p.id).unwrap();
        let pseudonym = mydata_server::identity::subject_pseudonym(
            state,
            &mydata_server::identity::SubjectId::Person(subject),
        );
        let now = state.clock().now();
        let late = uuid::Uuid::now_v7().to_string();
        let event = mydata_store::NewAuditEvent {
            at: now,
            kind: "service.consent".into(),
            subject: Some(pseudonym.clone()),
            transfer_id: None,
            actor: pseudonym.clone(),
            detail: serde_json::json!({}),
        };
        let method = mydata_core::IdentityMethod::MoicaCert;
        let started = start_fetch(
            state,
            StartFetch {
                transfer: mydata_store::NewTransfer {
                    id: late.clone(),
                    kind: mydata_core::transfer::TransferKind::Online,
                    subject: pseudonym.clone(),
                    recipient: Some(CLIENT.into()),
                    purpose: "學雜費減免資格審核".into(),
                    datasets: vec![DATASET.into()],
                },
                subject_id: p.id.clone(),
                method,
                level: method.level(),
                answers: Some(mydata_server::agencies::ServiceAnswer {
                    request_id: request_id.clone(),
                    event,
                    keep_until: o.w.app.clock.now(),
                }),
            },
            &pseudonym,
        )
        .await;
        assert!(
            matches!(started, Err(StartError::AlreadyAnswered)),
            "{started:?}"
        );
        let lost = store.transfer(&late).await.unwrap().unwrap();
        assert_eq!(lost.state, TransferState::Expired, "cancelled: {lost:?}");
        assert!(
            lost.datasets.iter().all(|d| d.attempts == 0),
            "no agency was called for it: {lost:?}"
        );
        let after = store.request(&request_id).await.unwrap().unwrap();
        assert_eq!(after.transfer_id.as_deref(), Some(winner_transfer.as_str()));
        // The winner goes on to the confirmation as if nothing happened.
        let page = until_confirm(&b, &consent).await;
        assert!(page.contains("data-step=\"confirm\""));
        assert_ne!(
            store
                .transfer(&winner_transfer)
                .await
                .unwrap()
                .unwrap()
                .state,
            TransferState::Expired
        );
    }
}

/// Removing a service while its transfer is still fetching (a 60-minute dataset pending, another
/// fetched and held under a key the platform can open) ends the transfer at once: no package can
/// reach the service any more. No agency is called for it after that, and the expiry sweep
/// destroys what it fetched (key and blob) and its sealed identity.
#[tokio::test]
async fn removing_a_service_ends_its_fetching_transfer_and_its_data_goes() {
    const SLOW: &str = "income-tax-income";
    let w =
        FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| s.oauth.admin_token = ADMIN.into()).await;
    let keys = Keys::generate();
    let http = reqwest::Client::new();
    let admin = |m: reqwest::Method| {
        http.request(m, format!("{}/api/v1/admin/services/removable", w.app.base))
            .bearer_auth(ADMIN)
    };
    let r = admin(reqwest::Method::PUT)
        .json(&registration("removable", &keys, &[DATASET, SLOW]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let service = sdk(&w, "removable", keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.8.0.44").await;
    let mut req = AuthorizationRequest::new(&[DATASET, SLOW], "學雜費減免資格審核");
    req.login_hint = Some(p.id.clone());
    let pending = service.push(&req).await.unwrap();
    let (consent, page) = open_consent(&w, &b, &pending).await;
    b.post(
        &consent,
        &[
            ("csrf", &csrf_in(&page)),
            ("decision", "agree"),
            (
                "platform_terms",
                mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
            ),
        ],
    )
    .await;
    let id = w.newest_transfer_of(&p).await;
    let slow = w
        .app
        .until_dataset(&id, SLOW, "not ready", |d| {
            d.status == mydata_store::fetch_status::NOT_READY
        })
        .await;
    w.app
        .until_dataset(&id, DATASET, "fetched", |d| {
            d.status == mydata_store::fetch_status::SUCCEEDED
        })
        .await;
    let store = w.app.store();
    let fetched: Vec<String> = store
        .fetch_records(&id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.data_object)
        .collect();
    assert_eq!(fetched.len(), 1, "the fetched dataset is held");
    let blobs = &w.app.state.data().blobs;
    assert!(blobs.get(&fetched[0]).await.is_ok());

    let r = admin(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let t = w.app.transfer(&id).await;
    assert_eq!(t.state, TransferState::Expired, "ended with the service");
    let kinds = audit_kinds(&w, &id).await;
    assert_eq!(kinds.last().map(String::as_str), Some("transfer.expired"));
    // The slow agency's retry time comes and goes: it is not called again.
    for _ in 0..3 {
        w.five_minutes_later(&id).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = w
        .app
        .transfer(&id)
        .await
        .datasets
        .into_iter()
        .find(|d| d.dataset_id == SLOW)
        .unwrap();
    assert_eq!(
        after.attempts, slow.attempts,
        "no agency call after the removal"
    );
    mydata_server::background::sweep(&w.app.state)
        .await
        .unwrap();
    let records = store.fetch_records(&id).await.unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.data_key.is_none() && r.data_object.is_none()),
        "{records:?}"
    );
    assert!(blobs.get(&fetched[0]).await.is_err(), "the blob is deleted");
    assert!(store.transfer_secret(&id).await.unwrap().is_none());
}

/// A transfer whose service is not registered when its package is assembled (removed in between)
/// is ended by the packaging, not retried: cancelled, its fetched data dropped at once, no package.
#[tokio::test]
async fn packaging_for_a_service_no_longer_registered_ends_the_transfer() {
    use mydata_server::agencies::{StartFetch, start_fetch};
    let o = Online::spawn(Backend::Sqlite).await;
    let p = o.w.people[0].clone();
    let state = &o.w.app.state;
    let subject = mydata_core::IdNumber::parse(&p.id).unwrap();
    let pseudonym = mydata_server::identity::subject_pseudonym(
        state,
        &mydata_server::identity::SubjectId::Person(subject),
    );
    let method = mydata_core::IdentityMethod::MoicaCert;
    let t = start_fetch(
        state,
        StartFetch {
            transfer: mydata_store::NewTransfer {
                id: uuid::Uuid::now_v7().to_string(),
                kind: mydata_core::transfer::TransferKind::Online,
                subject: pseudonym.clone(),
                recipient: Some("removed-meanwhile".into()),
                purpose: "學雜費減免資格審核".into(),
                datasets: vec![DATASET.into()],
            },
            subject_id: p.id.clone(),
            method,
            level: method.level(),
            answers: None,
        },
        &pseudonym,
    )
    .await
    .unwrap();
    let store = o.w.app.store();
    crate::helpers::eventually("the transfer ended", || async {
        o.w.app.transfer(&t.id).await.state == TransferState::Expired
    })
    .await;
    let events = store.audit_for_transfer(&t.id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "transfer.expired");
    assert_eq!(last.detail["event"], "cancel");
    assert!(events.iter().all(|e| e.kind != "package.created"));
    // Dropped by the packaging itself, before any sweep.
    crate::helpers::eventually("the fetched data dropped", || async {
        let records = store.fetch_records(&t.id).await.unwrap();
        records[0].status == mydata_store::fetch_status::SUCCEEDED
            && records
                .iter()
                .all(|r| r.data_key.is_none() && r.data_object.is_none())
    })
    .await;
    assert!(
        o.w.app
            .state
            .data()
            .blobs
            .list("fetched")
            .await
            .unwrap()
            .is_empty()
    );
}
