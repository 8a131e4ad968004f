//! The person's side of counter verification: choose a counter service (its datasets bundled in
//! one step), the office to visit, consent, identity, then the barcode page with its serial,
//! refreshed after 20 minutes, and the barcode as SVG and PNG.

use crate::counter::{self, barcode};
use crate::error::{AppError, render};
use crate::i18n::Lang;
use crate::identity::session::{self, Session};
use crate::notices::taipei_time;
use crate::pages::Chrome;
pub(crate) use crate::routes::form::lang_of;
use crate::routes::form::{CsrfField, PostedForm, on_page};
use crate::routes::login::satisfies;
use crate::routes::path::Path;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use mydata_core::catalog::{Service, ServiceMode};
use mydata_core::transfer::{TransferKind, TransferState};
use mydata_store::{CounterTransferRow, OfficeRow, Transfer};
use serde::Deserialize;

pub(crate) fn page<T: Template>(
    status: StatusCode,
    t: &T,
    cookie: Option<HeaderValue>,
) -> Response {
    let mut res = match render(t) {
        Ok(html) => (status, html).into_response(),
        Err(e) => return e.into_page(Lang::default()),
    };
    if let Some(c) = cookie {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn counter_services(state: &AppState) -> impl Iterator<Item = &Service> {
    state
        .catalog()
        .services()
        .iter()
        .filter(|s| s.mode.offers(ServiceMode::Counter))
}

fn counter_service<'a>(state: &'a AppState, id: &str) -> Result<&'a Service, AppError> {
    state
        .catalog()
        .service(id)
        .filter(|s| s.mode.offers(ServiceMode::Counter))
        .ok_or_else(|| super::not_found("service", id))
}

fn dataset_name(state: &AppState, id: &str, lang: Lang) -> String {
    state
        .catalog()
        .dataset(id)
        .map(|d| lang.pick(&d.name_zh, &d.name_en).to_owned())
        .unwrap_or_else(|| id.to_owned())
}

fn office_name(o: &OfficeRow, lang: Lang) -> String {
    lang.pick(&o.name_zh, &o.name_en).to_owned()
}

// ---------------------------------------------------------------------------------------------
// Service list

#[derive(Debug)]
pub struct ServiceItem {
    pub id: String,
    pub href: String,
    pub name: String,
    pub provider: String,
    pub datasets: String,
}

#[derive(Debug, Template)]
#[template(path = "counter/services.html")]
pub struct ServicesPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub datasets_label: &'static str,
    pub services: Vec<ServiceItem>,
    pub mine_title: &'static str,
    /// The signed-in person's counter applications still open: (href, text).
    pub mine: Vec<(String, String)>,
}

/// The signed-in person's counter transfers that can still be shown at a counter.
async fn open_applications(
    state: &AppState,
    headers: &HeaderMap,
    lang: Lang,
) -> Result<Vec<(String, String)>, AppError> {
    let Some(v) = session::load(state, headers)
        .await?
        .as_ref()
        .and_then(Session::verified)
    else {
        return Ok(Vec::new());
    };
    let now = state.clock().now();
    let mut out = Vec::new();
    for t in state.store().transfers_for_subject(&v.subject, 50).await? {
        let open = matches!(
            t.state,
            TransferState::Created | TransferState::Fetching | TransferState::Ready
        );
        if t.kind != TransferKind::Counter || !open || now >= t.expires_at {
            continue;
        }
        let service = state
            .store()
            .counter_transfer(&t.id)
            .await?
            .and_then(|c| state.catalog().service(&c.service_id))
            .map(|s| lang.pick(&s.name_zh, &s.name_en).to_owned())
            .unwrap_or_default();
        let text = match lang {
            Lang::ZhTw => format!("{service}（資料保存至 {}）", taipei_time(t.expires_at)),
            Lang::En => format!("{service} (data kept until {})", taipei_time(t.expires_at)),
        };
        out.push((format!("/counter/transfers/{}", t.id), text));
    }
    Ok(out)
}

/// `GET /counter`
pub async fn services(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    let mine = match open_applications(&state, &headers, lang).await {
        Ok(m) => m,
        Err(e) => return e.into_page(lang),
    };
    let services = counter_services(&state)
        .map(|s| ServiceItem {
            id: s.id.clone(),
            href: format!("/counter/services/{}", s.id),
            name: lang.pick(&s.name_zh, &s.name_en).to_owned(),
            provider: lang.pick(&s.provider_zh, &s.provider_en).to_owned(),
            datasets: s
                .datasets
                .iter()
                .map(|d| dataset_name(&state, d, lang))
                .collect::<Vec<_>>()
                .join(lang.pick("、", ", ")),
        })
        .collect();
    page(
        StatusCode::OK,
        &ServicesPage {
            chrome: Chrome::new(lang),
            title: lang.pick("臨櫃服務", "Counter services"),
            intro: lang.pick(
                "到機關櫃檯申辦時，不必再帶紙本證明：選擇要申辦的服務，平臺一次取得它需要的所有資料，並給您一組動態條碼，讓櫃檯人員掃描後核驗。",
                "No paper certificates at the counter: choose the service you apply for, the platform fetches every dataset it needs in one step and gives you a barcode the clerk scans to verify them.",
            ),
            datasets_label: lang.pick("需要的資料：", "Data needed: "),
            services,
            mine_title: lang.pick("您的臨櫃條碼", "Your counter barcodes"),
            mine,
        },
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// One service: bundle, office, consent

#[derive(Debug, Template)]
#[template(path = "counter/service.html")]
pub struct ServicePage {
    pub chrome: Chrome,
    pub title: String,
    pub provider: String,
    pub error: Option<(&'static str, String)>,
    /// Which entry the refusal is about (`aria-invalid`): the consent box or the office.
    pub consent_refused: bool,
    pub office_refused: bool,
    pub datasets_title: &'static str,
    pub bundled_note: &'static str,
    pub datasets: Vec<String>,
    pub level_note: String,
    pub no_office: &'static str,
    pub action: String,
    pub csrf: String,
    pub office_legend: &'static str,
    pub offices: Vec<(String, String, bool)>,
    pub terms_title: &'static str,
    pub terms: Vec<String>,
    pub consent_label: &'static str,
    pub agreed: bool,
    pub identity_note: String,
    pub submit: &'static str,
    pub back: &'static str,
}

#[derive(Debug, Default, Deserialize)]
pub struct ServiceQuery {
    pub office: Option<String>,
    pub agreed: Option<String>,
    pub lang: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConsentForm {
    pub csrf: Option<String>,
    pub office: Option<String>,
    pub consent: Option<String>,
}

impl CsrfField for ConsentForm {
    fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

const CONSENT_MISSING: &str = "consent_missing";
const OFFICE_MISSING: &str = "office_missing";

#[allow(clippy::too_many_arguments)]
async fn service_page(
    state: &AppState,
    svc: &Service,
    session: &Session,
    lang: Lang,
    office: Option<&str>,
    agreed: bool,
    error: Option<(&'static str, String)>,
) -> Result<ServicePage, AppError> {
    let offices = state.store().offices_for_service(&svc.id).await?;
    let only = offices.len() == 1;
    let sel = state
        .catalog()
        .selection(&svc.datasets)
        .map_err(|e| AppError::InvalidBody(e.to_string()))?;
    let verified = session.verified();
    let identity_note = match &verified {
        Some(v) if satisfies(v, &sel) => match lang {
            Lang::ZhTw => format!(
                "您已用{}完成身分驗證（等級 {}），同意後立即開始取得資料。",
                v.method.name_zh(),
                v.level
            ),
            Lang::En => format!(
                "You are verified with {} (level {}); the data is fetched as soon as you agree.",
                v.method.name_en(),
                v.level
            ),
        },
        _ => lang
            .pick(
                "同意後，請以這些資料都接受的方式驗證身分。",
                "After you agree, prove who you are with a method all of this data accepts.",
            )
            .to_owned(),
    };
    let service_name = lang.pick(&svc.name_zh, &svc.name_en).to_owned();
    let refused = |code: &str| error.as_ref().is_some_and(|e| e.0 == code);
    let (consent_refused, office_refused) = (refused(CONSENT_MISSING), refused(OFFICE_MISSING));
    Ok(ServicePage {
        chrome: Chrome::new(lang),
        title: service_name.clone(),
        provider: lang.pick(&svc.provider_zh, &svc.provider_en).to_owned(),
        error,
        consent_refused,
        office_refused,
        datasets_title: lang.pick("這項服務需要的資料", "Data this service needs"),
        bundled_note: lang.pick(
            "以下資料會一次取得，您不必逐項選擇：",
            "These datasets are fetched together; you do not pick them one by one:",
        ),
        datasets: svc
            .datasets
            .iter()
            .map(|d| dataset_name(state, d, lang))
            .collect(),
        level_note: match lang {
            Lang::ZhTw => format!("需要身分驗證等級 {} 或更高（1 為最高）。", sel.required_level),
            Lang::En => format!(
                "Needs identity assurance level {} or stronger (1 is the strongest).",
                sel.required_level
            ),
        },
        no_office: lang.pick(
            "此服務尚未有機關登記臨櫃，暫時無法使用臨櫃核驗。",
            "No office has registered a counter for this service yet.",
        ),
        action: format!("/counter/services/{}", svc.id),
        csrf: session.csrf().to_owned(),
        office_legend: lang.pick("您要前往的櫃檯單位", "The office you will go to"),
        offices: offices
            .iter()
            .map(|o| {
                (
                    o.id.clone(),
                    office_name(o, lang),
                    only || office == Some(o.id.as_str()),
                )
            })
            .collect(),
        terms_title: lang.pick("同意事項", "What you agree to"),
        terms: vec![
            match lang {
                Lang::ZhTw => format!(
                    "平臺只為這一次「{service_name}」申辦，向各資料提供機關取得上列資料。"
                ),
                Lang::En => format!(
                    "The platform fetches the data above from the agencies holding it, for this one application ({service_name}) only."
                ),
            },
            lang.pick(
                "資料最多保存 8 小時；櫃檯人員必須掃描您的條碼，並輸入平臺寄給您的驗證密碼，才能取得資料。",
                "The data is kept at most 8 hours; a clerk gets it only by scanning your barcode and typing the verification password the platform sends you.",
            )
            .to_owned(),
            lang.pick(
                "每一次掃描、密碼寄送與資料取用都會記錄，您可以在使用紀錄中查看。",
                "Every scan, password sent and data access is recorded and shown in your usage records.",
            )
            .to_owned(),
        ],
        consent_label: lang.pick(
            "我已閱讀並同意，只為這一次申辦取得上列資料。",
            "I have read this and agree to this one fetch of the data above.",
        ),
        agreed,
        identity_note,
        submit: lang.pick("同意並取得資料", "Agree and fetch the data"),
        back: lang.pick("回到臨櫃服務", "Back to counter services"),
    })
}

/// `GET /counter/services/{id}`
pub async fn service(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ServiceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let Query(q) = query?;
        let svc = counter_service(&state, &id)?;
        let (s, cookie) = session::ensure(&state, &headers).await?;
        let p = service_page(
            &state,
            svc,
            &s,
            lang,
            q.office.as_deref(),
            q.agreed.as_deref() == Some("1"),
            None,
        )
        .await?;
        Ok::<_, AppError>(page(StatusCode::OK, &p, cookie))
    })
    .await
}

/// `POST /counter/services/{id}`: consent given; sign in if needed, then start the transfer.
pub async fn consent(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PostedForm {
        session: s,
        form: f,
        lang,
    }: PostedForm<ConsentForm>,
) -> Response {
    on_page(lang, async {
        let svc = counter_service(&state, &id)?;
        let offices = state.store().offices_for_service(&svc.id).await?;
        let office = f
            .office
            .as_deref()
            .and_then(|o| offices.iter().find(|x| x.id == o));
        let refuse = |code: &'static str, zh: &str, en: &str| {
            let message = lang.pick(zh, en).to_owned();
            (code, message)
        };
        let error = if f.consent.as_deref() != Some("yes") {
            Some(refuse(
                CONSENT_MISSING,
                "請勾選同意事項後再繼續。",
                "Tick the consent box to continue.",
            ))
        } else if office.is_none() {
            Some(refuse(
                OFFICE_MISSING,
                "請選擇您要前往的櫃檯單位。",
                "Choose the office you will go to.",
            ))
        } else {
            None
        };
        if let Some(err) = error {
            let p =
                service_page(&state, svc, &s, lang, f.office.as_deref(), false, Some(err)).await?;
            return Ok(page(StatusCode::UNPROCESSABLE_ENTITY, &p, None));
        }
        let Some(office) = office else {
            return Err(AppError::InvalidBody("no office chosen".into()));
        };
        let sel = state
            .catalog()
            .selection(&svc.datasets)
            .map_err(|e| AppError::InvalidBody(e.to_string()))?;
        let v = s.verified().filter(|v| satisfies(v, &sel));
        let Some(v) = v else {
            // Identity next; come back here with the choices kept.
            let back = format!(
                "/counter/services/{}?office={}&agreed=1",
                svc.id,
                super::login::urlencode(&office.id)
            );
            let to = format!(
                "/login?datasets={}&next={}",
                super::login::urlencode(&svc.datasets.join(",")),
                super::login::urlencode(&back)
            );
            return Ok(Redirect::to(&to).into_response());
        };
        let t = crate::agencies::start_for_session(
            &state,
            &v,
            crate::agencies::PersonRequest {
                kind: TransferKind::Counter,
                recipient: Some(office.id.clone()),
                purpose: svc.id.clone(),
                datasets: svc.datasets.clone(),
                answers: None,
            },
        )
        .await?;
        state
            .store()
            .put_counter_transfer(&CounterTransferRow {
                transfer_id: t.id.clone(),
                service_id: svc.id.clone(),
                office_id: office.id.clone(),
                created_at: state.clock().now().millis(),
            })
            .await?;
        Ok(Redirect::to(&format!("/counter/transfers/{}", t.id)).into_response())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The barcode page

#[derive(Debug)]
pub struct BarcodeView {
    pub heading: &'static str,
    pub svg_href: String,
    pub png_href: String,
    pub png_label: &'static str,
    pub alt: String,
    pub serial_label: &'static str,
    pub serial: String,
    pub grouped: String,
    pub valid_until: String,
    pub refresh_note: &'static str,
    pub next_step: &'static str,
}

#[derive(Debug, Template)]
#[template(path = "counter/transfer.html")]
pub struct TransferPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub service: String,
    pub office: String,
    pub data_limit: String,
    pub refresh_secs: u64,
    pub serial_secs: u64,
    pub self_href: String,
    pub refresh_label: &'static str,
    pub barcode: Option<BarcodeView>,
    pub status: String,
    pub datasets_title: &'static str,
    pub datasets: Vec<(String, String, String)>,
    /// Between a dataset's name and its status: "：" or ": ".
    pub label_sep: &'static str,
}

/// The person's own counter transfer, or not found (never another person's).
async fn own_transfer(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    uri: &Uri,
) -> Result<Result<Transfer, Response>, AppError> {
    let s = session::load(state, headers).await?;
    let Some(v) = s.as_ref().and_then(Session::verified) else {
        let to = format!("/login?next={}", super::login::urlencode(uri.path()));
        return Ok(Err(Redirect::to(&to).into_response()));
    };
    let t = crate::download::owned_transfer_of(state, &v, id, TransferKind::Counter).await?;
    Ok(Ok(t))
}

fn status_text(status: &str, lang: Lang) -> &'static str {
    crate::pages::fetch_status_label(status, lang)
}

/// `GET /counter/transfers/{id}`
pub async fn transfer(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let t = match own_transfer(&state, &headers, &id, &uri).await? {
            Ok(t) => t,
            Err(r) => return Ok(r),
        };
        let now = state.clock().now();
        let ct = state.store().counter_transfer(&t.id).await?;
        let office = match &ct {
            Some(c) => state.store().office(&c.office_id).await?,
            None => None,
        };
        let service = ct
            .as_ref()
            .and_then(|c| state.catalog().service(&c.service_id))
            .map(|s| lang.pick(&s.name_zh, &s.name_en).to_owned())
            .unwrap_or_default();
        let serial = counter::current_serial(&state, &t, true).await?;
        let fetching = matches!(t.state, TransferState::Created | TransferState::Fetching);
        let (barcode, refresh_secs) = match &serial {
            Some((s, until)) => {
                let v = &serial_hash_prefix(&state, s);
                (
                    Some(BarcodeView {
                        heading: lang.pick("請出示此條碼給櫃檯人員", "Show this barcode at the counter"),
                        svg_href: format!("/counter/transfers/{}/barcode.svg?v={v}", t.id),
                        png_href: format!("/counter/transfers/{}/barcode.png?v={v}", t.id),
                        png_label: lang.pick("下載條碼圖檔（PNG）", "Download the barcode (PNG)"),
                        alt: match lang {
                            Lang::ZhTw => format!("條碼，序號 {}", s.grouped()),
                            Lang::En => format!("Barcode, serial {}", s.grouped()),
                        },
                        serial_label: lang.pick("條碼序號：", "Serial:"),
                        serial: s.as_str().to_owned(),
                        grouped: s.grouped(),
                        valid_until: match lang {
                            Lang::ZhTw => format!("此條碼有效至 {}（20 分鐘）。", taipei_time(*until)),
                            Lang::En => format!("This barcode works until {} (20 minutes).", taipei_time(*until)),
                        },
                        refresh_note: lang.pick(
                            "時間到時此頁會自動換成新條碼，舊條碼隨即失效。",
                            "When it runs out this page shows a new barcode by itself, and the old one stops working.",
                        ),
                        next_step: lang.pick(
                            "櫃檯人員掃描後，平臺會寄 8 位數驗證密碼到您登錄的手機或電子郵件，請在 2 分鐘內告訴櫃檯人員。",
                            "After the clerk scans it, the platform sends an 8-digit verification password to your registered phone or email: tell it to the clerk within 2 minutes.",
                        ),
                    }),
                    // Reload when the serial runs out, and every few minutes before that so the
                    // session (15 minutes idle) stays alive while the person waits in line.
                    (now.until(*until).as_secs() + 1).min(240),
                )
            }
            None if fetching => (None, 5),
            None => (None, 0),
        };
        let status = if fetching {
            lang.pick(
                "正在向機關取得資料，完成後此頁會顯示條碼。",
                "Fetching the data from the agencies; the barcode appears here when it is done.",
            )
            .to_owned()
        } else if t.state == TransferState::Ready && now < t.expires_at {
            lang.pick(
                "資料已由櫃檯取用，條碼不再使用。",
                "A clerk has used this barcode; it is not needed any more.",
            )
            .to_owned()
        } else {
            lang.pick(
                "資料已取用完畢或已超過 8 小時保存期限並刪除；如需再次申辦，請重新申請。",
                "The data was handed out or passed its 8 hours and is deleted; apply again if you need it.",
            )
            .to_owned()
        };
        let datasets = t
            .datasets
            .iter()
            .map(|d| {
                (
                    dataset_name(&state, &d.dataset_id, lang),
                    d.status.clone(),
                    status_text(&d.status, lang).to_owned(),
                )
            })
            .collect();
        let p = TransferPage {
            chrome: Chrome::new(lang),
            title: lang.pick("臨櫃核驗條碼", "Counter verification barcode"),
            service,
            office: office.map(|o| office_name(&o, lang)).unwrap_or_default(),
            data_limit: match lang {
                Lang::ZhTw => format!(
                    "資料最多保存 8 小時，至 {} 自動刪除。",
                    taipei_time(t.expires_at)
                ),
                Lang::En => format!(
                    "The data is kept at most 8 hours and deleted at {} (Taiwan time).",
                    taipei_time(t.expires_at)
                ),
            },
            refresh_secs,
            serial_secs: serial.as_ref().map_or(0, |(_, u)| now.until(*u).as_secs()),
            self_href: format!("/counter/transfers/{}", t.id),
            refresh_label: lang.pick("重新整理", "Refresh"),
            barcode,
            status,
            datasets_title: lang.pick("資料", "Data"),
            datasets,
            label_sep: lang.pick("：", ": "),
        };
        Ok::<_, AppError>(page(StatusCode::OK, &p, None))
    })
    .await
}

/// `GET /static/counter.js`
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/counter.js"),
    )
        .into_response()
}

/// A short, non-secret tag of the serial for image URLs (so a new serial is a new image).
fn serial_hash_prefix(state: &AppState, s: &mydata_core::counter::Serial) -> String {
    counter::serial_hash(state, s).chars().take(12).collect()
}

/// `GET /counter/transfers/{id}/barcode.svg` and `.png`
pub async fn barcode_image(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let t = match own_transfer(&state, &headers, &id, &uri).await? {
            Ok(t) => t,
            Err(r) => return Ok(r),
        };
        let Some((serial, _)) = counter::current_serial(&state, &t, false).await? else {
            // No working serial: the page (which issues one) must be reloaded first.
            return Err(AppError::NotFound {
                what: "barcode",
                id: t.id,
            });
        };
        let (ctype, body) = match file.as_str() {
            "barcode.svg" => (
                "image/svg+xml",
                barcode::svg(serial.as_str(), &serial.grouped())
                    .map_err(|e| AppError::Internal(e.into()))?
                    .into_bytes(),
            ),
            "barcode.png" => (
                "image/png",
                barcode::png(serial.as_str()).map_err(|e| AppError::Internal(e.into()))?,
            ),
            _ => return Err(AppError::RouteNotFound),
        };
        Ok::<_, AppError>(
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(ctype)),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                body,
            )
                .into_response(),
        )
    })
    .await
}
