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
use mydata_sdk::{AuthorizationRequest, Keys, Pending, Service, ServiceConfig, TrustStore};
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

struct Inner {
    service: tokio::sync::OnceCell<Service>,
    config: ServiceConfig,
    agencies: String,
    clock: Arc<dyn Clock>,
    pending: Mutex<HashMap<String, Pending>>,
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
    let inner = Arc::new(Inner {
        service: tokio::sync::OnceCell::new(),
        config,
        agencies: agencies.to_owned(),
        clock,
        pending: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/", get(home))
        .route("/start", post(start))
        .route("/callback", get(callback))
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

async fn trust(agencies: &str) -> anyhow::Result<TrustStore> {
    let http = reqwest::Client::new();
    let root = http
        .get(format!("{agencies}/ca/root.pem"))
        .send()
        .await?
        .text()
        .await?;
    let crl = http
        .get(format!("{agencies}/ca/crl.pem"))
        .send()
        .await?
        .text()
        .await?;
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
    let Some(pending) = cookie(&headers).and_then(|sid| inner.pending.lock().ok()?.remove(&sid))
    else {
        return page(
            "找不到申請",
            "<p>請回到首頁重新開始。</p><p><a href=\"/\">首頁</a></p>",
        )
        .into_response();
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
    let result = async {
        let zip = service.package(&token, Duration::from_secs(120)).await?;
        let trust = trust(&inner.agencies).await?;
        let now = inner.clock.now();
        mydata_sdk::verify(
            &zip,
            &token.transfer_id,
            &trust,
            service.platform_signing_key(),
            now,
        )?;
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
