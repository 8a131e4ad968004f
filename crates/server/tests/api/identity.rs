//! Identity verification through the real pages, in the shared flow world (`world.rs`): the
//! simulated agencies run in-process over HTTP, one-time codes travel through a real SMTP
//! conversation, certificates come from the world's test identity PKI, and time moves only with
//! the ManualClock.

use crate::helpers::{Backend, TestApp, eventually};
use crate::world::{Browser, Card, CardValidity, FlowWorld, Person, code_in, csrf_in, issue_card};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mydata_card::{CardKind, IdentityPki};
use mydata_core::{BusinessId, IdNumber, IdentityMethod, Timestamp};
use mydata_server::Settings;
use mydata_server::identity::SubjectId;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = crate::fetch::T0;
const MIN: Duration = Duration::from_secs(60);

/// The flow world as these tests use it: no dataset is fetched, so the agencies' time scale
/// does not matter.
async fn world(backend: Backend) -> FlowWorld {
    FlowWorld::spawn(backend, 1.0).await
}

async fn world_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> FlowWorld {
    FlowWorld::spawn_with(backend, 1.0, tweak).await
}

/// Sign-in steps as these tests drive them (on the world's [`Browser`]).
trait SignIn {
    /// Dual ID with the given household number and/or ID-card date, then on to `/after`.
    async fn dual(
        &self,
        p: &Person,
        household: Option<&str>,
        issued: Option<&str>,
    ) -> reqwest::Response;
    /// The certificate flow of `method` with the card's signature over `tamper` of the
    /// challenge; the page's CSP lets it reach the card agent.
    async fn cert(
        &self,
        method: &str,
        card: &Card,
        tamper: impl FnOnce(&str) -> String,
    ) -> reqwest::Response;
}

impl SignIn for Browser {
    async fn dual(
        &self,
        p: &Person,
        household: Option<&str>,
        issued: Option<&str>,
    ) -> reqwest::Response {
        self.dual_id_with(p, household, issued, "/after").await
    }

    async fn cert(
        &self,
        method: &str,
        card: &Card,
        tamper: impl FnOnce(&str) -> String,
    ) -> reqwest::Response {
        let page = self.get(&format!("/login/{method}")).await;
        assert!(
            page.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("connect-src 'self' http://127.0.0.1:61161")
        );
        self.certificate_with(method, card, "/", tamper).await
    }
}

/// A current citizen card for `id` from the world's PKI.
fn citizen(w: &FlowWorld, id: &str) -> Card {
    w.card_for(CardKind::Citizen, id, CardValidity::Current)
}

async fn refused(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status);
    let html = r.text().await.unwrap();
    assert!(
        html.contains(&format!("data-code=\"{code}\""))
            || html.contains(&format!("<code>{code}</code>")),
        "{code} not in {html}"
    );
    html
}

/// Marks the subject as having done first use, so a test can skip the code step.
async fn known(w: &FlowWorld, id: &SubjectId) {
    w.known_subject(id).await;
}

/// A valid ID number no one in the population has (each bad case its own account).
fn fresh_id(n: u32) -> String {
    IdNumber::generate('Y', mydata_core::id_number::Sex::Male, 8_000_000 + n)
        .unwrap()
        .as_str()
        .to_owned()
}

fn person_id(p: &Person) -> SubjectId {
    p.subject()
}

fn set_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn dual_id_with_first_use_code_by_email_then_a_second_sign_in_skips_it() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut w = world(backend).await;
        let (person, _) = w.pair();
        let b = w.browser("10.0.0.1");
        let r = b.dual(&person, Some(&person.household), None).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/login/first-use");
        assert_eq!(
            b.session().await["signed_in"],
            false,
            "not verified before the code"
        );
        assert_eq!(b.session().await["first_use_pending"], true);

        let csrf = b.csrf("/login/first-use").await;
        let r = b
            .post(
                "/login/first-use",
                &[
                    ("csrf", &csrf),
                    ("channel", "email"),
                    ("address", "citizen@example.org"),
                ],
            )
            .await;
        assert_eq!(r.status(), 303);
        let mail = tokio::time::timeout(Duration::from_secs(20), w.mail.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(mail.contains("citizen@example.org"));
        let code = code_in(&mail);
        let page = b.get("/login/first-use/code").await.text().await.unwrap();
        assert!(page.contains("c***@example.org"), "address is masked");
        let csrf = csrf_in(&page);
        let before = b.get("/api/v1/session").await;
        drop(before);
        let r = b
            .post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/after");
        let cookie = set_cookie(&r);
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Lax")
                && cookie.contains("Path=/"),
            "{cookie}"
        );
        assert!(!cookie.contains("Secure"), "plain HTTP test server");
        let s = b.session().await;
        assert_eq!(
            (
                s["signed_in"].as_bool(),
                s["method"].as_str(),
                s["level"].as_u64()
            ),
            (Some(true), Some("dual_id"), Some(4))
        );
        assert_eq!(s["verified_at"], T0);
        // The code cannot be used again: its session was replaced at sign-in.
        let r = b
            .post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await;
        assert_eq!(r.status(), 403, "the old session's token no longer exists");
        // The job that carried the address and code was emptied once sent.
        let p = mydata_server::identity::subject_pseudonym(&w.app.state, &person_id(&person));
        assert_eq!(
            w.app.store().contacts(&p).await.unwrap()[0].address,
            "citizen@example.org"
        );

        // A later sign-in (another browser) goes straight through, with the ID-card date instead.
        let b2 = w.browser("10.0.0.2");
        let r = b2.dual(&person, None, Some(&person.id_card_issued)).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/after");
        // Audit: verified and first-use events, pseudonymous only.
        let events = w.app.store().audit_for_subject(&p).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert!(
            kinds.contains(&"identity.verified") && kinds.contains(&"identity.first_use_confirmed"),
            "{kinds:?}"
        );
        assert!(
            !serde_json::to_string(&events.iter().map(|e| &e.detail).collect::<Vec<_>>())
                .unwrap()
                .contains(&person.id)
        );
        w.stop().await;
    }
}

#[tokio::test]
async fn dual_id_refusals_never_say_which_field_was_wrong() {
    let w = world(Backend::Sqlite).await;
    let (person, other) = w.pair();
    let p = person.clone();
    let b = w.browser("10.0.1.1");
    let mut messages = Vec::new();
    let wrong_card = Person {
        nhi_card: other.nhi_card.clone(),
        ..p.clone()
    };
    for (i, (who, household, issued)) in [
        (&wrong_card, Some(p.household.as_str()), None),
        (&p, Some(other.household.as_str()), None),
        (&p, None, Some("1999-01-01")),
        (&p, Some("not-a-number"), None),
    ]
    .into_iter()
    .enumerate()
    {
        // Each from its own address: five failures from one would lock it.
        let b = w.browser(&format!("10.0.2.{i}"));
        let html = refused(
            b.dual(who, household, issued).await,
            401,
            "identity_mismatch",
        )
        .await;
        let i = html.find("id=\"form-error\"").unwrap();
        messages.push(html[i..].split("</p>").next().unwrap().to_owned());
        // Every entry is marked refused alike: none is singled out.
        for f in [
            "f-id_number",
            "f-nhi_card_no",
            "f-household_no",
            "f-id_card_issue_date",
        ] {
            crate::helpers::assert_refused_input(&html, f);
        }
    }
    assert!(messages.windows(2).all(|m| m[0] == m[1]), "{messages:?}");
    // Another valid ID number the agencies do not know: the same answer.
    let unknown = IdNumber::generate('Z', mydata_core::id_number::Sex::Female, 9_999_999).unwrap();
    let stranger = Person {
        id: unknown.as_str().into(),
        ..p.clone()
    };
    refused(
        b.dual(&stranger, Some(&p.household), None).await,
        401,
        "identity_mismatch",
    )
    .await;
    // An invalid ID number is refused before anything else.
    let bad = Person {
        id: "A123456788".into(),
        ..p.clone()
    };
    let html = refused(
        b.dual(&bad, Some(&p.household), None).await,
        401,
        "invalid_id_number",
    )
    .await;
    // Only the ID number is marked refused; the other inputs still point at the reason.
    crate::helpers::assert_refused_input(&html, "f-id_number");
    let card = crate::helpers::tag_of(&html, "f-nhi_card_no");
    assert!(
        !card.contains("aria-invalid") && card.contains("form-error"),
        "{card}"
    );
    // Neither household number nor date: a form problem, not counted.
    refused(
        b.dual(&p, None, None).await,
        422,
        "invalid_credentials_input",
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn lockout_per_account_and_per_address_and_its_expiry() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let w = world(backend).await;
        let (person, other) = w.pair();
        let p = person.clone();
        let wrong = Person {
            nhi_card: other.nhi_card.clone(),
            ..p.clone()
        };
        // Five failures on one account from five addresses lock the account everywhere.
        for i in 0..5 {
            let b = w.browser(&format!("10.1.0.{i}"));
            let r = b.dual(&wrong, Some(&p.household), None).await;
            let expect = if i < 4 { 401 } else { 429 };
            assert_eq!(r.status(), expect, "attempt {i}");
        }
        let fresh = w.browser("10.1.1.1");
        let r = fresh.dual(&p, Some(&p.household), None).await;
        assert_eq!(r.headers()["retry-after"], "900");
        let html = refused(r, 429, "locked_out").await;
        assert!(html.contains("15 分鐘"), "time remaining shown");
        // The same address may still try another account.
        let r = fresh.dual(&other, Some(&other.household), None).await;
        assert_eq!(r.status(), 303, "other account unaffected");

        // Five failures from one address over different accounts lock that address.
        let office = w.browser("10.2.0.1");
        for i in 0..5u32 {
            let id = IdNumber::generate('B', mydata_core::id_number::Sex::Male, 1_000 + i).unwrap();
            let someone = Person {
                id: id.as_str().into(),
                ..other.clone()
            };
            let r = office.dual(&someone, Some("A0000000"), None).await;
            assert_eq!(r.status(), if i < 4 { 401 } else { 429 });
        }
        refused(
            office.dual(&other, Some(&other.household), None).await,
            429,
            "locked_out",
        )
        .await;

        // Seven minutes on, still locked, with less time left; after fifteen, both work again.
        w.app.clock.advance(7 * MIN);
        let r = fresh.dual(&p, Some(&p.household), None).await;
        assert_eq!(r.headers()["retry-after"], "480");
        w.app.clock.advance(8 * MIN);
        assert_eq!(fresh.dual(&p, Some(&p.household), None).await.status(), 303);
        assert_eq!(
            office
                .dual(&other, Some(&other.household), None)
                .await
                .status(),
            303
        );
        let kinds: Vec<String> = w
            .app
            .store()
            .audit_for_subject(&mydata_server::identity::subject_pseudonym(
                &w.app.state,
                &person_id(&p),
            ))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.iter().any(|k| k == "identity.lockout"), "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| *k == "identity.failed").count(), 5);
        w.stop().await;
    }
}

#[tokio::test]
async fn failures_spread_over_more_than_fifteen_minutes_do_not_lock() {
    let w = world(Backend::Sqlite).await;
    let (person, other) = w.pair();
    let wrong = Person {
        nhi_card: other.nhi_card.clone(),
        ..person.clone()
    };
    let b = w.browser("10.3.0.1");
    for _ in 0..8 {
        refused(
            b.dual(&wrong, Some(&person.household), None).await,
            401,
            "identity_mismatch",
        )
        .await;
        w.app.clock.advance(4 * MIN);
    }
    w.stop().await;
}

/// Signs in by dual ID up to the code page; returns the code's CSRF token.
async fn to_code_page(w: &mut FlowWorld, b: &Browser) -> (String, String) {
    let (person, _) = w.pair();
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    let csrf = b.csrf("/login/first-use").await;
    let r = b
        .post(
            "/login/first-use",
            &[
                ("csrf", &csrf),
                ("channel", "email"),
                ("address", "a@example.org"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let mail = tokio::time::timeout(Duration::from_secs(20), w.mail.recv())
        .await
        .unwrap()
        .unwrap();
    (b.csrf("/login/first-use/code").await, code_in(&mail))
}

#[tokio::test]
async fn codes_expire_allow_few_attempts_and_are_counted_toward_lockout() {
    let mut w = world_with(Backend::Sqlite, |s| s.identity.code_max_attempts = 2).await;

    let b = w.browser("10.4.0.1");
    let (csrf, code) = to_code_page(&mut w, &b).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let html = refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", wrong)])
            .await,
        401,
        "code_wrong",
    )
    .await;
    // The refused code's input says so and points at the reason.
    crate::helpers::assert_refused_input(&html, "f-code");
    refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", wrong)])
            .await,
        401,
        "code_wrong",
    )
    .await;
    // Attempts used up: even the right code is refused now.
    refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await,
        401,
        "code_attempts_exhausted",
    )
    .await;
    // A new code cannot be asked for within the minute…
    let c2 = b.csrf("/login/first-use").await;
    refused(
        b.post(
            "/login/first-use",
            &[
                ("csrf", &c2),
                ("channel", "email"),
                ("address", "a@example.org"),
            ],
        )
        .await,
        429,
        "code_recently_sent",
    )
    .await;
    // …after it, a new one works, but not once five minutes have passed.
    w.app.clock.advance(MIN);
    let (csrf, code) = {
        let r = b
            .post(
                "/login/first-use",
                &[
                    ("csrf", &c2),
                    ("channel", "email"),
                    ("address", "a@example.org"),
                ],
            )
            .await;
        assert_eq!(r.status(), 303);
        let mail = tokio::time::timeout(Duration::from_secs(20), w.mail.recv())
            .await
            .unwrap()
            .unwrap();
        (b.csrf("/login/first-use/code").await, code_in(&mail))
    };
    w.app.clock.advance(5 * MIN);
    refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await,
        401,
        "code_expired",
    )
    .await;
    // Wrong, wrong, exhausted, expired, and this fifth failure within 15 minutes locks the account.
    refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await,
        429,
        "locked_out",
    )
    .await;
    refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await,
        429,
        "locked_out",
    )
    .await;
    w.stop().await;
}

/// The code by SMS, through a gateway that fails once. The background workers are off: the test
/// runs the message queue itself, so the retry's timing is checked on the injected clock alone.
#[tokio::test]
async fn sms_codes_go_through_the_configured_gateway_with_retries() {
    use mydata_server::background::run_due_job;
    use mydata_server::identity::messages::MessageSender;
    let (url, mut rx) = crate::world::sms_gateway(1).await;
    let w = world_with(Backend::Sqlite, |s| {
        s.messages.sms.gateway_url = url;
        s.messages.sms.token = "gw-token".into();
        s.jobs.enabled = false;
    })
    .await;
    let (person, _) = w.pair();
    let b = w.browser("10.5.0.1");
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    let csrf = b.csrf("/login/first-use").await;
    let r = b
        .post(
            "/login/first-use",
            &[
                ("csrf", &csrf),
                ("channel", "sms"),
                ("address", "0912-345-678"),
            ],
        )
        .await;
    assert_eq!(r.status(), 303);
    let run = || run_due_job(&w.app.state, &MessageSender, "test-worker");
    // First attempt: the gateway answers 502, nothing is delivered, the job waits 30 s.
    assert!(run().await.unwrap(), "the code's message was queued");
    assert!(rx.try_recv().is_err());
    assert!(!run().await.unwrap(), "not retried at once");
    w.app.clock.advance(Duration::from_secs(29));
    assert!(!run().await.unwrap(), "not retried before its time");
    w.app.clock.advance(2 * MIN);
    assert!(run().await.unwrap(), "retried once due");
    let (auth, body) = rx.try_recv().expect("delivered on the retry");
    assert_eq!(auth, "Bearer gw-token");
    assert_eq!(body["to"], "+886912345678");
    assert!(!run().await.unwrap(), "sent once only");
    let code = code_in(&format!("h\n\n{}", body["text"].as_str().unwrap()));
    let csrf = b.csrf("/login/first-use/code").await;
    assert_eq!(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await
            .status(),
        303
    );
    w.stop().await;
}

#[tokio::test]
async fn certificate_sign_in_and_every_bad_certificate_input() {
    let w = world(Backend::Sqlite).await;
    let (person, _) = w.pair();
    known(&w, &person_id(&person)).await;
    let good = citizen(&w, &person.id);
    let b = w.browser("10.6.0.1");
    let r = b.cert("moica_cert", &good, str::to_owned).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    let s = b.session().await;
    assert_eq!(
        (
            s["method"].as_str(),
            s["level"].as_u64(),
            s["subject_kind"].as_str()
        ),
        (Some("moica_cert"), Some(1), Some("natural"))
    );

    // Forged signature: signed by another key.
    let other_good = citizen(&w, &fresh_id(11));
    let mut forged = citizen(&w, &fresh_id(11));
    forged.x5c = other_good.x5c.clone();
    refused(
        w.browser("10.6.1.1")
            .cert("moica_cert", &forged, str::to_owned)
            .await,
        401,
        "signature_invalid",
    )
    .await;
    // Wrong nonce (the card signed other bytes).
    refused(
        w.browser("10.6.1.2")
            .cert("moica_cert", &citizen(&w, &fresh_id(22)), |t| {
                t.replace("mydata-login-v1", "mydata-login-v0")
            })
            .await,
        401,
        "signature_invalid",
    )
    .await;
    // Expired and not-yet-valid certificates.
    let old = w.card_for(CardKind::Citizen, &fresh_id(12), CardValidity::Expired);
    refused(
        w.browser("10.6.1.3")
            .cert("moica_cert", &old, str::to_owned)
            .await,
        401,
        "certificate_expired",
    )
    .await;
    // Revoked (listed in the CRL the platform reads at each sign-in).
    let revoked = citizen(&w, &fresh_id(13));
    w.revoke(CardKind::Citizen, revoked.serial);
    refused(
        w.browser("10.6.1.4")
            .cert("moica_cert", &revoked, str::to_owned)
            .await,
        401,
        "certificate_revoked",
    )
    .await;
    // Untrusted issuer: a card of another PKI, sent alone (it chains to nothing the platform
    // trusts), and sent with its own issuing CA, whose names copy the trusted ones.
    let rogue = IdentityPki::generate(Timestamp::from_millis(T0)).unwrap();
    let mut alien = issue_card(
        &rogue,
        CardKind::Citizen,
        &fresh_id(14),
        CardValidity::Current,
        false,
    );
    let spoof = alien.x5c.clone();
    alien.x5c.truncate(1);
    refused(
        w.browser("10.6.1.5")
            .cert("moica_cert", &alien, str::to_owned)
            .await,
        401,
        "certificate_untrusted",
    )
    .await;
    alien.x5c = spoof;
    let r = w
        .browser("10.6.1.10")
        .cert("moica_cert", &alien, str::to_owned)
        .await;
    assert_eq!(r.status(), 401, "a look-alike chain is refused");
    // No digitalSignature key usage.
    let enc = w.encryption_card(&fresh_id(15));
    refused(
        w.browser("10.6.1.6")
            .cert("moica_cert", &enc, str::to_owned)
            .await,
        401,
        "certificate_usage",
    )
    .await;
    // Malformed certificate.
    let mut junk = citizen(&w, &person.id);
    junk.x5c = vec![STANDARD.encode(b"not a certificate")];
    refused(
        w.browser("10.6.1.7")
            .cert("moica_cert", &junk, str::to_owned)
            .await,
        401,
        "certificate_invalid",
    )
    .await;
    // A serialNumber that is not a valid ID number.
    let bad_id = citizen(&w, "A123456788");
    refused(
        w.browser("10.6.1.8")
            .cert("moica_cert", &bad_id, str::to_owned)
            .await,
        401,
        "invalid_id_number",
    )
    .await;
    // A business certificate on the citizen method.
    let company = BusinessId::generate(4242).unwrap();
    let biz = w.card_for(CardKind::Business, company.as_str(), CardValidity::Current);
    refused(
        w.browser("10.6.1.9")
            .cert("moica_cert", &biz, str::to_owned)
            .await,
        401,
        "wrong_subject_kind",
    )
    .await;

    // Replayed challenge: the same signed answer posted twice.
    let r2 = w.browser("10.6.2.1");
    let page = r2.get("/login/moica_cert").await.text().await.unwrap();
    let csrf = csrf_in(&page);
    let ch: serde_json::Value = r2
        .client
        .post(format!("{}/login/moica_cert/challenge", r2.base))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = URL_SAFE_NO_PAD
        .decode(ch["to_be_signed"].as_str().unwrap())
        .unwrap();
    let sig = good.sign(&text);
    let x5c = serde_json::to_string(&good.x5c).unwrap();
    let form = [
        ("csrf", csrf.as_str()),
        ("challenge_id", ch["challenge_id"].as_str().unwrap()),
        ("signature", &sig),
        ("x5c", &x5c),
    ];
    let first = r2.post("/login/moica_cert", &form).await;
    assert_eq!(first.status(), 303);
    // The session rotated: replay it within a fresh session of the same browser.
    let csrf2 = r2.csrf("/login/moica_cert").await;
    let replay = [("csrf", csrf2.as_str()), form[1], form[2], form[3]];
    refused(
        r2.post("/login/moica_cert", &replay).await,
        401,
        "challenge_used",
    )
    .await;

    // Expired challenge (two minutes).
    let r3 = w.browser("10.6.3.1");
    let csrf = r3.csrf("/login/moica_cert").await;
    let ch: serde_json::Value = r3
        .client
        .post(format!("{}/login/moica_cert/challenge", r3.base))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sig = good.sign(
        &URL_SAFE_NO_PAD
            .decode(ch["to_be_signed"].as_str().unwrap())
            .unwrap(),
    );
    w.app.clock.advance(2 * MIN + Duration::from_secs(1));
    refused(
        r3.post(
            "/login/moica_cert",
            &[
                ("csrf", &csrf),
                ("challenge_id", ch["challenge_id"].as_str().unwrap()),
                ("signature", &sig),
                ("x5c", &x5c),
            ],
        )
        .await,
        401,
        "challenge_expired",
    )
    .await;

    // A legal person by business certificate.
    known(&w, &SubjectId::Company(company.clone())).await;
    let lb = w.browser("10.6.4.1");
    assert_eq!(
        lb.cert("moea_cert", &biz, str::to_owned).await.status(),
        303
    );
    let s = lb.session().await;
    assert_eq!(
        (s["method"].as_str(), s["subject_kind"].as_str()),
        (Some("moea_cert"), Some("legal"))
    );
    w.stop().await;
}

#[tokio::test]
async fn step_up_when_a_later_choice_needs_a_stronger_method() {
    let w = world(Backend::Sqlite).await;
    let (person, _) = w.pair();
    known(&w, &person_id(&person)).await;
    let c = w.app.state.catalog();
    let weak = c
        .datasets()
        .iter()
        .find(|d| d.accepts(IdentityMethod::DualId))
        .unwrap()
        .id
        .clone();
    let strong = c
        .datasets()
        .iter()
        .filter(|d| {
            d.name_en
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ')
        })
        .find(|d| {
            !d.accepts(IdentityMethod::DualId)
                && !d.accepts(IdentityMethod::NhiCard)
                && d.accepts(IdentityMethod::MoicaCert)
        })
        .unwrap();
    let b = w.browser("10.7.0.1");
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    // Enough for the weak dataset: straight on.
    let r = b.get(&format!("/login?datasets={weak}&next=/go")).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (303, "/go")
    );
    // Not for the strong one: the page offers only what it accepts and says why.
    let r = b
        .get(&format!(
            "/login?datasets={weak},{}&next=/go&lang=en",
            strong.id
        ))
        .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("You are signed in with Dual ID check (level 4)"),
        "{html}"
    );
    assert!(html.contains("data-method=\"moica_cert\""));
    assert!(!html.contains("data-method=\"dual_id\""));
    // Every method both datasets accept is linked, passkeys included, and no other.
    let weak_ds = c.dataset(&weak).unwrap();
    for m in IdentityMethod::ALL {
        assert_eq!(
            html.contains(&format!("data-method=\"{}\"", m.code())),
            weak_ds.accepts(m) && strong.accepts(m),
            "{m} offered iff accepted by all"
        );
    }
    assert!(strong.accepts(IdentityMethod::TwFido));
    assert!(
        html.contains(&format!(
            "href=\"/login/tw_fido?next=%2Fgo&#38;datasets={weak}%2C{}\"",
            strong.id
        )),
        "{html}"
    );
    assert!(
        html.contains(&format!(
            "Dual ID check cannot be used because {} does not accept it",
            strong.name_en
        )),
        "{html}"
    );
    let card = citizen(&w, &person.id);
    let before = b.session().await;
    assert_eq!(
        b.cert("moica_cert", &card, str::to_owned).await.status(),
        303
    );
    let after = b.session().await;
    assert_eq!(
        (after["level"].as_u64(), after["method"].as_str()),
        (Some(1), Some("moica_cert"))
    );
    assert_eq!(
        after["expires_at"], before["expires_at"],
        "a step-up by the same person keeps the absolute limit"
    );
    let r = b
        .get(&format!("/login?datasets={weak},{}&next=/go", strong.id))
        .await;
    assert_eq!(r.status(), 303);
    w.stop().await;
}

#[tokio::test]
async fn nhi_card_password_is_registered_in_a_level_1_session_only() {
    let w = world(Backend::Sqlite).await;
    let (person, other) = w.pair();
    known(&w, &person_id(&person)).await;
    let b = w.browser("10.8.0.1");
    // Not signed in: sent to the certificate sign-in.
    let r = b.get("/account/password").await;
    assert_eq!(
        r.headers()["location"],
        "/login/moica_cert?next=/account/password"
    );
    // Signed in at level 4: refused.
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    refused(b.get("/account/password").await, 403, "insufficient_level").await;
    // Level 1: registered (Argon2id), with the rules checked.
    let card = citizen(&w, &person.id);
    assert_eq!(
        b.cert("moica_cert", &card, str::to_owned).await.status(),
        303
    );
    let csrf = b.csrf("/account/password").await;
    let html = refused(
        b.post(
            "/account/password",
            &[("csrf", &csrf), ("password", "short"), ("confirm", "short")],
        )
        .await,
        422,
        "password_rejected",
    )
    .await;
    crate::helpers::assert_refused_input(&html, "f-password");
    let r = b
        .post(
            "/account/password",
            &[
                ("csrf", &csrf),
                ("password", "a long passphrase"),
                ("confirm", "a long passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    let p = mydata_server::identity::subject_pseudonym(&w.app.state, &person_id(&person));
    assert!(
        w.app
            .store()
            .subject(&p)
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .unwrap()
            .starts_with("$argon2id$")
    );

    let login = |card: String, pw: &'static str, addr: &'static str| {
        let (w, person) = (&w, &person);
        async move {
            let b = w.browser(addr);
            let csrf = b.csrf("/login/nhi_card").await;
            let r = b
                .post(
                    "/login/nhi_card",
                    &[
                        ("csrf", &csrf),
                        ("id_number", &person.id),
                        ("nhi_card_no", &card),
                        ("password", pw),
                        ("next", "/n"),
                    ],
                )
                .await;
            (b, r)
        }
    };
    let (ok, r) = login(person.nhi_card.clone(), "a long passphrase", "10.8.1.1").await;
    assert_eq!(r.status(), 303);
    assert_eq!(ok.session().await["level"], 3);
    let (_, r) = login(person.nhi_card.clone(), "a wrong passphrase", "10.8.1.2").await;
    let wrong_pw = refused(r, 401, "wrong_password").await;
    let (_, r) = login(other.nhi_card.clone(), "a long passphrase", "10.8.1.3").await;
    let wrong_card = refused(r, 401, "wrong_password").await;
    let msg = |h: &str| {
        h[h.find("id=\"form-error\"").unwrap()..]
            .split("</p>")
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        msg(&wrong_pw),
        msg(&wrong_card),
        "card and password failures read the same"
    );
    // Someone without a registered password gets the same answer.
    let b = w.browser("10.8.1.4");
    let csrf = b.csrf("/login/nhi_card").await;
    let r = b
        .post(
            "/login/nhi_card",
            &[
                ("csrf", &csrf),
                ("id_number", &other.id),
                ("nhi_card_no", &other.nhi_card),
                ("password", "whatever it is"),
            ],
        )
        .await;
    refused(r, 401, "wrong_password").await;
    w.stop().await;
}

#[tokio::test]
async fn every_form_rejects_a_missing_or_wrong_csrf_token() {
    let w = world(Backend::Sqlite).await;
    let (person, _) = w.pair();
    known(&w, &person_id(&person)).await;
    let b = w.browser("10.9.0.1");
    // A level-1 session with a pending first use is not possible at once; use two browsers: one
    // signed in (password form, logout), one anonymous with a session (everything else).
    let card = citizen(&w, &person.id);
    assert_eq!(
        b.cert("moica_cert", &card, str::to_owned).await.status(),
        303
    );
    let anon = w.browser("10.9.0.2");
    anon.csrf("/login/dual_id").await;
    let forms: [(&Browser, &str); 9] = [
        (&anon, "/login/dual_id"),
        (&anon, "/login/nhi_card"),
        (&anon, "/login/moica_cert"),
        (&anon, "/login/moea_cert"),
        (&anon, "/login/first-use"),
        (&anon, "/login/first-use/code"),
        (&b, "/account/password"),
        (&b, "/logout"),
        (&b, "/logout"),
    ];
    for (i, (browser, path)) in forms.iter().enumerate() {
        let wrong = i % 2 == 0;
        let mut form = vec![
            ("id_number", person.id.as_str()),
            ("password", "a long passphrase"),
            ("confirm", "a long passphrase"),
        ];
        if wrong {
            form.push(("csrf", "forged-token"));
        }
        refused(browser.post(path, &form).await, 403, "csrf_failed").await;
        // And the other way round for the same form.
        let mut form2 = vec![("id_number", person.id.as_str())];
        if !wrong {
            form2.push(("csrf", "forged-token"));
        }
        refused(browser.post(path, &form2).await, 403, "csrf_failed").await;
    }
    // The JSON challenge endpoint takes the token in a header.
    for header in [None, Some("forged")] {
        let mut req = anon
            .client
            .post(format!("{}/login/moica_cert/challenge", anon.base));
        if let Some(h) = header {
            req = req.header("x-csrf-token", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "csrf_failed");
    }
    // Nothing changed: still signed in, no failure counted.
    assert_eq!(b.session().await["signed_in"], true);
    // Without any session at all.
    let stranger = w.browser("10.9.0.3");
    refused(
        stranger.post("/login/dual_id", &[("csrf", "x")]).await,
        403,
        "csrf_failed",
    )
    .await;
    w.stop().await;
}

#[tokio::test]
async fn sessions_end_when_idle_or_at_their_absolute_limit() {
    let w = world(Backend::Sqlite).await;
    let (person, _) = w.pair();
    known(&w, &person_id(&person)).await;
    let b = w.browser("10.10.0.1");
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    // Idle limit 15 minutes: activity every 14 minutes keeps it alive…
    for _ in 0..3 {
        w.app.clock.advance(14 * MIN);
        assert_eq!(b.session().await["signed_in"], true);
    }
    // …16 idle minutes end it, and a form posted with the old session says so.
    let csrf = b.csrf("/login/dual_id").await;
    w.app.clock.advance(16 * MIN);
    assert_eq!(b.session().await["signed_in"], false);
    let b = w.browser("10.10.0.2");
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    let csrf2 = b.csrf("/login/dual_id").await;
    w.app.clock.advance(16 * MIN);
    refused(
        b.post("/login/dual_id", &[("csrf", &csrf2)]).await,
        401,
        "session_expired",
    )
    .await;
    let _ = csrf;
    // Absolute limit (8 hours) even with steady activity.
    let b = w.browser("10.10.0.3");
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    for _ in 0..48 {
        w.app.clock.advance(10 * MIN);
        if b.session().await["signed_in"] == false {
            break;
        }
    }
    assert_eq!(b.session().await["signed_in"], false);
    w.stop().await;
}

#[tokio::test]
async fn secure_cookies_when_configured_and_the_outbox_only_in_demo_mode() {
    let w = world_with(Backend::Sqlite, |s| {
        s.identity.cookie_secure = mydata_server::identity::CookieSecure::Always
    })
    .await;

    let r = w.browser("10.11.0.9").get("/login/dual_id").await;
    let cookie = set_cookie(&r);
    assert!(
        cookie.starts_with("__Host-mydata-session=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    assert_eq!(
        w.browser("10.11.0.9").get("/dev/outbox").await.status(),
        404,
        "off by default"
    );
    w.stop().await;

    let mut w = world_with(Backend::Sqlite, |s| s.messages.dev_outbox = true).await;
    let (person, _) = w.pair();
    let b = w.browser("10.11.0.1");
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    let csrf = b.csrf("/login/first-use").await;
    b.post(
        "/login/first-use",
        &[
            ("csrf", &csrf),
            ("channel", "email"),
            ("address", "demo@example.org"),
        ],
    )
    .await;
    let page = std::cell::RefCell::new(String::new());
    let (b, page_ref) = (&b, &page);
    eventually("code on the outbox page", || async move {
        let text = b.get("/dev/outbox").await.text().await.unwrap();
        let found = text.contains("demo@example.org");
        *page_ref.borrow_mut() = text;
        found
    })
    .await;
    assert!(
        page.borrow().contains("123456"),
        "the page tells the demo PIN"
    );
    assert!(w.mail.try_recv().is_err(), "nothing was sent by SMTP");
    w.stop().await;
}

// ---------------------------------------------------------------------------------------------
// In a real browser

/// A stand-in for `mydata card-agent` (card-agent-contract.md): signs with the card it holds when
/// the PIN is 123456, answers CORS preflights.
async fn fake_card_agent(card: Arc<std::sync::Mutex<Option<Card>>>) -> String {
    use axum::http::{HeaderValue, StatusCode, header};
    let sign = move |axum::Json(b): axum::Json<serde_json::Value>| {
        let card = card.clone();
        async move {
            if b["pin"] != "123456" {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"error": "wrong_pin", "tries_left": 2})),
                );
            }
            let tbs = URL_SAFE_NO_PAD
                .decode(b["to_be_signed"].as_str().unwrap())
                .unwrap();
            let guard = card.lock().unwrap();
            let c = guard.as_ref().unwrap();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({"signature": c.sign(&tbs), "x5c": c.x5c})),
            )
        }
    };
    let router = axum::Router::new()
        .route(
            "/v1/sign",
            axum::routing::post(sign).options(|| async { StatusCode::NO_CONTENT }),
        )
        .layer(axum::middleware::map_response(
            |mut res: axum::response::Response| async move {
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
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn sign_in_pages_in_chromium_card_by_script_dual_id_by_keyboard_accessible_at_360_px() {
    use mydata_browser_test::{Browser as Chromium, Key, Viewport};
    let slot = Arc::new(std::sync::Mutex::new(None));
    let agent = fake_card_agent(slot.clone()).await;
    let w = world_with(Backend::Sqlite, |s| {
        s.identity.card_agent_url = agent;
        s.messages.dev_outbox = true;
    })
    .await;
    let (person, other) = w.pair();
    known(&w, &person_id(&person)).await;
    *slot.lock().unwrap() = Some(citizen(&w, &person.id));
    let ctx = Chromium::shared()
        .unwrap()
        .new_context("identity_pages")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::NARROW).await.unwrap();

    // The method choice for a basket, then the certificate page: no sideways scrolling, accessible.
    let dataset = &w.app.state.catalog().datasets()[0].id;
    for path in [
        format!("/login?datasets={dataset}"),
        "/login/moica_cert".into(),
        "/login/dual_id?lang=en".into(),
    ] {
        page.goto(&w.url(&path)).await.unwrap();
        assert_eq!(
            page.horizontal_overflow().await.unwrap(),
            0,
            "{path} scrolls sideways"
        );
        page.assert_accessible(&path.replace(['/', '?', '=', '&'], "_"))
            .await
            .unwrap();
    }

    // Certificate: a wrong PIN is reported by the page; the right one signs the person in. (The
    // English chosen above is remembered: back to Chinese.)
    page.goto(&w.url("/login/moica_cert?next=/&lang=zh-TW"))
        .await
        .unwrap();
    page.fill("#pin", "000000").await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_for_text("PIN 碼錯誤").await.unwrap();
    page.fill("#pin", "123456").await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete'",
        "the home page after sign-in",
    )
    .await
    .unwrap();
    let s = page
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("moica_cert"), Some(1))
    );
    assert!(page.js_errors().is_empty(), "{:?}", page.js_errors());

    // Dual ID by keyboard alone, in a fresh context, through first use with the outbox code.
    let ctx2 = Chromium::shared()
        .unwrap()
        .new_context("identity_keyboard")
        .await
        .unwrap();
    let page = ctx2.new_page(Viewport::NARROW).await.unwrap();
    let newcomer = other.clone();
    page.goto(&w.url("/login/dual_id?next=/")).await.unwrap();
    page.tab_to("#f-id_number", 10).await.unwrap();
    page.type_text(&newcomer.id).await.unwrap();
    page.tab_to("#f-nhi_card_no", 3).await.unwrap();
    page.type_text(&newcomer.nhi_card).await.unwrap();
    page.tab_to("#f-household_no", 3).await.unwrap();
    page.type_text(&newcomer.household).await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_until(
        "location.pathname === '/login/first-use'",
        "the first-use page",
    )
    .await
    .unwrap();
    page.wait_loaded().await.unwrap();
    page.assert_accessible("first-use").await.unwrap();
    page.tab_to("#f-address", 10).await.unwrap();
    page.type_text("newcomer@example.org").await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_until(
        "location.pathname === '/login/first-use/code'",
        "the code page",
    )
    .await
    .unwrap();
    page.wait_loaded().await.unwrap();
    page.assert_accessible("code").await.unwrap();
    let store = &w.app.store();
    let mut body = String::new();
    for _ in 0..2000 {
        if let Some(m) = store.outbox(1).await.unwrap().into_iter().next() {
            body = m.body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let code = code_in(&format!("h\n\n{body}"));
    page.tab_to("#f-code", 10).await.unwrap();
    page.type_text(&code).await.unwrap();
    page.press(Key::Enter).await.unwrap();
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete'",
        "the home page after the code",
    )
    .await
    .unwrap();
    let s = page
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("dual_id"), Some(4))
    );
    page.goto(&w.url("/dev/outbox")).await.unwrap();
    page.assert_accessible("outbox").await.unwrap();
    w.stop().await;
}

mod passkey;
mod pseudonym_key;
