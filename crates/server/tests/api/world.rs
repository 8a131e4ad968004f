//! The shared world of flow tests: one server, the simulated agencies answering both data requests
//! and identity checks, a test identity PKI, an SMTP receiver, and people who sign in through the
//! real pages (certificate at level 1, dual ID at level 4) with their own cookie jars.
//!
//! Flows (self-download, counter, online service) and the identity tests build on
//! [`FlowWorld::spawn`] and [`FlowWorld::signed_in`] instead of repeating this set-up.
// Parts of the world serve flows still being built.
#![allow(dead_code)]

use crate::fetch::{Agencies, DataApp};
use crate::helpers::Backend;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mydata_card::{CardKind, IdentityPki, Subject};
use mydata_core::{IdNumber, Timestamp};
use mydata_provider_sim::population::Person as SimPerson;
use mydata_server::Settings;
use mydata_server::identity::SubjectId;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::DecodePrivateKey;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Where every person of the world registered for notices (first use is marked done).
pub const CONTACT_EMAIL: &str = "person@example.org";

/// A synthetic person the simulated agencies know, with what each sign-in method asks for.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub nhi_card: String,
    pub household: String,
    pub id_card_issued: String,
}

impl Person {
    fn of(sim: &mydata_provider_sim::server::Simulator, p: &SimPerson) -> Option<Self> {
        Some(Self {
            id: p.id.as_str().to_owned(),
            name: p.name.clone(),
            nhi_card: p.nhi_card_no.clone(),
            household: sim.population().household_of(p)?.number.clone(),
            id_card_issued: p.id_card_issued?.iso(),
        })
    }

    pub fn subject(&self) -> SubjectId {
        SubjectId::Person(IdNumber::parse(&self.id).unwrap())
    }
}

/// The platform plus everything around it for one test.
pub struct FlowWorld {
    pub app: DataApp,
    /// Messages the platform sent by email, whole (headers and body).
    pub mail: mpsc::UnboundedReceiver<String>,
    /// How many connections the platform opened to the SMTP receiver.
    pub smtp_connections: Arc<std::sync::atomic::AtomicUsize>,
    pub pki: Arc<IdentityPki>,
    /// Natural persons with an ID card and a household, all of different households.
    pub people: Vec<Person>,
    /// The CRL files the platform reads (root, citizen, business) and the serials revoked in each.
    crls: Vec<(PathBuf, Mutex<Vec<u64>>)>,
    _files: tempfile::TempDir,
}

impl FlowWorld {
    /// The ID of the person's newest transfer.
    pub async fn newest_transfer_of(&self, p: &Person) -> String {
        let pseudonym = mydata_server::identity::subject_pseudonym(&self.app.state, &p.subject());
        self.app
            .store()
            .transfers_for_subject(&pseudonym, 1)
            .await
            .unwrap()[0]
            .id
            .clone()
    }

    /// Waits until the agency of `dataset` has said "not ready yet" for transfer `tid`, then moves
    /// the clock past the session's idle limit: the browser's session ends while it waits. The
    /// consent page at `consent` then sends the browser `b` to sign in again.
    pub async fn session_ends_while_waiting(
        &self,
        b: &Browser,
        consent: &str,
        tid: &str,
        dataset: &str,
    ) {
        self.app
            .until_dataset(tid, dataset, "not ready", |d| {
                d.status == mydata_store::fetch_status::NOT_READY
            })
            .await;
        let idle = self.app.state.settings().identity.session_idle_minutes;
        self.app
            .clock
            .advance(std::time::Duration::from_secs(60 * (idle + 1)));
        let r = b.get(consent).await;
        assert_eq!(r.status(), 303, "to sign in again");
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(to.starts_with("/login?next=%2Foauth%2Fconsent%2F"), "{to}");
    }

    /// The consent page at `consent` once transfer `tid`'s data is ready, looked at every five
    /// minutes of the clock as its script does (which keeps the session alive); bounded at two
    /// hours.
    pub async fn confirmation_in_time(&self, b: &Browser, consent: &str, tid: &str) -> String {
        let mut page = String::new();
        for _ in 0..24 {
            page = b.get(consent).await.text().await.unwrap();
            if !page.contains("data-step=\"wait\"") {
                break;
            }
            self.five_minutes_later(tid).await;
        }
        assert!(page.contains("data-step=\"confirm\""), "{page}");
        page
    }

    /// Five minutes pass on the platform's clock (a slow agency's retry interval); returns the
    /// transfer's state once it has left `fetching`, or after a second of real time for the
    /// workers to act.
    pub async fn five_minutes_later(&self, id: &str) -> mydata_core::transfer::TransferState {
        use mydata_core::transfer::TransferState;
        self.app.clock.advance(std::time::Duration::from_secs(300));
        let mut state = TransferState::Fetching;
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            state = self.app.transfer(id).await.state;
            if state != TransferState::Fetching {
                break;
            }
        }
        state
    }

    /// Boots the world with agencies on `time_scale` (1.0: a dataset is ready its listed minutes
    /// later on the ManualClock; 60.0: sixty times sooner; see [`Agencies`]).
    pub async fn spawn(backend: Backend, time_scale: f64) -> Self {
        Self::spawn_with(backend, time_scale, |_| {}).await
    }

    pub async fn spawn_with(
        backend: Backend,
        time_scale: f64,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let files = tempfile::tempdir().unwrap();
        let now = Timestamp::from_millis(crate::fetch::T0);
        let pki = IdentityPki::generate(now).unwrap();
        let roots = files.path().join("identity-root.pem");
        std::fs::write(&roots, pki.root.cert_pem()).unwrap();
        let crls: Vec<(PathBuf, Mutex<Vec<u64>>)> = ["root", "citizen", "business"]
            .iter()
            .map(|name| {
                (
                    files.path().join(format!("{name}.crl.pem")),
                    Mutex::new(Vec::new()),
                )
            })
            .collect();
        for (i, ca) in [&pki.root, &pki.citizen, &pki.business]
            .into_iter()
            .enumerate()
        {
            write_crl(ca, &crls[i].0, &[]);
        }
        let crl_paths: Vec<PathBuf> = crls.iter().map(|c| c.0.clone()).collect();
        let (smtp_port, mail, smtp_connections) = smtp_server_counted().await;
        let hash_key = files.path().join("identity-hash.key");
        let app = DataApp::spawn(backend, time_scale, |s| {
            s.identity.registry_url = s.agencies.base_url.clone();
            s.identity.certificate_roots = vec![roots];
            s.identity.certificate_crls = crl_paths;
            s.identity.client_address_header = "x-forwarded-for".into();
            s.keys.identity_hash_key = hash_key.display().to_string();
            s.messages.smtp.host = "127.0.0.1".into();
            s.messages.smtp.port = smtp_port;
            s.messages.smtp.security = mydata_server::identity::messages::SmtpSecurity::None;
            tweak(s);
        })
        .await;
        let sim = &app.agencies.sim;
        let mut households = std::collections::HashSet::new();
        let people: Vec<Person> = sim
            .population()
            .persons()
            .iter()
            .filter(|p| !p.is_foreign())
            .filter_map(|p| Person::of(sim, p))
            .filter(|p| households.insert(p.household.clone()))
            .take(20)
            .collect();
        assert!(people.len() >= 2, "the population has too few households");
        Self {
            app,
            mail,
            smtp_connections,
            pki: Arc::new(pki),
            people,
            crls,
            _files: files,
        }
    }

    /// Stops the server and its workers (asserting they end cleanly).
    pub async fn stop(mut self) {
        self.app.shutdown().await;
    }

    /// Two people of different households with different ID-card issue dates (so a dual-ID check
    /// with one's details for the other fails on every field).
    pub fn pair(&self) -> (Person, Person) {
        let first = self.people[0].clone();
        let second = self
            .people
            .iter()
            .find(|p| p.id_card_issued != first.id_card_issued)
            .expect("two people with different ID-card dates")
            .clone();
        (first, second)
    }

    /// A browser that reaches the server as `localhost` (a valid passkey relying-party ID).
    pub fn browser_by_name(&self, addr: &str) -> Browser {
        Browser::new(&self.app.base.replace("127.0.0.1", "localhost"), addr)
    }

    /// Lists the certificate `serial` of `kind`'s issuing CA in the CRL the platform reads.
    pub fn revoke(&self, kind: CardKind, serial: u64) {
        let i = match kind {
            CardKind::Citizen => 1,
            CardKind::Business => 2,
        };
        let mut revoked = self.crls[i].1.lock().unwrap();
        revoked.push(serial);
        write_crl(self.pki.issuer(kind), &self.crls[i].0, &revoked);
    }

    pub fn agencies(&self) -> &Agencies {
        &self.app.agencies
    }

    /// The address of `path` on the platform.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base)
    }

    /// A browser of its own (cookie jar, client address `addr`, no redirects followed).
    pub fn browser(&self, addr: &str) -> Browser {
        Browser::new(&self.app.base, addr)
    }

    /// Marks the person's first use as done, with [`CONTACT_EMAIL`] registered for notices.
    pub async fn known(&self, p: &Person) {
        self.known_subject(&p.subject()).await;
    }

    /// [`FlowWorld::known`] for any subject, a company too.
    pub async fn known_subject(&self, id: &SubjectId) {
        let pseudonym = mydata_server::identity::subject_pseudonym(&self.app.state, id);
        let store = self.app.store();
        let now = Timestamp::from_millis(crate::fetch::T0);
        store
            .ensure_subject(
                &pseudonym,
                mydata_server::identity::session::kind_code(id.kind()),
                now,
            )
            .await
            .unwrap();
        store
            .complete_first_use(&pseudonym, "email", CONTACT_EMAIL, now)
            .await
            .unwrap();
    }

    /// A citizen certificate card for the person, issued by the world's PKI.
    pub fn card(&self, p: &Person) -> Card {
        self.card_for(CardKind::Citizen, &p.id, CardValidity::Current)
    }

    /// A signing card of `kind` for any serialNumber (valid or not as an ID number or 統一編號).
    pub fn card_for(&self, kind: CardKind, serial_number: &str, validity: CardValidity) -> Card {
        issue_card(&self.pki, kind, serial_number, validity, false)
    }

    /// The encryption certificate of a citizen card (keyEncipherment only).
    pub fn encryption_card(&self, serial_number: &str) -> Card {
        issue_card(
            &self.pki,
            CardKind::Citizen,
            serial_number,
            CardValidity::Current,
            true,
        )
    }

    /// A browser in which `p` has signed in by citizen certificate (level 1), first use done.
    pub async fn signed_in(&self, p: &Person, addr: &str) -> Browser {
        self.known(p).await;
        let b = self.browser(addr);
        let r = b.certificate(&self.card(p), "/").await;
        assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
        assert_eq!(b.session().await["level"].as_u64(), Some(1));
        b
    }

    /// The next email the platform sends, waited for up to `bound` (real time).
    pub async fn next_mail(&mut self, bound: Duration) -> String {
        tokio::time::timeout(bound, self.mail.recv())
            .await
            .expect("an email within the bound")
            .expect("the SMTP receiver is running")
    }
}

/// When a test card is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardValidity {
    /// From a day before the world's start for a year.
    Current,
    /// Ended a day before the world's start.
    Expired,
}

/// A card issued by `pki` (any PKI: the world's, or a rogue one it does not trust).
pub fn issue_card(
    pki: &IdentityPki,
    kind: CardKind,
    serial_number: &str,
    validity: CardValidity,
    encryption_only: bool,
) -> Card {
    const DAY: i64 = 86_400_000;
    let now = crate::fetch::T0;
    let (nb, na) = match validity {
        CardValidity::Current => (now - DAY, now + 365 * DAY),
        CardValidity::Expired => (now - 900 * DAY, now - DAY),
    };
    let subject = Subject {
        kind,
        name: "測試 人員".into(),
        serial_number: serial_number.into(),
    };
    let (nb, na) = (Timestamp::from_millis(nb), Timestamp::from_millis(na));
    let issued = if encryption_only {
        pki.issue_encryption(&subject, nb, na)
    } else {
        pki.issue(&subject, nb, na)
    }
    .unwrap();
    Card {
        x5c: vec![
            STANDARD.encode(&issued.der),
            STANDARD.encode(pki.issuer(kind).cert_der()),
        ],
        key: SigningKey::from_pkcs8_der(&issued.key_pkcs8).unwrap(),
        serial: issued.serial,
    }
}

fn write_crl(ca: &mydata_card::ca::Authority, path: &std::path::Path, revoked: &[u64]) {
    let now = crate::fetch::T0;
    let der = ca
        .crl(
            revoked,
            Timestamp::from_millis(now - 3_600_000),
            Timestamp::from_millis(now + 30 * 86_400_000),
        )
        .unwrap();
    std::fs::write(path, mydata_card::ca::pem("X509 CRL", &der)).unwrap();
}

/// A certificate card: chain (leaf first, base64 DER), the private key, the certificate serial.
pub struct Card {
    pub x5c: Vec<String>,
    pub key: SigningKey,
    pub serial: u64,
}

impl Card {
    pub fn sign(&self, bytes: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.key.sign(bytes);
        URL_SAFE_NO_PAD.encode(sig.to_der().as_bytes())
    }
}

/// The `csrf` field of a page's form.
pub fn csrf_in(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    html[i..].split('"').next().unwrap().to_owned()
}

/// Where a page's (first) form posts.
pub fn form_action(html: &str) -> String {
    let i = html
        .find("<form method=\"post\" action=\"")
        .expect("a form")
        + 28;
    html[i..].split('"').next().unwrap().to_owned()
}

/// One browser: its own cookies and client address; redirects are returned, not followed.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
    pub base: String,
    pub addr: String,
}

impl Browser {
    pub fn new(base: &str, addr: &str) -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        Self {
            client: reqwest::Client::builder()
                .cookie_provider(jar.clone())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar,
            base: base.to_owned(),
            addr: addr.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("x-forwarded-for", &self.addr)
            .send()
            .await
            .unwrap()
    }

    /// Opens a page (expecting 200) and returns its CSRF token.
    pub async fn csrf(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        csrf_in(&r.text().await.unwrap())
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("x-forwarded-for", &self.addr)
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// The request headers this browser would send (its cookies), for calling server functions
    /// that take a request's headers.
    pub fn headers(&self) -> axum::http::HeaderMap {
        use reqwest::cookie::CookieStore;
        let mut h = axum::http::HeaderMap::new();
        if let Some(c) = self.jar.cookies(&self.base.parse().unwrap()) {
            h.insert(
                axum::http::header::COOKIE,
                c.to_str().unwrap().parse().unwrap(),
            );
        }
        h
    }

    /// `GET /api/v1/session`: who is signed in, how and at what level.
    pub async fn session(&self) -> serde_json::Value {
        self.get("/api/v1/session").await.json().await.unwrap()
    }

    /// A JSON POST (CSRF token in the header, as the pages' scripts send it).
    pub async fn post_json(
        &self,
        path: &str,
        csrf: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut r = self
            .client
            .post(self.url(path))
            .header("x-forwarded-for", &self.addr);
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    /// Signs in by citizen certificate through the page's challenge, as `login.js` does with the
    /// card agent. Returns the final POST's response (303 to `next` on success).
    pub async fn certificate(&self, card: &Card, next: &str) -> reqwest::Response {
        self.certificate_with("moica_cert", card, next, str::to_owned)
            .await
    }

    /// The certificate flow of `method` (`moica_cert` or `moea_cert`): the page, its challenge
    /// (checked to be the documented text for this origin), the card's signature over `tamper`
    /// of that text, the form posted back.
    pub async fn certificate_with(
        &self,
        method: &str,
        card: &Card,
        next: &str,
        tamper: impl FnOnce(&str) -> String,
    ) -> reqwest::Response {
        let page = self
            .get(&format!(
                "/login/{method}?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
            .await;
        assert_eq!(page.status(), 200);
        let csrf = csrf_in(&page.text().await.unwrap());
        let ch: serde_json::Value = self
            .post_json(&format!("/login/{method}/challenge"), Some(&csrf), None)
            .await
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
        let x5c = serde_json::to_string(&card.x5c).unwrap();
        self.post(
            &format!("/login/{method}"),
            &[
                ("csrf", &csrf),
                ("challenge_id", id),
                ("signature", &card.sign(tamper(&text).as_bytes())),
                ("x5c", &x5c),
                ("next", next),
            ],
        )
        .await
    }

    /// Signs in by dual ID (level 4) with the household number.
    pub async fn dual_id(&self, p: &Person, next: &str) -> reqwest::Response {
        self.dual_id_with(p, Some(&p.household), None, next).await
    }

    /// Dual ID with the household number and/or the ID-card issue date as given (either may be
    /// left out, or wrong).
    pub async fn dual_id_with(
        &self,
        p: &Person,
        household: Option<&str>,
        issued: Option<&str>,
        next: &str,
    ) -> reqwest::Response {
        let csrf = self.csrf("/login/dual_id").await;
        let mut form = vec![
            ("csrf", csrf.as_str()),
            ("id_number", p.id.as_str()),
            ("nhi_card_no", p.nhi_card.as_str()),
            ("next", next),
        ];
        if let Some(h) = household {
            form.push(("household_no", h));
        }
        if let Some(d) = issued {
            form.push(("id_card_issue_date", d));
        }
        self.post("/login/dual_id", &form).await
    }
}

/// A minimal SMTP server on loopback: accepts every message and hands over its data.
pub async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<String>) {
    let (port, rx, _) = smtp_server_counted().await;
    (port, rx)
}

/// [`smtp_server`], also counting the connections it accepted.
pub async fn smtp_server_counted() -> (
    u16,
    mpsc::UnboundedReceiver<String>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
                            // The test may have stopped listening; the message is still accepted.
                            let _ = tx.send(data.take().unwrap());
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
    (port, rx, connections)
}

/// A loopback SMS gateway (the platform's pluggable HTTP gateway: `POST {"to", "text"}`): hands
/// over each accepted message with the `Authorization` header it came with, and answers 502 to
/// the first `fail_first` calls so retries can be tested. Returns its URL and the messages.
pub async fn sms_gateway(
    fail_first: u32,
) -> (String, mpsc::UnboundedReceiver<(String, serde_json::Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let gateway = axum::Router::new().route(
        "/sms",
        axum::routing::post(
            move |headers: axum::http::HeaderMap,
                  axum::Json(body): axum::Json<serde_json::Value>| {
                let (tx, calls) = (tx.clone(), calls.clone());
                async move {
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < fail_first {
                        return axum::http::StatusCode::BAD_GATEWAY;
                    }
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send((auth, body));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, gateway).await });
    (url, rx)
}

/// The 6-digit code in a message (an email with a base64 or quoted-printable body, or an SMS
/// text).
pub fn code_in(message: &str) -> String {
    let (headers, body) = message.split_once("\n\n").unwrap_or(("", message));
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

#[cfg(test)]
mod tests {
    use super::*;
    use mydata_core::IdentityMethod;
    use mydata_core::transfer::{TransferKind, TransferState};
    use mydata_server::agencies::{PersonRequest, start_for_session};
    use mydata_server::error::AppError;
    use mydata_server::identity::session;

    fn request(datasets: &[&str]) -> PersonRequest {
        PersonRequest {
            kind: TransferKind::SelfDownload,
            recipient: None,
            purpose: "test".into(),
            datasets: datasets.iter().map(|d| d.to_string()).collect(),
            answers: None,
        }
    }

    /// A session's person can start a transfer: the ID sealed at sign-in reaches the agencies,
    /// the transfer is recorded under the session's pseudonym, and a level the datasets do not
    /// accept is refused before anything is created.
    #[tokio::test]
    async fn a_signed_in_person_starts_a_transfer_for_themselves_only() {
        let w = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
        let p = w.people[0].clone();
        let b = w.signed_in(&p, "10.9.0.1").await;
        let s = session::load(&w.app.state, &b.headers())
            .await
            .unwrap()
            .unwrap();
        let v = s.verified().unwrap();
        assert_eq!(v.method, IdentityMethod::MoicaCert);
        let d = crate::fetch::instant(&w.agencies().sim);
        let t = start_for_session(&w.app.state, &v, request(&[&d.id]))
            .await
            .unwrap();
        assert_eq!(t.subject, v.subject);
        assert_eq!(t.kind, TransferKind::SelfDownload);
        let t = w.app.until_state(&t.id, TransferState::Ready).await;
        assert!(t.datasets.iter().all(|d| d.status == "succeeded"), "{t:?}");
        crate::fetch::assert_no_id_in_audit(&w.app, &t.id, &p.id).await;

        // A session whose sealed ID was swapped for another person's does not open.
        let mut forged = v.clone();
        forged.subject_sealed =
            Some(session::seal_subject(&w.app.state, &w.people[1].subject()).unwrap());
        assert!(matches!(
            start_for_session(&w.app.state, &forged, request(&[&d.id])).await,
            Err(AppError::NotSignedIn)
        ));

        // Dual ID reaches level 4: a dataset needing more is refused, nothing is created.
        let other = w.people[1].clone();
        w.known(&other).await;
        let b2 = w.browser("10.9.0.2");
        assert_eq!(b2.dual_id(&other, "/").await.status(), 303);
        let s2 = session::load(&w.app.state, &b2.headers())
            .await
            .unwrap()
            .unwrap();
        let v2 = s2.verified().unwrap();
        assert_eq!(v2.level.number(), 4);
        let strict = w
            .app
            .state
            .catalog()
            .datasets()
            .iter()
            .find(|d| !v2.level.satisfies(d.min_level()))
            .unwrap()
            .id
            .clone();
        let before = w
            .app
            .store()
            .transfers_for_subject(&v2.subject, 100)
            .await
            .unwrap()
            .len();
        assert!(matches!(
            start_for_session(&w.app.state, &v2, request(&[&strict])).await,
            Err(AppError::InsufficientLevel { .. })
        ));
        assert_eq!(
            w.app
                .store()
                .transfers_for_subject(&v2.subject, 100)
                .await
                .unwrap()
                .len(),
            before
        );
    }
}
