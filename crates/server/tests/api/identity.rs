//! Identity verification through the real pages: the simulated agencies run in-process over HTTP,
//! one-time codes travel through a real SMTP conversation, certificates come from a test CA, and
//! time moves only with the ManualClock.

use crate::helpers::{Backend, TestApp, eventually};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mydata_core::{BusinessId, IdNumber, IdentityMethod, ManualClock, Timestamp};
use mydata_provider_sim::server::{Simulator, SimulatorConfig};
use mydata_server::Settings;
use mydata_server::identity::SubjectId;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const T0: i64 = 1_790_000_000_000;
const MIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The world of one test

/// A synthetic person the simulated agencies know.
#[derive(Clone)]
struct Person {
    id: String,
    card: String,
    household: String,
    issued: String,
}

struct World {
    app: TestApp,
    person: Person,
    other: Person,
    pki: Pki,
    mail: mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

/// A test certificate authority for citizen and business certificates, and its CRL.
struct Pki {
    key: KeyPair,
    cert: rcgen::Certificate,
    revoked: Vec<u64>,
    crl_path: std::path::PathBuf,
}

fn at(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap()
}

impl Pki {
    fn new(name: &str, dir: &std::path::Path) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = at(T0 - 86_400_000);
        p.not_after = at(T0 + 3650 * 86_400_000);
        p.key_identifier_method = KeyIdMethod::Sha256;
        let cert = p.self_signed(&key).unwrap();
        let pki = Self {
            key,
            cert,
            revoked: Vec::new(),
            crl_path: dir.join(format!("{name}-crl.pem")),
        };
        std::fs::write(dir.join(format!("{name}-root.pem")), pki.cert.pem()).unwrap();
        pki.write_crl();
        pki
    }

    fn write_crl(&self) {
        let params = CertificateRevocationListParams {
            this_update: at(T0 - 3_600_000),
            next_update: at(T0 + 7 * 86_400_000),
            crl_number: SerialNumber::from(u64::try_from(self.revoked.len()).unwrap() + 1),
            issuing_distribution_point: None,
            revoked_certs: self
                .revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: at(T0 - 3_600_000),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).unwrap();
        std::fs::write(&self.crl_path, crl.pem().unwrap()).unwrap();
    }

    /// A card: certificate (base64 DER) and its private key.
    fn card(&self, serial_number: &str, opts: CardOpts) -> Card {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "測試 人員");
        p.distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial_number);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = if opts.no_signature_usage {
            vec![KeyUsagePurpose::KeyEncipherment]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        p.not_before = at(opts.not_before.unwrap_or(T0 - 86_400_000));
        p.not_after = at(opts.not_after.unwrap_or(T0 + 365 * 86_400_000));
        p.serial_number = Some(SerialNumber::from(opts.serial));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&kp, &self.cert, &self.key).unwrap();
        let key = SigningKey::from_pkcs8_der(&kp.serialize_der()).unwrap();
        Card {
            x5c: vec![STANDARD.encode(cert.der())],
            key,
        }
    }
}

#[derive(Default)]
struct CardOpts {
    serial: u64,
    not_before: Option<i64>,
    not_after: Option<i64>,
    no_signature_usage: bool,
}

struct Card {
    x5c: Vec<String>,
    key: SigningKey,
}

impl Card {
    fn sign(&self, bytes: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.key.sign(bytes);
        URL_SAFE_NO_PAD.encode(sig.to_der().as_bytes())
    }
}

/// A minimal SMTP server: accepts every message and hands over its data.
pub(crate) async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                for _ in 0..10_000 {
                    let Ok(Some(line)) = lines.next_line().await else {
                        break;
                    };
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            tx.send(data.take().unwrap()).unwrap();
                            w.write_all(b"250 OK queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-test\r\n250 OK\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            w.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"250 OK\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

/// The 6-digit code in a received message (base64 or quoted-printable body).
fn code_in(message: &str) -> String {
    let (headers, body) = message.split_once("\n\n").unwrap();
    let text = if headers
        .to_ascii_lowercase()
        .contains("content-transfer-encoding: base64")
    {
        let b64: String = body.split_whitespace().collect();
        String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
    } else {
        body.replace("=\n", "")
    };
    let i = text.find("code is ").expect("code in message") + "code is ".len();
    text[i..i + 6].to_owned()
}

async fn world_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> World {
    let dir = tempfile::tempdir().unwrap();
    // The platform key is made here so the simulated agencies can trust it before the server starts.
    let key = <SigningKey as p256::elliptic_curve::Generate>::generate();
    let key_path = dir.path().join("platform.pem");
    std::fs::write(
        &key_path,
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let sim = Arc::new(
        Simulator::new(
            SimulatorConfig::new(*key.verifying_key()),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    let people: Vec<Person> = sim
        .population()
        .persons()
        .iter()
        .filter(|p| !p.is_foreign() && p.id_card_issued.is_some())
        .filter_map(|p| {
            Some(Person {
                id: p.id.as_str().to_owned(),
                card: p.nhi_card_no.clone(),
                household: sim.population().household_of(p)?.number.clone(),
                issued: p.id_card_issued?.iso(),
            })
        })
        .take(40)
        .collect();
    // Two people of different households, with different ID-card dates.
    let first = people[0].clone();
    let second = people
        .iter()
        .find(|p| p.household != first.household && p.issued != first.issued)
        .unwrap()
        .clone();
    let people = [first, second];
    let router = mydata_provider_sim::server::router(sim.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let (smtp_port, mail) = smtp_server().await;
    let pki = Pki::new("citizen", dir.path());
    let roots = vec![dir.path().join("citizen-root.pem")];
    let crls = vec![pki.crl_path.clone()];
    let pseudonym_key = dir.path().join("pseudonym.key");
    let app = TestApp::spawn_clocked(
        backend,
        |s| {
            s.keys.platform_signing_key = key_path.display().to_string();
            s.keys.identity_hash_key = pseudonym_key.display().to_string();
            s.identity.registry_url = sim_url;
            s.identity.certificate_roots = roots;
            s.identity.certificate_crls = crls;
            s.identity.client_address_header = "x-forwarded-for".into();
            s.jobs.poll_interval_ms = 5;
            s.messages.smtp.host = "127.0.0.1".into();
            s.messages.smtp.port = smtp_port;
            s.messages.smtp.security = mydata_server::identity::messages::SmtpSecurity::None;
            tweak(s);
        },
        Vec::new(),
        clock,
    )
    .await;
    World {
        app,
        person: people[0].clone(),
        other: people[1].clone(),
        pki,
        mail,
        _dir: dir,
    }
}

async fn world(backend: Backend) -> World {
    world_with(backend, |_| {}).await
}

/// One browser: its own cookies, a client address of its own.
struct Browser {
    client: reqwest::Client,
    base: String,
    addr: String,
}

fn csrf_in(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    html[i..].split('"').next().unwrap().to_owned()
}

impl Browser {
    fn new(app: &TestApp, addr: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            addr: addr.into(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header("x-forwarded-for", &self.addr)
            .send()
            .await
            .unwrap()
    }

    /// Opens a page and returns its CSRF token.
    async fn csrf(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        csrf_in(&r.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("x-forwarded-for", &self.addr)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    async fn session(&self) -> serde_json::Value {
        self.get("/api/v1/session").await.json().await.unwrap()
    }

    async fn dual_id(
        &self,
        p: &Person,
        household: Option<&str>,
        issued: Option<&str>,
    ) -> reqwest::Response {
        let csrf = self.csrf("/login/dual_id").await;
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("id_number", p.id.as_str()),
            ("nhi_card_no", p.card.as_str()),
            ("next", "/after"),
        ];
        if let Some(h) = household {
            form.push(("household_no", h));
        }
        if let Some(d) = issued {
            form.push(("id_card_issue_date", d));
        }
        self.post("/login/dual_id", &form).await
    }

    /// Runs the certificate flow: challenge, signature by `card` over `signed` (or the challenge's
    /// own text), submit.
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
        let csrf = csrf_in(&page.text().await.unwrap());
        let ch: serde_json::Value = self
            .client
            .post(format!("{}/login/{method}/challenge", self.base))
            .header("x-csrf-token", &csrf)
            .header("x-forwarded-for", &self.addr)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = String::from_utf8(
            URL_SAFE_NO_PAD
                .decode(ch["to_be_signed"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let id = ch["challenge_id"].as_str().unwrap();
        assert_eq!(
            text,
            format!(
                "mydata-login-v1\n{}\n{id}\n{}",
                self.base,
                ch["nonce"].as_str().unwrap()
            )
        );
        let signature = card.sign(tamper(&text).as_bytes());
        let x5c = serde_json::to_string(&card.x5c).unwrap();
        self.post(
            &format!("/login/{method}"),
            &[
                ("csrf", &csrf),
                ("challenge_id", id),
                ("signature", &signature),
                ("x5c", &x5c),
            ],
        )
        .await
    }
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

/// Marks the person as having done first use, so a test can skip the code step.
async fn known(w: &World, id: &SubjectId) {
    let p = mydata_server::identity::subject_pseudonym(&w.app.state, id);
    let store = &w.app.db.store;
    store
        .ensure_subject(&p, "natural", Timestamp::from_millis(T0))
        .await
        .unwrap();
    store
        .complete_first_use(&p, "email", "x@example.org", Timestamp::from_millis(T0))
        .await
        .unwrap();
}

/// A valid ID number no one in the population has (each bad case its own account).
fn fresh_id(n: u32) -> String {
    IdNumber::generate('Y', mydata_core::id_number::Sex::Male, 8_000_000 + n)
        .unwrap()
        .as_str()
        .to_owned()
}

fn person_id(p: &Person) -> SubjectId {
    SubjectId::Person(IdNumber::parse(&p.id).unwrap())
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
        let b = Browser::new(&w.app, "10.0.0.1");
        let r = b.dual_id(&w.person, Some(&w.person.household), None).await;
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
        let p = mydata_server::identity::subject_pseudonym(&w.app.state, &person_id(&w.person));
        assert_eq!(
            w.app.db.store.contacts(&p).await.unwrap()[0].address,
            "citizen@example.org"
        );

        // A later sign-in (another browser) goes straight through, with the ID-card date instead.
        let b2 = Browser::new(&w.app, "10.0.0.2");
        let r = b2.dual_id(&w.person, None, Some(&w.person.issued)).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/after");
        // Audit: verified and first-use events, pseudonymous only.
        let events = w.app.db.store.audit_for_subject(&p).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert!(
            kinds.contains(&"identity.verified") && kinds.contains(&"identity.first_use_confirmed"),
            "{kinds:?}"
        );
        assert!(
            !serde_json::to_string(&events.iter().map(|e| &e.detail).collect::<Vec<_>>())
                .unwrap()
                .contains(&w.person.id)
        );
        w.app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn dual_id_refusals_never_say_which_field_was_wrong() {
    let w = world(Backend::Sqlite).await;
    let p = w.person.clone();
    let b = Browser::new(&w.app, "10.0.1.1");
    let mut messages = Vec::new();
    let wrong_card = Person {
        card: w.other.card.clone(),
        ..p.clone()
    };
    for (i, (who, household, issued)) in [
        (&wrong_card, Some(p.household.as_str()), None),
        (&p, Some(w.other.household.as_str()), None),
        (&p, None, Some("1999-01-01")),
        (&p, Some("not-a-number"), None),
    ]
    .into_iter()
    .enumerate()
    {
        // Each from its own address: five failures from one would lock it.
        let b = Browser::new(&w.app, &format!("10.0.2.{i}"));
        let html = refused(
            b.dual_id(who, household, issued).await,
            401,
            "identity_mismatch",
        )
        .await;
        let i = html.find("id=\"form-error\"").unwrap();
        messages.push(html[i..].split("</p>").next().unwrap().to_owned());
    }
    assert!(messages.windows(2).all(|m| m[0] == m[1]), "{messages:?}");
    // Another valid ID number the agencies do not know: the same answer.
    let unknown = IdNumber::generate('Z', mydata_core::id_number::Sex::Female, 9_999_999).unwrap();
    let stranger = Person {
        id: unknown.as_str().into(),
        ..p.clone()
    };
    refused(
        b.dual_id(&stranger, Some(&p.household), None).await,
        401,
        "identity_mismatch",
    )
    .await;
    // An invalid ID number is refused before anything else.
    let bad = Person {
        id: "A123456788".into(),
        ..p.clone()
    };
    refused(
        b.dual_id(&bad, Some(&p.household), None).await,
        401,
        "invalid_id_number",
    )
    .await;
    // Neither household number nor date: a form problem, not counted.
    refused(
        b.dual_id(&p, None, None).await,
        422,
        "invalid_credentials_input",
    )
    .await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn lockout_per_account_and_per_address_and_its_expiry() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let w = world(backend).await;
        let p = w.person.clone();
        let wrong = Person {
            card: w.other.card.clone(),
            ..p.clone()
        };
        // Five failures on one account from five addresses lock the account everywhere.
        for i in 0..5 {
            let b = Browser::new(&w.app, &format!("10.1.0.{i}"));
            let r = b.dual_id(&wrong, Some(&p.household), None).await;
            let expect = if i < 4 { 401 } else { 429 };
            assert_eq!(r.status(), expect, "attempt {i}");
        }
        let fresh = Browser::new(&w.app, "10.1.1.1");
        let r = fresh.dual_id(&p, Some(&p.household), None).await;
        assert_eq!(r.headers()["retry-after"], "900");
        let html = refused(r, 429, "locked_out").await;
        assert!(html.contains("15 分鐘"), "time remaining shown");
        // The same address may still try another account.
        let r = fresh
            .dual_id(&w.other, Some(&w.other.household), None)
            .await;
        assert_eq!(r.status(), 303, "other account unaffected");

        // Five failures from one address over different accounts lock that address.
        let office = Browser::new(&w.app, "10.2.0.1");
        for i in 0..5u32 {
            let id = IdNumber::generate('B', mydata_core::id_number::Sex::Male, 1_000 + i).unwrap();
            let someone = Person {
                id: id.as_str().into(),
                ..w.other.clone()
            };
            let r = office.dual_id(&someone, Some("A0000000"), None).await;
            assert_eq!(r.status(), if i < 4 { 401 } else { 429 });
        }
        refused(
            office
                .dual_id(&w.other, Some(&w.other.household), None)
                .await,
            429,
            "locked_out",
        )
        .await;

        // Seven minutes on, still locked, with less time left; after fifteen, both work again.
        w.app.clock.advance(7 * MIN);
        let r = fresh.dual_id(&p, Some(&p.household), None).await;
        assert_eq!(r.headers()["retry-after"], "480");
        w.app.clock.advance(8 * MIN);
        assert_eq!(
            fresh.dual_id(&p, Some(&p.household), None).await.status(),
            303
        );
        assert_eq!(
            office
                .dual_id(&w.other, Some(&w.other.household), None)
                .await
                .status(),
            303
        );
        let kinds: Vec<String> = w
            .app
            .db
            .store
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
        w.app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn failures_spread_over_more_than_fifteen_minutes_do_not_lock() {
    let w = world(Backend::Sqlite).await;
    let wrong = Person {
        card: w.other.card.clone(),
        ..w.person.clone()
    };
    let b = Browser::new(&w.app, "10.3.0.1");
    for _ in 0..8 {
        refused(
            b.dual_id(&wrong, Some(&w.person.household), None).await,
            401,
            "identity_mismatch",
        )
        .await;
        w.app.clock.advance(4 * MIN);
    }
    w.app.stop().await.unwrap();
}

/// Signs in by dual ID up to the code page; returns the code's CSRF token.
async fn to_code_page(w: &mut World, b: &Browser) -> (String, String) {
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    let b = Browser::new(&w.app, "10.4.0.1");
    let (csrf, code) = to_code_page(&mut w, &b).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    refused(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", wrong)])
            .await,
        401,
        "code_wrong",
    )
    .await;
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
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn sms_codes_go_through_the_configured_gateway_with_retries() {
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let gateway = axum::Router::new().route(
        "/sms",
        axum::routing::post(
            move |headers: axum::http::HeaderMap,
                  axum::Json(body): axum::Json<serde_json::Value>| {
                let tx = tx.clone();
                let c = c.clone();
                async move {
                    assert_eq!(headers["authorization"], "Bearer gw-token");
                    // The first call fails: the job queue must retry.
                    if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return axum::http::StatusCode::BAD_GATEWAY;
                    }
                    tx.send(body).unwrap();
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, gateway).await });
    let w = world_with(Backend::Sqlite, |s| {
        s.messages.sms.gateway_url = url;
        s.messages.sms.token = "gw-token".into();
    })
    .await;
    let b = Browser::new(&w.app, "10.5.0.1");
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    let calls_ref = &calls;
    eventually("first SMS attempt", || async move {
        calls_ref.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    w.app.clock.advance(2 * MIN);
    let body = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["to"], "+886912345678");
    let code = code_in(&format!("h\n\n{}", body["text"].as_str().unwrap()));
    let csrf = b.csrf("/login/first-use/code").await;
    assert_eq!(
        b.post("/login/first-use/code", &[("csrf", &csrf), ("code", &code)])
            .await
            .status(),
        303
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn certificate_sign_in_and_every_bad_certificate_input() {
    let mut w = world(Backend::Sqlite).await;
    known(&w, &person_id(&w.person)).await;
    let good = w.pki.card(
        &w.person.id,
        CardOpts {
            serial: 10,
            ..Default::default()
        },
    );
    let b = Browser::new(&w.app, "10.6.0.1");
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
    let other_good = w.pki.card(
        &fresh_id(11),
        CardOpts {
            serial: 21,
            ..Default::default()
        },
    );
    let mut forged = w.pki.card(
        &fresh_id(11),
        CardOpts {
            serial: 11,
            ..Default::default()
        },
    );
    forged.x5c = other_good.x5c.clone();
    refused(
        Browser::new(&w.app, "10.6.1.1")
            .cert("moica_cert", &forged, str::to_owned)
            .await,
        401,
        "signature_invalid",
    )
    .await;
    // Wrong nonce (the card signed other bytes).
    refused(
        Browser::new(&w.app, "10.6.1.2")
            .cert(
                "moica_cert",
                &w.pki.card(
                    &fresh_id(22),
                    CardOpts {
                        serial: 22,
                        ..Default::default()
                    },
                ),
                |t| t.replace("mydata-login-v1", "mydata-login-v0"),
            )
            .await,
        401,
        "signature_invalid",
    )
    .await;
    // Expired and not-yet-valid certificates.
    let old = w.pki.card(
        &fresh_id(12),
        CardOpts {
            serial: 12,
            not_before: Some(T0 - 900 * 86_400_000),
            not_after: Some(T0 - 86_400_000),
            ..Default::default()
        },
    );
    refused(
        Browser::new(&w.app, "10.6.1.3")
            .cert("moica_cert", &old, str::to_owned)
            .await,
        401,
        "certificate_expired",
    )
    .await;
    // Revoked (listed in the CRL the platform reads at each sign-in).
    let revoked = w.pki.card(
        &fresh_id(13),
        CardOpts {
            serial: 13,
            ..Default::default()
        },
    );
    w.pki.revoked.push(13);
    w.pki.write_crl();
    refused(
        Browser::new(&w.app, "10.6.1.4")
            .cert("moica_cert", &revoked, str::to_owned)
            .await,
        401,
        "certificate_revoked",
    )
    .await;
    // Untrusted issuer.
    let dir = tempfile::tempdir().unwrap();
    let rogue = Pki::new("rogue", dir.path());
    refused(
        Browser::new(&w.app, "10.6.1.5")
            .cert(
                "moica_cert",
                &rogue.card(
                    &fresh_id(14),
                    CardOpts {
                        serial: 14,
                        ..Default::default()
                    },
                ),
                str::to_owned,
            )
            .await,
        401,
        "certificate_untrusted",
    )
    .await;
    // No digitalSignature key usage.
    let enc = w.pki.card(
        &fresh_id(15),
        CardOpts {
            serial: 15,
            no_signature_usage: true,
            ..Default::default()
        },
    );
    refused(
        Browser::new(&w.app, "10.6.1.6")
            .cert("moica_cert", &enc, str::to_owned)
            .await,
        401,
        "certificate_usage",
    )
    .await;
    // Malformed certificate.
    let mut junk = w.pki.card(
        &w.person.id,
        CardOpts {
            serial: 16,
            ..Default::default()
        },
    );
    junk.x5c = vec![STANDARD.encode(b"not a certificate")];
    refused(
        Browser::new(&w.app, "10.6.1.7")
            .cert("moica_cert", &junk, str::to_owned)
            .await,
        401,
        "certificate_invalid",
    )
    .await;
    // A serialNumber that is not a valid ID number.
    let bad_id = w.pki.card(
        "A123456788",
        CardOpts {
            serial: 17,
            ..Default::default()
        },
    );
    refused(
        Browser::new(&w.app, "10.6.1.8")
            .cert("moica_cert", &bad_id, str::to_owned)
            .await,
        401,
        "invalid_id_number",
    )
    .await;
    // A business certificate on the citizen method.
    let company = BusinessId::generate(4242).unwrap();
    let biz = w.pki.card(
        company.as_str(),
        CardOpts {
            serial: 18,
            ..Default::default()
        },
    );
    refused(
        Browser::new(&w.app, "10.6.1.9")
            .cert("moica_cert", &biz, str::to_owned)
            .await,
        401,
        "wrong_subject_kind",
    )
    .await;

    // Replayed challenge: the same signed answer posted twice.
    let r2 = Browser::new(&w.app, "10.6.2.1");
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
    let r3 = Browser::new(&w.app, "10.6.3.1");
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
    let lb = Browser::new(&w.app, "10.6.4.1");
    assert_eq!(
        lb.cert("moea_cert", &biz, str::to_owned).await.status(),
        303
    );
    let s = lb.session().await;
    assert_eq!(
        (s["method"].as_str(), s["subject_kind"].as_str()),
        (Some("moea_cert"), Some("legal"))
    );
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn step_up_when_a_later_choice_needs_a_stronger_method() {
    let w = world(Backend::Sqlite).await;
    known(&w, &person_id(&w.person)).await;
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
    let b = Browser::new(&w.app, "10.7.0.1");
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    let card = w.pki.card(
        &w.person.id,
        CardOpts {
            serial: 30,
            ..Default::default()
        },
    );
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
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn nhi_card_password_is_registered_in_a_level_1_session_only() {
    let w = world(Backend::Sqlite).await;
    known(&w, &person_id(&w.person)).await;
    let b = Browser::new(&w.app, "10.8.0.1");
    // Not signed in: sent to the certificate sign-in.
    let r = b.get("/account/password").await;
    assert_eq!(
        r.headers()["location"],
        "/login/moica_cert?next=/account/password"
    );
    // Signed in at level 4: refused.
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
            .await
            .status(),
        303
    );
    refused(b.get("/account/password").await, 403, "insufficient_level").await;
    // Level 1: registered (Argon2id), with the rules checked.
    let card = w.pki.card(
        &w.person.id,
        CardOpts {
            serial: 40,
            ..Default::default()
        },
    );
    assert_eq!(
        b.cert("moica_cert", &card, str::to_owned).await.status(),
        303
    );
    let csrf = b.csrf("/account/password").await;
    refused(
        b.post(
            "/account/password",
            &[("csrf", &csrf), ("password", "short"), ("confirm", "short")],
        )
        .await,
        422,
        "password_rejected",
    )
    .await;
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
    let p = mydata_server::identity::subject_pseudonym(&w.app.state, &person_id(&w.person));
    assert!(
        w.app
            .db
            .store
            .subject(&p)
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .unwrap()
            .starts_with("$argon2id$")
    );

    let login = |card: String, pw: &'static str, addr: &'static str| {
        let w = &w;
        async move {
            let b = Browser::new(&w.app, addr);
            let csrf = b.csrf("/login/nhi_card").await;
            let r = b
                .post(
                    "/login/nhi_card",
                    &[
                        ("csrf", &csrf),
                        ("id_number", &w.person.id),
                        ("nhi_card_no", &card),
                        ("password", pw),
                        ("next", "/n"),
                    ],
                )
                .await;
            (b, r)
        }
    };
    let (ok, r) = login(w.person.card.clone(), "a long passphrase", "10.8.1.1").await;
    assert_eq!(r.status(), 303);
    assert_eq!(ok.session().await["level"], 3);
    let (_, r) = login(w.person.card.clone(), "a wrong passphrase", "10.8.1.2").await;
    let wrong_pw = refused(r, 401, "wrong_password").await;
    let (_, r) = login(w.other.card.clone(), "a long passphrase", "10.8.1.3").await;
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
    let b = Browser::new(&w.app, "10.8.1.4");
    let csrf = b.csrf("/login/nhi_card").await;
    let r = b
        .post(
            "/login/nhi_card",
            &[
                ("csrf", &csrf),
                ("id_number", &w.other.id),
                ("nhi_card_no", &w.other.card),
                ("password", "whatever it is"),
            ],
        )
        .await;
    refused(r, 401, "wrong_password").await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn every_form_rejects_a_missing_or_wrong_csrf_token() {
    let w = world(Backend::Sqlite).await;
    known(&w, &person_id(&w.person)).await;
    let b = Browser::new(&w.app, "10.9.0.1");
    // A level-1 session with a pending first use is not possible at once; use two browsers: one
    // signed in (password form, logout), one anonymous with a session (everything else).
    let card = w.pki.card(
        &w.person.id,
        CardOpts {
            serial: 50,
            ..Default::default()
        },
    );
    assert_eq!(
        b.cert("moica_cert", &card, str::to_owned).await.status(),
        303
    );
    let anon = Browser::new(&w.app, "10.9.0.2");
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
            ("id_number", w.person.id.as_str()),
            ("password", "a long passphrase"),
            ("confirm", "a long passphrase"),
        ];
        if wrong {
            form.push(("csrf", "forged-token"));
        }
        refused(browser.post(path, &form).await, 403, "csrf_failed").await;
        // And the other way round for the same form.
        let mut form2 = vec![("id_number", w.person.id.as_str())];
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
    let stranger = Browser::new(&w.app, "10.9.0.3");
    refused(
        stranger.post("/login/dual_id", &[("csrf", "x")]).await,
        403,
        "csrf_failed",
    )
    .await;
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_end_when_idle_or_at_their_absolute_limit() {
    let w = world(Backend::Sqlite).await;
    known(&w, &person_id(&w.person)).await;
    let b = Browser::new(&w.app, "10.10.0.1");
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    let b = Browser::new(&w.app, "10.10.0.2");
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    let b = Browser::new(&w.app, "10.10.0.3");
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    w.app.stop().await.unwrap();
}

#[tokio::test]
async fn secure_cookies_when_configured_and_the_outbox_only_in_demo_mode() {
    let w = world_with(Backend::Sqlite, |s| {
        s.identity.cookie_secure = mydata_server::identity::CookieSecure::Always
    })
    .await;
    let r = w.app.get("/login/dual_id").await;
    let cookie = set_cookie(&r);
    assert!(
        cookie.starts_with("__Host-mydata-session=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    assert_eq!(
        w.app.get("/dev/outbox").await.status(),
        404,
        "off by default"
    );
    w.app.stop().await.unwrap();

    let mut w = world_with(Backend::Sqlite, |s| s.messages.dev_outbox = true).await;
    let b = Browser::new(&w.app, "10.11.0.1");
    assert_eq!(
        b.dual_id(&w.person, Some(&w.person.household), None)
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
    let (app, page_ref) = (&w.app, &page);
    eventually("code on the outbox page", || async move {
        let text = app.get("/dev/outbox").await.text().await.unwrap();
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
    w.app.stop().await.unwrap();
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
    known(&w, &person_id(&w.person)).await;
    *slot.lock().unwrap() = Some(w.pki.card(
        &w.person.id,
        CardOpts {
            serial: 60,
            ..Default::default()
        },
    ));
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
        page.goto(&w.app.url(&path)).await.unwrap();
        assert_eq!(
            page.horizontal_overflow().await.unwrap(),
            0,
            "{path} scrolls sideways"
        );
        page.assert_accessible(&path.replace(['/', '?', '=', '&'], "_"))
            .await
            .unwrap();
    }

    // Certificate: a wrong PIN is reported by the page; the right one signs the person in.
    page.goto(&w.app.url("/login/moica_cert?next=/"))
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
    let newcomer = w.other.clone();
    page.goto(&w.app.url("/login/dual_id?next=/"))
        .await
        .unwrap();
    page.tab_to("#f-id_number", 10).await.unwrap();
    page.type_text(&newcomer.id).await.unwrap();
    page.tab_to("#f-nhi_card_no", 3).await.unwrap();
    page.type_text(&newcomer.card).await.unwrap();
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
    let store = &w.app.db.store;
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
    page.goto(&w.app.url("/dev/outbox")).await.unwrap();
    page.assert_accessible("outbox").await.unwrap();
    w.app.stop().await.unwrap();
}

mod passkey;
mod pseudonym_key;
