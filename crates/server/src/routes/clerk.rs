//! The clerk's side of counter verification: sign-in (password + TOTP), the counter page (scan
//! with a keyboard-wedge scanner or type the serial), the verification password form, the
//! verified data for reading and printing with the package download, and the supervisor's view
//! of the office's counters and their lockouts.

use crate::counter::clerk::{self, ClerkProblem, ClerkSession, Role};
use crate::counter::{self, Desk, Refusal, Refused};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::notices::taipei_time;
use crate::pages::Chrome;
use crate::routes::counter::page;
use crate::routes::form::{ClerkPost, CsrfField, Posted, lang_of, on_page};
use crate::routes::path::Path;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use mydata_core::limits;
use mydata_package::Verdict;
use mydata_store::fetch_status;
use serde::Deserialize;
use std::time::Duration;

fn to_login() -> Response {
    Redirect::to("/clerk/login").into_response()
}

fn minutes_seconds(d: Duration, lang: Lang) -> String {
    let s = d.as_secs();
    match lang {
        Lang::ZhTw => format!("{} 分 {} 秒", s / 60, s % 60),
        Lang::En => format!("{} min {} s", s / 60, s % 60),
    }
}

// ---------------------------------------------------------------------------------------------
// Sign-in

#[derive(Debug, Template)]
#[template(path = "counter/clerk_login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub error: Option<(&'static str, String)>,
    /// The refusal is about what was typed (`aria-invalid` on every field: which one is not told).
    pub entry_refused: bool,
    pub username_label: &'static str,
    pub password_label: &'static str,
    pub totp_label: &'static str,
    pub submit: &'static str,
    pub certificate: &'static str,
}

fn login_page(lang: Lang, error: Option<&AppError>) -> LoginPage {
    LoginPage {
        chrome: Chrome::new(lang),
        title: lang.pick("臨櫃人員登入", "Counter staff sign-in"),
        intro: lang.pick(
            "請輸入帳號、密碼與驗證器 App 顯示的 6 位數動態密碼。",
            "Enter your username, password and the 6-digit code your authenticator app shows.",
        ),
        error: error.map(|e| (e.code(), e.detail_in(lang))),
        entry_refused: matches!(
            error,
            Some(AppError::ClerkRefused(
                ClerkProblem::Wrong | ClerkProblem::Incomplete
            ))
        ),
        username_label: lang.pick("帳號", "Username"),
        password_label: lang.pick("密碼", "Password"),
        totp_label: lang.pick("動態密碼（6 位數）", "Authenticator code (6 digits)"),
        submit: lang.pick("登入", "Sign in"),
        certificate: lang.pick("以自然人憑證登入", "Sign in with a citizen certificate"),
    }
}

/// `GET /clerk/login`
pub async fn login_form(uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    page(StatusCode::OK, &login_page(lang, None), None)
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    pub username: Option<String>,
    pub password: Option<String>,
    pub totp: Option<String>,
}

/// The sign-in form again, saying why it was refused: status, code, words and headers (a
/// lockout's Retry-After) from [`AppError`], as every other refusal.
fn refused_sign_in(lang: Lang, e: &AppError) -> Response {
    let form = login_page(lang, Some(e));
    let mut res = page(e.status(), &form, None);
    e.decorate(&mut res);
    res
}

/// `POST /clerk/login`
pub async fn login_submit(
    State(state): State<AppState>,
    Posted { form: f, lang }: Posted<LoginForm>,
) -> Response {
    on_page(lang, async {
        let result = clerk::check_sign_in(
            &state,
            f.username.as_deref().unwrap_or_default().trim(),
            f.password.as_deref().unwrap_or_default(),
            f.totp.as_deref().unwrap_or_default(),
        )
        .await?;
        let c = match result {
            Ok(c) => c,
            Err(r) => return Ok(refused_sign_in(lang, &r.into())),
        };
        let cookie = clerk::start(&state, &c).await?;
        counter::audit(
            &state,
            "clerk.signed_in",
            None,
            &c.id,
            serde_json::json!({ "office": c.office_id }),
        )
        .await?;
        let mut res = Redirect::to("/clerk").into_response();
        res.headers_mut().append(header::SET_COOKIE, cookie);
        Ok::<_, AppError>(res)
    })
    .await
}

/// `GET /clerk/certificate`: a clerk who signed in on the platform with their citizen
/// certificate (level 1) becomes that clerk; the person session is ended at once, so the counter
/// computer does not stay signed in as a citizen. A certificate without a clerk account is refused
/// and its person stays signed in.
pub async fn certificate(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    use crate::identity::session;
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let s = session::load(&state, &headers).await?;
        let v = s.as_ref().and_then(|s| s.verified()).filter(|v| {
            v.method == mydata_core::IdentityMethod::MoicaCert
                && v.level.satisfies(mydata_core::AssuranceLevel::L1)
        });
        let (Some(s), Some(v)) = (s, v) else {
            return Ok(
                Redirect::to("/login/moica_cert?next=%2Fclerk%2Fcertificate").into_response(),
            );
        };
        let clerk_row = state
            .store()
            .clerk_by_subject(&v.subject)
            .await?
            .filter(|c| c.disabled_at.is_none());
        // Refused: the person stays signed in (a consent in progress on this browser goes on).
        let Some(c) = clerk_row else {
            let e = AppError::ClerkRefused(ClerkProblem::CertificateUnknown);
            return Ok(refused_sign_in(lang, &e));
        };
        let cookie = clerk::start(&state, &c).await?;
        let clear = session::end(&state, &s).await?;
        counter::audit(
            &state,
            "clerk.signed_in",
            None,
            &c.id,
            serde_json::json!({ "office": c.office_id, "method": "moica_cert" }),
        )
        .await?;
        let mut res = Redirect::to("/clerk").into_response();
        res.headers_mut().append(header::SET_COOKIE, cookie);
        res.headers_mut().append(header::SET_COOKIE, clear);
        Ok::<_, AppError>(res)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
    pub counter: Option<String>,
    pub serial: Option<String>,
    pub password: Option<String>,
}

impl CsrfField for CsrfForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /clerk/logout`
pub async fn logout(
    State(state): State<AppState>,
    ClerkPost {
        session: s,
        form: _,
        lang,
    }: ClerkPost<CsrfForm>,
) -> Response {
    on_page(lang, async {
        clerk::end(&state, &s).await?;
        let mut res = to_login();
        res.headers_mut()
            .append(header::SET_COOKIE, clerk::clear_cookie(&state));
        Ok::<_, AppError>(res)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The counter page

#[derive(Debug, Template)]
#[template(path = "counter/desk.html")]
pub struct DeskPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub who: String,
    pub evidence: &'static str,
    pub error: Option<(&'static str, String)>,
    /// The refusal is about the serial entered (`aria-invalid` on its input).
    pub serial_refused: bool,
    pub locked: Option<(u64, String)>,
    pub csrf: String,
    pub counters: Vec<(String, String)>,
    pub counter_label: &'static str,
    pub choose_submit: &'static str,
    pub failures: String,
    pub serial_label: &'static str,
    pub serial_hint: &'static str,
    pub scan_submit: &'static str,
    pub supervisor: bool,
    pub supervisor_link: &'static str,
    pub logout: &'static str,
}

pub(crate) fn evidence_text(lang: Lang) -> &'static str {
    lang.pick(
        "只有經由本頁掃描條碼並輸入驗證密碼所取得的資料，才是有效的核驗資料；民眾自行下載後出示或攜帶的檔案、截圖或列印本，不得作為證明。",
        "Only data fetched here, through the person's barcode and verification password, is valid evidence. A file, screenshot or printout the person downloaded and brings is not accepted as such.",
    )
}

/// The counter page with a refused entry on it; a locked counter's answer (429) says in
/// `Retry-After` when the counter takes entries again, as every other lockout does.
async fn refused_at_desk(
    state: &AppState,
    s: &ClerkSession,
    lang: Lang,
    r: Refused,
) -> Result<Response, AppError> {
    let (status, p) = desk_page(state, s, lang, Some(r)).await?;
    let mut res = page(status, &p, None);
    if let Refusal::Locked { retry_after_secs } = r.refusal {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs.max(1)),
        );
    }
    Ok(res)
}

async fn desk_page(
    state: &AppState,
    s: &ClerkSession,
    lang: Lang,
    error: Option<Refused>,
) -> Result<(StatusCode, DeskPage), AppError> {
    let store = state.store();
    let now = state.clock().now();
    let counter = match &s.row.counter_id {
        Some(id) => store.counter(id).await?,
        None => None,
    };
    let counters = if counter.is_none() {
        store
            .counters_of_office(&s.office.id)
            .await?
            .into_iter()
            .map(|c| (c.id, c.name))
            .collect()
    } else {
        Vec::new()
    };
    let mut locked = None;
    let mut failures = String::new();
    if let Some(c) = &counter {
        if let Some(until) = store.counter_locked_until(&c.id, now).await? {
            let left = now.until(until);
            locked = Some((
                left.as_secs(),
                match lang {
                    Lang::ZhTw => format!(
                        "本櫃檯因 15 分鐘內輸入錯誤 5 次，暫停使用至 {}，剩餘 {}。",
                        taipei_time(until),
                        minutes_seconds(left, lang)
                    ),
                    Lang::En => format!(
                        "This counter had 5 wrong entries within 15 minutes and is locked until {} ({} left).",
                        taipei_time(until),
                        minutes_seconds(left, lang)
                    ),
                },
            ));
        }
        let n = store.counter_recent_failures(&c.id, now).await?;
        failures = match lang {
            Lang::ZhTw => format!(
                "本櫃檯 15 分鐘內輸入錯誤 {n} 次（達 {} 次將暫停 15 分鐘）。",
                limits::LOCKOUT_THRESHOLD
            ),
            Lang::En => format!(
                "Wrong entries at this counter in the last 15 minutes: {n} ({} lock it for 15 minutes).",
                limits::LOCKOUT_THRESHOLD
            ),
        };
    }
    let status = error.map_or(StatusCode::OK, |r| r.refusal.status());
    let serial_refused = error.is_some_and(|r| refuses_serial(r.refusal));
    let error = error.map(|r| (r.refusal.code(), r.refusal.message(lang)));
    let office = lang.pick(&s.office.name_zh, &s.office.name_en).to_owned();
    Ok((
        status,
        DeskPage {
            chrome: Chrome::new(lang),
            title: lang.pick("臨櫃核驗", "Counter verification"),
            who: match &counter {
                Some(c) => format!("{office} · {} · {}", c.name, s.clerk.display_name),
                None => format!("{office} · {}", s.clerk.display_name),
            },
            evidence: evidence_text(lang),
            error,
            serial_refused,
            locked,
            csrf: s.row.csrf_token.clone(),
            counters,
            counter_label: lang.pick("您所在的櫃檯", "Your counter"),
            choose_submit: lang.pick("開始服務", "Start"),
            failures,
            serial_label: lang.pick(
                "掃描條碼或輸入條碼序號",
                "Scan the barcode or type its serial",
            ),
            serial_hint: lang.pick(
                "序號為 8 個字元；條碼掃描器會自動輸入並送出。",
                "A serial is 8 characters; a barcode scanner types it and presses Enter for you.",
            ),
            scan_submit: lang.pick("查詢並寄送驗證密碼", "Look up and send the password"),
            supervisor: s.role() == Role::Supervisor,
            supervisor_link: lang.pick("本單位櫃檯狀態", "Counters of this office"),
            logout: lang.pick("登出", "Sign out"),
        },
    ))
}

/// Whether `r` is about the serial scanned or typed, not the counter or a password.
fn refuses_serial(r: Refusal) -> bool {
    matches!(
        r,
        Refusal::SerialEmpty
            | Refusal::SerialMalformed
            | Refusal::SerialUnknown
            | Refusal::SerialExpired
            | Refusal::SerialReplaced
            | Refusal::SerialUsed
            | Refusal::DataGone
            | Refusal::OtherOffice
    )
}

/// `GET /clerk`
pub async fn desk(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let Some(s) = clerk::load(&state, &headers).await? else {
            return Ok(to_login());
        };
        let (status, p) = desk_page(&state, &s, lang, None).await?;
        Ok::<_, AppError>(page(status, &p, None))
    })
    .await
}

/// `POST /clerk/counter`: the clerk says which counter they sit at (one of their office's).
pub async fn choose_counter(
    State(state): State<AppState>,
    ClerkPost {
        session: s,
        form: f,
        lang,
    }: ClerkPost<CsrfForm>,
) -> Response {
    on_page(lang, async {
        let wanted = f.counter.unwrap_or_default();
        let c = state
            .store()
            .counter(&wanted)
            .await?
            .filter(|c| c.office_id == s.office.id)
            .ok_or_else(|| super::not_found("counter", &wanted))?;
        state
            .store()
            .set_clerk_counter(&s.row.id_hash, &c.id)
            .await?;
        Ok::<_, AppError>(Redirect::to("/clerk").into_response())
    })
    .await
}

fn desk_of(s: &ClerkSession) -> Option<Desk> {
    Some(Desk {
        session_hash: s.row.id_hash.clone(),
        clerk_id: s.clerk.id.clone(),
        office: s.office.clone(),
        counter_id: s.row.counter_id.clone()?,
    })
}

/// `POST /clerk/scan`
pub async fn scan(
    State(state): State<AppState>,
    ClerkPost {
        session: s,
        form: f,
        lang,
    }: ClerkPost<CsrfForm>,
) -> Response {
    on_page(lang, async {
        let Some(desk) = desk_of(&s) else {
            return Ok(Redirect::to("/clerk").into_response());
        };
        let input = f.serial.unwrap_or_default();
        if input.len() > 256 {
            let r = Refused {
                refusal: Refusal::SerialMalformed,
                recent_failures: 0,
            };
            return refused_at_desk(&state, &s, lang, r).await;
        }
        match counter::scan(&state, &desk, &input).await? {
            Ok(sc) => {
                Ok(Redirect::to(&format!("/clerk/passwords/{}", sc.password_id)).into_response())
            }
            Err(r) => refused_at_desk(&state, &s, lang, r).await,
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The verification password

#[derive(Debug, Template)]
#[template(path = "counter/password.html")]
pub struct PasswordPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub sent: String,
    pub error: Option<(&'static str, String)>,
    /// The refusal is about the password typed (`aria-invalid` on its input).
    pub password_refused: bool,
    pub action: String,
    pub csrf: String,
    pub password_label: &'static str,
    pub password_hint: &'static str,
    pub submit: &'static str,
    pub back: &'static str,
}

fn password_page(
    lang: Lang,
    s: &ClerkSession,
    pw: &mydata_store::PasswordRow,
    error: Option<Refused>,
) -> PasswordPage {
    let until = mydata_core::Timestamp::from_millis(pw.expires_at);
    PasswordPage {
        chrome: Chrome::new(lang),
        title: lang.pick("輸入驗證密碼", "Enter the verification password"),
        sent: match lang {
            Lang::ZhTw => format!(
                "平臺已將 8 位數驗證密碼寄到民眾登錄的手機或電子郵件，有效至 {}（2 分鐘）。請民眾告訴您後輸入。",
                taipei_time(until)
            ),
            Lang::En => format!(
                "The platform sent an 8-digit verification password to the person's registered phone or email, valid until {} (2 minutes). Type it when they tell you.",
                taipei_time(until)
            ),
        },
        error: error.map(|r| (r.refusal.code(), r.refusal.message(lang))),
        password_refused: error.is_some_and(|r| {
            matches!(
                r.refusal,
                Refusal::PasswordEmpty | Refusal::PasswordMalformed | Refusal::PasswordWrong
            )
        }),
        action: format!("/clerk/passwords/{}", pw.id),
        csrf: s.row.csrf_token.clone(),
        password_label: lang.pick("驗證密碼", "Verification password"),
        password_hint: lang.pick("8 位數字", "8 digits"),
        submit: lang.pick("核驗並取得資料", "Verify and open the data"),
        back: lang.pick("重新掃描", "Scan again"),
    }
}

/// The clerk session's (`None`: signed out) pending verification password, or where to send the clerk instead.
async fn desk_and_password(
    state: &AppState,
    s: Option<ClerkSession>,
    id: &str,
) -> Result<Result<(ClerkSession, Desk, mydata_store::PasswordRow), Response>, AppError> {
    let Some(s) = s else {
        return Ok(Err(to_login()));
    };
    let Some(desk) = desk_of(&s) else {
        return Ok(Err(Redirect::to("/clerk").into_response()));
    };
    let pw = counter::pending_password(state, &desk, id)
        .await?
        .ok_or_else(|| super::not_found("verification password", id))?;
    Ok(Ok((s, desk, pw)))
}

/// `GET /clerk/passwords/{id}`
pub async fn password_form(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (s, _, pw) =
            match desk_and_password(&state, clerk::load(&state, &headers).await?, &id).await? {
                Ok(x) => x,
                Err(r) => return Ok(r),
            };
        Ok::<_, AppError>(page(
            StatusCode::OK,
            &password_page(lang, &s, &pw, None),
            None,
        ))
    })
    .await
}

/// `POST /clerk/passwords/{id}`
pub async fn password_submit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClerkPost {
        session: s,
        form: f,
        lang,
    }: ClerkPost<CsrfForm>,
) -> Response {
    on_page(lang, async {
        let (s, desk, pw) = match desk_and_password(&state, Some(s), &id).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let input = f.password.unwrap_or_default();
        let input = if input.len() > 64 {
            "x"
        } else {
            input.as_str()
        };
        match counter::verify(&state, &desk, &pw, input).await? {
            Ok(tid) => Ok(Redirect::to(&format!("/clerk/transfers/{tid}")).into_response()),
            Err(r) => {
                // A locked counter or a dead password sends the clerk back to the counter page.
                if matches!(
                    r.refusal,
                    Refusal::Locked { .. } | Refusal::PasswordExpired | Refusal::PasswordUsed
                ) {
                    return refused_at_desk(&state, &s, lang, r).await;
                }
                let status = r.refusal.status();
                Ok::<_, AppError>(page(status, &password_page(lang, &s, &pw, Some(r)), None))
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The data

#[derive(Debug)]
pub struct DatasetView {
    /// The agency's own documents (PDF) to open or print: (href, label).
    pub files: Vec<(String, String)>,
    pub id: String,
    pub name: String,
    pub agency: String,
    pub checks: Vec<(String, bool)>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub text: String,
}

#[derive(Debug, Template)]
#[template(path = "counter/data.html")]
pub struct DataPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub who: String,
    pub evidence: &'static str,
    pub all_ok: bool,
    pub verification: String,
    pub datasets: Vec<DatasetView>,
    pub missing: Vec<String>,
    pub package_href: String,
    pub csrf: String,
    pub package_label: &'static str,
    pub package_note: &'static str,
    pub back: &'static str,
}

/// The clerk session's (`None`: signed out) granted transfer, or where to send the clerk instead.
async fn granted(
    state: &AppState,
    s: Option<ClerkSession>,
    tid: &str,
) -> Result<Result<(ClerkSession, Desk, mydata_store::Transfer), Response>, AppError> {
    let Some(s) = s else {
        return Ok(Err(to_login()));
    };
    let Some(desk) = desk_of(&s) else {
        return Ok(Err(Redirect::to("/clerk").into_response()));
    };
    let now = state.clock().now();
    let not_found = || super::not_found("transfer", tid);
    state
        .store()
        .counter_grant(tid, &s.row.id_hash, now)
        .await?
        .ok_or_else(not_found)?;
    let t = state.store().transfer(tid).await?.ok_or_else(not_found)?;
    Ok(Ok((s, desk, t)))
}

const MAX_ROWS: usize = 500;

/// Why a dataset is not in the package, in words: the clerk is not told a status code.
fn missing_reason(status: &str, lang: Lang) -> &'static str {
    match status {
        fetch_status::REFUSED => lang.pick("機關未提供此項資料", "the agency did not provide it"),
        fetch_status::REJECTED => lang.pick(
            "機關回覆的資料未通過驗證",
            "the agency's answer failed verification",
        ),
        fetch_status::FAILED => lang.pick("機關暫時無法提供", "the agency was unavailable"),
        fetch_status::PENDING | fetch_status::NOT_READY => {
            lang.pick("機關尚未提供", "the agency has not answered yet")
        }
        _ => lang.pick("原因不明", "reason unknown"),
    }
}

fn render_dataset(
    state: &AppState,
    lang: Lang,
    transfer_id: &str,
    ds: &mydata_package::SignedDataset,
    report: Option<&mydata_package::DatasetReport>,
) -> DatasetView {
    let c = state.catalog();
    let d = c.dataset(&ds.dataset_id);
    let name = d
        .map(|d| lang.pick(&d.name_zh, &d.name_en).to_owned())
        .unwrap_or_else(|| ds.dataset_id.clone());
    let agency = d
        .and_then(|d| c.agency(&d.agency))
        .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
        .unwrap_or_default();
    let names_zh = [
        "憑證有效",
        "自憑證取得機關公鑰",
        "資料摘要未遭竄改",
        "各檔案未遭竄改",
    ];
    let checks = match report {
        Some(r) => r
            .steps()
            .iter()
            .enumerate()
            .map(|(i, (en, v))| {
                let label = lang.pick(names_zh.get(i).copied().unwrap_or(en), en);
                let mark = match v {
                    Verdict::Passed => lang.pick("通過", "passed"),
                    Verdict::Failed(_) => lang.pick("未通過", "FAILED"),
                    Verdict::NotRun => lang.pick("未檢查", "not run"),
                };
                let sep = lang.pick("：", ": ");
                (format!("{label}{sep}{mark}"), v.is_passed())
            })
            .collect(),
        None => vec![(lang.pick("未能驗證", "not verified").to_owned(), false)],
    };
    let mut header = Vec::new();
    let mut rows = Vec::new();
    let mut text = String::new();
    if let Some(csv) = ds.files.get("data.csv") {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(csv.as_slice());
        if let Ok(h) = r.headers() {
            header = h.iter().map(str::to_owned).collect();
        }
        for rec in r.records().take(MAX_ROWS).flatten() {
            rows.push(rec.iter().map(str::to_owned).collect());
        }
    } else if let Some(json) = ds.files.get("data.json") {
        text = serde_json::from_slice::<serde_json::Value>(json)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_default();
    }
    let files = ds
        .files
        .keys()
        .filter(|f| f.ends_with(".pdf"))
        .map(|f| {
            (
                format!("/clerk/transfers/{transfer_id}/files/{}/{f}", ds.dataset_id),
                match lang {
                    Lang::ZhTw => format!("機關文件 {f}（可列印）"),
                    Lang::En => format!("The agency's document {f} (printable)"),
                },
            )
        })
        .collect();
    DatasetView {
        files,
        id: ds.dataset_id.clone(),
        name,
        agency,
        checks,
        header,
        rows,
        text,
    }
}

/// `GET /clerk/transfers/{id}`
pub async fn data(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(tid): Path<String>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (s, desk, t) = match granted(&state, clerk::load(&state, &headers).await?, &tid).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let now = state.clock().now();
        let zip = counter::peek_package(&state, &t.id).await?;
        let trust = state
            .data()
            .trust
            .get(now)
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
        let report =
            mydata_package::verify_package_with_keys(&zip, &trust, state.platform_keys(), now);
        let raw = mydata_package::read_package(&zip, &mydata_package::ReadLimits::default())
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
        let datasets: Vec<DatasetView> = raw
            .datasets
            .iter()
            .map(|ds| {
                let r = report
                    .datasets
                    .iter()
                    .find(|r| r.dataset_id == ds.dataset_id);
                render_dataset(&state, lang, &t.id, ds, r)
            })
            .collect();
        let missing = t
            .datasets
            .iter()
            .filter(|d| !raw.datasets.iter().any(|x| x.dataset_id == d.dataset_id))
            .map(|d| {
                let name = state
                    .catalog()
                    .dataset(&d.dataset_id)
                    .map(|x| lang.pick(&x.name_zh, &x.name_en).to_owned())
                    .unwrap_or_else(|| d.dataset_id.clone());
                let why = missing_reason(&d.status, lang);
                match lang {
                    Lang::ZhTw => format!("「{name}」未能取得（{why}），此項請依原程序查驗。"),
                    Lang::En => format!("{name} could not be fetched ({why}); check it the usual way."),
                }
            })
            .collect();
        let all_ok = report.is_ok();
        counter::audit(
            &state,
            "counter.data_access",
            Some(&t),
            &desk.clerk_id,
            serde_json::json!({ "office": desk.office.id, "counter": desk.counter_id, "access": "view" }),
        )
        .await?;
        let p = DataPage {
            chrome: Chrome::new(lang),
            title: lang.pick("核驗資料", "Verified data"),
            who: format!(
                "{} · {}",
                lang.pick(&s.office.name_zh, &s.office.name_en),
                taipei_time(now)
            ),
            evidence: crate::routes::clerk::evidence_text(lang),
            all_ok,
            verification: if all_ok {
                lang.pick(
                    "驗證結果：全部通過。每份資料都有資料提供機關的數位簽章，平臺收據亦驗證無誤。",
                    "Verification: all passed. Every dataset carries its agency's digital signature, and the platform's receipt checks out.",
                )
                .to_owned()
            } else {
                lang.pick(
                    "驗證結果：有項目未通過，請勿採用未通過的資料。",
                    "Verification: some checks FAILED; do not rely on data that did not pass.",
                )
                .to_owned()
            },
            datasets,
            missing,
            package_href: format!("/clerk/transfers/{}/package", t.id),
            csrf: s.row.csrf_token.clone(),
            package_label: lang.pick("下載已簽章的資料包（ZIP）", "Download the signed package (ZIP)"),
            package_note: lang.pick(
                "資料包只能下載一次，下載後平臺即刪除資料；請先列印或閱讀完畢。",
                "The package can be downloaded once; the platform then deletes the data. Read or print this page first.",
            ),
            back: lang.pick("回到櫃檯", "Back to the counter"),
        };
        Ok::<_, AppError>(page(StatusCode::OK, &p, None))
    })
    .await
}

/// `POST /clerk/transfers/{id}/package`: the signed package, once (a POST with the form's token:
/// taking it deletes the data, which no link prefetch may do).
pub async fn package(
    State(state): State<AppState>,
    Path(tid): Path<String>,
    ClerkPost {
        session: s,
        form: _,
        lang,
    }: ClerkPost<CsrfForm>,
) -> Response {
    on_page(lang, async {
        let (_, desk, t) = match granted(&state, Some(s), &tid).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let zip = crate::packages::take_package(&state, &t.id, &desk.clerk_id)
            .await
            .map_err(|e| match e {
                crate::packages::TakeError::NotFound(id) | crate::packages::TakeError::Gone(id) => {
                    AppError::PackageGone(id)
                }
                crate::packages::TakeError::Internal(m) => AppError::Internal(anyhow::anyhow!(m)),
                crate::packages::TakeError::Store(e) => e.into(),
            })?;
        counter::audit(
            &state,
            "counter.data_access",
            Some(&t),
            &desk.clerk_id,
            serde_json::json!({ "office": desk.office.id, "counter": desk.counter_id, "access": "package" }),
        )
        .await?;
        let disposition = format!("attachment; filename=\"mydata-{}.zip\"", t.id);
        Ok::<_, AppError>(
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/zip"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_str(&disposition)
                            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
                    ),
                ],
                zip,
            )
                .into_response(),
        )
    })
    .await
}

/// `GET /clerk/transfers/{id}/files/{dataset}/{file}`: one file of the verified package (the
/// agency's PDF to print), read without taking the package.
pub async fn file(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path((tid, dataset, name)): Path<(String, String, String)>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (_, desk, t) = match granted(&state, clerk::load(&state, &headers).await?, &tid).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let zip = counter::peek_package(&state, &t.id).await?;
        let raw = mydata_package::read_package(&zip, &mydata_package::ReadLimits::default())
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
        let not_found = || AppError::NotFound {
            what: "file",
            id: format!("{}/{}", super::clip(&dataset), super::clip(&name)),
        };
        let bytes = raw
            .datasets
            .iter()
            .find(|d| d.dataset_id == dataset)
            .and_then(|d| d.files.get(&name))
            .ok_or_else(not_found)?;
        let ctype = match name.rsplit('.').next() {
            Some("pdf") => "application/pdf",
            Some("json") => "application/json",
            Some("csv") => "text/csv; charset=utf-8",
            _ => "application/octet-stream",
        };
        counter::audit(
            &state,
            "counter.data_access",
            Some(&t),
            &desk.clerk_id,
            serde_json::json!({ "office": desk.office.id, "counter": desk.counter_id, "access": "file", "dataset": dataset, "file": name }),
        )
        .await?;
        Ok::<_, AppError>(
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(ctype)),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("inline"),
                    ),
                ],
                bytes.clone(),
            )
                .into_response(),
        )
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Supervisor

#[derive(Debug)]
pub struct CounterState {
    pub id: String,
    pub name: String,
    pub locked: bool,
    pub state: String,
    pub failures: u32,
}

#[derive(Debug, Template)]
#[template(path = "counter/supervisor.html")]
pub struct SupervisorPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub office: String,
    pub col_counter: &'static str,
    pub col_state: &'static str,
    pub col_failures: &'static str,
    pub counters: Vec<CounterState>,
    pub back: &'static str,
}

/// `GET /clerk/supervisor`: every counter of the supervisor's office and its lockout.
pub async fn supervisor(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let Some(s) = clerk::load(&state, &headers).await? else {
            return Ok(to_login());
        };
        if s.role() != Role::Supervisor {
            return Err(AppError::Forbidden(
                lang.pick(
                    "只有主管可以查看本辦公室的各櫃檯。",
                    "only a supervisor sees the office's counters",
                )
                .into(),
            ));
        }
        let store = state.store();
        let now = state.clock().now();
        let mut counters = Vec::new();
        for c in store.counters_of_office(&s.office.id).await? {
            let until = store.counter_locked_until(&c.id, now).await?;
            let failures = store.counter_recent_failures(&c.id, now).await?;
            counters.push(CounterState {
                state: match until {
                    Some(u) => match lang {
                        Lang::ZhTw => format!(
                            "暫停使用至 {}（剩餘 {}）",
                            taipei_time(u),
                            minutes_seconds(now.until(u), lang)
                        ),
                        Lang::En => format!(
                            "locked until {} ({} left)",
                            taipei_time(u),
                            minutes_seconds(now.until(u), lang)
                        ),
                    },
                    None => lang.pick("可使用", "open").to_owned(),
                },
                locked: until.is_some(),
                id: c.id,
                name: c.name,
                failures,
            });
        }
        let p = SupervisorPage {
            chrome: Chrome::new(lang),
            title: lang.pick("本單位櫃檯狀態", "Counters of this office"),
            office: lang.pick(&s.office.name_zh, &s.office.name_en).to_owned(),
            col_counter: lang.pick("櫃檯", "Counter"),
            col_state: lang.pick("狀態", "State"),
            col_failures: lang.pick("15 分鐘內錯誤次數", "Wrong entries, last 15 min"),
            counters,
            back: lang.pick("回到櫃檯", "Back to the counter"),
        };
        Ok::<_, AppError>(page(StatusCode::OK, &p, None))
    })
    .await
}
