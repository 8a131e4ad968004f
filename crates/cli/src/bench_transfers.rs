//! `mydata bench transfers`: complete online-service transfers against a live platform on this
//! machine — PAR, the person's consent and second confirmation through the real pages, the agency
//! fetch, the sealed package, token exchange and retrieval — with throughput, latency and the time
//! spent in each phase.
//!
//! The bench registers its own service through the admin API and signs in a pool of synthetic
//! persons once each (with the demo's test cards) before it measures; every measured transfer then
//! runs the person's whole consent path on an already signed-in session.

use crate::bench::check_loopback;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::Args;
use mydata_sdk::{AuthorizationRequest, Keys, Service, ServiceConfig, TrustStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The bench's own service registration.
pub const CLIENT_ID: &str = "mydata-bench";
/// Never followed: the bench reads the code from the redirect's `Location`.
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const PURPOSE: &str = "效能測試（合成資料）Load test on synthetic data";
/// An instant dataset (ready_minutes 0 in the catalogue) that citizen certificates may fetch.
pub const DATASET: &str = "low-income-household";
/// Longest one transfer may take before it counts as failed.
const TRANSFER_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Base URL of the platform; must be on this machine (127.0.0.1, ::1 or localhost) and equal
    /// its OAuth issuer.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token of the platform's admin API (`oauth.admin_token`), to register the bench's
    /// service `mydata-bench`.
    #[arg(long, env = "MYDATA_OAUTH__ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// The demo's test cards (`<data-dir>/demo/cards`): the synthetic persons who consent.
    #[arg(long, value_name = "DIR")]
    pub cards: PathBuf,
    /// Synthetic persons signed in before the run, at most the concurrency (each worker runs its
    /// transfers as one of them) [default: the concurrency].
    #[arg(long)]
    pub persons: Option<usize>,
    /// Transfers in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to measure, in seconds (after a 1-second warm-up); at most a day.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub seconds: u64,
    /// Stop after this many measured transfers even if time remains.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_transfers: u64,
    /// Also check each package as a service must (agency signatures, chains and CRL, receipt,
    /// digests) against the simulated agencies' CA at this URL (the demo prints it).
    #[arg(long, value_name = "URL")]
    pub verify_with: Option<String>,
    /// Skip the warm-up second (for short runs in tests).
    #[arg(long)]
    pub no_warmup: bool,
    /// How often, in milliseconds, the person's page is looked at while the agencies answer (a
    /// browser refreshes every 3 s; the bench measures when the platform is ready, not the page's
    /// refresh rate). Each look is a full page request the server serves while it works.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub ready_poll_ms: u64,
    /// Also report the CPU time per transfer of this process and its descendants, as NAME=PID
    /// (repeatable; Linux): e.g. `platform=<the server's pid>`, `postgres=<the postmaster's pid>`.
    /// The bench client's own is always reported.
    #[arg(long = "cpu-of", value_name = "NAME=PID", value_parser = crate::proc_cpu::parse_watched)]
    pub cpu_of: Vec<crate::proc_cpu::Watched>,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub elapsed: Duration,
    /// Whole-transfer latencies, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Per phase: total microseconds over successful transfers.
    pub phases_us: [u64; PHASES.len()],
    /// Consent-page views while waiting for the agencies, over successful transfers.
    pub ready_polls: u64,
    /// CPU seconds over the measured run, by the name of the process (tree) watched.
    pub cpu_secs: Vec<(String, f64)>,
}

/// The phases of one transfer, in order.
pub const PHASES: [&str; 7] = [
    "PAR (client assertion, pushed request)",
    "authorize (consent page) + agree",
    "agency fetch + package + seal (until confirm page)",
    "second confirmation (code issued)",
    "token exchange (client assertion, PKCE)",
    "package retrieval + HPKE open",
    "package verification (--verify-with)",
];

impl Report {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `p` in milliseconds.
    pub fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }

    fn merge(&mut self, o: Report) {
        self.ok += o.ok;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latencies_us.extend(o.latencies_us);
        for (a, b) in self.phases_us.iter_mut().zip(o.phases_us) {
            *a += b;
        }
        self.ready_polls += o.ready_polls;
    }
}

/// A failed transfer: the phase it failed in and why.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    detail: String,
}

fn fail(kind: &'static str, detail: impl std::fmt::Display) -> Failure {
    Failure {
        kind,
        detail: detail.to_string(),
    }
}

/// One synthetic person's browser: its own cookies and connections.
struct Person {
    http: reqwest::Client,
}

/// What every worker shares.
struct Shared {
    base: String,
    service: Service,
    persons: Vec<Person>,
    trust: Option<TrustStore>,
    started: AtomicU64,
    ready_poll: Duration,
}

pub async fn run(args: TransferArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    print(&args, &report);
    anyhow::ensure!(
        report.failed() == 0,
        "{} transfers failed ({:?})",
        report.failed(),
        report.errors
    );
    Ok(())
}

fn print(args: &TransferArgs, r: &Report) {
    let base = args.url.trim_end_matches('/');
    println!("target       {base} (dataset {DATASET}, client {CLIENT_ID})");
    println!(
        "concurrency  {} transfers in flight, {} signed-in persons, page looked at every {} ms while waiting",
        args.concurrency.clamp(1, 1024),
        persons_of(args),
        args.ready_poll_ms.clamp(1, 3000)
    );
    println!("duration     {:.1} s", r.elapsed.as_secs_f64());
    println!("transfers    {} complete, {} failed", r.ok, r.failed());
    for (k, v) in &r.errors {
        println!("  failed in  {k}: {v}");
    }
    println!("throughput   {:.1} transfers/s", r.per_second());
    println!(
        "latency      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.pct(0.50),
        r.pct(0.90),
        r.pct(0.99),
        r.pct(1.0)
    );
    if r.ok > 0 {
        println!("mean time per phase of a complete transfer:");
        for (name, us) in PHASES.iter().zip(r.phases_us) {
            println!("  {:>8.2} ms  {name}", us as f64 / r.ok as f64 / 1000.0);
        }
        println!(
            "  consent-page views while waiting: {:.1} per transfer",
            r.ready_polls as f64 / r.ok as f64
        );
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let cpu: Vec<String> = r
            .cpu_secs
            .iter()
            .map(|(name, used)| {
                format!(
                    "{name} {:.2} ms ({:.2} cores)",
                    used * 1000.0 / r.ok as f64,
                    used / secs
                )
            })
            .collect();
        if !cpu.is_empty() {
            println!("cpu per transfer  {}", cpu.join(", "));
        }
    }
}

fn persons_of(args: &TransferArgs) -> usize {
    args.persons
        .unwrap_or(args.concurrency)
        .clamp(1, args.concurrency.clamp(1, 1024))
}

/// Registers the bench's service, signs the persons in, then runs the measured transfers.
pub async fn measure(args: &TransferArgs) -> anyhow::Result<Report> {
    let base = check_loopback(&args.url)?;
    let base = base.as_str().trim_end_matches('/').to_owned();
    let concurrency = args.concurrency.clamp(1, 1024);
    if let Some(p) = args.persons
        && !(1..=concurrency).contains(&p)
    {
        anyhow::bail!(
            "--persons must be from 1 to the concurrency ({concurrency}): each worker runs its transfers as one person"
        );
    }
    let admin = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let health = admin
        .get(format!("{base}/healthz"))
        .send()
        .await
        .with_context(|| format!("no server answers at {base}"))?;
    anyhow::ensure!(
        health.status().is_success(),
        "{base}/healthz answered {}",
        health.status()
    );

    let keys = Keys::generate();
    register(&admin, &base, &args.admin_token, &keys).await?;
    let config = ServiceConfig::new(&base, CLIENT_ID, REDIRECT, keys)?.with_http(
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(10)),
    )?;
    let service = Service::discover(config)
        .await
        .context("the platform's OAuth metadata (is --url its issuer?)")?;
    let trust = match &args.verify_with {
        Some(url) => Some(agency_trust(&admin, url).await?),
        None => None,
    };

    let cards = demo_cards(&args.cards, persons_of(args))?;
    let mut persons = Vec::with_capacity(cards.len());
    for (i, card) in cards.iter().enumerate() {
        persons.push(
            sign_in(&base, card, i)
                .await
                .with_context(|| format!("signing in synthetic person {} of the bench", i + 1))?,
        );
    }
    let shared = Arc::new(Shared {
        base,
        service,
        persons,
        trust,
        started: AtomicU64::new(0),
        ready_poll: Duration::from_millis(args.ready_poll_ms.clamp(1, 3000)),
    });
    if !args.no_warmup {
        phase(&shared, concurrency, Duration::from_secs(1), u64::MAX).await;
        shared.started.store(0, Ordering::SeqCst);
    }
    let mut watched = vec![crate::proc_cpu::Watched {
        name: "bench client".to_owned(),
        pid: std::process::id(),
    }];
    watched.extend(args.cpu_of.iter().cloned());
    let cpu_before: Vec<_> = watched
        .iter()
        .map(|w| crate::proc_cpu::snapshot(w.pid))
        .collect();
    let started = Instant::now();
    let mut report = phase(
        &shared,
        concurrency,
        Duration::from_secs(args.seconds.max(1)),
        args.max_transfers.max(1),
    )
    .await;
    report.elapsed = started.elapsed();
    for (w, before) in watched.into_iter().zip(cpu_before) {
        // A process /proc does not show (not Linux, or gone) is left out of the report.
        if !before.is_empty() {
            let after = crate::proc_cpu::snapshot(w.pid);
            report
                .cpu_secs
                .push((w.name, crate::proc_cpu::used_secs(&before, &after)));
        }
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}

async fn phase(shared: &Arc<Shared>, concurrency: usize, d: Duration, max: u64) -> Report {
    let deadline = Instant::now() + d;
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = Report::default();
            let person = &shared.persons[w % shared.persons.len()];
            while Instant::now() < deadline && shared.started.fetch_add(1, Ordering::SeqCst) < max {
                let t0 = Instant::now();
                let mut phases = [0u64; PHASES.len()];
                match tokio::time::timeout(
                    TRANSFER_LIMIT,
                    transfer(&shared, person, &mut phases, &mut r.ready_polls),
                )
                .await
                {
                    Ok(Ok(())) => {
                        r.ok += 1;
                        r.latencies_us.push(t0.elapsed().as_micros() as u64);
                        for (a, b) in r.phases_us.iter_mut().zip(phases) {
                            *a += b;
                        }
                    }
                    Ok(Err(f)) => {
                        if r.errors.values().sum::<u64>() < 3 {
                            eprintln!("transfer failed in {}: {}", f.kind, f.detail);
                        }
                        *r.errors.entry(f.kind).or_default() += 1;
                    }
                    Err(_) => *r.errors.entry("timeout").or_default() += 1,
                }
            }
            r
        }));
    }
    let mut total = Report::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.merge(r);
        }
    }
    total
}

/// Time since `*mark`, in microseconds; moves the mark.
fn lap(mark: &mut Instant) -> u64 {
    let now = Instant::now();
    let us = now.duration_since(*mark).as_micros() as u64;
    *mark = now;
    us
}

/// One complete transfer, as the service and the person's browser drive it.
async fn transfer(
    s: &Shared,
    p: &Person,
    phases: &mut [u64; PHASES.len()],
    polls: &mut u64,
) -> Result<(), Failure> {
    let mut mark = Instant::now();
    let pending = s
        .service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
        .map_err(|e| fail("par", e))?;
    phases[0] = lap(&mut mark);

    // The person's browser: authorize (the consent question itself) → agree.
    let page = p
        .page(&pending.authorize_url)
        .await
        .map_err(|e| fail("authorize", e))?;
    if !page.contains("data-step=\"consent\"") {
        return Err(fail("consent", "the consent page did not ask for consent"));
    }
    let consent = form_action(&page).ok_or_else(|| fail("consent", "no form"))?;
    let url = format!("{}{consent}", s.base);
    let csrf = csrf_in(&page).ok_or_else(|| fail("consent", "no csrf field"))?;
    let r = p
        .http
        .post(&url)
        .form(&[
            ("csrf", csrf.as_str()),
            ("decision", "agree"),
            (
                "platform_terms",
                mydata_server::oauth::flow::PLATFORM_TERMS_VERSION,
            ),
        ])
        .send()
        .await
        .map_err(|e| fail("consent", e))?;
    location(&r, 303).map_err(|e| fail("consent", e))?;
    phases[1] = lap(&mut mark);

    // The agencies answer, the platform packages and seals: the page turns to the confirmation.
    let mut confirm = None;
    for _ in 0..(TRANSFER_LIMIT.as_millis() / s.ready_poll.as_millis().max(1)) {
        *polls += 1;
        let page = p.page(&url).await.map_err(|e| fail("wait", e))?;
        if page.contains("data-step=\"confirm\"") {
            confirm = Some(page);
            break;
        }
        if !page.contains("data-step=\"wait\"") {
            return Err(fail("wait", "the page neither waits nor confirms"));
        }
        tokio::time::sleep(s.ready_poll).await;
    }
    let confirm = confirm.ok_or_else(|| fail("wait", "not ready in time"))?;
    phases[2] = lap(&mut mark);

    let csrf = csrf_in(&confirm).ok_or_else(|| fail("confirm", "no csrf field"))?;
    let r = p
        .http
        .post(format!("{url}/confirm"))
        .form(&[("csrf", csrf.as_str()), ("decision", "send")])
        .send()
        .await
        .map_err(|e| fail("confirm", e))?;
    let back = location(&r, 303).map_err(|e| fail("confirm", e))?;
    let query = back
        .strip_prefix(REDIRECT)
        .and_then(|q| q.strip_prefix('?'))
        .ok_or_else(|| fail("confirm", format!("redirected elsewhere: {back}")))?;
    phases[3] = lap(&mut mark);

    let token = s
        .service
        .callback(&pending, query)
        .await
        .map_err(|e| fail("token", e))?;
    phases[4] = lap(&mut mark);
    let zip = s
        .service
        .package(&token, Duration::from_secs(20))
        .await
        .map_err(|e| fail("package", e))?;
    phases[5] = lap(&mut mark);
    if let Some(trust) = &s.trust {
        let now = mydata_core::Clock::now(&mydata_core::SystemClock);
        s.service
            .verify_package(&zip, &token.transfer_id, trust, now)
            .await
            .map_err(|e| fail("verify", e))?;
        phases[6] = lap(&mut mark);
    }
    Ok(())
}

impl Person {
    /// GETs a page that must answer 200.
    async fn page(&self, url: &str) -> anyhow::Result<String> {
        let r = self.http.get(url).send().await?;
        anyhow::ensure!(r.status() == 200, "{url} answered {}", r.status());
        Ok(r.text().await?)
    }
}

fn location(r: &reqwest::Response, want: u16) -> anyhow::Result<String> {
    anyhow::ensure!(
        r.status().as_u16() == want,
        "{} answered {} instead of {want}",
        r.url().path(),
        r.status()
    );
    r.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("no Location header")
}

/// The `csrf` field of a page's form.
/// Where the page's decision form posts.
fn form_action(html: &str) -> Option<String> {
    let i = html.find("<form method=\"post\" action=\"")? + 28;
    html.get(i..)?.split('"').next().map(str::to_owned)
}

fn csrf_in(html: &str) -> Option<String> {
    let i = html.find("name=\"csrf\" value=\"")? + 19;
    html.get(i..)?.split('"').next().map(str::to_owned)
}

/// Registers (or replaces) the bench's service with this run's keys.
async fn register(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    keys: &Keys,
) -> anyhow::Result<()> {
    let reg = serde_json::json!({
        "client_id": CLIENT_ID,
        "name": "mydata bench（效能測試）",
        "jwks": keys.public_jwks(),
        "redirect_uris": [REDIRECT],
        "terms": "效能測試服務，只使用合成資料。Load-test service; synthetic data only.",
        "purpose": PURPOSE,
        "datasets": [DATASET],
        "environment": "test",
        "trusted_verifier": false,
    });
    let r = http
        .put(format!("{base}/api/v1/admin/services/{CLIENT_ID}"))
        .bearer_auth(token)
        .json(&reg)
        .send()
        .await
        .context("registering the bench service")?;
    anyhow::ensure!(
        r.status().is_success(),
        "the admin API refused the bench service ({}): {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    Ok(())
}

/// The simulated agencies' CA and CRL, as a service would configure them.
async fn agency_trust(http: &reqwest::Client, agencies: &str) -> anyhow::Result<TrustStore> {
    let agencies = check_loopback(agencies)?;
    let agencies = agencies.as_str().trim_end_matches('/');
    let get = |path: &str| {
        let url = format!("{agencies}{path}");
        async move {
            let r = http.get(&url).send().await?;
            anyhow::ensure!(r.status().is_success(), "{url} answered {}", r.status());
            anyhow::Ok(r.text().await?)
        }
    };
    let root = get("/ca/root.pem").await?;
    let crl = get("/ca/crl.pem").await?;
    let mut t = TrustStore::new();
    t.add_roots_pem(root.as_bytes())
        .map_err(|e| anyhow::anyhow!("agency root: {e}"))?;
    let b64: String = crl.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(b64.trim()).context("agency CRL")?;
    t.add_crl_der(&der)
        .map_err(|e| anyhow::anyhow!("agency CRL: {e}"))?;
    Ok(t)
}

/// The first `n` valid citizen cards of the demo, opened with the demo PIN.
fn demo_cards(dir: &std::path::Path, n: usize) -> anyhow::Result<Vec<mydata_card::OpenedCard>> {
    let index_path = dir.join("index.json");
    let index: mydata_card::demo::Index = serde_json::from_slice(
        &std::fs::read(&index_path)
            .with_context(|| format!("cannot read {}", index_path.display()))?,
    )
    .with_context(|| format!("{} is not a card index", index_path.display()))?;
    let mut out = Vec::with_capacity(n);
    for c in index.cards.iter().filter(|c| {
        c.kind == mydata_card::CardKind::Citizen && c.status == mydata_card::demo::CardStatus::Valid
    }) {
        if out.len() == n {
            break;
        }
        let path = dir.join(&c.file);
        let p12 =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        out.push(
            mydata_card::OpenedCard::open(&p12, &index.pin)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    anyhow::ensure!(
        out.len() == n,
        "{} holds {} valid citizen cards; --persons asks for {n}",
        dir.display(),
        out.len()
    );
    Ok(out)
}

/// Signs a person in by certificate through the real pages; on the person's first use of the
/// platform also registers a contact address with the code from `/dev/outbox`.
async fn sign_in(base: &str, card: &mydata_card::OpenedCard, i: usize) -> anyhow::Result<Person> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let p = Person { http };
    let page = p.page(&format!("{base}/login/moica_cert?next=/")).await?;
    let csrf = csrf_in(&page).context("no csrf field on the sign-in page")?;
    let ch: serde_json::Value = p
        .http
        .post(format!("{base}/login/moica_cert/challenge"))
        .header("x-csrf-token", &csrf)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tbs = URL_SAFE_NO_PAD
        .decode(ch["to_be_signed"].as_str().unwrap_or_default())
        .context("challenge")?;
    let x5c: Vec<String> = card.chain().iter().map(|d| STANDARD.encode(d)).collect();
    let r = p
        .http
        .post(format!("{base}/login/moica_cert"))
        .form(&[
            ("csrf", csrf.as_str()),
            (
                "challenge_id",
                ch["challenge_id"].as_str().unwrap_or_default(),
            ),
            ("signature", &URL_SAFE_NO_PAD.encode(card.sign(&tbs))),
            ("x5c", &serde_json::to_string(&x5c)?),
            ("next", "/"),
        ])
        .send()
        .await?;
    let next = location(&r, 303)?;
    if next == "/login/first-use" {
        first_use(base, &p, i).await?;
    }
    let s: serde_json::Value = p
        .http
        .get(format!("{base}/api/v1/session"))
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(
        s["level"].as_u64().is_some_and(|l| l >= 1) && s["first_use_pending"] != true,
        "not signed in after the certificate sign-in: {s}"
    );
    Ok(p)
}

async fn first_use(base: &str, p: &Person, i: usize) -> anyhow::Result<()> {
    let address = format!("bench-{i}@example.org");
    let page = p.page(&format!("{base}/login/first-use")).await?;
    let csrf = csrf_in(&page).context("no csrf field on the first-use page")?;
    let r = p
        .http
        .post(format!("{base}/login/first-use"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("channel", "email"),
            ("address", &address),
        ])
        .send()
        .await?;
    location(&r, 303)?;
    let marker = format!("→ {address}");
    let mut code = None;
    // The message goes out through the job queue: bounded wait.
    for _ in 0..200 {
        let outbox = p.page(&format!("{base}/dev/outbox")).await?;
        if let Some(at) = outbox.find(&marker)
            && let Some(c) = outbox[at..].find("code is ")
        {
            code = outbox.get(at + c + 8..at + c + 14).map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = code.context("no first-use code on /dev/outbox (is this `mydata demo`?)")?;
    let page = p.page(&format!("{base}/login/first-use/code")).await?;
    let csrf = csrf_in(&page).context("no csrf field on the code page")?;
    let r = p
        .http
        .post(format!("{base}/login/first-use/code"))
        .form(&[("csrf", csrf.as_str()), ("code", code.as_str())])
        .send()
        .await?;
    location(&r, 303)?;
    Ok(())
}
