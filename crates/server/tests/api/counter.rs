//! Counter verification over HTTP: the person's pages (service, consent, barcode page and images)
//! and the clerk's (sign-in with TOTP, scan, verification password, data, package), against the
//! simulated agencies, with every time rule driven by the ManualClock: the 20-minute serial, the
//! 2-minute password, the 8-hour data limit and the 15-minute counter lockout. The barcode PNG is
//! decoded with zbarimg (apt package zbar-tools).

use crate::fetch::{DataApp, person};
use crate::helpers::{Backend, eventually_within};
use mydata_core::transfer::TransferState;
use mydata_core::{Clock, IdNumber, limits};
use mydata_server::counter::clerk::{self, Role};
use mydata_server::identity::SubjectId;
use mydata_server::identity::session;
use mydata_store::SessionRow;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

const SERVICE: &str = "chiayi-senior-concession-card";
const MIN: Duration = Duration::from_secs(60);
pub(crate) const CLERK_PASSWORD: &str = "counter-clerk-pass-1";

/// One counter world: the platform with simulated agencies, an office with two counters, a clerk
/// and a supervisor, another office's clerk, and a signed-in person with a verified email.
struct Desk {
    app: DataApp,
    person: reqwest::Client,
    person_csrf: String,
    id_number: String,
    pseudonym: String,
    /// The person's session cookie, for a browser context.
    person_cookie: String,
    clerks: Vec<(String, String)>,
}

fn client(jar: Arc<reqwest::cookie::Jar>) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_provider(jar)
        .redirect(Policy::none())
        .build()
        .unwrap()
}

impl Desk {
    async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    async fn start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut mydata_server::Settings),
    ) -> Self {
        let app = DataApp::spawn(backend, 1.0, |s| {
            s.messages.dev_outbox = true;
            tweak(s);
        })
        .await;
        let st = &app.state;
        let clerks = register_desks(st).await;
        // A person signed in with a citizen certificate (level 1) who registered an email.
        let id_number = person(&app.agencies.sim);
        let subject = SubjectId::Person(IdNumber::parse(&id_number).unwrap());
        let pseudonym = session::pseudonym(st, &subject);
        let person_pseudonym = pseudonym.clone();
        let now = app.clock.now();
        let store = st.store();
        store
            .ensure_subject(&pseudonym, "natural", now)
            .await
            .unwrap();
        store
            .complete_first_use(&pseudonym, "email", "person@example.test", now)
            .await
            .unwrap();
        let token = format!("person-token-{}", uuid::Uuid::new_v4());
        let csrf = "person-csrf-token".to_owned();
        store
            .put_session(
                &SessionRow {
                    id_hash: hex::encode(Sha256::digest(token.as_bytes())),
                    csrf_token: csrf.clone(),
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
        let person_cookie = format!("{}={token}", session::cookie_name(st));
        jar.add_cookie_str(
            &format!("{person_cookie}; Path=/"),
            &app.base.parse().unwrap(),
        );
        Self {
            person: client(jar),
            person_csrf: csrf,
            id_number,
            pseudonym: person_pseudonym,
            person_cookie,
            clerks,
            app,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.app.base)
    }

    /// A signed-in clerk's browser.
    async fn clerk(&self, user: &str) -> reqwest::Client {
        let secret = &self.clerks.iter().find(|c| c.0 == user).unwrap().1;
        clerk_login(&self.app.base, &self.app.clock, user, secret).await
    }

    /// Posts the clerk sign-in form with `client`.
    async fn clerk_sign_in(
        &self,
        client: &reqwest::Client,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        client
            .post(self.url("/clerk/login"))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// The counter page's CSRF token, choosing `counter` first if the clerk has not yet.
    async fn sit(&self, c: &reqwest::Client, counter: &str) -> String {
        let page = c
            .get(self.url("/clerk"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = attr(&page, "name=\"csrf\" value=\"");
        if page.contains("name=\"counter\"") {
            let res = c
                .post(self.url("/clerk/counter"))
                .form(&[("csrf", csrf.as_str()), ("counter", counter)])
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
        }
        csrf
    }

    /// The person consents to the counter service at `office`; returns the transfer ID once its
    /// data is ready.
    async fn apply(&self, office: &str) -> String {
        let id = self.apply_for(SERVICE, office).await;
        self.app.until_state(&id, TransferState::Ready).await;
        id
    }

    /// The person applies for `service` at `office`; the new transfer's ID (not waited for).
    async fn apply_for(&self, service: &str, office: &str) -> String {
        let res = self
            .person
            .post(self.url(&format!("/counter/services/{service}")))
            .form(&[
                ("csrf", self.person_csrf.as_str()),
                ("office", office),
                ("consent", "yes"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let loc = res.headers()["location"].to_str().unwrap().to_owned();
        loc.strip_prefix("/counter/transfers/").unwrap().to_owned()
    }

    async fn barcode_page(&self, id: &str) -> String {
        let res = self
            .person
            .get(self.url(&format!("/counter/transfers/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.unwrap()
    }

    async fn serial(&self, id: &str) -> String {
        attr(&self.barcode_page(id).await, "data-serial=\"")
    }

    async fn scan(&self, c: &reqwest::Client, csrf: &str, serial: &str) -> reqwest::Response {
        c.post(self.url("/clerk/scan"))
            .form(&[("csrf", csrf), ("serial", serial)])
            .send()
            .await
            .unwrap()
    }

    /// The newest verification password sent (the demo outbox stands in for SMS/email here;
    /// the message worker delivers it shortly after the scan).
    async fn sent_password(&self) -> String {
        let sent = self.passwords_sent().await;
        let ours = || async {
            let msgs = self.app.state.store().outbox(100).await.unwrap();
            msgs.into_iter()
                .filter(|m| m.title.contains("臨櫃核驗"))
                .collect::<Vec<_>>()
        };
        crate::helpers::eventually("the password message", || async {
            ours().await.len() >= sent
        })
        .await;
        let m = ours().await.remove(0);
        assert_eq!(m.recipient, "person@example.test");
        let i = m.body.find("驗證密碼：").unwrap() + "驗證密碼：".len();
        m.body[i..i + 8].to_owned()
    }

    /// Passwords sent so far, by their audit events (the record a person sees).
    async fn passwords_sent(&self) -> usize {
        let mut n = 0;
        for e in self
            .app
            .state
            .store()
            .audit_for_subject(&self.pseudonym)
            .await
            .unwrap()
        {
            if e.kind == "counter.password_sent" {
                n += 1;
            }
        }
        n
    }

    /// Lets time pass with the person's page open: it reloads itself at most every few minutes,
    /// which keeps the session alive (and, when `barcode` is set, replaces a run-out serial).
    async fn wait(&self, id: &str, total: Duration, barcode: bool) {
        let step = 5 * MIN;
        let mut left = total;
        while left > Duration::ZERO {
            let d = left.min(step);
            self.app.clock.advance(d);
            left -= d;
            if barcode {
                self.barcode_page(id).await;
            } else {
                let res = self
                    .person
                    .get(self.url(&format!("/counter/services/{SERVICE}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
            }
        }
    }

    async fn enter(
        &self,
        c: &reqwest::Client,
        csrf: &str,
        location: &str,
        password: &str,
    ) -> reqwest::Response {
        c.post(self.url(location))
            .form(&[("csrf", csrf), ("password", password)])
            .send()
            .await
            .unwrap()
    }

    async fn events(&self, transfer: &str, kind: &str) -> Vec<serde_json::Value> {
        let store = self.app.state.store();
        let mut out = Vec::new();
        for e in store.audit_for_transfer(transfer).await.unwrap() {
            if e.kind == kind {
                out.push(e.detail.clone());
            }
        }
        out
    }
}

/// Two offices doing the service: chiayi-social (counters c1, c2; clerk `lin`, supervisor `chen`)
/// and chiayi-east (counter e1; clerk `wu`). Returns each clerk's TOTP secret.
pub(crate) async fn register_desks(st: &mydata_server::state::AppState) -> Vec<(String, String)> {
    clerk::register_office(
        st,
        "chiayi-social",
        "chiayi-county",
        "嘉義縣政府社會處",
        "Chiayi County Social Affairs",
        &[SERVICE.to_owned()],
    )
    .await
    .unwrap();
    clerk::register_counter(st, "chiayi-social", "c1", "1 號櫃檯")
        .await
        .unwrap();
    clerk::register_counter(st, "chiayi-social", "c2", "2 號櫃檯")
        .await
        .unwrap();
    clerk::register_office(
        st,
        "chiayi-east",
        "chiayi-county",
        "嘉義縣東區服務中心",
        "Chiayi East Service Centre",
        &[SERVICE.to_owned()],
    )
    .await
    .unwrap();
    clerk::register_counter(st, "chiayi-east", "e1", "East 1")
        .await
        .unwrap();
    let mut clerks = Vec::new();
    for (office, user, role) in [
        ("chiayi-social", "lin", Role::Clerk),
        ("chiayi-social", "chen", Role::Supervisor),
        ("chiayi-east", "wu", Role::Clerk),
    ] {
        let c = clerk::register_clerk(st, office, user, "", role, CLERK_PASSWORD, None)
            .await
            .unwrap();
        clerks.push((user.to_owned(), c.totp_secret));
    }
    clerks
}

/// A clerk's browser signed in at the clock's time (moved 30 s first: a TOTP step is used once).
pub(crate) async fn clerk_login(
    base: &str,
    clock: &mydata_core::ManualClock,
    user: &str,
    secret: &str,
) -> reqwest::Client {
    clock.advance(Duration::from_secs(30));
    let code = clerk::totp_code(secret, clock.now()).unwrap();
    let c = client(Arc::new(reqwest::cookie::Jar::default()));
    let res = c
        .post(format!("{base}/clerk/login"))
        .form(&[
            ("username", user),
            ("password", CLERK_PASSWORD),
            ("totp", &code),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "{}",
        res.text().await.unwrap()
    );
    c
}

/// The value after `marker` up to the next quote.
fn attr(html: &str, marker: &str) -> String {
    let i = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in {html}"))
        + marker.len();
    html[i..].split('"').next().unwrap().to_owned()
}

fn code_of(html: &str) -> String {
    attr(html, "data-code=\"")
}

fn location(res: &reqwest::Response) -> String {
    res.headers()["location"].to_str().unwrap().to_owned()
}

async fn whole_flow(backend: Backend) {
    let d = Desk::start(backend).await;
    // The service page bundles the datasets and lists both offices.
    let page = d
        .person
        .get(d.url(&format!("/counter/services/{SERVICE}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("嘉義縣政府社會處") && page.contains("嘉義縣東區服務中心"));
    assert!(page.contains("個人戶籍資料") || page.contains("戶籍"));
    let id = d.apply("chiayi-social").await;
    let page = d.barcode_page(&id).await;
    let serial = attr(&page, "data-serial=\"");
    assert_eq!(serial.len(), 8);
    assert!(page.contains("8 小時"), "the data limit is shown");
    let en = d
        .person
        .get(d.url(&format!("/counter/transfers/{id}?lang=en")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(en.contains("Show this barcode at the counter") && en.contains("at most 8 hours"));
    // The choice is remembered; the person switches back.
    d.person
        .get(d.url("/counter?lang=zh-TW"))
        .send()
        .await
        .unwrap();
    // The person finds it again from the counter services page.
    let list = d
        .person
        .get(d.url("/counter"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&format!("href=\"/counter/transfers/{id}\"")));
    // Reloading shows the same serial within its 20 minutes.
    assert_eq!(d.serial(&id).await, serial);

    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let desk = lin
        .get(d.url("/clerk"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        desk.contains("民眾自行下載後出示或攜帶的檔案"),
        "the evidence rule is stated"
    );
    let before = d.passwords_sent().await;
    // A keyboard-wedge scanner types the serial and Enter: lower case and stray blanks are fine.
    let res = d
        .scan(&lin, &csrf, &format!(" {}\r\n", serial.to_lowercase()))
        .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let pw_page = location(&res);
    assert!(pw_page.starts_with("/clerk/passwords/"));
    assert_eq!(d.passwords_sent().await, before + 1);
    let password = d.sent_password().await;
    let res = d.enter(&lin, &csrf, &pw_page, &password).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&res), format!("/clerk/transfers/{id}"));
    let data = lin
        .get(d.url(&format!("/clerk/transfers/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), StatusCode::OK);
    let data = data.text().await.unwrap();
    assert!(data.contains("data-ok=\"true\""), "every check passed");
    assert!(data.contains("各檔案未遭竄改：通過"));
    assert!(data.contains("民眾自行下載後出示或攜帶的檔案"));
    // The agency's PDF, to print, without taking the package.
    let href = {
        let i = data.find("href=\"/clerk/transfers/").unwrap() + "href=\"".len();
        data[i..].split('"').next().unwrap().to_owned()
    };
    assert!(href.ends_with("/data.pdf"), "{href}");
    let pdf = lin.get(d.url(&href)).send().await.unwrap();
    assert_eq!(pdf.status(), StatusCode::OK);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    assert!(pdf.bytes().await.unwrap().starts_with(b"%PDF"));
    let res = lin
        .get(d.url(&format!(
            "/clerk/transfers/{id}/files/household-register-personal/..%2Fpackage"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // English pages for the clerk and the person.
    let en = lin
        .get(d.url(&format!("/clerk/transfers/{id}?lang=en")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(en.contains("Only data fetched here"), "{en}");
    lin.get(d.url("/clerk?lang=zh-TW")).send().await.unwrap();
    // The package: once.
    // Taking it needs the form's token: a GET (a prefetch) or a forged form takes nothing.
    assert_eq!(
        lin.get(d.url(&format!("/clerk/transfers/{id}/package")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        lin.post(d.url(&format!("/clerk/transfers/{id}/package")))
            .form(&[("csrf", "forged")])
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let zip = lin
        .post(d.url(&format!("/clerk/transfers/{id}/package")))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(zip.status(), StatusCode::OK);
    assert_eq!(zip.headers()["content-type"], "application/zip");
    let bytes = zip.bytes().await.unwrap();
    assert!(bytes.starts_with(b"PK"));
    let again = lin
        .post(d.url(&format!("/clerk/transfers/{id}/package")))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::GONE);
    // The same serial cannot be used again.
    let res = d.scan(&lin, &csrf, &serial).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_serial_used");
    // The person's page no longer shows a barcode.
    assert!(!d.barcode_page(&id).await.contains("data-serial"));

    // Every step is on the transfer's record, with office and counter, never the ID number.
    for kind in [
        "counter.scan",
        "counter.password_sent",
        "counter.password_result",
        "counter.data_access",
    ] {
        let ev = d.events(&id, kind).await;
        assert!(!ev.is_empty(), "{kind} recorded");
        assert_eq!(ev[0]["office"], "chiayi-social");
        assert_eq!(ev[0]["counter"], "c1");
    }
    assert_eq!(d.events(&id, "counter.data_access").await.len(), 4);
    crate::fetch::assert_no_id_in_audit(&d.app, &id, &d.id_number).await;

    // The person's usage records say which office and counter did what, and when.
    let records = d
        .person
        .get(d.url("/records"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        records.contains("嘉義縣政府社會處（敬老卡或愛心卡）"),
        "{records}"
    );
    assert!(
        records.contains("驗證密碼正確，櫃檯取得資料（嘉義縣政府社會處 1 號櫃檯）"),
        "{records}"
    );
    assert!(
        records.contains("櫃檯掃描條碼，已拒絕（嘉義縣政府社會處 1 號櫃檯）"),
        "{records}"
    );
    // The counter's events are all in the log, under the person's pseudonym, without their ID.
    let events = crate::audit_events::all_events(d.app.store()).await;
    for k in [
        "counter.serial_issued",
        "counter.scan",
        "counter.password_sent",
        "counter.password_result",
        "counter.data_access",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.kind == k && e.subject.as_deref() == Some(d.pseudonym.as_str())),
            "{k} missing"
        );
    }
    for e in &events {
        let text = format!("{e:?}");
        assert!(!text.contains(&d.id_number), "{text}");
    }
}

#[tokio::test]
async fn whole_flow_sqlite() {
    whole_flow(Backend::Sqlite).await;
}

#[tokio::test]
async fn whole_flow_postgres() {
    whole_flow(Backend::Postgres).await;
}

#[tokio::test]
async fn the_barcode_png_decodes_to_the_serial_and_the_svg_is_served() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let serial = d.serial(&id).await;
    let png = d
        .person
        .get(d.url(&format!("/counter/transfers/{id}/barcode.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), StatusCode::OK);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(png.headers()["cache-control"], "no-store");
    let bytes = png.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("barcode.png");
    std::fs::write(&file, &bytes).unwrap();
    let out = std::process::Command::new("zbarimg")
        .args(["--quiet", "--raw", "-Scode128.enable"])
        .arg(&file)
        .output()
        .expect("zbarimg (apt package zbar-tools) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), serial);
    let svg = d
        .person
        .get(d.url(&format!("/counter/transfers/{id}/barcode.svg")))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<rect"));
    // Another path under the transfer is not an image.
    let other = d
        .person
        .get(d.url(&format!("/counter/transfers/{id}/barcode.gif")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_serial_is_replaced_after_twenty_minutes_and_the_old_one_stops_working() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let first = d.serial(&id).await;
    d.wait(&id, 19 * MIN, true).await;
    assert_eq!(d.serial(&id).await, first, "still valid at 19 minutes");
    d.wait(&id, MIN, false).await;
    let second = d.serial(&id).await;
    assert_ne!(second, first, "a new serial at 20 minutes");
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let res = d.scan(&lin, &csrf, &first).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(
        code_of(&res.text().await.unwrap()),
        "counter_serial_replaced"
    );
    // A serial whose 20 minutes ran out while the page was not reloaded is refused as expired,
    // and its image is not served any more (only the page issues a new serial).
    d.wait(&id, 21 * MIN, false).await;
    let img = d
        .person
        .get(d.url(&format!("/counter/transfers/{id}/barcode.svg")))
        .send()
        .await
        .unwrap();
    assert_eq!(img.status(), StatusCode::NOT_FOUND);
    let res = d.scan(&lin, &csrf, &second).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(
        code_of(&res.text().await.unwrap()),
        "counter_serial_expired"
    );
    let third = d.serial(&id).await;
    assert!(third != first && third != second);
    let res = d.scan(&lin, &csrf, &third).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_password_works_two_minutes_once() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let serial = d.serial(&id).await;
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let res = d.scan(&lin, &csrf, &serial).await;
    let at = location(&res);
    let password = d.sent_password().await;
    d.app.clock.advance(limits::COUNTER_PASSWORD_TTL);
    let res = d.enter(&lin, &csrf, &at, &password).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(
        code_of(&res.text().await.unwrap()),
        "counter_password_expired"
    );
    assert_eq!(
        lin.get(d.url(&format!("/clerk/transfers/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND,
        "no access after an expired password"
    );
    // A new scan sends a new password; the old one is dead for good.
    let res = d.scan(&lin, &csrf, &serial).await;
    let at2 = location(&res);
    let second = d.sent_password().await;
    let res = d.enter(&lin, &csrf, &at, &password).await;
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_password_used");
    d.app
        .clock
        .advance(limits::COUNTER_PASSWORD_TTL - Duration::from_secs(1));
    let res = d.enter(&lin, &csrf, &at2, &second).await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "valid until the last second"
    );
    // Reused: refused.
    let res = d.enter(&lin, &csrf, &at2, &second).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_password_used");
}

#[tokio::test]
async fn the_data_stays_eight_hours_at_most() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    d.wait(&id, limits::PACKAGE_TTL - MIN, true).await;
    let serial = d.serial(&id).await;
    // The serial issued in the last minutes ends with the data, not 20 minutes later.
    let page = d.barcode_page(&id).await;
    assert!(page.contains("data-serial"));
    d.app.clock.advance(MIN);
    let page = d.barcode_page(&id).await;
    assert!(
        !page.contains("data-serial"),
        "no barcode once the data is past 8 hours"
    );
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let res = d.scan(&lin, &csrf, &serial).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_data_gone");
}

#[tokio::test]
async fn five_wrong_entries_lock_that_counter_for_fifteen_minutes() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let serial = d.serial(&id).await;
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    for (i, wrong) in ["2345678", "ZZZZZZZZ", "23456789", "ABCDEFGH"]
        .iter()
        .enumerate()
    {
        let res = d.scan(&lin, &csrf, wrong).await;
        let html = res.text().await.unwrap();
        assert!(html.contains(&format!("錯誤 {} 次", i + 1)), "{html}");
    }
    // An empty scan is not counted.
    let res = d.scan(&lin, &csrf, "").await;
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_serial_empty");
    let res = d.scan(&lin, &csrf, "ABCDEFGJ").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "900", "locked for 15 minutes");
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_locked");
    // Locked: even the right serial is refused and no password goes out.
    let before = d.passwords_sent().await;
    d.app.clock.advance(MIN);
    let res = d.scan(&lin, &csrf, &serial).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "840");
    let html = res.text().await.unwrap();
    assert!(
        html.contains("data-remaining=\"840\""),
        "14 minutes left: {html}"
    );
    assert_eq!(d.passwords_sent().await, before);
    // The supervisor sees it; a clerk may not look.
    let chen = d.clerk("chen").await;
    let sup = chen.get(d.url("/clerk/supervisor")).send().await.unwrap();
    assert_eq!(sup.status(), StatusCode::OK);
    let sup = sup.text().await.unwrap();
    assert!(sup.contains("id=\"counter-c1\" data-locked=\"true\""));
    assert!(sup.contains("id=\"counter-c2\" data-locked=\"false\""));
    assert_eq!(
        lin.get(d.url("/clerk/supervisor"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // Per counter: the clerk at counter 2 of the same office works on.
    let csrf2 = d.sit(&chen, "c2").await;
    let res = d.scan(&chen, &csrf2, &serial).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // After 15 minutes counter 1 works again.
    d.app.clock.advance(14 * MIN);
    let res = d.scan(&lin, &csrf, &serial).await;
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "{}",
        res.text().await.unwrap()
    );
    let locked = d.app.state.store().audit_for_transfer(&id).await.unwrap();
    assert!(!locked.is_empty());
}

#[tokio::test]
async fn wrong_passwords_count_and_lock_too() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let serial = d.serial(&id).await;
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let at = location(&d.scan(&lin, &csrf, &serial).await);
    let right = d.sent_password().await;
    let wrong = if right == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    let res = d.enter(&lin, &csrf, &at, "1234").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        code_of(&res.text().await.unwrap()),
        "counter_password_malformed"
    );
    let res = d.enter(&lin, &csrf, &at, "").await;
    assert_eq!(
        code_of(&res.text().await.unwrap()),
        "counter_password_empty"
    );
    for _ in 0..3 {
        let res = d.enter(&lin, &csrf, &at, wrong).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let html = res.text().await.unwrap();
        assert_eq!(code_of(&html), "counter_password_wrong");
        crate::helpers::assert_refused_input(&html, "f-password");
    }
    let res = d.enter(&lin, &csrf, &at, wrong).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "900");
    // Locked: the right password does not open the data either.
    let res = d.enter(&lin, &csrf, &at, &right).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "900");
    assert_eq!(
        lin.get(d.url(&format!("/clerk/transfers/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let results = d.events(&id, "counter.password_result").await;
    assert!(
        results
            .iter()
            .any(|e| e["result"] == "counter_password_wrong")
    );
}

#[tokio::test]
async fn clerks_of_another_office_and_bad_requests_are_refused() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let serial = d.serial(&id).await;
    // Another office of the same agency: refused, counted, nothing sent.
    let wu = d.clerk("wu").await;
    let csrf = d.sit(&wu, "e1").await;
    let before = d.passwords_sent().await;
    let res = d.scan(&wu, &csrf, &serial).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(code_of(&res.text().await.unwrap()), "counter_other_office");
    assert_eq!(d.passwords_sent().await, before);
    // It cannot choose a counter of another office either.
    let res = wu
        .post(d.url("/clerk/counter"))
        .form(&[("csrf", csrf.as_str()), ("counter", "c1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Nor open the data or a password of another counter.
    let lin = d.clerk("lin").await;
    let lcsrf = d.sit(&lin, "c1").await;
    let at = location(&d.scan(&lin, &lcsrf, &serial).await);
    let res = wu.get(d.url(&at)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let password = d.sent_password().await;
    let res = d.enter(&wu, &csrf, &at, &password).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // A form without the CSRF token changes nothing.
    let res = lin
        .post(d.url("/clerk/scan"))
        .form(&[("serial", serial.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // Malformed and unknown serials.
    let res = d.scan(&lin, &lcsrf, "O0I1L").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert_eq!(code_of(&html), "counter_serial_malformed");
    // The refused serial's input says so and points at the reason (and still at its hint).
    crate::helpers::assert_refused_input(&html, "f-serial");
    assert!(crate::helpers::tag_of(&html, "f-serial").contains("h-serial"));
    let res = d.scan(&lin, &lcsrf, &"A".repeat(10_000)).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Without a session: to the sign-in page.
    let anon = client(Arc::new(reqwest::cookie::Jar::default()));
    let res = anon.get(d.url("/clerk")).send().await.unwrap();
    assert_eq!(location(&res), "/clerk/login");
    let res = anon
        .post(d.url(&format!("/clerk/transfers/{id}/package")))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(location(&res), "/clerk/login");
    // A wrong TOTP code or password is one message; the page says nothing about which.
    let res = d
        .clerk_sign_in(
            &anon,
            &[
                ("username", "lin"),
                ("password", CLERK_PASSWORD),
                ("totp", "000000"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code_of(&res.text().await.unwrap()), "clerk_sign_in_failed");
    // The person's barcode pages are the person's only.
    let res = anon
        .get(d.url(&format!("/counter/transfers/{id}/barcode.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    // The person's consent form: no consent, no transfer.
    let res = d
        .person
        .post(d.url(&format!("/counter/services/{SERVICE}")))
        .form(&[
            ("csrf", d.person_csrf.as_str()),
            ("office", "chiayi-social"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert_eq!(code_of(&html), "consent_missing");
    crate::helpers::assert_refused_input(&html, "consent");
    let res = d
        .person
        .post(d.url(&format!("/counter/services/{SERVICE}")))
        .form(&[
            ("csrf", d.person_csrf.as_str()),
            ("office", "nowhere"),
            ("consent", "yes"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(&res.text().await.unwrap()), "office_missing");
    // Consent without a verified sign-in goes to the sign-in page for these datasets, and back.
    let anon = client(Arc::new(reqwest::cookie::Jar::default()));
    let page = anon
        .get(d.url(&format!("/counter/services/{SERVICE}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = attr(&page, "name=\"csrf\" value=\"");
    let res = anon
        .post(d.url(&format!("/counter/services/{SERVICE}")))
        .form(&[
            ("csrf", csrf.as_str()),
            ("office", "chiayi-social"),
            ("consent", "yes"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&res),
        "/login?datasets=household-register-personal&next=%2Fcounter%2Fservices%2Fchiayi-senior-concession-card%3Foffice%3Dchiayi-social%26agreed%3D1"
    );
    // An online-only service has no counter page.
    let res = d
        .person
        .get(d.url("/counter/services/no-such-service"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn clerk_totp_codes_are_single_use() {
    let d = Desk::start(Backend::Sqlite).await;
    d.app.clock.advance(Duration::from_secs(30));
    let secret = d.clerks[0].1.clone();
    let code = clerk::totp_code(&secret, d.app.clock.now()).unwrap();
    let c = client(Arc::new(reqwest::cookie::Jar::default()));
    let form = [
        ("username", "lin"),
        ("password", CLERK_PASSWORD),
        ("totp", code.as_str()),
    ];
    let res = d.clerk_sign_in(&c, &form).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let res = d.clerk_sign_in(&c, &form).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a replayed code is refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Real Chromium: the person on a 360 px phone and the clerk at a desk, two browser contexts.

#[tokio::test]
async fn person_and_clerk_go_through_the_whole_flow_in_chromium() {
    use mydata_browser_test::{Browser, Key, Viewport};
    let d = Desk::start(Backend::Sqlite).await;
    let browser = Browser::shared().unwrap();
    let person_ctx = browser.new_context("counter_person").await.unwrap();
    let clerk_ctx = browser.new_context("counter_clerk").await.unwrap();
    let mut person = person_ctx.new_page(Viewport::NARROW).await.unwrap();
    let clerk_page = clerk_ctx.new_page(Viewport::DESKTOP).await.unwrap();

    // The person: the list of counter services, then the service (sign-in is tested with the
    // identity pages; here the person's browser carries a verified session).
    person.goto(&d.url("/counter")).await.unwrap();
    person
        .eval(&format!("document.cookie = '{}; path=/'", d.person_cookie))
        .await
        .unwrap();
    person.wait_for(&format!("#svc-{SERVICE} a")).await.unwrap();
    person.assert_accessible("services").await.unwrap();
    person.click(&format!("#svc-{SERVICE} a")).await.unwrap();
    person.wait_for("#consent-form").await.unwrap();
    assert_eq!(person.horizontal_overflow().await.unwrap(), 0);
    person.assert_accessible("service").await.unwrap();
    person.screenshot("service").await.unwrap();
    // Keyboard alone: office, consent box, submit.
    person.tab_to("input[name=office]", 30).await.unwrap();
    person.press(Key::ArrowDown).await.unwrap();
    assert_eq!(
        person
            .eval("document.querySelector('input[name=office]:checked').value")
            .await
            .unwrap(),
        "chiayi-social"
    );
    person.tab_to("#consent", 10).await.unwrap();
    person.press(Key::Space).await.unwrap();
    person.tab_to("#consent-submit", 5).await.unwrap();
    person.press(Key::Enter).await.unwrap();
    // The page reloads itself while the data is fetched, then shows the barcode.
    person.set_timeout(Duration::from_secs(30));
    person.wait_for("#serial").await.unwrap();
    let serial = person
        .attribute("#serial", "data-serial")
        .await
        .unwrap()
        .unwrap();
    person
        .wait_until(
            "document.getElementById('barcode-img').complete && document.getElementById('barcode-img').naturalWidth > 0",
            "the barcode image",
        )
        .await
        .unwrap();
    assert_eq!(person.horizontal_overflow().await.unwrap(), 0, "360 px");
    person.wait_for_text("8 小時").await.unwrap();
    person.screenshot("barcode").await.unwrap();
    person.assert_accessible("barcode").await.unwrap();
    person.set_viewport(Viewport::MOBILE).await.unwrap();

    // The clerk: sign in with password and TOTP, choose the counter.
    d.app.clock.advance(Duration::from_secs(30));
    let code = clerk::totp_code(&d.clerks[0].1, d.app.clock.now()).unwrap();
    clerk_page.goto(&d.url("/clerk")).await.unwrap();
    clerk_page.wait_for("#f-username").await.unwrap();
    clerk_page.assert_accessible("login").await.unwrap();
    clerk_page.fill("#f-username", "lin").await.unwrap();
    clerk_page
        .fill("#f-password", CLERK_PASSWORD)
        .await
        .unwrap();
    clerk_page.fill("#f-totp", &code).await.unwrap();
    clerk_page.press(Key::Enter).await.unwrap();
    clerk_page.wait_for("#f-counter").await.unwrap();
    clerk_page.press(Key::Tab).await.unwrap();
    clerk_page
        .tab_to("form[action='/clerk/counter'] button", 10)
        .await
        .unwrap();
    clerk_page.press(Key::Enter).await.unwrap();
    clerk_page.wait_for("#f-serial").await.unwrap();
    clerk_page
        .wait_for_text("民眾自行下載後出示或攜帶的檔案")
        .await
        .unwrap();
    clerk_page.assert_accessible("counter").await.unwrap();
    // A keyboard-wedge scanner: the serial's characters, then Enter, into the focused field.
    assert!(clerk_page.focused_matches("#f-serial").await.unwrap());
    clerk_page.type_text(&serial).await.unwrap();
    clerk_page.press(Key::Enter).await.unwrap();
    clerk_page.wait_for("#f-password").await.unwrap();
    clerk_page.assert_accessible("password").await.unwrap();
    let password = d.sent_password().await;
    assert!(clerk_page.focused_matches("#f-password").await.unwrap());
    clerk_page.type_text(&password).await.unwrap();
    clerk_page.press(Key::Enter).await.unwrap();
    clerk_page
        .wait_for("#verification[data-ok=true]")
        .await
        .unwrap();
    clerk_page
        .wait_for_text("驗證結果：全部通過")
        .await
        .unwrap();
    clerk_page.screenshot("data").await.unwrap();
    clerk_page.assert_accessible("data").await.unwrap();
    assert!(
        clerk_page.js_errors().is_empty(),
        "{:?}",
        clerk_page.js_errors()
    );

    // Back on the phone: the barcode is gone, the data was used.
    let here = person.url().await.unwrap();
    person.goto(&here).await.unwrap();
    person.wait_for_text("資料已由櫃檯取用").await.unwrap();
    assert!(person.js_errors().is_empty(), "{:?}", person.js_errors());
}

// ---------------------------------------------------------------------------------------------
// The shared flow world: sign-in by citizen certificate through the pages, the password by real
// SMTP to the person's registered address.

/// The 8-digit password in a received email (base64 or quoted-printable body).
fn password_in(message: &str) -> Option<String> {
    use base64::Engine;
    let (headers, body) = message.split_once("\n\n")?;
    let text = if headers
        .to_ascii_lowercase()
        .contains("content-transfer-encoding: base64")
    {
        let b64: String = body.split_whitespace().collect();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?
    } else {
        body.replace("=\n", "")
    };
    let marker = "counter verification password: ";
    let i = text.find(marker)? + marker.len();
    Some(text.get(i..i + 8)?.to_owned())
}

async fn signed_in_person_applies_and_the_clerk_verifies_by_email(backend: Backend) {
    use crate::world::FlowWorld;
    let mut w = FlowWorld::spawn(backend, 1.0).await;
    let clerks = register_desks(&w.app.state).await;
    let p = w.people[0].clone();
    w.known(&p).await;
    let b = w.browser("10.9.0.7");
    // Consent first; not signed in yet, so on to the sign-in page for these datasets and back.
    let path = format!("/counter/services/{SERVICE}");
    let csrf = b.csrf(&path).await;
    let res = b
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("office", "chiayi-social"),
                ("consent", "yes"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let to_login = location(&res);
    let next = url::Url::parse(&format!("http://x{to_login}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "next")
        .unwrap()
        .1
        .into_owned();
    let res = b.certificate(&w.card(&p), &next).await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), next);
    let page = b.get(&next).await.text().await.unwrap();
    assert!(
        page.contains("id=\"consent\" checked"),
        "the consent is kept"
    );
    let csrf = crate::world::csrf_in(&page);
    let res = b
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("office", "chiayi-social"),
                ("consent", "yes"),
            ],
        )
        .await;
    assert_eq!(res.status(), 303);
    let id = location(&res)
        .strip_prefix("/counter/transfers/")
        .unwrap()
        .to_owned();
    w.app.until_state(&id, TransferState::Ready).await;
    let t = w.app.transfer(&id).await;
    assert_eq!(t.kind, mydata_core::transfer::TransferKind::Counter);
    assert_eq!(t.recipient.as_deref(), Some("chiayi-social"));
    let serial = attr(
        &b.get(&format!("/counter/transfers/{id}"))
            .await
            .text()
            .await
            .unwrap(),
        "data-serial=\"",
    );
    // Another person cannot open this barcode page.
    let other = w.signed_in(&w.people[1].clone(), "10.9.0.8").await;
    assert_eq!(
        other
            .get(&format!("/counter/transfers/{id}"))
            .await
            .status(),
        404
    );

    let lin = clerk_login(&w.app.base, &w.app.clock, "lin", &clerks[0].1).await;
    let page = lin
        .get(format!("{}/clerk", w.app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ccsrf = attr(&page, "name=\"csrf\" value=\"");
    lin.post(format!("{}/clerk/counter", w.app.base))
        .form(&[("csrf", ccsrf.as_str()), ("counter", "c2")])
        .send()
        .await
        .unwrap();
    let res = lin
        .post(format!("{}/clerk/scan", w.app.base))
        .form(&[("csrf", ccsrf.as_str()), ("serial", serial.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let at = location(&res);
    let mut password = None;
    for _ in 0..5 {
        let mail = w.next_mail(Duration::from_secs(20)).await;
        if let Some(pw) = password_in(&mail) {
            assert!(mail.contains(crate::world::CONTACT_EMAIL));
            password = Some(pw);
            break;
        }
    }
    let password = password.expect("the password email");
    let res = lin
        .post(format!("{}{at}", w.app.base))
        .form(&[("csrf", ccsrf.as_str()), ("password", password.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let data = lin
        .get(format!("{}/clerk/transfers/{id}", w.app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(data.contains("data-ok=\"true\""));
    // The person is told which office and counter opened the data.
    let mut told = false;
    for _ in 0..5 {
        let mail = w.next_mail(Duration::from_secs(20)).await;
        if mail.contains("data access notice") || mail.contains("=?utf-8?b?") {
            let decoded = {
                use base64::Engine;
                let (_, body) = mail.split_once("\n\n").unwrap();
                let b64: String = body.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_else(|| body.replace("=\n", ""))
            };
            if decoded.contains(&id) {
                assert!(
                    decoded.contains("Chiayi County Social Affairs, 2 號櫃檯"),
                    "{decoded}"
                );
                told = true;
                break;
            }
        }
    }
    assert!(told, "an access notice");
    // Logged once delivered, so the person's records show the notice went out.
    eventually_within(
        "the access notice logged",
        Duration::from_secs(20),
        || async {
            w.app
                .store()
                .audit_for_transfer(&id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.kind == "notice.sent" && e.detail["event"] == "counter")
        },
    )
    .await;
    let kinds: Vec<String> = w
        .app
        .store()
        .audit_for_transfer(&id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.starts_with("counter."))
        .map(|e| {
            assert_eq!(e.detail["office"], "chiayi-social", "{e:?}");
            if e.kind != "counter.serial_issued" {
                assert_eq!(e.detail["counter"], "c2", "{e:?}");
            }
            e.kind
        })
        .collect();
    for k in [
        "counter.scan",
        "counter.password_sent",
        "counter.password_result",
        "counter.data_access",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    crate::fetch::assert_no_id_in_audit(&w.app, &id, &p.id).await;

    // A clerk may also sign in with their own citizen certificate (level 1).
    let staff = w.people[2].clone();
    clerk::register_clerk(
        &w.app.state,
        "chiayi-social",
        "huang",
        "",
        Role::Clerk,
        CLERK_PASSWORD,
        Some(&staff.id),
    )
    .await
    .unwrap();
    let hb = w.signed_in(&staff, "10.9.0.9").await;
    let res = hb.get("/clerk/certificate").await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), "/clerk");
    let desk = hb.get("/clerk").await;
    assert_eq!(desk.status(), 200);
    assert!(desk.text().await.unwrap().contains("name=\"counter\""));
    assert_eq!(
        hb.session().await["signed_in"],
        false,
        "the citizen session ended"
    );
    // A citizen who is not a clerk is refused and stays signed in (a consent in progress goes on);
    // a weaker sign-in is sent to the certificate.
    let res = other.get("/clerk/certificate").await;
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
    assert_eq!(
        code_of(&res.text().await.unwrap()),
        "clerk_certificate_unknown"
    );
    let still = other.session().await;
    assert_eq!(still["signed_in"], true, "{still}");
    assert_eq!(still["level"].as_u64(), Some(1), "{still}");
    let weak = w.browser("10.9.0.10");
    w.known(&w.people[3].clone()).await;
    assert_eq!(weak.dual_id(&w.people[3].clone(), "/").await.status(), 303);
    let res = weak.get("/clerk/certificate").await;
    assert_eq!(
        location(&res),
        "/login/moica_cert?next=%2Fclerk%2Fcertificate"
    );
}

#[tokio::test]
async fn signed_in_person_and_clerk_by_email_sqlite() {
    signed_in_person_applies_and_the_clerk_verifies_by_email(Backend::Sqlite).await;
}

#[tokio::test]
async fn signed_in_person_and_clerk_by_email_postgres() {
    signed_in_person_applies_and_the_clerk_verifies_by_email(Backend::Postgres).await;
}

#[tokio::test]
async fn a_clerk_sign_in_locked_by_failures_says_when_to_try_again() {
    let d = Desk::start(Backend::Sqlite).await;
    let anon = client(Arc::new(reqwest::cookie::Jar::default()));
    let wrong = [
        ("username", "lin"),
        ("password", CLERK_PASSWORD),
        ("totp", "000000"),
    ];
    // An incomplete form is refused as such and counts for nothing.
    let res = d
        .clerk_sign_in(
            &anon,
            &[
                ("username", "lin"),
                ("password", CLERK_PASSWORD),
                ("totp", ""),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert_eq!(code_of(&html), "clerk_sign_in_incomplete");
    crate::helpers::assert_refused_input(&html, "f-totp");
    let mut locked = None;
    let mut wrong_answers = 0;
    for _ in 0..=limits::LOCKOUT_THRESHOLD {
        let res = d.clerk_sign_in(&anon, &wrong).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            locked = Some(res);
            break;
        }
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        wrong_answers += 1;
    }
    let res = locked.expect("locked after the threshold's failures");
    // The failure that reaches the threshold is the one that locks.
    assert_eq!(wrong_answers, limits::LOCKOUT_THRESHOLD - 1);
    // As the citizen sign-in's lockout: the same code, and the seconds left in Retry-After.
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 14 * 60 && retry <= 15 * 60, "{retry}");
    let html = res.text().await.unwrap();
    assert_eq!(code_of(&html), "locked_out");
    assert!(html.contains("15 分鐘"), "{html}");
}

/// The `<dd>` after the `<dt>` labelled `label` on a records page.
fn record_field(html: &str, label: &str) -> String {
    let marker = format!("<dt>{label}</dt><dd>");
    let i = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} not in {html}"))
        + marker.len();
    html[i..].split("</dd>").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_usage_records_name_the_counter_service_as_the_purpose() {
    let d = Desk::start(Backend::Sqlite).await;
    d.apply("chiayi-social").await;
    for (lang, label, name) in [
        ("zh-TW", "用途", "敬老卡或愛心卡"),
        (
            "en",
            "Purpose",
            "Senior citizen card or disability concession card",
        ),
    ] {
        let html = d
            .person
            .get(d.url(&format!("/records?lang={lang}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // The service's name, never its catalogue ID (which is still what is stored).
        assert_eq!(record_field(&html, label), name, "{lang}");
        assert!(!html.contains(SERVICE), "{html}");
    }
    let json: serde_json::Value = d
        .person
        .get(d.url("/records.json?lang=zh-TW"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["records"][0]["purpose"], "敬老卡或愛心卡");
}

#[tokio::test]
async fn a_dataset_that_could_not_be_fetched_is_explained_in_words_to_the_clerk() {
    const PARKING: &str = "hualien-disability-parking";
    let d = Desk::start_with(Backend::Sqlite, |s| s.agencies.fetch_deadline_secs = 30).await;
    // The office also does a service whose data comes from two agencies; one of them is down.
    clerk::register_office(
        &d.app.state,
        "chiayi-social",
        "chiayi-county",
        "嘉義縣政府社會處",
        "Chiayi County Social Affairs",
        &[SERVICE.to_owned(), PARKING.to_owned()],
    )
    .await
    .unwrap();
    d.app.agencies.fault(
        "motc-highways",
        mydata_provider_sim::server::FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    let id = d.apply_for(PARKING, "chiayi-social").await;
    // Time passes (in steps, so each retry runs) until the fetch deadline gives up.
    crate::helpers::eventually_within("the outage settles", Duration::from_secs(60), || async {
        d.app.clock.advance(Duration::from_secs(5));
        d.app.transfer(&id).await.state == TransferState::Ready
    })
    .await;
    let failed: Vec<String> = d
        .app
        .transfer(&id)
        .await
        .datasets
        .into_iter()
        .filter(|x| x.status == mydata_store::fetch_status::FAILED)
        .map(|x| x.dataset_id)
        .collect();
    assert_eq!(failed, ["vehicle-registration", "driver-licence"]);

    let serial = d.serial(&id).await;
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let at = location(&d.scan(&lin, &csrf, &serial).await);
    let password = d.sent_password().await;
    assert_eq!(
        d.enter(&lin, &csrf, &at, &password).await.status(),
        StatusCode::SEE_OTHER
    );
    let page = |lang: &'static str| {
        let lin = &lin;
        let url = d.url(&format!("/clerk/transfers/{id}?lang={lang}"));
        async move { lin.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let zh = page("zh-TW").await;
    assert!(!zh.contains("（failed）"), "{zh}");
    assert!(
        zh.contains("「車籍資料」未能取得（機關暫時無法提供），此項請依原程序查驗。"),
        "{zh}"
    );
    let en = page("en").await;
    assert!(!en.contains("(failed)"), "{en}");
    assert!(
        en.contains(
            "Vehicle registration record could not be fetched (the agency was unavailable); check it the usual way."
        ),
        "{en}"
    );
}

#[tokio::test]
async fn english_counter_pages_use_english_punctuation() {
    let d = Desk::start(Backend::Sqlite).await;
    let id = d.apply("chiayi-social").await;
    let serial = d.serial(&id).await;
    let lin = d.clerk("lin").await;
    let csrf = d.sit(&lin, "c1").await;
    let at = location(&d.scan(&lin, &csrf, &serial).await);
    let password = d.sent_password().await;
    let password_page = get_text(&lin, &d.url(&format!("{at}?lang=en"))).await;
    assert_eq!(
        d.enter(&lin, &csrf, &at, &password).await.status(),
        StatusCode::SEE_OTHER
    );
    let pages = [
        (
            "service",
            get_text(
                &d.person,
                &d.url(&format!("/counter/services/{SERVICE}?lang=en")),
            )
            .await,
        ),
        (
            "barcode",
            get_text(
                &d.person,
                &d.url(&format!("/counter/transfers/{id}?lang=en")),
            )
            .await,
        ),
        ("desk", get_text(&lin, &d.url("/clerk?lang=en")).await),
        ("password", password_page),
        (
            "data",
            get_text(&lin, &d.url(&format!("/clerk/transfers/{id}?lang=en"))).await,
        ),
        (
            "records",
            get_text(&d.person, &d.url("/records?lang=en")).await,
        ),
    ];
    for (name, html) in &pages {
        assert!(html.contains("<html lang=\"en\">"), "{name}");
        for c in ['：', '（', '）', '、'] {
            assert!(!html.contains(c), "{name} has {c}: {html}");
        }
    }
}

async fn get_text(c: &reqwest::Client, url: &str) -> String {
    let res = c.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    res.text().await.unwrap()
}
