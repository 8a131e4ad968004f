//! Flow 3 with a trusted verifier: the service asserts the person's identity (a JWT signed with its
//! registered key) in its pushed request, and the person goes straight to the consent page as
//! that person, without signing in on the platform. Then every bad assertion, refused with the
//! standard error and nothing changed; and the cache of JWK sets fetched from a `jwks_uri`.

use crate::helpers::Backend;
use crate::online::send_to;
use crate::world::{Browser, FlowWorld, csrf_in};
use mydata_core::Clock;
use mydata_core::transfer::TransferState;
use mydata_sdk::{AuthorizationRequest, Keys, Pending, Service, ServiceConfig};
use mydata_server::oauth::clients::Registration;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TRUSTED: &str = "nhi-counter-verifier";
const UNTRUSTED: &str = "k12-tuition-reduction";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
/// Accepts every method, so its weakest accepted level is 4.
const DATASET: &str = "low-income-household";
/// Accepts only level 1 and 2 methods.
const STRICT: &str = "household-register-personal";
/// Takes 60 minutes at the agency (weakest level 3).
const SLOW: &str = "income-tax-income";
const PURPOSE: &str = "學雜費減免資格審核";

fn registration(client_id: &str, keys: &Keys, trusted: bool) -> Registration {
    Registration {
        client_id: client_id.into(),
        name: "高級中等學校學雜費減免".into(),
        jwks: Some(keys.public_jwks()),
        jwks_uri: None,
        redirect_uris: vec![REDIRECT.into()],
        terms: "本服務僅將資料用於學雜費減免審核。".into(),
        purpose: PURPOSE.into(),
        datasets: vec![DATASET.into(), STRICT.into(), SLOW.into()],
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: trusted,
        dpop_bound_access_tokens: false,
    }
}

async fn sdk(w: &FlowWorld, client_id: &str, keys: Keys) -> Service {
    let config = ServiceConfig::new(&w.app.base, client_id, REDIRECT, keys)
        .unwrap()
        .with_clock(Arc::new(w.app.clock.clone()));
    Service::discover(config).await.unwrap()
}

struct Asserting {
    w: FlowWorld,
    trusted: Service,
    untrusted: Service,
}

impl Asserting {
    async fn spawn(backend: Backend) -> Self {
        let (tk, uk) = (Keys::generate(), Keys::generate());
        let regs = vec![
            registration(TRUSTED, &tk, true),
            registration(UNTRUSTED, &uk, false),
        ];
        let w = FlowWorld::spawn_with(backend, 1.0, |s| s.oauth.clients = regs).await;
        let trusted = sdk(&w, TRUSTED, tk).await;
        let untrusted = sdk(&w, UNTRUSTED, uk).await;
        Self {
            w,
            trusted,
            untrusted,
        }
    }

    fn request(&self, datasets: &[&str], assertion: String) -> AuthorizationRequest {
        let mut req = AuthorizationRequest::new(datasets, PURPOSE);
        req.identity_assertion = Some(assertion);
        req
    }

    /// A pushed request of the trusted verifier for `datasets`, asserting `id` at `level`.
    async fn push_asserted(&self, id: &str, level: u8, datasets: &[&str]) -> Pending {
        let assertion = self.trusted.identity_assertion(id, level).unwrap();
        let req = self.request(datasets, assertion);
        self.trusted.push(&req).await.unwrap()
    }

    fn pseudonym(&self, id: &str) -> String {
        let id =
            mydata_server::identity::SubjectId::Person(mydata_core::IdNumber::parse(id).unwrap());
        mydata_server::identity::subject_pseudonym(&self.w.app.state, &id)
    }
}

fn path_of(url: &str, base: &str) -> String {
    url.strip_prefix(base).unwrap().to_owned()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn refused_with(e: mydata_sdk::Error, code: &str) -> String {
    match e {
        mydata_sdk::Error::Refused {
            error, description, ..
        } => {
            assert_eq!(error, code, "{description}");
            description
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// From the authorize URL to the consent question, in a browser that never signed in.
async fn open_consent(w: &FlowWorld, b: &Browser, pending: &Pending) -> String {
    let (consent, page) = super::online::open_consent(w, b, pending).await;
    assert!(
        page.contains("data-field=\"asserted\""),
        "who verified the person: {page}"
    );
    consent
}

async fn agree(b: &Browser, consent: &str) {
    let page = b.get(consent).await.text().await.unwrap();
    let r = b
        .post(
            consent,
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
}

async fn until_confirm(b: &Browser, consent: &str) -> String {
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

async fn transfers_of(o: &Asserting, id: &str) -> Vec<mydata_store::Transfer> {
    o.w.app
        .store()
        .transfers_for_subject(&o.pseudonym(id), 50)
        .await
        .unwrap()
}

async fn asserted_events(o: &Asserting, id: &str) -> Vec<mydata_store::AuditEvent> {
    o.w.app
        .store()
        .audit_for_subject(&o.pseudonym(id))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "identity.asserted")
        .collect()
}

async fn asserted_end_to_end(backend: Backend) {
    let o = Asserting::spawn(backend).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let pending = o.push_asserted(&p.id, 4, &[DATASET]).await;

    // A browser with no platform session goes straight to consent, and stays signed out.
    let b = w.browser("10.9.0.1");
    let consent = open_consent(w, &b, &pending).await;
    assert_ne!(b.session().await["signed_in"], true);
    agree(&b, &consent).await;
    let confirm = until_confirm(&b, &consent).await;
    let back = send_to(&b, &consent, &confirm, REDIRECT).await;
    let token = o
        .trusted
        .callback(&pending, back.split_once('?').unwrap().1)
        .await
        .unwrap();

    // The transfer is the asserted person's, and the package is theirs.
    let t = w.app.transfer(&token.transfer_id).await;
    assert_eq!(t.subject, o.pseudonym(&p.id));
    assert_eq!(t.recipient.as_deref(), Some(TRUSTED));
    let zip = o
        .trusted
        .package(&token, Duration::from_secs(10))
        .await
        .unwrap();
    let report = mydata_sdk::verify(
        &zip,
        &token.transfer_id,
        &w.app.trust(),
        &o.trusted.platform_signing_keys(),
        w.app.clock.now(),
    )
    .unwrap_or_else(|r| panic!("package verifies: {r:?}"));
    assert_eq!(report.datasets.len(), 1);

    // Audited: identity.asserted with the service and level, never the ID number.
    let events = asserted_events(&o, &p.id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].detail["client_id"], TRUSTED);
    assert_eq!(events[0].detail["level"], 4);
    assert_eq!(events[0].actor, format!("service:{TRUSTED}"));
    for e in w
        .app
        .store()
        .audit_for_subject(&o.pseudonym(&p.id))
        .await
        .unwrap()
    {
        assert!(!e.detail.to_string().contains(&p.id), "{e:?}");
    }
    crate::fetch::assert_no_id_in_audit(&w.app, &token.transfer_id, &p.id).await;

    // The agencies are asked with the asserted method and level (a 60-minute dataset keeps the
    // sealed request subject while it waits).
    let pending = o.push_asserted(&p.id, 3, &[SLOW]).await;
    let b2 = w.browser("10.9.0.2");
    let consent = open_consent(w, &b2, &pending).await;
    agree(&b2, &consent).await;
    let slow = transfers_of(&o, &p.id)
        .await
        .into_iter()
        .find(|t| t.id != token.transfer_id)
        .unwrap();
    assert!(matches!(
        slow.state,
        TransferState::Created | TransferState::Fetching
    ));
    let sealed = w
        .app
        .store()
        .transfer_secret(&slow.id)
        .await
        .unwrap()
        .unwrap();
    let plain = w
        .app
        .state
        .data()
        .vault
        .open(&format!("mydata:v1:transfer-secret:{}", slow.id), &sealed)
        .unwrap();
    let subject: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(subject["method"], "asserted");
    assert_eq!(subject["level"], 3);
}

/// A person a service asserted waits for a 60-minute agency and their anonymous session ends
/// meanwhile (a phone put away): they sign in on the platform as themselves and find the request
/// waiting; someone else signing in is not given it.
#[tokio::test]
async fn an_asserted_person_whose_session_ended_signs_in_to_finish() {
    let o = Asserting::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let pending = o.push_asserted(&p.id, 3, &[SLOW]).await;
    let b = w.browser("10.9.0.5");
    let consent = open_consent(w, &b, &pending).await;
    agree(&b, &consent).await;
    let tid = w.newest_transfer_of(&p).await;
    w.session_ends_while_waiting(&b, &consent, &tid, SLOW).await;
    // Someone else signed in is refused the request.
    let stranger = w.signed_in(&w.people[1], "10.9.0.6").await;
    assert_eq!(stranger.get(&consent).await.status(), 400);
    // The person, signed in as themselves: the request's page, and the answer works.
    w.known(&p).await;
    let r = b.certificate(&w.card(&p), "/").await;
    assert_eq!(r.status(), 303);
    let page = w.confirmation_in_time(&b, &consent, &tid).await;
    let back = send_to(&b, &consent, &page, REDIRECT).await;
    assert!(back.contains("code="), "{back}");
    // Still the asserted person's transfer.
    assert_eq!(w.app.transfer(&tid).await.subject, o.pseudonym(&p.id));
}

#[tokio::test]
async fn a_trusted_verifiers_assertion_leads_to_consent_without_sign_in_sqlite() {
    asserted_end_to_end(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_trusted_verifiers_assertion_leads_to_consent_without_sign_in_postgres() {
    asserted_end_to_end(Backend::Postgres).await;
}

/// The asserted person's sealed ID number stays with the pushed request only until it is answered:
/// the consent seals it into the transfer's own secret (the fetches need nothing else), and a
/// refusal needs it not at all. The pages after the consent still know who the person is.
async fn the_sealed_id_number_leaves_the_request_once_answered(backend: Backend) {
    let o = Asserting::spawn(backend).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let store = w.app.store();
    let sealed_in = |params: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(params).unwrap();
        assert_eq!(
            v["asserted"]["subject"],
            o.pseudonym(&p.id),
            "the person stays known: {v}"
        );
        v["asserted"].get("subject_sealed").map(|s| s.to_string())
    };
    let request_of = |consent: &str| consent.rsplit('/').next().unwrap().to_owned();

    // Consented: gone in the consent's own write, while the transfer holds its secret.
    let pending = o.push_asserted(&p.id, 4, &[DATASET]).await;
    let b = w.browser("10.9.0.7");
    let consent = open_consent(w, &b, &pending).await;
    let id = request_of(&consent);
    let row = store.request(&id).await.unwrap().unwrap();
    assert!(sealed_in(&row.params).is_some(), "needed until the consent");
    agree(&b, &consent).await;
    let row = store.request(&id).await.unwrap().unwrap();
    assert_eq!(row.status, "consented");
    assert_eq!(sealed_in(&row.params), None, "{}", row.params);
    // The confirmation still comes, to the asserted person, and the service gets its data.
    let confirm = until_confirm(&b, &consent).await;
    let back = send_to(&b, &consent, &confirm, REDIRECT).await;
    let token = o
        .trusted
        .callback(&pending, back.split_once('?').unwrap().1)
        .await
        .unwrap();
    o.trusted
        .package(&token, Duration::from_secs(10))
        .await
        .unwrap();
    let row = store.request(&id).await.unwrap().unwrap();
    assert_eq!(row.status, "confirmed");
    assert_eq!(sealed_in(&row.params), None);

    // Declined: gone with the refusal.
    let pending = o.push_asserted(&p.id, 4, &[DATASET]).await;
    let b = w.browser("10.9.0.8");
    let consent = open_consent(w, &b, &pending).await;
    let page = b.get(&consent).await.text().await.unwrap();
    let r = b
        .post(
            &consent,
            &[("csrf", &csrf_in(&page)), ("decision", "decline")],
        )
        .await;
    assert_eq!(r.status(), 303);
    let row = store.request(&request_of(&consent)).await.unwrap().unwrap();
    assert_eq!(row.status, "refused");
    assert_eq!(sealed_in(&row.params), None, "{}", row.params);
}

#[tokio::test]
async fn the_sealed_id_number_leaves_the_request_once_answered_sqlite() {
    the_sealed_id_number_leaves_the_request_once_answered(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_sealed_id_number_leaves_the_request_once_answered_postgres() {
    the_sealed_id_number_leaves_the_request_once_answered(Backend::Postgres).await;
}

#[tokio::test]
async fn bad_assertions_are_refused_and_change_nothing() {
    let o = Asserting::spawn(Backend::Sqlite).await;
    let w = &o.w;
    let p = w.people[0].clone();
    let now = w.app.clock.now().millis() / 1000;
    let claims = |aud: &str, exp: i64, level: u8, jti: &str| {
        serde_json::json!({
            "iss": TRUSTED, "sub": p.id, "aud": aud, "level": level,
            "iat": now, "exp": exp, "jti": jti,
        })
    };
    let trusted = &o.trusted;
    let push = |a: String| {
        let req = o.request(&[DATASET], a);
        async move { trusted.push(&req).await }
    };

    // A service not registered as a trusted verifier.
    let a = o.untrusted.identity_assertion(&p.id, 1).unwrap();
    let e = o
        .untrusted
        .push(&o.request(&[DATASET], a))
        .await
        .unwrap_err();
    refused_with(e, "unauthorized_client");

    // Below a requested dataset's required level; its jti is not spent by the refusal.
    let low = o
        .trusted
        .sign(&claims(&w.app.base, now + 60, 3, "jti-low"))
        .unwrap();
    let e = o
        .trusted
        .push(&o.request(&[STRICT], low))
        .await
        .unwrap_err();
    assert!(refused_with(e, "invalid_request").contains("level"));

    // Wrong audience, expired, forged (signed by a key the service never registered), a level out
    // of range, an ID number that is not one.
    let forger = sdk(w, TRUSTED, Keys::generate()).await;
    let bad_sub = serde_json::json!({
        "iss": TRUSTED, "sub": "A123", "aud": w.app.base, "level": 1,
        "iat": now, "exp": now + 60, "jti": "jti-sub",
    });
    for (a, what) in [
        (
            o.trusted
                .sign(&claims("https://other.example", now + 60, 1, "jti-aud"))
                .unwrap(),
            "wrong aud",
        ),
        (
            o.trusted
                .sign(&claims(&w.app.base, now - 1, 1, "jti-exp"))
                .unwrap(),
            "expired",
        ),
        (
            forger
                .sign(&claims(&w.app.base, now + 60, 1, "jti-forged"))
                .unwrap(),
            "forged",
        ),
        (
            o.trusted
                .sign(&claims(&w.app.base, now + 60, 5, "jti-level"))
                .unwrap(),
            "level 5",
        ),
        (o.trusted.sign(&bad_sub).unwrap(), "bad sub"),
        ("not-a-jwt".to_owned(), "garbage"),
    ] {
        let e = push(a).await.unwrap_err();
        match e {
            mydata_sdk::Error::Refused { error, status, .. } => {
                assert_eq!((status, error.as_str()), (400, "invalid_request"), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }

    // A replayed jti: accepted once, then refused. The refused low-level one's jti still works.
    let once = o
        .trusted
        .sign(&claims(&w.app.base, now + 60, 1, "jti-once"))
        .unwrap();
    push(once.clone()).await.unwrap();
    assert!(refused_with(push(once).await.unwrap_err(), "invalid_request").contains("replay"));
    push(
        o.trusted
            .sign(&claims(&w.app.base, now + 60, 1, "jti-low"))
            .unwrap(),
    )
    .await
    .unwrap();

    // Refused after the assertion was checked (here a malformed dpop_jkt): its jti is recorded
    // only with a stored request, so the corrected request with the same assertion goes through.
    let retry = o
        .trusted
        .sign(&claims(&w.app.base, now + 60, 1, "jti-retry"))
        .unwrap();
    let raw_push = |dpop_jkt: Option<&'static str>| {
        let mut form = vec![
            ("response_type", "code".to_owned()),
            ("client_id", TRUSTED.to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("state", "s".to_owned()),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
            ),
            ("code_challenge_method", "S256".to_owned()),
            (
                "authorization_details",
                serde_json::json!([{ "type": "mydata_transfer", "datasets": [DATASET], "purpose": PURPOSE }])
                    .to_string(),
            ),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion", trusted.client_assertion(&w.app.base).unwrap()),
            ("identity_assertion", retry.clone()),
        ];
        if let Some(j) = dpop_jkt {
            form.push(("dpop_jkt", j.to_owned()));
        }
        reqwest::Client::new()
            .post(format!("{}/oauth/par", w.app.base))
            .form(&form)
            .send()
    };
    let res = raw_push(Some("bad")).await.unwrap();
    assert_eq!(res.status(), 400);
    let res = raw_push(None).await.unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = raw_push(None).await.unwrap();
    let e: serde_json::Value = res.json().await.unwrap();
    assert!(
        e["error_description"].as_str().unwrap().contains("replay"),
        "{e}"
    );

    // Nothing changed for the person: no transfer, no identity.asserted (no request was opened).
    assert!(transfers_of(&o, &p.id).await.is_empty());
    assert!(asserted_events(&o, &p.id).await.is_empty());

    // A browser signed in as someone else: back to the service with access_denied, the request
    // cannot be reused, nothing created for either person.
    let other = w.people[1].clone();
    let b = w.signed_in(&other, "10.9.0.3").await;
    let pending = push(o.trusted.identity_assertion(&p.id, 4).unwrap())
        .await
        .unwrap();
    let r = b.get(&path_of(&pending.authorize_url, &w.app.base)).await;
    assert_eq!(r.status(), 303);
    let back = location(&r);
    assert!(
        back.starts_with(REDIRECT) && back.contains("error=access_denied"),
        "{back}"
    );
    refused_with(
        o.trusted
            .callback(&pending, back.split_once('?').unwrap().1)
            .await
            .unwrap_err(),
        "access_denied",
    );
    let fresh = w.browser("10.9.0.4");
    let sessions = || async { w.app.store().row_counts().await.unwrap()["sessions"] };
    let before = sessions().await;
    let r = fresh
        .get(&path_of(&pending.authorize_url, &w.app.base))
        .await;
    assert_eq!(r.status(), 400, "a refused request does not reopen");
    assert_eq!(
        sessions().await,
        before,
        "and makes no session for the browser"
    );
    assert!(transfers_of(&o, &p.id).await.is_empty());
    assert!(transfers_of(&o, &other.id).await.is_empty());
    assert!(asserted_events(&o, &p.id).await.is_empty());
    let refusals: Vec<_> = w
        .app
        .store()
        .audit_for_subject(&o.pseudonym(&other.id))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "service.refused")
        .collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].detail["reason"], "assertion_mismatch");

    // The same person signed in already: consent as them, in their own session.
    let b = w.signed_in(&p, "10.9.0.5").await;
    let pending = push(o.trusted.identity_assertion(&p.id, 4).unwrap())
        .await
        .unwrap();
    let consent = open_consent(w, &b, &pending).await;
    // Another browser cannot take over the opened request.
    let thief = w.browser("10.9.0.6");
    let r = thief.get(&consent).await;
    // Without a session: sent to sign in, which only the asserted person gets past.
    assert_eq!(r.status(), 303);
    assert!(location(&r).starts_with("/login?next="), "{}", location(&r));
    let thief = w.signed_in(&other, "10.9.0.7").await;
    let r = thief.get(&consent).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = thief
        .get(&path_of(&pending.authorize_url, &w.app.base))
        .await;
    assert_eq!(r.status(), 400);
}

/// A loopback JWKS endpoint that counts its fetches; `None` answers 500.
#[derive(Clone)]
struct JwksServer {
    set: Arc<Mutex<serde_json::Value>>,
    hits: Arc<AtomicUsize>,
    url: String,
}

impl JwksServer {
    async fn spawn(set: serde_json::Value) -> Self {
        let set = Arc::new(Mutex::new(set));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (set.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    axum::Json(s.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { set, hits, url }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A service that withdrew a key from its `jwks_uri` and has its registration put again (the
/// operator's way to say "now"): the process that took the change stops accepting the withdrawn
/// key at once instead of after `oauth.jwks_cache_secs`.
#[tokio::test]
async fn a_registration_put_again_drops_the_cached_key_set() {
    const ADMIN: &str = "admin-token-for-tests";
    let keys = Keys::generate();
    let jwks = JwksServer::spawn(keys.public_jwks()).await;
    let mut reg = registration(TRUSTED, &keys, true);
    reg.jwks = None;
    reg.jwks_uri = Some(jwks.url.clone());
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.admin_token = ADMIN.into();
        s.oauth.jwks_cache_secs = 300;
    })
    .await;
    let put = || {
        reqwest::Client::new()
            .put(format!("{}/api/v1/admin/services/{TRUSTED}", w.app.base))
            .bearer_auth(ADMIN)
            .json(&reg)
            .send()
    };
    assert_eq!(put().await.unwrap().status(), 201);
    let service = sdk(&w, TRUSTED, keys).await;
    let req = AuthorizationRequest::new(&[DATASET], PURPOSE);
    service.push(&req).await.unwrap();
    assert_eq!(jwks.hits(), 1);
    // The service withdraws that key; until the registration is put again the cached set stands.
    *jwks.set.lock().unwrap() = Keys::generate().public_jwks();
    service.push(&req).await.unwrap();
    assert_eq!(put().await.unwrap().status(), 200);
    refused_with(service.push(&req).await.unwrap_err(), "invalid_client");
    assert_eq!(jwks.hits(), 2, "fetched again");
}

/// A set registered by URL is checked when registered, as one by value is: one without a key to
/// verify assertions with, or an address nobody answers at, is refused (422) and nothing stored.
#[tokio::test]
async fn a_jwks_uri_is_checked_when_registered() {
    const ADMIN: &str = "admin-token-for-tests";
    let keys = Keys::generate();
    let only_enc = serde_json::json!({ "keys": [keys.public_jwks()["keys"][1].clone()] });
    let jwks = JwksServer::spawn(only_enc).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.admin_token = ADMIN.into();
    })
    .await;
    for (uri, says) in [
        (jwks.url.clone(), "verify client assertions"),
        (closed, "could not be read"),
    ] {
        let mut reg = registration(TRUSTED, &keys, true);
        reg.jwks = None;
        reg.jwks_uri = Some(uri);
        let r = reqwest::Client::new()
            .put(format!("{}/api/v1/admin/services/{TRUSTED}", w.app.base))
            .bearer_auth(ADMIN)
            .json(&reg)
            .send()
            .await
            .unwrap();
        let problem = crate::helpers::assert_problem(r, 422, "invalid_body").await;
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{problem}"
        );
    }
    assert!(w.app.store().client(TRUSTED).await.unwrap().is_none());
}

#[tokio::test]
async fn jwks_uri_sets_are_cached_refetched_on_rotation_and_bounded() {
    let keys = Keys::generate();
    let jwks = JwksServer::spawn(keys.public_jwks()).await;
    let mut reg = registration(TRUSTED, &keys, true);
    reg.jwks = None;
    reg.jwks_uri = Some(jwks.url.clone());
    // A jwks_uri nobody answers at (a port just released).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks.json", l.local_addr().unwrap())
    };
    let gone_keys = Keys::generate();
    let mut gone = registration(UNTRUSTED, &gone_keys, false);
    gone.jwks = None;
    gone.jwks_uri = Some(closed);
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.clients = vec![reg, gone];
        s.oauth.jwks_cache_secs = 300;
    })
    .await;
    let service = sdk(&w, TRUSTED, keys).await;
    let req = AuthorizationRequest::new(&[DATASET], PURPOSE);

    // Two assertions, one fetch.
    service.push(&req).await.unwrap();
    service.push(&req).await.unwrap();
    assert_eq!(jwks.hits(), 1);

    // Assertions naming a key the set does not hold: at most one refetch a minute.
    w.app.clock.advance(Duration::from_secs(61));
    let impostor = sdk(&w, TRUSTED, Keys::generate()).await;
    for _ in 0..5 {
        refused_with(impostor.push(&req).await.unwrap_err(), "invalid_client");
    }
    assert_eq!(jwks.hits(), 2, "one refetch for the unknown kid");
    service.push(&req).await.unwrap();
    assert_eq!(jwks.hits(), 2, "the cached set still serves the known key");

    // The service rotates its key: the new kid is fetched (once the minute has passed) and accepted.
    let rotated = Keys::generate();
    *jwks.set.lock().unwrap() = rotated.public_jwks();
    let service = sdk(&w, TRUSTED, rotated).await;
    w.app.clock.advance(Duration::from_secs(61));
    service.push(&req).await.unwrap();
    assert_eq!(jwks.hits(), 3);
    service.push(&req).await.unwrap();
    assert_eq!(jwks.hits(), 3);

    // After oauth.jwks_cache_secs the set is fetched again.
    w.app.clock.advance(Duration::from_secs(301));
    service.push(&req).await.unwrap();
    assert_eq!(jwks.hits(), 4);

    // An unreachable jwks_uri: invalid_client, said plainly.
    let gone = sdk(&w, UNTRUSTED, gone_keys).await;
    let d = refused_with(gone.push(&req).await.unwrap_err(), "invalid_client");
    assert!(d.contains("jwks_uri"), "{d}");
}
