//! The person's usage records (個人資料使用紀錄): every transfer of their pseudonym of any kind —
//! self-download, counter, online service — with what, to whom, purpose, when, status, deletion
//! time and the transfer's audit events; as a page and exported as CSV or JSON. The records are a
//! query over the transfers and the audit log, never a second copy that could disagree.

use crate::error::{AppError, render};
use crate::i18n::Lang;
use crate::identity::session::{self, Verified};
use crate::notices::taipei_time;
use crate::pages::Chrome;
use crate::routes::form::{lang_of, no_store};
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use mydata_core::Timestamp;
use mydata_core::transfer::{TransferKind, TransferState};
use mydata_store::{Transfer, fetch_status};
use serde::Serialize;

/// Most transfers listed (newest first); 8 hours each, so this is years of normal use.
const MAX_RECORDS: u32 = 500;

/// One audit event of a transfer, for the person.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub at: Timestamp,
    pub at_text: String,
    pub kind: String,
    pub label: String,
}

/// One dataset of a transfer and how its fetch ended.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetRecord {
    pub id: String,
    pub name: String,
    pub status: String,
    pub status_label: String,
}

/// One use of the person's data.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    pub request_number: String,
    pub kind: String,
    pub kind_label: String,
    pub recipient: String,
    pub purpose: String,
    pub created_at: Timestamp,
    pub created_text: String,
    pub state: String,
    pub state_label: String,
    /// When the data was (or will at the latest be) deleted from the platform.
    pub deleted_at: Timestamp,
    pub deleted_text: String,
    pub deleted_done: bool,
    pub datasets: Vec<DatasetRecord>,
    pub events: Vec<EventRecord>,
    /// The signed consent receipt (with its inclusion proof), once the person has consented.
    pub consent_receipt: Option<String>,
    /// The signed deletion receipt, once the transfer's data is gone.
    pub deletion_receipt: Option<String>,
    /// The self-download page of a transfer whose data may still be there.
    #[serde(skip)]
    pub link: Option<String>,
}

fn kind_label(k: TransferKind, lang: Lang) -> &'static str {
    match k {
        TransferKind::SelfDownload => lang.pick("自行下載", "Self-download"),
        TransferKind::Counter => lang.pick("臨櫃核驗", "Counter verification"),
        TransferKind::Online => lang.pick("線上服務", "Online service"),
    }
}

fn state_label(s: TransferState, lang: Lang) -> &'static str {
    match s {
        TransferState::Created => lang.pick("已建立", "Created"),
        TransferState::Fetching => lang.pick("資料取得中", "Fetching"),
        TransferState::Ready => lang.pick("資料已備妥", "Ready"),
        TransferState::Delivered => lang.pick("已交付", "Delivered"),
        TransferState::Deleted => lang.pick("已交付並刪除", "Delivered and deleted"),
        TransferState::Refused => lang.pick("未同意", "Consent refused"),
        TransferState::Expired => lang.pick("逾時刪除", "Expired and deleted"),
    }
}

fn status_label(s: &str, lang: Lang) -> String {
    match s {
        fetch_status::SUCCEEDED => lang.pick("已取得", "Fetched"),
        fetch_status::REFUSED => lang.pick("機關未提供", "Not provided"),
        fetch_status::REJECTED => lang.pick("驗證未通過", "Failed verification"),
        fetch_status::FAILED => lang.pick("機關暫時無法提供", "Agency unavailable"),
        fetch_status::PENDING | fetch_status::NOT_READY => lang.pick("處理中", "In progress"),
        other => other,
    }
    .to_owned()
}

/// A person-readable label for an audit event kind; unknown kinds are shown by their code.
pub fn event_label(kind: &str, lang: Lang) -> String {
    let known = match kind {
        "transfer.created" => Some(("建立申請", "Request created")),
        "transfer.fetching" => Some((
            "您已同意，開始向機關取得資料",
            "You consented; fetching started",
        )),
        "transfer.ready" => Some(("資料已備妥", "Data ready")),
        "transfer.delivered" => Some(("資料已交付", "Data delivered")),
        "transfer.deleted" => Some(("資料已刪除", "Data deleted")),
        "transfer.expired" => Some(("逾時，資料已刪除", "Time limit reached; data deleted")),
        "transfer.refused" => Some(("未同意", "Consent refused")),
        "agency.request" => Some(("向機關提出請求", "Asked the agency")),
        "agency.outcome" => Some(("機關回覆", "Agency answered")),
        "package.created" => Some(("資料包已建立並簽章", "Package built and signed")),
        "package.none" => Some(("沒有取得任何資料", "No data was fetched")),
        "package.taken" => Some(("資料已被取用", "Data retrieved")),
        "package.deleted" => Some(("資料與金鑰已刪除", "Data and key deleted")),
        "download.terms_agreed" => Some((
            "同意服務條款與隱私權保護政策",
            "Agreed to the terms and privacy notice",
        )),
        "download.previewed" => Some(("線上預覽", "Previewed online")),
        "download.file_saved" => Some(("轉存單一檔案", "Saved one file")),
        "download.package_saved" => Some(("轉存資料包", "Saved the package")),
        "transfer.access_denied" => Some((
            "有人嘗試開啟此申請的頁面，已拒絕",
            "Someone tried to open this request's pages and was refused",
        )),
        "service.consent" => Some((
            "您同意將資料提供給線上服務",
            "You consented to give the data to the online service",
        )),
        "service.release" => Some((
            "您確認將資料傳送給線上服務",
            "You confirmed sending the data to the online service",
        )),
        "service.refused" => Some((
            "資料未傳送給線上服務",
            "The data was not sent to the online service",
        )),
        "service.retrieval" => Some((
            "線上服務已取得資料",
            "The online service retrieved the data",
        )),
        "receipt.consent" => Some(("平臺簽發同意收據", "Consent receipt issued")),
        "receipt.deletion" => Some(("平臺簽發刪除收據", "Deletion receipt issued")),
        _ => None,
    };
    if let Some((zh, en)) = known {
        return lang.pick(zh, en).to_owned();
    }
    let family = if kind.starts_with("counter.") {
        Some(("臨櫃核驗事件", "Counter event"))
    } else if kind.starts_with("service.") {
        Some(("線上服務事件", "Online service event"))
    } else if kind.starts_with("receipt.") {
        Some(("平臺收據", "Platform receipt"))
    } else {
        None
    };
    match family {
        Some((zh, en)) => match lang {
            Lang::ZhTw => format!("{zh}（{kind}）"),
            Lang::En => format!("{en} ({kind})"),
        },
        None => kind.to_owned(),
    }
}

/// A `notice.sent` event: the notice of this use went out, by email or SMS (never the address).
fn notice_label(detail: &serde_json::Value, lang: Lang) -> &'static str {
    match detail["channel"].as_str() {
        Some("sms") => lang.pick("已寄送簡訊通知給您", "A notice was sent to you by SMS"),
        Some("email") => lang.pick(
            "已寄送電子郵件通知給您",
            "A notice was sent to you by email",
        ),
        _ => lang.pick("已寄送通知給您", "A notice was sent to you"),
    }
}

fn purpose_text(state: &AppState, t: &Transfer, lang: Lang) -> String {
    match (t.kind, t.purpose.as_str()) {
        (_, crate::routes::download::PURPOSE) => lang
            .pick(
                "自行下載，供本人保存與運用",
                "Self-download, for your own use",
            )
            .to_owned(),
        // A counter consent stores the service's ID as its purpose: show the service's name.
        (TransferKind::Counter, id) => state
            .catalog()
            .service(id)
            .map(|s| lang.pick(&s.name_zh, &s.name_en).to_owned())
            .unwrap_or_else(|| id.to_owned()),
        (_, other) => other.to_owned(),
    }
}

fn recipient_text(state: &AppState, t: &Transfer, lang: Lang) -> String {
    match (&t.recipient, t.kind) {
        (None, TransferKind::SelfDownload) | (None, _) => lang.pick("您本人", "You").to_owned(),
        (Some(r), _) => state
            .catalog()
            .service(r)
            .map(|s| {
                format!(
                    "{} {}",
                    lang.pick(&s.provider_zh, &s.provider_en),
                    lang.pick(&s.name_zh, &s.name_en)
                )
            })
            .unwrap_or_else(|| r.clone()),
    }
}

/// Every use of `subject`'s data, newest first.
pub async fn records_for(
    state: &AppState,
    subject: &str,
    lang: Lang,
) -> Result<Vec<UsageRecord>, AppError> {
    let store = state.store();
    let c = state.catalog();
    let now = state.clock().now();
    let mut out = Vec::new();
    for t in store.transfers_for_subject(subject, MAX_RECORDS).await? {
        let pkg = store.package(&t.id).await?;
        let mut events = Vec::new();
        let mut consented = false;
        let mut cancelled = false;
        // The name the person consented to send to (the registration's, as shown then).
        let mut consented_to = None;
        for e in store.audit_for_transfer(&t.id).await? {
            if e.kind == "service.consent"
                && let Some(name) = e.detail["service_name"].as_str()
            {
                consented_to = Some(name.to_owned());
            }
            consented |= e.kind == "transfer.fetching";
            // Ended by the person's "cancel" or "do not send", not by the time limit.
            let cancel = e.kind == "transfer.expired" && e.detail["event"] == "cancel";
            cancelled |= cancel;
            // Counter events name the office and counter (see `counter::event_text`).
            let label = match crate::counter::event_text(state, &e.kind, &e.detail, lang).await? {
                Some(l) => l,
                None if cancel => lang
                    .pick("已取消，資料已刪除", "Cancelled; data deleted")
                    .into(),
                None if e.kind == "notice.sent" => notice_label(&e.detail, lang).into(),
                None => event_label(&e.kind, lang),
            };
            events.push(EventRecord {
                at_text: taipei_time(e.at),
                label,
                at: e.at,
                kind: e.kind,
            });
        }
        let ended = t.state.is_terminal() || t.expires_at <= now;
        let deleted_at =
            pkg.as_ref()
                .and_then(|p| p.deleted_at)
                .unwrap_or(if t.state.is_terminal() {
                    t.updated_at
                } else {
                    t.expires_at
                });
        let deleted_done = pkg.as_ref().is_some_and(|p| p.deleted_at.is_some()) || ended;
        let datasets = t
            .datasets
            .iter()
            .map(|d| DatasetRecord {
                id: d.dataset_id.clone(),
                name: c
                    .dataset(&d.dataset_id)
                    .map(|x| lang.pick(&x.name_zh, &x.name_en).to_owned())
                    .unwrap_or_else(|| d.dataset_id.clone()),
                status: d.status.clone(),
                status_label: status_label(&d.status, lang),
            })
            .collect();
        out.push(UsageRecord {
            request_number: t.id.clone(),
            kind: t.kind.code().to_owned(),
            kind_label: kind_label(t.kind, lang).to_owned(),
            recipient: match crate::counter::recipient_text(state, &t, lang).await? {
                Some(r) => r,
                None => consented_to.unwrap_or_else(|| recipient_text(state, &t, lang)),
            },
            purpose: purpose_text(state, &t, lang),
            created_text: taipei_time(t.created_at),
            created_at: t.created_at,
            state: t.state.code().to_owned(),
            state_label: if cancelled && t.state == TransferState::Expired {
                lang.pick("已取消並刪除", "Cancelled and deleted")
            } else {
                state_label(t.state, lang)
            }
            .to_owned(),
            deleted_text: taipei_time(deleted_at),
            deleted_at,
            deleted_done,
            datasets,
            events,
            consent_receipt: consented
                .then(|| format!("/api/v1/transfers/{}/receipts/consent", t.id)),
            deletion_receipt: t
                .state
                .is_terminal()
                .then(|| format!("/api/v1/transfers/{}/receipts/deletion", t.id)),
            link: match t.kind {
                TransferKind::SelfDownload => Some(format!("/download/t/{}", t.id)),
                TransferKind::Counter => Some(format!("/counter/transfers/{}", t.id)),
                _ => None,
            },
        });
    }
    Ok(out)
}

#[derive(Debug, Template)]
#[template(path = "records/list.html")]
pub struct RecordsPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub empty: &'static str,
    pub export_csv: &'static str,
    pub export_json: &'static str,
    pub records: Vec<UsageRecord>,
    pub l_kind: &'static str,
    pub l_recipient: &'static str,
    pub l_purpose: &'static str,
    pub l_when: &'static str,
    pub l_status: &'static str,
    pub l_deleted: &'static str,
    pub l_deleted_plan: &'static str,
    pub l_datasets: &'static str,
    pub l_events: &'static str,
    pub l_open: &'static str,
    pub l_request: &'static str,
    pub new_download: &'static str,
    pub l_receipts: &'static str,
    pub l_consent_receipt: &'static str,
    pub l_deletion_receipt: &'static str,
    pub receipts_help: &'static str,
}

async fn person(state: &AppState, headers: &HeaderMap) -> Result<Option<Verified>, AppError> {
    Ok(session::load(state, headers)
        .await?
        .and_then(|s| s.verified()))
}

fn to_login(path: &str) -> Response {
    no_store(Redirect::to(&format!("/login?next={path}")).into_response())
}

/// `GET /records`
pub async fn page(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    let run = async {
        let Some(v) = person(&state, &headers).await? else {
            return Ok(to_login("/records"));
        };
        let records = records_for(&state, &v.subject, lang).await?;
        let p = RecordsPage {
            chrome: Chrome::new(lang),
            title: lang.pick("我的個人資料使用紀錄", "My usage records"),
            intro: lang.pick(
                "每一次下載、臨櫃核驗與傳送給線上服務都列在這裡，包括給了誰、用途、時間、狀態與資料刪除時間。紀錄不含資料內容。",
                "Every download, counter verification and transfer to an online service is listed here: to whom, why, when, its status and when the data was deleted. Records never hold the data itself.",
            ),
            empty: lang.pick("目前沒有任何紀錄。", "No records yet."),
            export_csv: lang.pick("匯出 CSV", "Export as CSV"),
            export_json: lang.pick("匯出 JSON", "Export as JSON"),
            records,
            l_kind: lang.pick("類型", "Kind"),
            l_recipient: lang.pick("資料接收者", "Recipient"),
            l_purpose: lang.pick("用途", "Purpose"),
            l_when: lang.pick("申請時間", "Requested at"),
            l_status: lang.pick("狀態", "Status"),
            l_deleted: lang.pick("資料刪除時間", "Data deleted at"),
            l_deleted_plan: lang.pick("最遲刪除時間", "Deleted at the latest at"),
            l_datasets: lang.pick("資料", "Datasets"),
            l_events: lang.pick("處理紀錄", "Events"),
            l_open: lang.pick("開啟此次下載", "Open this download"),
            l_request: lang.pick("申請編號", "Request number"),
            new_download: lang.pick("申請下載資料", "Request data"),
            l_receipts: lang.pick("平臺收據", "Platform receipts"),
            l_consent_receipt: lang.pick("下載同意收據", "Download the consent receipt"),
            l_deletion_receipt: lang.pick("下載刪除收據", "Download the deletion receipt"),
            receipts_help: lang.pick(
                "收據由平臺簽章，並附上它在稽核紀錄中的包含證明，證明紀錄事後沒有被更改。不需連網即可自行核對：執行 mydata verify-receipt 收據檔 --platform-key jwks.json（平臺公鑰取自 /.well-known/mydata/jwks.json），四項檢查都通過即為真。",
                "Each receipt is signed by the platform and carries its inclusion proof in the audit log, which shows the record was not changed afterwards. Check it yourself, offline: run mydata verify-receipt RECEIPT-FILE --platform-key jwks.json (the platform's public key is at /.well-known/mydata/jwks.json); the receipt is genuine when all four checks pass.",
            ),
        };
        let html = render(&p)?;
        Ok(no_store((StatusCode::OK, html).into_response()))
    };
    run.await
        .unwrap_or_else(|e: AppError| no_store(e.into_page(lang)))
}

/// `GET /records.json`
pub async fn export_json(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    let run = async {
        let Some(v) = person(&state, &headers).await? else {
            return Ok(to_login("/records.json"));
        };
        let records = records_for(&state, &v.subject, lang).await?;
        let body = serde_json::to_vec_pretty(&serde_json::json!({ "records": records }))
            .map_err(|e| AppError::Internal(e.into()))?;
        let mut res = body.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"mydata-usage-records.json\""),
        );
        Ok(no_store(res))
    };
    run.await
        .unwrap_or_else(|e: AppError| no_store(e.into_page(lang)))
}

/// `GET /records.csv`: one row per transfer; datasets and events joined in one cell each. Events
/// twice: `events` by code (for programs; codes never change) and `event_labels` in the page's
/// words and language (for the person reading it in a spreadsheet).
pub async fn export_csv(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    let run = async {
        let Some(v) = person(&state, &headers).await? else {
            return Ok(to_login("/records.csv"));
        };
        let records = records_for(&state, &v.subject, lang).await?;
        let mut w = csv::Writer::from_writer(Vec::new());
        let csv_err = |e: csv::Error| AppError::Internal(e.into());
        w.write_record([
            "request_number",
            "kind",
            "recipient",
            "purpose",
            "requested_at",
            "state",
            "deleted_at",
            "datasets",
            "events",
            "event_labels",
        ])
        .map_err(csv_err)?;
        for r in &records {
            let datasets = r
                .datasets
                .iter()
                .map(|d| format!("{} ({}: {})", d.name, d.id, d.status))
                .collect::<Vec<_>>()
                .join("; ");
            let events = r
                .events
                .iter()
                .map(|e| format!("{} {}", e.at_text, e.kind))
                .collect::<Vec<_>>()
                .join("; ");
            let event_labels = r
                .events
                .iter()
                .map(|e| format!("{} {}", e.at_text, e.label))
                .collect::<Vec<_>>()
                .join("; ");
            // Purposes and names come from services, the catalogue and operators (office and
            // counter names in counter events): no cell may run as a formula.
            w.write_record(
                [
                    r.request_number.as_str(),
                    r.kind.as_str(),
                    r.recipient.as_str(),
                    r.purpose.as_str(),
                    r.created_text.as_str(),
                    r.state.as_str(),
                    r.deleted_text.as_str(),
                    datasets.as_str(),
                    events.as_str(),
                    event_labels.as_str(),
                ]
                .map(|c| crate::records::csv_safe(c).into_owned()),
            )
            .map_err(csv_err)?;
        }
        let mut body = "\u{feff}".as_bytes().to_vec(); // BOM: spreadsheet programs read UTF-8 right.
        body.extend(
            w.into_inner()
                .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?,
        );
        let mut res = body.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        res.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"mydata-usage-records.csv\""),
        );
        Ok(no_store(res))
    };
    run.await
        .unwrap_or_else(|e: AppError| no_store(e.into_page(lang)))
}
