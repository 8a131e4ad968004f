//! Passkeys (TW FidO, level 2): registered after a certificate sign-in, then used to sign in; every
//! bad input refused. Over HTTP a software authenticator (P-256, "none" attestation) answers the
//! ceremonies; in Chromium the DevTools virtual authenticator does. The server is reached as
//! `localhost` because WebAuthn refuses IP addresses as relying-party IDs.

use super::*;
use p256::ecdsa::Signature;
use sha2::{Digest, Sha256};

/// A software authenticator holding one P-256 credential.
struct SoftKey {
    key: SigningKey,
    cred_id: Vec<u8>,
    counter: u32,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 24);
    out.push(0x60 | u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

fn cbor_bytes(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() < 24 {
        out.push(0x40 | u8::try_from(b.len()).unwrap());
    } else if b.len() < 256 {
        out.extend_from_slice(&[0x58, u8::try_from(b.len()).unwrap()]);
    } else {
        out.push(0x59);
        out.extend_from_slice(&u16::try_from(b.len()).unwrap().to_be_bytes());
    }
    out.extend_from_slice(b);
}

impl SoftKey {
    fn new(tag: u8) -> Self {
        Self {
            key: <SigningKey as p256::elliptic_curve::Generate>::generate(),
            cred_id: vec![tag; 32],
            counter: 0,
        }
    }

    fn client_data(kind: &str, options: &serde_json::Value, origin: &str) -> Vec<u8> {
        serde_json::json!({
            "type": kind,
            "challenge": options["publicKey"]["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string()
        .into_bytes()
    }

    /// The answer to `navigator.credentials.create` for `options`, as seen from `origin`.
    fn create(&mut self, options: &serde_json::Value, origin: &str) -> String {
        let rp_id = options["publicKey"]["rp"]["id"].as_str().unwrap();
        let point = self.key.verifying_key().to_sec1_point(false);
        let xy = &point.as_bytes()[1..];
        let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        cose.extend_from_slice(&xy[..32]);
        cose.extend_from_slice(&[0x22, 0x58, 0x20]);
        cose.extend_from_slice(&xy[32..]);
        let mut auth = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth.push(0x01 | 0x04 | 0x40); // user present, user verified, attested credential
        auth.extend_from_slice(&self.counter.to_be_bytes());
        auth.extend_from_slice(&[0u8; 16]);
        auth.extend_from_slice(&u16::try_from(self.cred_id.len()).unwrap().to_be_bytes());
        auth.extend_from_slice(&self.cred_id);
        auth.extend_from_slice(&cose);
        let mut att = vec![0xa3];
        cbor_text(&mut att, "fmt");
        cbor_text(&mut att, "none");
        cbor_text(&mut att, "attStmt");
        att.push(0xa0);
        cbor_text(&mut att, "authData");
        cbor_bytes(&mut att, &auth);
        serde_json::json!({
            "id": b64(&self.cred_id),
            "rawId": b64(&self.cred_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&att),
                "clientDataJSON": b64(&Self::client_data("webauthn.create", options, origin)),
            },
            "extensions": {},
        })
        .to_string()
    }

    /// The answer to `navigator.credentials.get` for `options`, as seen from `origin`.
    fn get(&mut self, options: &serde_json::Value, origin: &str) -> String {
        self.counter += 1;
        let rp_id = options["publicKey"]["rpId"].as_str().unwrap();
        let mut auth = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth.push(0x01 | 0x04);
        auth.extend_from_slice(&self.counter.to_be_bytes());
        let cd = Self::client_data("webauthn.get", options, origin);
        let mut signed = auth.clone();
        signed.extend_from_slice(&Sha256::digest(&cd));
        let sig: Signature = self.key.sign(&signed);
        serde_json::json!({
            "id": b64(&self.cred_id),
            "rawId": b64(&self.cred_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth),
                "clientDataJSON": b64(&cd),
                "signature": b64(sig.to_der().as_bytes()),
                "userHandle": null,
            },
            "extensions": {},
        })
        .to_string()
    }
}

impl Browser {
    /// Signs `p` in with the citizen certificate (level 1).
    async fn level1(&self, w: &FlowWorld, p: &Person) {
        let r = self.cert("moica_cert", &w.card(p), str::to_owned).await;
        assert_eq!(r.status(), 303);
        assert_eq!(self.session().await["level"], 1);
    }

    /// Registers `key` under `name`; returns the final response.
    async fn register_passkey(&self, key: &mut SoftKey, name: &str) -> reqwest::Response {
        let csrf = self.csrf("/account/passkeys").await;
        let r = self
            .post_json("/account/passkeys/options", Some(&csrf), None)
            .await;
        assert_eq!(r.status(), 200);
        let started: serde_json::Value = r.json().await.unwrap();
        let cred = key.create(&started["options"], &self.base);
        self.post(
            "/account/passkeys",
            &[
                ("csrf", &csrf),
                ("ceremony_id", started["ceremony_id"].as_str().unwrap()),
                ("credential", &cred),
                ("name", name),
            ],
        )
        .await
    }

    /// Asks for sign-in options for `id`: (csrf, ceremony id, options).
    async fn passkey_options(&self, id: &str) -> (String, String, serde_json::Value) {
        let csrf = self.csrf("/login/tw_fido").await;
        let r = self
            .post_json(
                "/login/tw_fido/options",
                Some(&csrf),
                Some(serde_json::json!({ "id_number": id })),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let started: serde_json::Value = r.json().await.unwrap();
        (
            csrf,
            started["ceremony_id"].as_str().unwrap().to_owned(),
            started["options"].clone(),
        )
    }

    async fn passkey_submit(
        &self,
        csrf: &str,
        id: &str,
        ceremony: &str,
        cred: &str,
    ) -> reqwest::Response {
        self.post(
            "/login/tw_fido",
            &[
                ("csrf", csrf),
                ("id_number", id),
                ("ceremony_id", ceremony),
                ("credential", cred),
                ("next", "/after"),
            ],
        )
        .await
    }

    async fn logout(&self) {
        let csrf = self.csrf("/account/passkeys").await;
        assert_eq!(self.post("/logout", &[("csrf", &csrf)]).await.status(), 303);
        assert_eq!(self.session().await["signed_in"], false);
    }
}

#[tokio::test]
async fn a_passkey_registered_after_a_certificate_sign_in_signs_in_at_level_2() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let w = world(backend).await;
        let (person, _) = w.pair();
        known(&w, &person_id(&person)).await;
        let b = w.browser_by_name("10.20.0.1");
        // Not signed in: the page sends the person to the certificate sign-in.
        let r = b.get("/account/passkeys").await;
        assert_eq!(
            r.headers()["location"],
            "/login/moica_cert?next=/account/passkeys"
        );
        b.level1(&w, &person).await;
        let page = b.get("/account/passkeys").await.text().await.unwrap();
        assert!(page.contains("id=\"passkey-form\""), "level 1 may register");
        let mut key = SoftKey::new(1);
        let r = b.register_passkey(&mut key, "我的手機").await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/account/passkeys?added=1");
        let page = b
            .get("/account/passkeys?added=1")
            .await
            .text()
            .await
            .unwrap();
        assert!(page.contains("我的手機") && page.contains("data-code=\"passkey_registered\""));
        let subject = mydata_server::identity::subject_pseudonym(&w.app.state, &person_id(&person));
        let stored = w.app.store().passkeys_of(&subject).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].credential_id, b64(&key.cred_id));
        assert_eq!(stored[0].sign_count, 0);
        // The same authenticator again is excluded by the options and refused if it insists.
        let r = b.register_passkey(&mut key, "again").await;
        let html = refused(r, 409, "passkey_already_registered").await;
        // The device was refused, not the name typed: the button points at the reason.
        let button = crate::helpers::tag_of(&html, "passkey-register");
        assert!(
            button.contains("aria-describedby=\"form-error\""),
            "{button}"
        );
        assert!(!crate::helpers::tag_of(&html, "f-name").contains("aria-invalid"));

        b.logout().await;
        let (csrf, ceremony, options) = b.passkey_options(&person.id).await;
        assert_eq!(options["publicKey"]["rpId"], "localhost");
        assert_eq!(options["publicKey"]["userVerification"], "required");
        assert_eq!(
            options["publicKey"]["allowCredentials"][0]["id"],
            b64(&key.cred_id)
        );
        let cred = key.get(&options, &b.base);
        let r = b.passkey_submit(&csrf, &person.id, &ceremony, &cred).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/after");
        let s = b.session().await;
        assert_eq!(
            (s["method"].as_str(), s["level"].as_u64()),
            (Some("tw_fido"), Some(2))
        );
        let stored = w.app.store().passkeys_of(&subject).await.unwrap();
        assert_eq!(stored[0].sign_count, 1, "the counter is kept");
        assert!(stored[0].last_used_at.is_some());

        // A level-2 session lists and removes passkeys but cannot register one.
        let page = b.get("/account/passkeys").await.text().await.unwrap();
        assert!(page.contains("我的手機") && !page.contains("id=\"passkey-form\""));
        let r = b
            .post_json("/account/passkeys/options", Some(&csrf_in(&page)), None)
            .await;
        crate::helpers::assert_problem(r, 403, "insufficient_level").await;
        let r = b
            .post(
                &format!("/account/passkeys/{}/delete", stored[0].id),
                &[("csrf", &csrf_in(&page))],
            )
            .await;
        assert_eq!(r.status(), 303);
        assert!(
            w.app
                .store()
                .passkeys_of(&subject)
                .await
                .unwrap()
                .is_empty()
        );

        // The audit trail names the pseudonym only.
        let events = w.app.store().audit_for_subject(&subject).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        for k in [
            "identity.passkey_registered",
            "identity.passkey_removed",
            "identity.verified",
        ] {
            assert!(kinds.contains(&k), "{k} in {kinds:?}");
        }
        for e in &events {
            assert!(!e.detail.to_string().contains(&person.id));
        }
        w.stop().await;
    }
}

#[tokio::test]
async fn passkey_bad_input_is_refused_and_counted() {
    let w = world(Backend::Sqlite).await;
    let (person, other) = w.pair();
    known(&w, &person_id(&person)).await;
    known(&w, &person_id(&other)).await;

    // Registration needs a level-1 session: anonymous, level 4, no CSRF token are all refused.
    let b = w.browser_by_name("10.21.0.1");
    let csrf = b.csrf("/login/tw_fido").await;
    let r = b
        .post_json("/account/passkeys/options", Some(&csrf), None)
        .await;
    crate::helpers::assert_problem(r, 401, "not_signed_in").await;
    assert_eq!(
        b.dual(&person, Some(&person.household), None)
            .await
            .status(),
        303
    );
    let page = b.get("/account/passkeys").await.text().await.unwrap();
    assert!(
        !page.contains("id=\"passkey-form\""),
        "level 4 may not register"
    );
    let csrf = b.csrf("/login/tw_fido").await;
    let r = b
        .post_json("/account/passkeys/options", Some(&csrf), None)
        .await;
    crate::helpers::assert_problem(r, 403, "insufficient_level").await;
    let b = w.browser_by_name("10.21.0.2");
    b.level1(&w, &person).await;
    let r = b.post_json("/account/passkeys/options", None, None).await;
    crate::helpers::assert_problem(r, 403, "csrf_failed").await;
    let r = b
        .post_json("/account/passkeys/options", Some("wrong"), None)
        .await;
    crate::helpers::assert_problem(r, 403, "csrf_failed").await;
    let mut key = SoftKey::new(2);
    let csrf = b.csrf("/account/passkeys").await;
    let r = b.post("/account/passkeys", &[("name", "x")]).await;
    refused(r, 403, "csrf_failed").await;
    // A registration answer signed for another origin, then replayed: refused, nothing stored.
    let started: serde_json::Value = b
        .post_json("/account/passkeys/options", Some(&csrf), None)
        .await
        .json()
        .await
        .unwrap();
    let ceremony = started["ceremony_id"].as_str().unwrap();
    let evil = key.create(&started["options"], "http://evil.localhost:1");
    let form = |cred: &str| {
        vec![
            ("csrf".to_owned(), csrf.clone()),
            ("ceremony_id".to_owned(), ceremony.to_owned()),
            ("credential".to_owned(), cred.to_owned()),
        ]
    };
    let post_form = |f: Vec<(String, String)>| {
        let b = &b;
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            b.post("/account/passkeys", &f).await
        }
    };
    refused(
        post_form(form(&evil)).await,
        422,
        "passkey_registration_failed",
    )
    .await;
    let good = key.create(&started["options"], &b.base);
    refused(post_form(form(&good)).await, 401, "challenge_used").await;
    refused(post_form(form("{not json")).await, 401, "challenge_used").await;
    // An expired registration ceremony.
    let started: serde_json::Value = b
        .post_json("/account/passkeys/options", Some(&csrf), None)
        .await
        .json()
        .await
        .unwrap();
    w.app.clock.advance(Duration::from_secs(121));
    let cred = key.create(&started["options"], &b.base);
    let r = b
        .post(
            "/account/passkeys",
            &[
                ("csrf", &csrf),
                ("ceremony_id", started["ceremony_id"].as_str().unwrap()),
                ("credential", &cred),
            ],
        )
        .await;
    refused(r, 401, "challenge_expired").await;
    let subject = mydata_server::identity::subject_pseudonym(&w.app.state, &person_id(&person));
    assert!(
        w.app
            .store()
            .passkeys_of(&subject)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.register_passkey(&mut key, "phone").await.status(), 303);

    // Sign-in options: CSRF, malformed ID, someone without a passkey.
    let s = w.browser_by_name("10.21.1.1");
    let csrf = s.csrf("/login/tw_fido").await;
    let body = serde_json::json!({ "id_number": person.id });
    let r = s
        .post_json("/login/tw_fido/options", None, Some(body.clone()))
        .await;
    crate::helpers::assert_problem(r, 403, "csrf_failed").await;
    let r = s
        .post_json(
            "/login/tw_fido/options",
            Some(&csrf),
            Some(serde_json::json!({ "id_number": "A123456788" })),
        )
        .await;
    crate::helpers::assert_problem(r, 401, "invalid_id_number").await;
    let r = s
        .post_json(
            "/login/tw_fido/options",
            Some(&csrf),
            Some(serde_json::json!({ "id_number": other.id })),
        )
        .await;
    crate::helpers::assert_problem(r, 404, "passkey_not_registered").await;
    let r = s
        .post_json(
            "/login/tw_fido/options",
            Some(&csrf),
            Some(serde_json::json!({ "id": 1 })),
        )
        .await;
    assert_eq!(r.status(), 422);

    // Assertions: for an unknown credential, from another origin, for another ID number, replayed,
    // expired; none signs in.
    let p = w.browser_by_name("10.21.2.1");
    let mut stranger = SoftKey::new(9);
    let (csrf, ceremony, options) = p.passkey_options(&person.id).await;
    let cred = stranger.get(&options, &p.base);
    refused(
        p.passkey_submit(&csrf, &person.id, &ceremony, &cred).await,
        401,
        "passkey_invalid",
    )
    .await;
    let (csrf, ceremony, options) = p.passkey_options(&person.id).await;
    let cred = key.get(&options, "http://localhost:1");
    refused(
        p.passkey_submit(&csrf, &person.id, &ceremony, &cred).await,
        401,
        "passkey_invalid",
    )
    .await;
    let (csrf, ceremony, options) = p.passkey_options(&person.id).await;
    let cred = key.get(&options, &p.base);
    refused(
        p.passkey_submit(&csrf, &other.id, &ceremony, &cred).await,
        401,
        "passkey_invalid",
    )
    .await;
    refused(
        p.passkey_submit(&csrf, &person.id, &ceremony, &cred).await,
        401,
        "challenge_used",
    )
    .await;
    let (csrf, ceremony, options) = p.passkey_options(&person.id).await;
    w.app.clock.advance(Duration::from_secs(121));
    let cred = key.get(&options, &p.base);
    refused(
        p.passkey_submit(&csrf, &person.id, &ceremony, &cred).await,
        401,
        "challenge_expired",
    )
    .await;
    assert_eq!(p.session().await["signed_in"], false);
    // A ceremony of another browser's session is not this one's.
    let (_, their_ceremony, options) = s.passkey_options(&person.id).await;
    let q = w.browser_by_name("10.21.2.2");
    let csrf = q.csrf("/login/tw_fido").await;
    let cred = key.get(&options, &q.base);
    refused(
        q.passkey_submit(&csrf, &person.id, &their_ceremony, &cred)
            .await,
        401,
        "challenge_used",
    )
    .await;
    // A good assertion replayed after it signed in (past the lockout window of the failures above).
    w.app.clock.advance(Duration::from_secs(16 * 60));
    let (csrf, ceremony, options) = p.passkey_options(&person.id).await;
    let cred = key.get(&options, &p.base);
    assert_eq!(
        p.passkey_submit(&csrf, &person.id, &ceremony, &cred)
            .await
            .status(),
        303
    );
    let csrf = p.csrf("/login/tw_fido").await;
    refused(
        p.passkey_submit(&csrf, &person.id, &ceremony, &cred).await,
        401,
        "challenge_used",
    )
    .await;

    // Failed assertions count toward the lockout like any other method's failures.
    w.app.clock.advance(Duration::from_secs(16 * 60));
    let l = w.browser_by_name("10.21.3.1");
    let mut last = None;
    for _ in 0..5 {
        let (csrf, ceremony, options) = l.passkey_options(&person.id).await;
        let cred = stranger.get(&options, &l.base);
        last = Some(l.passkey_submit(&csrf, &person.id, &ceremony, &cred).await);
    }
    refused(last.unwrap(), 429, "locked_out").await;
    let csrf = l.csrf("/login/tw_fido").await;
    let r = l
        .post_json("/login/tw_fido/options", Some(&csrf), Some(body))
        .await;
    crate::helpers::assert_problem(r, 429, "locked_out").await;

    // Removing: only one's own passkeys.
    let stored = w.app.store().passkeys_of(&subject).await.unwrap();
    let o = w.browser_by_name("10.21.4.1");
    assert_eq!(
        o.dual(&other, Some(&other.household), None).await.status(),
        303
    );
    let csrf = o.csrf("/login/tw_fido").await;
    let r = o
        .post(
            &format!("/account/passkeys/{}/delete", stored[0].id),
            &[("csrf", &csrf)],
        )
        .await;
    refused(r, 404, "passkey_not_found").await;
    let r = o
        .post(&format!("/account/passkeys/{}/delete", stored[0].id), &[])
        .await;
    refused(r, 403, "csrf_failed").await;
    assert_eq!(w.app.store().passkeys_of(&subject).await.unwrap().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn passkeys_need_a_domain_name_not_an_ip_address() {
    let w = world(Backend::Sqlite).await;
    let (person, _) = w.pair();
    known(&w, &person_id(&person)).await;
    let b = w.browser("10.22.0.1");
    b.level1(&w, &person).await;
    let csrf = b.csrf("/account/passkeys").await;
    let r = b
        .post_json("/account/passkeys/options", Some(&csrf), None)
        .await;
    crate::helpers::assert_problem(r, 503, "passkey_unavailable").await;
    w.stop().await;
}

#[tokio::test]
async fn passkey_in_chromium_registered_after_a_card_sign_in_then_used_to_sign_in() {
    use mydata_browser_test::{Browser as Chromium, Viewport};
    let slot = Arc::new(std::sync::Mutex::new(None));
    let agent = fake_card_agent(slot.clone()).await;
    let w = world_with(Backend::Sqlite, |s| {
        s.identity.card_agent_url = agent;
    })
    .await;
    let (person, _) = w.pair();
    known(&w, &person_id(&person)).await;
    *slot.lock().unwrap() = Some(w.card(&person));
    let base = w.app.base.replace("127.0.0.1", "localhost");
    let ctx = Chromium::shared()
        .unwrap()
        .new_context("passkey_pages")
        .await
        .unwrap();
    let page = ctx.new_page(Viewport::MOBILE).await.unwrap();
    let auth = page.add_virtual_authenticator().await.unwrap();

    // Level 1 by the card, straight back to the passkey page.
    page.goto(&format!("{base}/login/moica_cert?next=/account/passkeys"))
        .await
        .unwrap();
    page.fill("#pin", "123456").await.unwrap();
    page.click("button[type=submit]").await.unwrap();
    page.wait_until(
        "location.pathname === '/account/passkeys' && document.readyState === 'complete'",
        "the passkey page after the card sign-in",
    )
    .await
    .unwrap();
    page.wait_for("#passkey-form").await.unwrap();
    page.assert_accessible("passkeys-empty").await.unwrap();
    assert_eq!(page.horizontal_overflow().await.unwrap(), 0);

    // Register by keyboard: name, Enter; the device creates the passkey.
    page.fill("#f-name", "測試手機").await.unwrap();
    page.press(mydata_browser_test::Key::Enter).await.unwrap();
    page.wait_for_text("通行密鑰已註冊").await.unwrap();
    page.screenshot("registered").await.unwrap();
    page.assert_accessible("passkeys-one").await.unwrap();
    let held = page.credentials(&auth).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["rpId"], "localhost");

    // Sign out, then sign in with the passkey alone.
    page.eval(
        "(() => { const f = document.createElement('form'); f.method = 'post'; f.action = '/logout';
           const i = document.createElement('input'); i.type = 'hidden'; i.name = 'csrf';
           i.value = document.querySelector('input[name=csrf]').value; f.appendChild(i);
           document.body.appendChild(f); f.submit(); return true; })()",
    )
    .await
    .unwrap();
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete'",
        "the home page after sign-out",
    )
    .await
    .unwrap();
    let s = page
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(s["signed_in"], false);
    page.goto(&format!("{base}/login/tw_fido?next=/"))
        .await
        .unwrap();
    page.assert_accessible("tw_fido").await.unwrap();
    page.tab_to("#f-id_number", 10).await.unwrap();
    page.type_text(&person.id).await.unwrap();
    page.press(mydata_browser_test::Key::Enter).await.unwrap();
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete'",
        "the home page after the passkey sign-in",
    )
    .await
    .unwrap();
    let s = page
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(
        (s["method"].as_str(), s["level"].as_u64()),
        (Some("tw_fido"), Some(2))
    );
    assert!(page.js_errors().is_empty(), "{:?}", page.js_errors());

    // A failed fingerprint is reported on the page and signs no one in.
    let ctx2 = Chromium::shared()
        .unwrap()
        .new_context("passkey_uv_fails")
        .await
        .unwrap();
    let page2 = ctx2.new_page(Viewport::DESKTOP).await.unwrap();
    let auth2 = page2.add_virtual_authenticator().await.unwrap();
    page2.set_user_verified(&auth2, false).await.unwrap();
    page2
        .goto(&format!("{base}/login/tw_fido?lang=en"))
        .await
        .unwrap();
    page2.fill("#f-id_number", &person.id).await.unwrap();
    page2.click("button[type=submit]").await.unwrap();
    page2
        .wait_until(
            "document.getElementById('passkey-status').textContent.length > 0 && !document.getElementById('passkey-status').textContent.startsWith('Confirm')",
            "a message after the device refused",
        )
        .await
        .unwrap();
    let s = page2
        .eval("fetch('/api/v1/session').then(r => r.json())")
        .await
        .unwrap();
    assert_eq!(s["signed_in"], false);
    w.stop().await;
}
