//! Sign-in pages: choose a method (only those every chosen dataset accepts), each method's form,
//! first-use contact registration and code entry, password registration, sign-out, and the
//! session as JSON. The flow is the same for every method (see `identity`): CSRF, lockout per
//! account and per client address, verification, failure counting, first use, rotation.

use crate::error::{AppError, CodeProblem, render};
use crate::i18n::Lang;
use crate::identity::messages::{self, Channel, OutgoingMessage};
use crate::identity::methods::{MethodContext, MethodError};
use crate::identity::session::{self, CSRF_HEADER, Pending, Session, Verified};
use crate::identity::{Refusal, password};
use crate::pages::Chrome;
pub(crate) use crate::routes::form::lang_of;
use crate::routes::form::{PostedForm, on_page};
use crate::routes::path::Path;
use crate::state::AppState;
use askama::Template;
use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Extensions, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use mydata_core::identity::SubjectKind;
use mydata_core::{AssuranceLevel, IdentityMethod, Timestamp, limits};
use mydata_store::{CodeRow, LockoutRule, NewAuditEvent};
use rand::Rng;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// A new code may be asked for at most this often per session.
const RESEND_AFTER: Duration = Duration::from_secs(60);

const RULE: LockoutRule = LockoutRule {
    threshold: limits::LOCKOUT_THRESHOLD,
    window: limits::LOCKOUT_WINDOW,
    duration: limits::LOCKOUT_DURATION,
};

/// A local path to go to after sign-in (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control)
                && n.len() <= 512 =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

pub(crate) fn with_cookie(mut res: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(crate) fn page<T: Template>(status: StatusCode, t: &T) -> Response {
    match render(t) {
        Ok(html) => (status, html).into_response(),
        Err(e) => e.into_page(Lang::default()),
    }
}

fn method_name(m: IdentityMethod, lang: Lang) -> &'static str {
    lang.pick(m.name_zh(), m.name_en())
}

fn level_text(level: AssuranceLevel, lang: Lang) -> String {
    match lang {
        Lang::ZhTw => format!("身分驗證等級 {level}（1 為最高）"),
        Lang::En => format!("Assurance level {level} (1 is the strongest)"),
    }
}

/// The client address for lockout: the configured proxy header's last entry, else the peer.
pub(crate) fn client_address(state: &AppState, headers: &HeaderMap, ext: &Extensions) -> String {
    let name = &state.settings().identity.client_address_header;
    if !name.is_empty()
        && let Some(v) = headers.get(name.as_str()).and_then(|v| v.to_str().ok())
        && let Some(last) = v
            .rsplit(',')
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    {
        return last.to_owned();
    }
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) async fn audit(
    state: &AppState,
    kind: &str,
    subject: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), AppError> {
    state
        .store()
        .append_audit(&NewAuditEvent {
            at: state.clock().now(),
            kind: kind.into(),
            subject: subject.map(str::to_owned),
            transfer_id: None,
            actor: subject.unwrap_or("anonymous").into(),
            detail,
        })
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Choose a method

#[derive(Debug, Default, Deserialize)]
pub struct ChooseQuery {
    /// Comma-separated dataset IDs.
    pub datasets: Option<String>,
    pub next: Option<String>,
    pub lang: Option<String>,
}

#[derive(Debug)]
pub struct MethodLink {
    pub code: &'static str,
    pub href: String,
    pub name: &'static str,
    pub level: String,
    pub note: String,
}

#[derive(Debug, Template)]
#[template(path = "login/choose.html")]
pub struct ChoosePage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub current: Option<String>,
    pub step_up: Option<String>,
    pub methods: Vec<MethodLink>,
    pub methods_empty_text: &'static str,
    pub why_title: &'static str,
    pub exclusions: Vec<String>,
}

/// Whether a verified session is good enough for a selection.
pub fn satisfies(v: &Verified, sel: &mydata_core::catalog::Selection) -> bool {
    v.level.satisfies(sel.required_level)
        && sel
            .identity_methods
            .iter()
            .any(|m| m.subject_kind() == v.subject_kind && v.level.satisfies(m.level()))
}

/// `GET /login`
pub async fn choose(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<ChooseQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    match choose_inner(&state, &headers, query, lang).await {
        Ok(r) => r,
        Err(e) => e.into_page(lang),
    }
}

async fn choose_inner(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<ChooseQuery>, axum::extract::rejection::QueryRejection>,
    lang: Lang,
) -> Result<Response, AppError> {
    let Query(q) = query?;
    let next = safe_next(q.next.as_deref());
    let c = state.catalog();
    let ids: Vec<&str> = q
        .datasets
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let selection = if ids.is_empty() {
        None
    } else {
        Some(c.selection(&ids).map_err(|e| match e {
            mydata_core::catalog::SelectionError::UnknownDataset(id) => {
                super::not_found("dataset", &id)
            }
            mydata_core::catalog::SelectionError::Empty => AppError::EmptySelection,
        })?)
    };
    let session = session::load(state, headers).await?;
    let verified = session.as_ref().and_then(Session::verified);
    if let (Some(v), Some(sel)) = (&verified, &selection)
        && satisfies(v, sel)
    {
        return Ok(Redirect::to(&next).into_response());
    }
    let allowed: Vec<IdentityMethod> = match &selection {
        Some(sel) => sel.identity_methods.clone(),
        None => IdentityMethod::ALL.to_vec(),
    };
    let dataset_name = |id: &str| {
        c.dataset(id)
            .map(|d| lang.pick(&d.name_zh, &d.name_en).to_owned())
            .unwrap_or_else(|| id.to_owned())
    };
    let qs = |m: IdentityMethod| {
        let mut href = format!("/login/{}?next={}", m.code(), urlencode(&next));
        if let Some(d) = &q.datasets {
            href.push_str(&format!("&datasets={}", urlencode(d)));
        }
        href
    };
    let mut methods = Vec::new();
    let mut exclusions = Vec::new();
    for m in allowed {
        if !state.identity().offers(m) {
            exclusions.push(match lang {
                Lang::ZhTw => format!("{}：本平臺尚未提供。", m.name_zh()),
                Lang::En => format!("{}: not offered by this platform yet.", m.name_en()),
            });
            continue;
        }
        let note = match (m, lang) {
            (IdentityMethod::MoeaCert, Lang::ZhTw) => "法人（公司、機關團體）使用。".to_owned(),
            (IdentityMethod::MoeaCert, Lang::En) => {
                "For legal persons (companies, organisations).".to_owned()
            }
            (IdentityMethod::TwFido, Lang::ZhTw) => {
                "以手機或電腦的通行密鑰（指紋、臉部或螢幕鎖）登入；需先以自然人憑證登入並註冊。"
                    .to_owned()
            }
            (IdentityMethod::TwFido, Lang::En) => {
                "A passkey on your phone or computer (fingerprint, face or screen lock); register it after a citizen-certificate sign-in.".to_owned()
            }
            (IdentityMethod::NhiCard, Lang::ZhTw) => "需先以自然人憑證登入並註冊密碼。".to_owned(),
            (IdentityMethod::NhiCard, Lang::En) => {
                "Needs a password registered after a citizen-certificate sign-in.".to_owned()
            }
            _ => String::new(),
        };
        methods.push(MethodLink {
            code: m.code(),
            href: qs(m),
            name: method_name(m, lang),
            level: level_text(m.level(), lang),
            note,
        });
    }
    if let Some(sel) = &selection {
        for ex in &sel.excluded_methods {
            let names: Vec<String> = ex.excluded_by.iter().map(|d| dataset_name(d)).collect();
            exclusions.push(match lang {
                Lang::ZhTw => format!(
                    "不能使用{}，因為「{}」不接受此方式。",
                    ex.method.name_zh(),
                    names.join("」、「")
                ),
                Lang::En => format!(
                    "{} cannot be used because {} does not accept it.",
                    ex.method.name_en(),
                    names.join(", ")
                ),
            });
        }
    }
    let current = verified.as_ref().map(|v| match lang {
        Lang::ZhTw => format!("您目前已用{}登入（等級 {}）。", v.method.name_zh(), v.level),
        Lang::En => format!(
            "You are signed in with {} (level {}).",
            v.method.name_en(),
            v.level
        ),
    });
    let step_up = match (&verified, &selection) {
        // Signed in as the other kind of subject: no level helps, say so rather than "step up".
        (Some(v), Some(sel))
            if !sel
                .identity_methods
                .iter()
                .any(|m| m.subject_kind() == v.subject_kind) =>
        {
            Some(match (v.subject_kind, lang) {
                (SubjectKind::Legal, Lang::ZhTw) => "您以工商憑證（法人）登入，但您選擇的是個人的資料，法人不能申請；請由本人以下列方式登入。".to_owned(),
                (SubjectKind::Legal, Lang::En) => "You are signed in for a company (business certificate), but the data you chose is a person's, which a company cannot request: the person signs in with one of these methods.".to_owned(),
                (SubjectKind::Natural, Lang::ZhTw) => "您以個人身分登入，但您選擇的是法人的資料；請以工商憑證登入。".to_owned(),
                (SubjectKind::Natural, Lang::En) => "You are signed in as a person, but the data you chose is a company's: sign in with the business certificate.".to_owned(),
            })
        }
        (Some(_), Some(sel)) => Some(match lang {
            Lang::ZhTw => format!(
                "您選擇的資料需要等級 {} 或更高、且為這些資料都接受的驗證方式，請再驗證一次。",
                sel.required_level
            ),
            Lang::En => format!(
                "The data you chose needs level {} or stronger with a method all of it accepts: please verify again.",
                sel.required_level
            ),
        }),
        _ => None,
    };
    let page_t = ChoosePage {
        chrome: Chrome::new(lang),
        title: lang.pick("選擇身分驗證方式", "Choose how to prove who you are"),
        intro: lang.pick(
            "以下是您選擇的每一項資料都接受的方式。",
            "These are the methods that every dataset you chose accepts.",
        ),
        current,
        step_up,
        methods_empty_text: if methods.is_empty() {
            lang.pick(
                "沒有一種驗證方式是您選擇的所有資料都接受的，請分開申請。",
                "No method is accepted by all the datasets you chose; request them separately.",
            )
        } else {
            ""
        },
        methods,
        why_title: lang.pick("為什麼有些方式不能用", "Why some methods are not offered"),
        exclusions,
    };
    Ok(with_cookie(page(StatusCode::OK, &page_t), None))
}

pub(crate) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The sign-in page's address that comes back to `next` afterwards, carrying the datasets the
/// person had chosen (so the page can ask for the level they need).
pub(crate) fn login_href(next: &str, datasets: &[String]) -> String {
    let mut href = format!("/login?next={}", urlencode(next));
    if !datasets.is_empty() {
        href.push_str(&format!("&datasets={}", urlencode(&datasets.join(","))));
    }
    href
}

// ---------------------------------------------------------------------------------------------
// A method's form

#[derive(Debug)]
pub struct FieldView {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: &'static str,
    pub autocomplete: &'static str,
    pub inputmode: &'static str,
    pub hint: &'static str,
    pub required: bool,
    /// `aria-invalid`: the refusal on the page is about what was typed here.
    pub invalid: bool,
    /// `aria-describedby`: the refusal (`form-error`) and the hint, as there are.
    pub described_by: String,
}

#[derive(Debug)]
pub struct FormError {
    pub code: &'static str,
    pub message: String,
    /// The value typed was refused (not only the attempt): its input is marked `aria-invalid`.
    pub invalid: bool,
}

#[derive(Debug, Template)]
#[template(path = "login/method.html")]
pub struct MethodPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub level: String,
    pub error: Option<FormError>,
    pub action: String,
    pub csrf: String,
    pub next: String,
    pub fields: Vec<FieldView>,
    pub cert: bool,
    /// TW FidO: the page asks the device for a passkey (`static/passkey.js`).
    pub passkey: Option<crate::routes::passkeys::PasskeyTexts>,
    pub challenge_url: String,
    pub agent_url: String,
    pub msg_agent: &'static str,
    pub msg_pin: &'static str,
    pub msg_locked: &'static str,
    pub msg_busy: &'static str,
    pub pin_label: &'static str,
    pub pin_hint: &'static str,
    pub submit: &'static str,
    pub back: &'static str,
    pub back_href: String,
    pub links: Vec<(String, &'static str)>,
}

fn field_view(name: &'static str, lang: Lang, refusal: Option<Refusal>) -> FieldView {
    let (label, kind, autocomplete, inputmode, hint, required) = match name {
        "id_number" => (
            lang.pick(
                "身分證統一編號或居留證號",
                "ID number (or resident certificate number)",
            ),
            "text",
            "off",
            "text",
            lang.pick("例：A123456789", "e.g. A123456789"),
            true,
        ),
        "nhi_card_no" => (
            lang.pick(
                "健保卡卡號（12 碼）",
                "Health-insurance card number (12 digits)",
            ),
            "text",
            "off",
            "numeric",
            "",
            true,
        ),
        "password" => (
            lang.pick("健保卡註冊密碼", "Registered password"),
            "password",
            "current-password",
            "text",
            "",
            true,
        ),
        "household_no" => (
            lang.pick(
                "戶號（擇一填寫）",
                "Household number (fill in this or the date below)",
            ),
            "text",
            "off",
            "text",
            lang.pick(
                "戶口名簿上的戶號，例：F1234567",
                "As on the household register, e.g. F1234567",
            ),
            false,
        ),
        "id_card_issue_date" => (
            lang.pick(
                "身分證發證日期（擇一填寫）",
                "ID card issue date (or the household number above)",
            ),
            "date",
            "off",
            "text",
            "",
            false,
        ),
        _ => ("", "hidden", "off", "text", "", false),
    };
    let mut described_by = Vec::new();
    if refusal.is_some() {
        described_by.push("form-error".to_owned());
    }
    if !hint.is_empty() {
        described_by.push(format!("h-{name}"));
    }
    FieldView {
        name,
        label,
        kind,
        autocomplete,
        inputmode,
        hint,
        required,
        invalid: refusal.is_some_and(|r| refuses_field(r, name)),
        described_by: described_by.join(" "),
    }
}

/// Whether `r` is about what was typed into the field `name`. A mismatch marks every field
/// alike, as its message does: it must not tell which one was wrong.
fn refuses_field(r: Refusal, name: &str) -> bool {
    match r {
        Refusal::InvalidIdNumber | Refusal::InvalidBusinessId => name == "id_number",
        Refusal::MalformedInput | Refusal::Mismatch | Refusal::WrongPassword => true,
        _ => false,
    }
}

fn method_page(
    state: &AppState,
    m: IdentityMethod,
    lang: Lang,
    csrf: &str,
    next: &str,
    refusal: Option<Refusal>,
) -> MethodPage {
    let cert = matches!(m, IdentityMethod::MoicaCert | IdentityMethod::MoeaCert);
    let fields: Vec<FieldView> = if cert {
        Vec::new()
    } else {
        state
            .identity()
            .method(m)
            .map(|x| {
                x.fields()
                    .iter()
                    .map(|f| field_view(f, lang, refusal))
                    .collect()
            })
            .unwrap_or_default()
    };
    let error = refusal.map(|r| FormError {
        code: r.code(),
        message: match lang {
            Lang::ZhTw => r.message_zh().to_owned(),
            Lang::En => format!("{r}."),
        },
        invalid: fields.iter().any(|f| f.invalid),
    });
    let mut links = Vec::new();
    if m == IdentityMethod::TwFido {
        links.push((
            "/account/passkeys".to_owned(),
            lang.pick(
                "註冊或管理通行密鑰（需先以自然人憑證登入）",
                "Register or manage passkeys (after a citizen-certificate sign-in)",
            ),
        ));
    }
    if m == IdentityMethod::NhiCard {
        links.push((
            "/account/password".to_owned(),
            lang.pick(
                "註冊或變更健保卡密碼（需先以自然人憑證登入）",
                "Register or change the password (after a citizen-certificate sign-in)",
            ),
        ));
    }
    MethodPage {
        chrome: Chrome::new(lang),
        title: method_name(m, lang),
        level: level_text(m.level(), lang),
        error,
        action: format!("/login/{}", m.code()),
        csrf: csrf.to_owned(),
        next: next.to_owned(),
        fields,
        cert,
        passkey: (m == IdentityMethod::TwFido)
            .then(|| crate::routes::passkeys::PasskeyTexts::sign_in(lang)),
        challenge_url: format!("/login/{}/challenge", m.code()),
        agent_url: state.settings().identity.card_agent_url.trim_end_matches('/').to_owned(),
        msg_agent: lang.pick(
            "找不到讀卡程式（mydata card-agent），請確認已啟動並插入卡片。",
            "The card reader program (mydata card-agent) did not answer: start it and insert the card.",
        ),
        msg_pin: lang.pick("PIN 碼錯誤，連續錯誤 3 次卡片將鎖住。", "Wrong PIN. Three wrong PINs lock the card."),
        msg_locked: lang.pick("卡片已鎖住，請洽發卡單位。", "The card is locked; contact its issuer."),
        msg_busy: lang.pick("正在請卡片簽章…", "Asking the card to sign…"),
        pin_label: lang.pick("卡片 PIN 碼", "Card PIN"),
        pin_hint: lang.pick("PIN 碼只傳給您電腦上的讀卡程式，不會傳給平臺。", "The PIN goes only to the card program on your computer, never to the platform."),
        submit: match m {
            IdentityMethod::TwFido => lang.pick("以通行密鑰登入", "Sign in with a passkey"),
            _ => lang.pick(if cert { "以卡片簽章登入" } else { "驗證" }, if cert { "Sign in with the card" } else { "Verify" }),
        },
        back: lang.pick("選擇其他方式", "Choose another method"),
        back_href: format!("/login?next={}", urlencode(next)),
        links,
    }
}

fn parse_method(state: &AppState, code: &str) -> Result<IdentityMethod, AppError> {
    code.parse::<IdentityMethod>()
        .ok()
        .filter(|m| state.identity().offers(*m))
        .ok_or_else(|| AppError::MethodNotOffered(super::clip(code)))
}

/// Content Security Policy of the certificate page: it may also call the card agent.
fn cert_csp(state: &AppState) -> Option<HeaderValue> {
    let agent = url::Url::parse(&state.settings().identity.card_agent_url).ok()?;
    let origin = agent.origin().ascii_serialization();
    HeaderValue::from_str(&format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' {origin}; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ))
    .ok()
}

/// `GET /login/{method}`
pub async fn method_form(
    State(state): State<AppState>,
    Path(code): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<ChooseQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let Query(q) = query?;
        let m = parse_method(&state, &code)?;
        let (s, cookie) = session::ensure(&state, &headers).await?;
        let p = method_page(
            &state,
            m,
            lang,
            s.csrf(),
            &safe_next(q.next.as_deref()),
            None,
        );
        let mut res = with_cookie(page(StatusCode::OK, &p), cookie);
        if p.cert
            && let Some(csp) = cert_csp(&state)
        {
            res.headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        Ok::<_, AppError>(res)
    })
    .await
}

/// `POST /login/{method}/challenge` (JSON; CSRF token in the `x-csrf-token` header).
pub async fn challenge(
    State(state): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let m = parse_method(&state, &code)?;
    if !matches!(m, IdentityMethod::MoicaCert | IdentityMethod::MoeaCert) {
        return Err(AppError::MethodNotOffered(code));
    }
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let s = session::for_post(&state, &headers, csrf).await?;
    let origin = platform_origin(&state, &headers);
    let ch = crate::identity::certificate::issue(&state, s.id_hash(), &origin).await?;
    let mut res = Json(ch).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// The platform's origin as signed by cards: configured, else from this request's Host.
pub fn platform_origin(state: &AppState, headers: &HeaderMap) -> String {
    let configured = state
        .settings()
        .identity
        .public_origin
        .trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let scheme = if state.settings().tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| state.settings().listen.to_string());
    format!("{scheme}://{host}")
}

/// `POST /login/{method}`
pub async fn submit(
    State(state): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
    post: PostedForm,
) -> Response {
    let lang = post.lang;
    on_page(lang, submit_inner(&state, &code, &headers, &ext, post)).await
}

/// Checks the lockout of `keys`; refuses with the time left.
pub(crate) async fn check_lock(state: &AppState, keys: &[&str]) -> Result<(), AppError> {
    let now = state.clock().now();
    if let Some(until) = state.store().locked_until(keys, now).await? {
        return Err(AppError::LockedOut {
            retry_after_secs: now.until(until).as_secs().max(1),
        });
    }
    Ok(())
}

/// Counts a failure on `keys`; logs and audits a lockout it causes. Returns the lockout error
/// when this failure locked a key.
pub(crate) async fn count_failure(
    state: &AppState,
    keys: &[&str],
    subject: Option<&str>,
) -> Result<Option<AppError>, AppError> {
    let now = state.clock().now();
    let Some(until) = state.store().record_failure(keys, RULE, now).await? else {
        return Ok(None);
    };
    tracing::warn!(keys = keys.len(), "sign-in locked after repeated failures");
    audit(
        state,
        "identity.lockout",
        subject,
        serde_json::json!({ "until": until.millis() }),
    )
    .await?;
    Ok(Some(AppError::LockedOut {
        retry_after_secs: now.until(until).as_secs().max(1),
    }))
}

async fn submit_inner(
    state: &AppState,
    code: &str,
    headers: &HeaderMap,
    ext: &Extensions,
    post: PostedForm,
) -> Result<Response, AppError> {
    let PostedForm {
        session: s,
        form,
        lang,
    } = post;
    let m = parse_method(state, code)?;
    let next = safe_next(form.get("next").map(String::as_str));
    let method = state
        .identity()
        .method(m)
        .ok_or_else(|| AppError::MethodNotOffered(code.to_owned()))?;
    let addr_key = state
        .identity()
        .pseudonyms
        .address(&client_address(state, headers, ext));
    check_lock(state, &[&addr_key]).await?;

    let refuse = |r: Refusal| {
        let p = method_page(state, m, lang, s.csrf(), &next, Some(r));
        page(AppError::IdentityRefused(r).status(), &p)
    };
    let audit_failure = |subject: Option<String>, r: Refusal| async move {
        tracing::info!(
            method = m.code(),
            code = r.code(),
            "identity verification failed"
        );
        audit(
            state,
            "identity.failed",
            subject.as_deref(),
            serde_json::json!({ "method": m.code(), "code": r.code() }),
        )
        .await
    };

    // The ID number (or certificate) is validated before anything else is done with it.
    let account = match method.account(&form) {
        Ok(a) => a,
        Err(r) => {
            audit_failure(None, r).await?;
            if r.counts()
                && let Some(locked) = count_failure(state, &[&addr_key], None).await?
            {
                return Err(locked);
            }
            return Ok(refuse(r));
        }
    };
    let subject = session::pseudonym(state, &account);
    let acct_key = format!("acct-{subject}");
    check_lock(state, &[&acct_key, &addr_key]).await?;

    let cx = MethodContext {
        state,
        session_hash: s.id_hash(),
    };
    let proven = match method.verify(&cx, &form, &account).await {
        Ok(p) => p,
        Err(MethodError::Refused(r)) => {
            audit_failure(Some(subject.clone()), r).await?;
            if r.counts()
                && let Some(locked) =
                    count_failure(state, &[&acct_key, &addr_key], Some(&subject)).await?
            {
                return Err(locked);
            }
            return Ok(refuse(r));
        }
        Err(MethodError::Unavailable(e)) => {
            tracing::warn!(method = m.code(), error = %e, "identity check unavailable");
            return Err(AppError::IdentityUnavailable);
        }
        Err(MethodError::Internal(e)) => return Err(AppError::Internal(anyhow::anyhow!(e))),
    };
    if proven != account {
        return Err(AppError::Internal(anyhow::anyhow!(
            "method {} proved another subject than the account",
            m.code()
        )));
    }
    let kind = proven.kind();
    let now = state.clock().now();
    let row = state
        .store()
        .ensure_subject(&subject, session::kind_code(kind), now)
        .await?;
    audit(
        state,
        "identity.verified",
        Some(&subject),
        serde_json::json!({ "method": m.code(), "level": m.level().number() }),
    )
    .await?;
    tracing::info!(
        method = m.code(),
        level = m.level().number(),
        "identity verified"
    );
    if row.first_use_at.is_none() {
        let pending = Pending {
            subject,
            subject_kind: kind,
            method: m,
            verified_at: now,
            next,
            subject_sealed: Some(session::seal_subject(state, &proven)?),
        };
        let json = serde_json::to_string(&pending).map_err(|e| AppError::Internal(e.into()))?;
        state
            .store()
            .set_session_pending(s.id_hash(), Some(&json))
            .await?;
        return Ok(with_cookie(
            Redirect::to("/login/first-use").into_response(),
            None,
        ));
    }
    let v = Verified {
        subject,
        subject_kind: kind,
        method: m,
        level: m.level(),
        verified_at: now,
        subject_sealed: Some(session::seal_subject(state, &proven)?),
    };
    let (_, cookie) = session::rotate_verified(state, &s, &v).await?;
    Ok(with_cookie(
        Redirect::to(&next).into_response(),
        Some(cookie),
    ))
}

// ---------------------------------------------------------------------------------------------
// First use: register a contact and prove it with a one-time code

#[derive(Debug, Template)]
#[template(path = "login/contact.html")]
pub struct ContactPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub error: Option<FormError>,
    pub csrf: String,
    pub channel_label: &'static str,
    pub email_label: &'static str,
    pub sms_label: &'static str,
    pub address_label: &'static str,
    pub address_hint: &'static str,
    pub submit: &'static str,
}

fn contact_page(lang: Lang, csrf: &str, error: Option<FormError>) -> ContactPage {
    ContactPage {
        chrome: Chrome::new(lang),
        title: lang.pick("首次使用：登錄聯絡方式", "First use: register a contact"),
        intro: lang.pick(
            "第一次使用平臺時，請登錄電子郵件或手機號碼，我們會寄送一次性驗證碼確認是您本人。之後的使用通知也會寄到這裡。",
            "The first time you use the platform, register an email address or mobile number: we send a one-time code to confirm it is you. Notices of each use of your data go there too.",
        ),
        error,
        csrf: csrf.to_owned(),
        channel_label: lang.pick("寄送方式", "Send the code by"),
        email_label: lang.pick("電子郵件", "Email"),
        sms_label: lang.pick("手機簡訊", "Text message (SMS)"),
        address_label: lang.pick("電子郵件或手機號碼", "Email address or mobile number"),
        address_hint: lang.pick("手機號碼例：0912345678", "Mobile numbers like 0912345678"),
        submit: lang.pick("寄送驗證碼", "Send the code"),
    }
}

#[derive(Debug, Template)]
#[template(path = "login/code.html")]
pub struct CodePage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: String,
    pub error: Option<FormError>,
    pub csrf: String,
    pub code_label: &'static str,
    pub submit: &'static str,
    pub resend: &'static str,
}

fn code_page(lang: Lang, csrf: &str, to: &str, error: Option<FormError>) -> CodePage {
    CodePage {
        chrome: Chrome::new(lang),
        title: lang.pick("輸入驗證碼", "Enter the code"),
        intro: match lang {
            Lang::ZhTw => format!("我們已將 6 位數驗證碼寄到 {to}，請在 5 分鐘內輸入。"),
            Lang::En => format!("We sent a 6-digit code to {to}. Enter it within 5 minutes."),
        },
        error,
        csrf: csrf.to_owned(),
        code_label: lang.pick("驗證碼", "Code"),
        submit: lang.pick("確認", "Confirm"),
        resend: lang.pick(
            "重新寄送或更換聯絡方式",
            "Send again or use another contact",
        ),
    }
}

fn form_error(e: &AppError, lang: Lang) -> FormError {
    FormError {
        code: e.code(),
        message: e.detail_in(lang),
        // No code sent, or one asked for too soon: nothing typed was wrong.
        invalid: !matches!(
            e,
            AppError::CodeRefused(CodeProblem::NoneSent | CodeProblem::TooSoon)
        ),
    }
}

/// The session with a verification waiting for first use, or a redirect to the start.
async fn pending_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Result<(Session, Pending), Response>, AppError> {
    match session::load(state, headers).await? {
        Some(s) => match s.pending() {
            Some(p) => Ok(Ok((s, p))),
            None => Ok(Err(Redirect::to("/login").into_response())),
        },
        None => Err(AppError::SessionExpired),
    }
}

/// `GET /login/first-use`
pub async fn first_use_form(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (s, _) = match pending_session(&state, &headers).await? {
            Ok(x) => x,
            Err(redirect) => return Ok(redirect),
        };
        Ok::<_, AppError>(with_cookie(
            page(StatusCode::OK, &contact_page(lang, s.csrf(), None)),
            None,
        ))
    })
    .await
}

/// A Taiwan mobile number as +8869XXXXXXXX, from 09XXXXXXXX or +8869XXXXXXXX.
fn mobile(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    let rest = digits
        .strip_prefix("+886")
        .map(|r| format!("0{r}"))
        .unwrap_or(digits);
    (rest.len() == 10 && rest.starts_with("09") && rest.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("+886{}", &rest[1..]))
}

fn email(raw: &str) -> Option<String> {
    let t = raw.trim();
    (t.len() <= 254 && t.parse::<lettre::Address>().is_ok()).then(|| t.to_owned())
}

/// Shows an address without giving it away on a shared screen.
fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((user, domain)) => {
            let first: String = user.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => {
            let tail: String = address
                .chars()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("*******{tail}")
        }
    }
}

/// `POST /login/first-use`
pub async fn first_use_submit(
    State(state): State<AppState>,
    PostedForm {
        session: s,
        form,
        lang,
    }: PostedForm,
) -> Response {
    on_page(lang, async {
        let Some(p) = s.pending() else {
            return Ok(Redirect::to("/login").into_response());
        };
        let raw = form.get("address").map(String::as_str).unwrap_or_default();
        let channel = match form.get("channel").map(String::as_str) {
            Some("sms") => Channel::Sms,
            Some("email") | None => Channel::Email,
            Some(_) => return Err(AppError::InvalidContact("unknown channel".into())),
        };
        let address = match channel {
            Channel::Email => email(raw),
            Channel::Sms => mobile(raw),
        };
        let Some(address) = address else {
            let e = AppError::InvalidContact(
                lang.pick(
                    "請輸入有效的電子郵件，或 09 開頭的 10 位數手機號碼。",
                    "Enter a valid email address, or a 10-digit mobile number starting with 09.",
                )
                .into(),
            );
            let fe = FormError {
                code: e.code(),
                message: e.to_string(),
                invalid: true,
            };
            return Ok(page(e.status(), &contact_page(lang, s.csrf(), Some(fe))));
        };
        let now = state.clock().now();
        if let Some(prev) = state.store().code_for_session(s.id_hash()).await?
            && Timestamp::from_millis(prev.created_at).plus(RESEND_AFTER) > now
            && prev.used_at.is_none()
        {
            let e = AppError::CodeRefused(CodeProblem::TooSoon);
            return Ok(page(
                e.status(),
                &code_page(
                    lang,
                    s.csrf(),
                    &mask(&prev.address),
                    Some(form_error(&e, lang)),
                ),
            ));
        }
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ttl = Duration::from_secs(state.settings().identity.code_ttl_secs);
        state
            .store()
            .put_code(&CodeRow {
                id: id.clone(),
                session_hash: s.id_hash().to_owned(),
                subject: p.subject.clone(),
                channel: channel.code().into(),
                address: address.clone(),
                code_hash: state.identity().pseudonyms.code(&id, &code),
                attempts: 0,
                created_at: now.millis(),
                expires_at: now.plus(ttl).millis(),
                used_at: None,
            })
            .await?;
        let minutes = ttl.as_secs().div_ceil(60);
        messages::enqueue(
            &state,
            &OutgoingMessage {
                channel,
                to: address.clone(),
                title: "MyData 驗證碼 / verification code".into(),
                body: format!(
                    "您的 MyData 驗證碼是 {code}，{minutes} 分鐘內有效。若不是您本人操作，請忽略此訊息。\nYour MyData code is {code}, valid for {minutes} minutes. If this was not you, ignore this message."
                ),
                audit: None,
            },
        )
        .await?;
        audit(
            &state,
            "identity.code_sent",
            Some(&p.subject),
            serde_json::json!({ "channel": channel.code() }),
        )
        .await?;
        Ok::<_, AppError>(with_cookie(
            Redirect::to("/login/first-use/code").into_response(),
            None,
        ))
    })
    .await
}

/// `GET /login/first-use/code`
pub async fn code_form(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (s, _) = match pending_session(&state, &headers).await? {
            Ok(x) => x,
            Err(redirect) => return Ok(redirect),
        };
        let Some(c) = state.store().code_for_session(s.id_hash()).await? else {
            return Ok(Redirect::to("/login/first-use").into_response());
        };
        Ok::<_, AppError>(with_cookie(
            page(
                StatusCode::OK,
                &code_page(lang, s.csrf(), &mask(&c.address), None),
            ),
            None,
        ))
    })
    .await
}

/// `POST /login/first-use/code`
pub async fn code_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    PostedForm {
        session: s,
        form,
        lang,
    }: PostedForm,
) -> Response {
    on_page(lang, async {
        let Some(p) = s.pending() else {
            return Ok(Redirect::to("/login").into_response());
        };
        let addr_key = state
            .identity()
            .pseudonyms
            .address(&client_address(&state, &headers, &ext));
        let acct_key = format!("acct-{}", p.subject);
        check_lock(&state, &[&acct_key, &addr_key]).await?;
        let now = state.clock().now();
        let row = state.store().code_for_session(s.id_hash()).await?;
        let given = form.get("code").map(|c| c.trim()).unwrap_or_default();
        let problem = match &row {
            None => Some(CodeProblem::NoneSent),
            Some(r) if r.used_at.is_some() => Some(CodeProblem::Used),
            Some(r) if Timestamp::from_millis(r.expires_at) <= now => Some(CodeProblem::Expired),
            Some(r) => {
                if !state
                    .store()
                    .count_code_attempt(&r.id, state.settings().identity.code_max_attempts)
                    .await?
                {
                    Some(CodeProblem::TooManyAttempts)
                } else {
                    let expected = state.identity().pseudonyms.code(&r.id, given);
                    let same: bool = expected.as_bytes().ct_eq(r.code_hash.as_bytes()).into();
                    if !same {
                        Some(CodeProblem::Wrong)
                    } else if !state.store().use_code(&r.id, now).await? {
                        Some(CodeProblem::Used)
                    } else {
                        None
                    }
                }
            }
        };
        if let Some(problem) = problem {
            audit(
                &state,
                "identity.failed",
                Some(&p.subject),
                serde_json::json!({ "method": "one_time_code", "code": problem.code() }),
            )
            .await?;
            if problem != CodeProblem::NoneSent
                && let Some(locked) =
                    count_failure(&state, &[&acct_key, &addr_key], Some(&p.subject)).await?
            {
                return Err(locked);
            }
            let e = AppError::CodeRefused(problem);
            let to = row.as_ref().map(|r| mask(&r.address)).unwrap_or_default();
            return Ok(page(
                e.status(),
                &code_page(lang, s.csrf(), &to, Some(form_error(&e, lang))),
            ));
        }
        let Some(r) = row else {
            return Err(AppError::CodeRefused(CodeProblem::NoneSent));
        };
        state
            .store()
            .complete_first_use(&p.subject, &r.channel, &r.address, now)
            .await?;
        audit(
            &state,
            "identity.first_use_confirmed",
            Some(&p.subject),
            serde_json::json!({ "method": p.method.code(), "channel": r.channel }),
        )
        .await?;
        let v = Verified {
            subject: p.subject.clone(),
            subject_kind: p.subject_kind,
            method: p.method,
            level: p.method.level(),
            verified_at: p.verified_at,
            subject_sealed: p.subject_sealed.clone(),
        };
        let (_, cookie) = session::rotate_verified(&state, &s, &v).await?;
        Ok::<_, AppError>(with_cookie(
            Redirect::to(&safe_next(Some(&p.next))).into_response(),
            Some(cookie),
        ))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Password registration (level-1 sessions only), sign-out, session as JSON

#[derive(Debug, Template)]
#[template(path = "login/password.html")]
pub struct PasswordPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub error: Option<FormError>,
    pub csrf: String,
    pub password_label: &'static str,
    pub confirm_label: &'static str,
    pub submit: &'static str,
}

fn password_page(lang: Lang, csrf: &str, error: Option<FormError>) -> PasswordPage {
    PasswordPage {
        chrome: Chrome::new(lang),
        title: lang.pick("註冊健保卡密碼", "Register a health-card password"),
        intro: lang.pick(
            "此密碼用於「健保卡+密碼」驗證（等級 3）。至少 10 個字元，請勿與其他網站相同。",
            "This password is for the health-insurance card method (level 3). At least 10 characters; do not reuse one from another site.",
        ),
        error,
        csrf: csrf.to_owned(),
        password_label: lang.pick("新密碼", "New password"),
        confirm_label: lang.pick("再輸入一次", "Repeat it"),
        submit: lang.pick("註冊密碼", "Register the password"),
    }
}

#[derive(Debug, Template)]
#[template(path = "login/notice.html")]
pub struct NoticePage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub message: String,
    pub code: &'static str,
    pub alert: bool,
    pub link: Option<(String, &'static str)>,
    pub form: Option<(String, String, &'static str)>,
}

/// The session for password registration: verified at level 1 as a natural person.
fn require_level1(s: Option<&Session>) -> Result<(), AppError> {
    let v = s.and_then(Session::verified).ok_or(AppError::NotSignedIn)?;
    if v.level != AssuranceLevel::L1 || v.subject_kind != SubjectKind::Natural {
        return Err(AppError::InsufficientLevel {
            required: AssuranceLevel::L1,
        });
    }
    Ok(())
}

/// `GET /account/password`
pub async fn password_form(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let s = session::load(&state, &headers).await?;
        if s.as_ref().and_then(Session::verified).is_none() {
            return Ok(Redirect::to("/login/moica_cert?next=/account/password").into_response());
        }
        require_level1(s.as_ref())?;
        let csrf = s.as_ref().map(|s| s.csrf().to_owned()).unwrap_or_default();
        Ok::<_, AppError>(with_cookie(
            page(StatusCode::OK, &password_page(lang, &csrf, None)),
            None,
        ))
    })
    .await
}

/// `POST /account/password`
pub async fn password_submit(
    State(state): State<AppState>,
    PostedForm {
        session: s,
        form,
        lang,
    }: PostedForm,
) -> Response {
    on_page(lang, async {
        require_level1(Some(&s))?;
        let v = s.verified().ok_or(AppError::NotSignedIn)?;
        let pw = form.get("password").cloned().unwrap_or_default();
        let confirm = form.get("confirm").cloned().unwrap_or_default();
        if let Err(why) = password::check_new(&pw, &confirm) {
            let msg = match (why, lang) {
                ("too_short", Lang::ZhTw) => "密碼至少需要 10 個字元。",
                ("too_short", Lang::En) => "The password needs at least 10 characters.",
                ("too_long", Lang::ZhTw) => "密碼最多 128 個字元。",
                ("too_long", Lang::En) => "The password may have at most 128 characters.",
                (_, Lang::ZhTw) => "兩次輸入的密碼不同。",
                (_, Lang::En) => "The two passwords differ.",
            };
            let e = AppError::PasswordRejected(msg);
            return Ok(page(
                e.status(),
                &password_page(
                    lang,
                    s.csrf(),
                    Some(FormError {
                        code: e.code(),
                        message: msg.into(),
                        invalid: true,
                    }),
                ),
            ));
        }
        let hash = tokio::task::spawn_blocking(move || password::hash(&pw))
            .await
            .map_err(|e| AppError::Internal(e.into()))?
            .map_err(|e| AppError::Internal(anyhow::anyhow!("argon2: {e}")))?;
        state
            .store()
            .set_password_hash(&v.subject, &hash, state.clock().now())
            .await?;
        audit(
            &state,
            "identity.password_registered",
            Some(&v.subject),
            serde_json::json!({}),
        )
        .await?;
        let n = NoticePage {
            chrome: Chrome::new(lang),
            title: lang.pick("密碼已註冊", "Password registered"),
            message: lang.pick("之後可以用健保卡卡號與此密碼驗證身分（等級 3）。", "You can now verify with your health-insurance card number and this password (level 3).").into(),
            code: "password_registered",
            alert: false,
            link: Some(("/".into(), lang.pick("回到首頁", "Back to the home page"))),
            form: None,
        };
        Ok::<_, AppError>(with_cookie(page(StatusCode::OK, &n), None))
    })
    .await
}

/// `POST /logout`
pub async fn logout(
    State(state): State<AppState>,
    PostedForm {
        session: s,
        form,
        lang,
    }: PostedForm,
) -> Response {
    on_page(lang, async {
        // From a consent question ("not you?"): back to the request, for the right person.
        let next = safe_next(form.get("next").map(String::as_str));
        crate::oauth::flow::release_on_sign_out(&state, &s, &next).await?;
        let cookie = session::end(&state, &s).await?;
        Ok::<_, AppError>(with_cookie(
            Redirect::to(&next).into_response(),
            Some(cookie),
        ))
    })
    .await
}

/// `GET /api/v1/session`: what the current session proves (no personal data).
pub async fn session_json(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let s = session::load(&state, &headers).await?;
    let v = s.as_ref().and_then(Session::verified);
    let body = serde_json::json!({
        "signed_in": v.is_some(),
        "method": v.as_ref().map(|v| v.method.code()),
        "level": v.as_ref().map(|v| v.level.number()),
        "subject_kind": v.as_ref().map(|v| session::kind_code(v.subject_kind)),
        "verified_at": v.as_ref().map(|v| v.verified_at.millis()),
        "first_use_pending": s.as_ref().is_some_and(|s| s.pending().is_some()),
        "expires_at": s.as_ref().map(|s| s.row.expires_at),
    });
    let mut res = Json(body).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `GET /dev/outbox`: messages the demo kept instead of sending (only with `messages.dev_outbox`).
pub async fn outbox(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    if !state.settings().messages.dev_outbox {
        return AppError::RouteNotFound.into_page(lang);
    }
    on_page(lang, async {
        let rows = state.store().outbox(50).await?;
        let origin = platform_origin(&state, &headers);
        let by_name = origin.replacen("//127.0.0.1:", "//localhost:", 1);
        let p = OutboxPage {
            cards_title: lang.pick("以測試卡片登入", "Signing in with a test card"),
            cards_intro: match lang {
                Lang::ZhTw => format!(
                    "自然人憑證與工商憑證登入需要讀卡程式：在另一個終端機執行下列指令之一（卡片在 {0}），再到 {1}/login/moica_cert 或 {1}/login/moea_cert 輸入 PIN 123456。雙證件與健保卡登入所需的健保卡號、戶號與身分證發證日期（模擬資料）列在每位人員下方。通行密鑰須以網域名稱開啟本平臺：到 {2}/login/moica_cert 以自然人憑證登入後，在 {2}/account/passkeys 註冊，之後即可在 {2}/login/tw_fido 使用。",
                    demo_cards_dir(&state).display(),
                    origin,
                    by_name
                ),
                Lang::En => format!(
                    "Certificate sign-in needs the card program: run one of these commands in another terminal (the cards are in {0}), then enter PIN 123456 at {1}/login/moica_cert or {1}/login/moea_cert. The health-card number, household number and ID-card date (synthetic) that dual ID and the health-card sign-in ask for are shown under each person. Passkeys need the platform opened by a domain name: sign in by citizen certificate at {2}/login/moica_cert, register one at {2}/account/passkeys, then use it at {2}/login/tw_fido.",
                    demo_cards_dir(&state).display(),
                    origin,
                    by_name
                ),
            },
            cards: demo_cards(&state, &origin, lang),
            chrome: Chrome::new(lang),
            title: lang.pick("測試寄件匣", "Demo outbox"),
            warning: lang.pick(
                "這是展示模式：平臺不寄出郵件或簡訊，所有訊息（含驗證碼）都顯示在這裡。測試卡片的 PIN 碼都是 123456。",
                "Demo mode: the platform sends no email or SMS; every message, codes included, is shown here. All demo cards have PIN 123456.",
            ),
            empty: lang.pick("目前沒有訊息。", "No messages yet."),
            messages: rows
                .into_iter()
                .map(|r| OutboxItem {
                    at: time_text(r.at),
                    channel: r.channel,
                    recipient: r.recipient,
                    title: r.title,
                    body: r.body,
                })
                .collect(),
        };
        Ok::<_, AppError>(with_cookie(page(StatusCode::OK, &p), None))
    })
    .await
}

pub(crate) fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| {
            let t = t.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC));
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default()
}

#[derive(Debug)]
pub struct OutboxItem {
    pub at: String,
    pub channel: String,
    pub recipient: String,
    pub title: String,
    pub body: String,
}

/// A demo card to try, with the command that serves it.
#[derive(Debug)]
pub struct DemoCard {
    pub who: String,
    pub kind: String,
    pub command: String,
    /// For a person: what dual ID and the health-card sign-in ask for (synthetic data).
    pub details: String,
}

/// The demo's `people.json` (written by `mydata demo`): ID number → dual-ID details.
fn demo_people(dir: &std::path::Path, lang: Lang) -> std::collections::HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("people.json")) else {
        return Default::default();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Default::default();
    };
    let s = |p: &serde_json::Value, k: &str| p[k].as_str().unwrap_or("-").to_owned();
    v["people"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let text = match lang {
                Lang::ZhTw => format!(
                    "健保卡號 {}；戶號 {}；身分證發證日期 {}",
                    s(p, "nhi_card_no"),
                    s(p, "household_no"),
                    s(p, "id_card_issued")
                ),
                Lang::En => format!(
                    "health card {}; household {}; ID card issued {}",
                    s(p, "nhi_card_no"),
                    s(p, "household_no"),
                    s(p, "id_card_issued")
                ),
            };
            (s(p, "id_number"), text)
        })
        .collect()
}

fn demo_cards_dir(state: &AppState) -> std::path::PathBuf {
    state.settings().data_dir.join("demo").join("cards")
}

/// A few valid cards from the demo's `index.json` (synthetic people and a company), if present.
fn demo_cards(state: &AppState, origin: &str, lang: Lang) -> Vec<DemoCard> {
    let dir = demo_cards_dir(state);
    let people = dir
        .parent()
        .map(|d| demo_people(d, lang))
        .unwrap_or_default();
    let Ok(text) = std::fs::read_to_string(dir.join("index.json")) else {
        return Vec::new();
    };
    let Ok(index) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let cards = index["cards"].as_array().cloned().unwrap_or_default();
    // An agent started from this page also serves the other loopback name of the same server,
    // so a person can move to `localhost` (where passkeys work) with the same card.
    let mut origins = format!("--allow-origin {origin}");
    for (a, b) in [
        ("//127.0.0.1:", "//localhost:"),
        ("//localhost:", "//127.0.0.1:"),
    ] {
        if origin.contains(a) {
            origins.push_str(&format!(" --allow-origin {}", origin.replacen(a, b, 1)));
        }
    }
    let valid = |c: &&serde_json::Value| c["status"] == "valid";
    let of_kind = |k: &'static str| {
        cards
            .iter()
            .filter(valid)
            .filter(move |c| c["kind"].as_str().is_some_and(|x| x.contains(k)))
    };
    of_kind("citizen")
        .take(3)
        .chain(of_kind("business").take(1))
        .map(|c| DemoCard {
            who: format!(
                "{} ({})",
                c["subject"].as_str().unwrap_or_default(),
                c["serial_number"].as_str().unwrap_or_default()
            ),
            kind: match c["kind"].as_str() {
                Some("business") => IdentityMethod::MoeaCert.name_zh(),
                _ => IdentityMethod::MoicaCert.name_zh(),
            }
            .to_owned(),
            command: format!(
                "mydata card-agent --card {} {origins}",
                dir.join(c["file"].as_str().unwrap_or_default()).display()
            ),
            details: people
                .get(c["serial_number"].as_str().unwrap_or_default())
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

#[derive(Debug, Template)]
#[template(path = "login/outbox.html")]
pub struct OutboxPage {
    pub cards_title: &'static str,
    pub cards_intro: String,
    pub cards: Vec<DemoCard>,
    pub chrome: Chrome,
    pub title: &'static str,
    pub warning: &'static str,
    pub empty: &'static str,
    pub messages: Vec<OutboxItem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/x?y=1")), "/x?y=1");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "", "x"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn contacts_are_normalised_and_masked() {
        assert_eq!(mobile("0912-345-678").as_deref(), Some("+886912345678"));
        assert_eq!(mobile("+886912345678").as_deref(), Some("+886912345678"));
        assert_eq!(mobile("0212345678"), None);
        assert!(email("a@b.example").is_some());
        assert!(email("not an email").is_none());
        assert_eq!(mask("alice@example.org"), "a***@example.org");
        assert_eq!(mask("+886912345678"), "*******678");
    }
}
