//! The example online service that `demo` runs beside the platform: the senior-high-school tuition
//! reduction for students of low-income and middle-low-income households (dataset
//! `low-income-household`, no. 59). It uses `mydata-sdk` exactly as a real service would: PAR,
//! PKCE, client assertion, a DPoP-bound token (RFC 9449, a proof with every poll), polling, HPKE
//! decryption and the package checks, then shows the verified record and whether the student is
//! eligible.
//!
//! Its own state (pending requests by browser cookie) is in memory: it is the service's, not the
//! platform's.

use anyhow::Context;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use mydata_core::Clock;
use mydata_sdk::{AuthorizationRequest, Keys, Pending, Service, ServiceConfig, Token, TrustStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const CLIENT_ID: &str = "k12-tuition-reduction";
/// The one dataset it asks for (no. 59).
pub const DATASET: &str = "low-income-household";
/// The purpose it registers and shows.
pub const PURPOSE: &str = "高級中等學校學雜費減免（低收入戶、中低收入戶學生）資格審核";
/// The service's name as registered with the platform.
pub const NAME: &str = "全國高級中等學校學雜費減免（示範服務）";
/// The terms it registers: numbered clauses, one per line, as terms usually are.
pub const TERMS: &str = "一、本示範服務僅將您的低收入戶／中低收入戶資料用於學雜費減免資格審核。\n二、審核後即刪除，不作其他用途。\n1. This demo uses your low-income household record only to check tuition-reduction eligibility.\n2. It deletes the record afterwards and uses it for nothing else.";
const MAX_PENDING: usize = 1000;
/// How long a request for the agencies' CA root or CRL may take.
const TRUST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one page load waits for the package.
const PACKAGE_WAIT: Duration = Duration::from_secs(120);

struct Inner {
    service: tokio::sync::OnceCell<Service>,
    config: ServiceConfig,
    agencies: String,
    /// Fetches the agencies' CA root and CRL: no redirect, a timeout.
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Tokens whose package was not ready yet, by browser session: `/result` asks again.
    waiting: Mutex<HashMap<String, Token>>,
}

/// Binds the example service on a loopback port; returns its base URL and a task that serves it.
pub async fn bind() -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the example service")?;
    let base = format!("http://{}", listener.local_addr()?);
    Ok((listener, base))
}

/// Serves the example service at `base` for the platform at `platform` (discovered on first
/// use), trusting the agency CA published at `agencies`; `clock` is the time packages are checked
/// at (the system clock in the demo). Fails only if its HTTP client cannot be built.
pub fn serve(
    listener: tokio::net::TcpListener,
    base: &str,
    platform: &str,
    agencies: &str,
    keys: Keys,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let config = ServiceConfig::new(platform, CLIENT_ID, &format!("{base}/callback"), keys)?
        .with_clock(clock.clone());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TRUST_TIMEOUT)
        .build()
        .context("cannot build the example service's HTTP client")?;
    let inner = Arc::new(Inner {
        service: tokio::sync::OnceCell::new(),
        config,
        agencies: agencies.to_owned(),
        http,
        clock,
        pending: Mutex::new(HashMap::new()),
        waiting: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/", get(home))
        .route("/start", post(start))
        .route("/callback", get(callback))
        .route("/result", get(result))
        .with_state(inner);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "example service stopped");
        }
    });
    Ok(())
}

impl Inner {
    async fn service(&self) -> Result<&Service, String> {
        self.service
            .get_or_try_init(|| Service::discover(self.config.clone()))
            .await
            .map_err(|e| e.to_string())
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"zh-TW\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.6}}\
         button{{font-size:1.1rem;padding:.6rem 1.2rem}}table{{border-collapse:collapse;width:100%;table-layout:fixed}}\
         td,th{{border:1px solid #999;padding:.3rem .6rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}}th{{width:35%}}code{{overflow-wrap:anywhere}}\
         .ok{{color:#05620f}}.no{{color:#9b1c1c}}</style></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    ))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn home() -> Html<String> {
    page(
        "高級中等學校學雜費減免申請",
        "<p>低收入戶、中低收入戶學生可申請學雜費減免。使用 MyData 帶入您的低收入戶／中低收入戶資料，免附證明文件。</p>\
         <p lang=\"en\">Senior-high-school tuition reduction for students of low-income and middle-low-income households: \
         bring your household record from MyData instead of paper certificates.</p>\
         <form method=\"post\" action=\"/start\"><button type=\"submit\" id=\"use-mydata\">使用 MyData 帶入資料 / Use MyData</button></form>",
    )
}

async fn start(State(inner): State<Arc<Inner>>) -> Response {
    let service = match inner.service().await {
        Ok(s) => s,
        Err(e) => return page("無法連線 MyData", &esc(&e)).into_response(),
    };
    match service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
    {
        Ok(p) => {
            let sid = uuid_like();
            let url = p.authorize_url.clone();
            if let Ok(mut map) = inner.pending.lock() {
                if map.len() >= MAX_PENDING {
                    map.clear();
                }
                map.insert(sid.clone(), p);
            }
            let cookie = format!("sp_session={sid}; Path=/; HttpOnly; SameSite=Lax");
            ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response()
        }
        Err(e) => page("MyData 拒絕了請求", &esc(&e.to_string())).into_response(),
    }
}

/// A link to ask again for a kept token's package.
const AGAIN: &str = "<p><a id=\"again\" href=\"/result\">稍後再查詢 / Check again</a></p>";

fn uuid_like() -> String {
    // A v4 UUID is 122 random bits from the OS generator.
    uuid::Uuid::new_v4().simple().to_string()
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::COOKIE)?
        .to_str()
        .ok()?
        .split(';')
        .find_map(|c| c.trim().strip_prefix("sp_session=").map(str::to_owned))
}

/// The agencies' CA root and CRL. Fetched before the package is taken: the platform hands it over
/// once, so it must not be taken when it cannot be checked.
async fn trust(http: &reqwest::Client, agencies: &str) -> anyhow::Result<TrustStore> {
    let fetch = |path: &'static str| async move {
        let res = http.get(format!("{agencies}{path}")).send().await?;
        anyhow::ensure!(res.status().is_success(), "{path}: {}", res.status());
        anyhow::Ok(res.text().await?)
    };
    let root = fetch("/ca/root.pem").await?;
    let crl = fetch("/ca/crl.pem").await?;
    let mut t = TrustStore::new();
    t.add_roots_pem(root.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let b64: String = crl.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64.trim())?;
    t.add_crl_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(t)
}

/// What the person sees when no token came back: their own refusal said plainly, anything else
/// with the platform's reason.
fn refused_page(e: &mydata_sdk::Error) -> Html<String> {
    let (code, text) = match e {
        mydata_sdk::Error::Refused { error, .. } if error == "access_denied" => (
            "access_denied",
            "您未同意提供資料，本服務沒有取得您的任何資料。您仍可改附紙本證明申請，或重新申請。"
                .to_owned(),
        ),
        mydata_sdk::Error::Refused { error, .. } => (
            "refused",
            format!("MyData 未完成這次資料傳送（{}）。請重新申請。", esc(error)),
        ),
        other => ("failed", format!("未取得資料：{}", esc(&other.to_string()))),
    };
    let en = if code == "access_denied" {
        "You did not agree to share your data, so this service received none of it. You can still apply with paper certificates, or try again."
    } else {
        "MyData did not complete this transfer. Please try again."
    };
    page(
        "未取得資料 / No data received",
        &format!(
            "<p id=\"outcome\" data-error=\"{code}\" role=\"status\">{text}</p><p lang=\"en\">{en}</p>\
             <p><a href=\"/\">重新申請 / Start again</a></p>"
        ),
    )
}

/// Objects in the dataset's JSON that carry the household status.
fn records(v: &serde_json::Value, out: &mut Vec<serde_json::Map<String, serde_json::Value>>) {
    match v {
        serde_json::Value::Object(m) if m.contains_key("lic_title") => out.push(m.clone()),
        serde_json::Value::Object(m) => m.values().for_each(|x| records(x, out)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| records(x, out)),
        _ => {}
    }
}

async fn callback(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let sid = cookie(&headers);
    let pending = sid
        .as_ref()
        .and_then(|sid| inner.pending.lock().ok()?.remove(sid));
    let (Some(sid), Some(pending)) = (sid, pending) else {
        return not_found().into_response();
    };
    let service = match inner.service().await {
        Ok(s) => s,
        Err(e) => return page("無法連線 MyData", &esc(&e)).into_response(),
    };
    let token = match service
        .callback(&pending, q.as_deref().unwrap_or_default())
        .await
    {
        Ok(t) => t,
        Err(e) => return refused_page(&e).into_response(),
    };
    deliver(&inner, service, sid, token).await
}

fn not_found() -> Html<String> {
    page(
        "找不到申請",
        "<p>請回到首頁重新開始。</p><p><a href=\"/\">首頁</a></p>",
    )
}

/// `GET /result`: asks again for the package of a token kept when it was not ready.
async fn result(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let sid = cookie(&headers);
    let token = sid
        .as_ref()
        .and_then(|sid| inner.waiting.lock().ok()?.remove(sid));
    let (Some(sid), Some(token)) = (sid, token) else {
        return not_found().into_response();
    };
    let service = match inner.service().await {
        Ok(s) => s,
        Err(e) => {
            keep(&inner, sid, token);
            return page("無法連線 MyData", &esc(&e)).into_response();
        }
    };
    deliver(&inner, service, sid, token).await
}

/// Keeps `token` for the session `sid` so that `/result` can ask again.
fn keep(inner: &Inner, sid: String, token: Token) {
    if let Ok(mut map) = inner.waiting.lock() {
        if map.len() >= MAX_PENDING {
            map.clear();
        }
        map.insert(sid, token);
    }
}

/// Retrieves, checks and shows `token`'s package. The checks' trust root is fetched first; while
/// the package is not ready (or the trust root cannot be had) the token is kept for `/result`.
async fn deliver(inner: &Inner, service: &Service, sid: String, token: Token) -> Response {
    let trust = match trust(&inner.http, &inner.agencies).await {
        Ok(t) => t,
        Err(e) => {
            keep(inner, sid, token);
            return page(
                "暫時無法驗證資料 / Cannot check data yet",
                &format!(
                    "<p id=\"outcome\" data-error=\"trust\">無法取得機關憑證，尚未取用您的資料：{}</p>{AGAIN}",
                    esc(&format!("{e:#}"))
                ),
            )
            .into_response();
        }
    };
    let zip = match service.package(&token, PACKAGE_WAIT).await {
        Ok(zip) => zip,
        Err(mydata_sdk::Error::NotReady) => {
            keep(inner, sid, token);
            return page(
                "資料尚未備妥 / Not ready yet",
                &format!(
                    "<p id=\"outcome\" data-error=\"not_ready\">機關仍在提供資料。</p>{AGAIN}"
                ),
            )
            .into_response();
        }
        Err(e) => {
            return page(
                "資料無法使用",
                &format!("<p id=\"outcome\">{}</p>", esc(&e.to_string())),
            )
            .into_response();
        }
    };
    let result = async {
        // Reads the platform's keys again if it took up a key after this service read them.
        service
            .verify_package(&zip, &token.transfer_id, &trust, inner.clock.now())
            .await?;
        let raw = mydata_package::read_package(&zip, &Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut found = Vec::new();
        for d in &raw.datasets {
            if let Some(json) = d.files.get("data.json") {
                let v: serde_json::Value = serde_json::from_slice(json)?;
                records(&v, &mut found);
            }
        }
        anyhow::Ok(found)
    }
    .await;
    match result {
        Ok(found) => {
            let eligible = found.iter().any(|r| {
                matches!(
                    r.get("lic_title").and_then(|v| v.as_str()),
                    Some("低收入戶" | "中低收入戶")
                )
            });
            let mut rows = String::new();
            for r in &found {
                for (k, v) in r {
                    let v = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    rows.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v)));
                }
            }
            let verdict = if eligible {
                "<p id=\"outcome\" class=\"ok\">符合學雜費減免資格 / Eligible for tuition reduction</p>"
            } else {
                "<p id=\"outcome\" class=\"no\">查無低收入戶或中低收入戶資格，不符合減免資格 / Not eligible: no low-income or middle-low-income record</p>"
            };
            page(
                "資料已驗證 / Verified data",
                &format!("{verdict}<p>資料經機關簽章與平臺收據驗證（交易 <code id=\"transfer-id\">{}</code>）。</p><table>{rows}</table>", esc(&token.transfer_id)),
            )
            .into_response()
        }
        Err(e) => page(
            "資料無法使用",
            &format!("<p id=\"outcome\">{}</p>", esc(&e.to_string())),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// What a stand-in platform saw: the `state` of the pushed request, and the `Authorization`
    /// of each package request.
    #[derive(Default)]
    struct Seen {
        state: Mutex<Option<String>>,
        polls: Mutex<Vec<String>>,
    }

    async fn listen(app: impl FnOnce(String) -> Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = app(base.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// A platform that issues token `at-1` for transfer `t1`, whose package is never ready (202,
    /// Retry-After longer than a page waits).
    async fn platform(seen: Arc<Seen>) -> String {
        let kem = mydata_sdk::HpkeKeyPair::generate().public_jwk();
        let sig = Keys::generate().public_jwks()["keys"][0].clone();
        listen(move |b| {
            let (par, poll) = (seen.clone(), seen);
            Router::new()
                .route(
                    "/.well-known/oauth-authorization-server",
                    get(move || async move {
                        axum::Json(serde_json::json!({
                            "issuer": b, "authorization_endpoint": format!("{b}/oauth/authorize"),
                            "pushed_authorization_request_endpoint": format!("{b}/oauth/par"),
                            "token_endpoint": format!("{b}/oauth/token"),
                            "jwks_uri": format!("{b}/jwks"),
                        }))
                    }),
                )
                .route(
                    "/jwks",
                    get(move || async move { axum::Json(serde_json::json!({ "keys": [kem, sig] })) }),
                )
                .route(
                    "/oauth/par",
                    post(move |form: axum::Form<HashMap<String, String>>| async move {
                        *par.state.lock().unwrap() = form.get("state").cloned();
                        let body = serde_json::json!({ "request_uri": "urn:r", "expires_in": 60 });
                        (StatusCode::CREATED, axum::Json(body))
                    }),
                )
                .route(
                    "/oauth/token",
                    post(|| async {
                        axum::Json(serde_json::json!({
                            "access_token": "at-1", "token_type": "DPoP", "expires_in": 60,
                            "authorization_details": [{ "type": "mydata_transfer",
                                "transfer_id": "t1", "datasets": [DATASET] }],
                        }))
                    }),
                )
                .route(
                    "/api/v1/transfers/t1/package",
                    get(move |h: HeaderMap| async move {
                        let auth = h.get(header::AUTHORIZATION).unwrap().to_str().unwrap();
                        poll.polls.lock().unwrap().push(auth.to_owned());
                        (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "600")], "")
                    }),
                )
        })
        .await
    }

    /// Agencies whose CA root and CRL are real, or (if `moved`) redirect elsewhere; counts the
    /// requests that reach "elsewhere".
    async fn agencies(moved: bool, elsewhere: Arc<AtomicUsize>) -> String {
        let now = mydata_core::SystemClock.now();
        let ago = mydata_core::Timestamp::from_millis(now.millis() - 86_400_000);
        let later = now.plus(Duration::from_secs(86_400));
        let ca = mydata_package::SimulatedCa::new("Test Root CA", ago, later).unwrap();
        let root = ca.root_pem();
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(ca.crl(&[], ago, later).unwrap().der());
        let crl = format!("-----BEGIN X509 CRL-----\n{b64}\n-----END X509 CRL-----\n");
        listen(move |b| {
            let counted = get(move || async move {
                elsewhere.fetch_add(1, Ordering::SeqCst);
                "moved"
            });
            let router = Router::new().route("/elsewhere", counted);
            if moved {
                let to = format!("{b}/elsewhere");
                router.route(
                    "/ca/root.pem",
                    get(move || async move { Redirect::temporary(&to) }),
                )
            } else {
                router
                    .route("/ca/root.pem", get(move || async move { root }))
                    .route("/ca/crl.pem", get(move || async move { crl }))
            }
        })
        .await
    }

    /// The example service for `platform` and `agencies`, and a browser (its own cookie).
    struct Browser {
        base: String,
        http: reqwest::Client,
        cookie: String,
    }

    impl Browser {
        async fn get(&self, path: &str) -> String {
            let res = self
                .http
                .get(format!("{}{path}", self.base))
                .header(header::COOKIE, &self.cookie)
                .send()
                .await
                .unwrap();
            res.text().await.unwrap()
        }
    }

    /// Starts the service and a transfer: the pushed request's state, and a browser back from
    /// the platform at `/callback` with the code.
    async fn started(platform: &str, agencies: &str, seen: &Seen) -> (Browser, String) {
        let (listener, base) = bind().await.unwrap();
        let clock: Arc<dyn Clock> = Arc::new(mydata_core::SystemClock);
        serve(listener, &base, platform, agencies, Keys::generate(), clock).unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let res = http.post(format!("{base}/start")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let state = seen.state.lock().unwrap().clone().unwrap();
        let callback = format!("/callback?code=c&state={state}&iss={platform}");
        (Browser { base, http, cookie }, callback)
    }

    #[tokio::test]
    async fn the_package_is_not_taken_when_the_trust_root_cannot_be_had() {
        let seen = Arc::new(Seen::default());
        let platform = platform(seen.clone()).await;
        let elsewhere = Arc::new(AtomicUsize::new(0));
        let agencies = agencies(true, elsewhere.clone()).await;
        let (browser, callback) = started(&platform, &agencies, &seen).await;
        let page = browser.get(&callback).await;
        assert!(page.contains("data-error=\"trust\""), "{page}");
        assert!(
            seen.polls.lock().unwrap().is_empty(),
            "the package was not asked for"
        );
        assert_eq!(elsewhere.load(Ordering::SeqCst), 0, "no redirect followed");
    }

    #[tokio::test]
    async fn a_token_whose_package_is_not_ready_is_kept_to_ask_again() {
        let seen = Arc::new(Seen::default());
        let platform = platform(seen.clone()).await;
        let agencies = agencies(false, Arc::new(AtomicUsize::new(0))).await;
        let (browser, callback) = started(&platform, &agencies, &seen).await;
        let page = browser.get(&callback).await;
        assert!(page.contains("data-error=\"not_ready\""), "{page}");
        assert!(page.contains("href=\"/result\""), "{page}");
        let page = browser.get("/result").await;
        assert!(page.contains("data-error=\"not_ready\""), "{page}");
        let polls = seen.polls.lock().unwrap().clone();
        assert_eq!(
            polls,
            ["DPoP at-1", "DPoP at-1"],
            "the same token, asked again"
        );
    }
}
