//! The one place where errors become HTTP responses.
//!
//! Every handler fails with [`AppError`]. Its `code` is a stable, documented API value (never renamed);
//! API routes answer with RFC 9457 `application/problem+json`, web pages with a readable page in the
//! person's language. Errors produced outside handlers (body limit, timeout, unknown route, wrong
//! method) are rewritten into the same shapes by [`problem_fallback`], so a client sees one format.
//! Internal errors are logged with their cause and answered without details.

use crate::i18n::Lang;
use axum::extract::Request;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

/// The media type of problem details (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{what} `{id}` does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("no page or endpoint at this address")]
    RouteNotFound,
    #[error("this address does not accept the {0} method")]
    MethodNotAllowed(String),
    #[error("parameter `{name}`: {message}")]
    InvalidParameter { name: String, message: String },
    #[error("the query string is not valid: {0}")]
    InvalidQuery(String),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body does not have the expected fields: {0}")]
    InvalidBody(String),
    #[error("the request body must be sent as application/json")]
    UnsupportedMediaType,
    /// `limit` is None where the limit is not known (an extractor's rejection); the fallback
    /// middleware, which knows it, states it.
    #[error("the request body is larger than {}", limit.map_or("the limit".to_owned(), |l| format!("the {l}-byte limit")))]
    PayloadTooLarge { limit: Option<usize> },
    #[error("the request took too long and was stopped")]
    Timeout,
    #[error("no dataset was chosen")]
    EmptySelection,
    #[error("the database is not reachable")]
    DatabaseUnavailable,
    #[error("the package of transfer `{0}` is not ready yet; its datasets are still being fetched")]
    PackageNotReady(String),
    #[error("the package of transfer `{0}` was already retrieved or has expired, and is deleted")]
    PackageGone(String),
    #[error("tree size {size} is beyond the audit log, which holds {log_size} entries")]
    TreeSizeOutOfRange { size: u64, log_size: u64 },
    #[error(
        "leaf index {index} is not in a tree of size {size} (leaf indexes go from 0 to size - 1)"
    )]
    LeafIndexOutOfRange { index: u64, size: u64 },
    #[error(
        "the first tree size ({first}) is larger than the second ({second}); give the older size first"
    )]
    ProofSizesOutOfOrder { first: u64, second: u64 },
    #[error("{0}")]
    ReceiptNotAvailable(String),
    #[error("the form's security token is missing or wrong; reload the page and try again")]
    CsrfRejected,
    #[error(
        "your session has ended (it was idle too long or reached its time limit); sign in again"
    )]
    SessionExpired,
    #[error("you need to sign in first")]
    NotSignedIn,
    #[error("this needs a sign-in at assurance level {required} or stronger")]
    InsufficientLevel {
        required: mydata_core::AssuranceLevel,
    },
    #[error("{0}")]
    IdentityRefused(crate::identity::Refusal),
    #[error("too many failed attempts; try again in {} minute(s)", retry_after_secs.div_ceil(60))]
    LockedOut { retry_after_secs: u64 },
    #[error("{}", .0.message_en())]
    CodeRefused(CodeProblem),
    #[error("{0}")]
    InvalidContact(String),
    #[error("the identity check could not be made right now; try again in a few minutes")]
    IdentityUnavailable,
    #[error("identity method `{0}` is not offered here")]
    MethodNotOffered(String),
    #[error("{0}")]
    PasswordRejected(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("the admin API needs the configured admin token (Authorization: Bearer)")]
    AdminUnauthorized,
    #[error(
        "/metrics needs the configured metrics token (ops.metrics_token, Authorization: Bearer)"
    )]
    MetricsUnauthorized,
    /// A registration the configuration holds (`oauth.clients`): changed there, not through the
    /// admin API, which the next process to start would silently undo.
    #[error(
        "service `{0}` is registered in the platform's configuration (oauth.clients); change or remove it there and restart the platform's processes"
    )]
    ServiceManagedByConfig(String),
    /// An online-service authorization that cannot go on (shown as a page, never redirected).
    #[error("{0}")]
    AuthorizationRefused(crate::oauth::Halt),
    #[error("{0}")]
    Passkey(crate::identity::passkey::PasskeyProblem),
    #[error("{0}")]
    ClerkRefused(crate::counter::clerk::ClerkProblem),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Why a one-time code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeProblem {
    Wrong,
    Expired,
    Used,
    TooManyAttempts,
    NoneSent,
    TooSoon,
}

impl CodeProblem {
    pub fn code(self) -> &'static str {
        match self {
            CodeProblem::Wrong => "code_wrong",
            CodeProblem::Expired => "code_expired",
            CodeProblem::Used => "code_used",
            CodeProblem::TooManyAttempts => "code_attempts_exhausted",
            CodeProblem::NoneSent => "code_not_sent",
            CodeProblem::TooSoon => "code_recently_sent",
        }
    }

    pub fn message_en(self) -> &'static str {
        match self {
            CodeProblem::Wrong => "the code is wrong; check the message and try again",
            CodeProblem::Expired => "the code has expired; ask for a new one",
            CodeProblem::Used => "the code was already used; ask for a new one",
            CodeProblem::TooManyAttempts => "too many wrong codes; ask for a new one",
            CodeProblem::NoneSent => "no code was sent for this sign-in; ask for one",
            CodeProblem::TooSoon => {
                "a code was sent less than a minute ago; wait for it or try again shortly"
            }
        }
    }

    pub fn message_zh(self) -> &'static str {
        match self {
            CodeProblem::Wrong => "驗證碼錯誤，請核對訊息後再試。",
            CodeProblem::Expired => "驗證碼已逾時，請重新取得。",
            CodeProblem::Used => "驗證碼已使用過，請重新取得。",
            CodeProblem::TooManyAttempts => "錯誤次數過多，請重新取得驗證碼。",
            CodeProblem::NoneSent => "尚未寄送驗證碼，請先取得。",
            CodeProblem::TooSoon => "一分鐘內已寄出驗證碼，請稍候再試。",
        }
    }
}

impl AppError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::NotFound {
                what: "dataset", ..
            } => "dataset_not_found",
            AppError::NotFound {
                what: "service", ..
            } => "service_not_found",
            AppError::NotFound {
                what: "transfer", ..
            } => "transfer_not_found",
            AppError::NotFound {
                what: "tree head", ..
            } => "tree_head_not_found",
            AppError::NotFound {
                what: "audit event",
                ..
            } => "audit_event_not_found",
            AppError::NotFound { .. } => "not_found",
            AppError::RouteNotFound => "route_not_found",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::InvalidParameter { .. } => "invalid_parameter",
            AppError::InvalidQuery(_) => "invalid_query",
            AppError::MalformedJson(_) => "malformed_json",
            AppError::InvalidBody(_) => "invalid_body",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::Timeout => "request_timeout",
            AppError::EmptySelection => "empty_selection",
            AppError::DatabaseUnavailable => "database_unavailable",
            AppError::PackageNotReady(_) => "package_not_ready",
            AppError::PackageGone(_) => "package_gone",
            AppError::TreeSizeOutOfRange { .. } => "tree_size_out_of_range",
            AppError::LeafIndexOutOfRange { .. } => "leaf_index_out_of_range",
            AppError::ProofSizesOutOfOrder { .. } => "proof_sizes_out_of_order",
            AppError::ReceiptNotAvailable(_) => "receipt_not_available",
            AppError::CsrfRejected => "csrf_failed",
            AppError::SessionExpired => "session_expired",
            AppError::NotSignedIn => "not_signed_in",
            AppError::InsufficientLevel { .. } => "insufficient_level",
            AppError::IdentityRefused(r) => r.code(),
            AppError::LockedOut { .. } => "locked_out",
            AppError::CodeRefused(p) => p.code(),
            AppError::InvalidContact(_) => "invalid_contact",
            AppError::IdentityUnavailable => "identity_check_unavailable",
            AppError::MethodNotOffered(_) => "method_not_offered",
            AppError::PasswordRejected(_) => "password_rejected",
            AppError::Forbidden(_) => "forbidden",
            AppError::AdminUnauthorized => "admin_unauthorized",
            AppError::MetricsUnauthorized => "metrics_unauthorized",
            AppError::ServiceManagedByConfig(_) => "service_managed_by_config",
            AppError::AuthorizationRefused(_) => "authorization_refused",
            AppError::Passkey(p) => p.code(),
            AppError::ClerkRefused(p) => p.code(),
            AppError::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::NotFound { .. } | AppError::RouteNotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::InvalidParameter { .. }
            | AppError::InvalidQuery(_)
            | AppError::MalformedJson(_)
            | AppError::TreeSizeOutOfRange { .. }
            | AppError::LeafIndexOutOfRange { .. }
            | AppError::ProofSizesOutOfOrder { .. } => StatusCode::BAD_REQUEST,
            AppError::ReceiptNotAvailable(_) => StatusCode::CONFLICT,
            AppError::InvalidBody(_) | AppError::EmptySelection => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Timeout => StatusCode::REQUEST_TIMEOUT,
            AppError::PackageNotReady(_) => StatusCode::CONFLICT,
            AppError::PackageGone(_) => StatusCode::GONE,
            AppError::DatabaseUnavailable | AppError::IdentityUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::CsrfRejected | AppError::InsufficientLevel { .. } => StatusCode::FORBIDDEN,
            AppError::SessionExpired | AppError::NotSignedIn => StatusCode::UNAUTHORIZED,
            AppError::IdentityRefused(crate::identity::Refusal::MalformedInput) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::CodeRefused(CodeProblem::TooSoon) => StatusCode::TOO_MANY_REQUESTS,
            AppError::IdentityRefused(_) | AppError::CodeRefused(_) => StatusCode::UNAUTHORIZED,
            AppError::LockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::InvalidContact(_) | AppError::PasswordRejected(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::MethodNotOffered(_) => StatusCode::NOT_FOUND,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::AdminUnauthorized | AppError::MetricsUnauthorized => StatusCode::UNAUTHORIZED,
            AppError::ServiceManagedByConfig(_) => StatusCode::CONFLICT,
            AppError::AuthorizationRefused(_) => StatusCode::BAD_REQUEST,
            AppError::Passkey(p) => p.status(),
            AppError::ClerkRefused(p) => p.status(),
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short summary of the kind of problem (the same for every occurrence of a code).
    fn title(&self, lang: Lang) -> &'static str {
        let (zh, en) = match self {
            AppError::NotFound { .. } => ("找不到資料", "Not found"),
            AppError::RouteNotFound => ("找不到此頁面", "Page not found"),
            AppError::MethodNotAllowed(_) => ("不支援此操作", "Method not allowed"),
            AppError::InvalidParameter { .. } | AppError::InvalidQuery(_) => {
                ("查詢條件有誤", "Invalid query")
            }
            AppError::MalformedJson(_) | AppError::InvalidBody(_) => {
                ("請求內容有誤", "Invalid request body")
            }
            AppError::UnsupportedMediaType => ("不支援的內容格式", "Unsupported media type"),
            AppError::PayloadTooLarge { .. } => ("請求內容過大", "Request body too large"),
            AppError::Timeout => ("處理逾時", "Request timed out"),
            AppError::EmptySelection => ("尚未選擇資料集", "No dataset chosen"),
            AppError::DatabaseUnavailable => ("服務暫時無法使用", "Service unavailable"),
            AppError::PackageNotReady(_) => ("資料尚在準備中", "Data not ready yet"),
            AppError::PackageGone(_) => ("資料已刪除", "Data deleted"),
            AppError::TreeSizeOutOfRange { .. }
            | AppError::LeafIndexOutOfRange { .. }
            | AppError::ProofSizesOutOfOrder { .. } => ("證明參數有誤", "Invalid proof parameters"),
            AppError::ReceiptNotAvailable(_) => ("尚無法開立收據", "Receipt not available yet"),
            AppError::CsrfRejected => ("表單已失效", "Form expired"),
            AppError::SessionExpired => ("登入已逾時", "Session ended"),
            AppError::NotSignedIn => ("請先登入", "Sign-in needed"),
            AppError::InsufficientLevel { .. } => {
                ("需要更高的身分驗證等級", "Stronger sign-in needed")
            }
            AppError::IdentityRefused(_) => ("身分驗證未通過", "Identity not verified"),
            AppError::LockedOut { .. } => ("暫時鎖定", "Temporarily locked"),
            AppError::CodeRefused(_) => ("驗證碼未通過", "Code not accepted"),
            AppError::InvalidContact(_) => ("聯絡方式有誤", "Invalid contact"),
            AppError::IdentityUnavailable => ("暫時無法驗證身分", "Identity check unavailable"),
            AppError::MethodNotOffered(_) => ("不提供此驗證方式", "Method not offered"),
            AppError::PasswordRejected(_) => ("密碼不符合規定", "Password not accepted"),
            AppError::Forbidden(_) => ("沒有權限", "Not allowed"),
            AppError::AdminUnauthorized => ("需要管理權杖", "Admin token needed"),
            AppError::MetricsUnauthorized => ("需要監控權杖", "Metrics token needed"),
            AppError::ServiceManagedByConfig(_) => {
                ("此服務由設定檔管理", "Service managed by the configuration")
            }
            AppError::AuthorizationRefused(_) => ("無法繼續授權", "Authorization cannot go on"),
            AppError::Passkey(_) => ("通行密鑰未完成", "Passkey not accepted"),
            AppError::ClerkRefused(_) => ("無法登入", "Sign-in not accepted"),
            AppError::Internal(_) => ("系統發生錯誤", "Internal error"),
        };
        lang.pick(zh, en)
    }

    /// What the person can do about it, in their language (pages).
    pub fn detail_in(&self, lang: Lang) -> String {
        if lang == Lang::En {
            return self.detail();
        }
        match self {
            AppError::IdentityRefused(r) => r.message_zh().into(),
            AppError::CodeRefused(p) => p.message_zh().into(),
            AppError::LockedOut { retry_after_secs } => format!(
                "失敗次數過多，請於 {} 分鐘後再試。",
                retry_after_secs.div_ceil(60)
            ),
            AppError::CsrfRejected => "表單的安全碼遺失或不正確，請重新整理頁面後再試。".into(),
            AppError::SessionExpired => "閒置過久或已達使用時限，請重新登入。".into(),
            AppError::NotSignedIn => "請先完成身分驗證。".into(),
            AppError::InsufficientLevel { required } => {
                format!("此操作需要等級 {required} 或更高的身分驗證。")
            }
            AppError::IdentityUnavailable => "目前無法向機關查驗，請幾分鐘後再試。".into(),
            AppError::Passkey(p) => p.message_zh().into(),
            AppError::ClerkRefused(p) => p.message_zh().into(),
            AppError::AuthorizationRefused(h) => h.message(lang).into(),
            AppError::NotFound { what, id } => {
                let what = match *what {
                    "transfer" => "傳送",
                    "dataset" => "資料集",
                    "service" => "服務",
                    "file" => "檔案",
                    "package" => "資料包",
                    "counter" => "櫃檯",
                    "barcode" => "條碼",
                    "verification password" => "驗證密碼",
                    "audit event" => "紀錄事件",
                    other => other,
                };
                format!("找不到{what}「{id}」。")
            }
            AppError::RouteNotFound => "這個網址沒有網頁；請檢查網址，或回到首頁。".into(),
            AppError::MethodNotAllowed(_) => {
                "這個網址不接受這種操作；請回到上一頁重新操作。".into()
            }
            // The technical part (a parameter's name, what was wrong) stays as the parser said it.
            AppError::InvalidParameter { name, message } => {
                format!("網址中的參數 `{name}` 不正確（{message}）。")
            }
            AppError::InvalidQuery(m) => format!("網址中的查詢參數不正確（{m}）。"),
            AppError::MalformedJson(_) | AppError::InvalidBody(_) => {
                "送出的內容不完整或格式不正確；請回到上一頁重新填寫。".into()
            }
            AppError::UnsupportedMediaType => "送出的內容格式不正確；請回到上一頁重新填寫。".into(),
            AppError::PayloadTooLarge { .. } => "送出的內容太大。".into(),
            AppError::Timeout => "系統未能及時回應，請再試一次。".into(),
            AppError::EmptySelection => "您還沒有選擇任何資料。".into(),
            AppError::DatabaseUnavailable => "平臺暫時無法連線到資料庫，請一分鐘後再試。".into(),
            AppError::PackageNotReady(_) => "資料還在向機關取得中，尚未準備好。".into(),
            AppError::PackageGone(_) => "這份資料已經下載過或已超過保存時限，已經刪除。".into(),
            AppError::MethodNotOffered(m) => format!("這裡不提供「{m}」這種身分驗證方式。"),
            AppError::Internal(_) => "系統發生錯誤，請再試一次；若一直發生，請與客服聯絡。".into(),
            _ => self.detail(),
        }
    }

    /// Headers some errors carry (Retry-After of a lockout).
    pub(crate) fn decorate(&self, res: &mut Response) {
        let retry_after = match self {
            AppError::LockedOut { retry_after_secs } => Some(*retry_after_secs),
            AppError::DatabaseUnavailable => Some(DATABASE_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }

    /// What the person or client can do about it.
    fn detail(&self) -> String {
        match self {
            AppError::Internal(_) => "Something went wrong on our side. Try again; if it keeps happening, quote the request ID to support.".into(),
            AppError::DatabaseUnavailable => "The platform cannot reach its database. Try again in a minute.".into(),
            AppError::Timeout => "The platform could not answer in time. Try again.".into(),
            other => format!("{other}."),
        }
    }

    fn log(&self) {
        match self {
            AppError::Internal(e) => {
                tracing::error!(code = self.code(), error = ?e, "request failed")
            }
            AppError::DatabaseUnavailable => {
                tracing::warn!(code = self.code(), "database unavailable")
            }
            AppError::IdentityUnavailable => {
                tracing::warn!(code = self.code(), "identity check unavailable")
            }
            _ => tracing::debug!(code = self.code(), "request refused"),
        }
    }

    /// The response for a web page: the same problem, as a page in the person's language.
    pub fn into_page(self, lang: Lang) -> Response {
        self.log();
        let page = crate::pages::ErrorPage::new(
            lang,
            self.status().as_u16(),
            self.title(lang),
            &self.detail_in(lang),
            self.code(),
        );
        let mut res = (self.status(), page).into_response();
        self.decorate(&mut res);
        res
    }
}

/// RFC 9457 problem details, with the stable `code` as an extension member.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let body = Problem {
            kind: format!("urn:mydata:problem:{}", self.code()),
            title: self.title(Lang::En),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (status, json).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        self.decorate(&mut res);
        res
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => {
                AppError::MalformedJson(strip_prefix(e.body_text()))
            }
            JsonRejection::JsonDataError(e) => AppError::InvalidBody(strip_prefix(e.body_text())),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                AppError::PayloadTooLarge { limit: None }
            }
            other => AppError::InvalidBody(other.body_text()),
        }
    }
}

/// axum's rejection texts start with a generic sentence that our own message already says.
fn strip_prefix(text: String) -> String {
    for p in [
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize the JSON body into the target type: ",
    ] {
        if let Some(rest) = text.strip_prefix(p) {
            return rest.to_owned();
        }
    }
    text
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        let text = r.body_text();
        AppError::InvalidQuery(clip_quoted(
            text.trim_start_matches("Failed to deserialize query string: "),
        ))
    }
}

/// serde's message with what it repeats of the caller's input (a value between backticks, the
/// parameter's name in front) cut to [`crate::routes::ECHO_CHARS`] characters, so a huge query is
/// not sent back; the names it expects are short and stay whole.
fn clip_quoted(message: &str) -> String {
    let long = |s: &str| s.chars().count() > crate::routes::ECHO_CHARS;
    let quoted = message
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 && long(part) {
                format!("{}…", crate::routes::clip(part))
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("`");
    quoted
        .split(' ')
        .map(|word| {
            if long(word) && !word.contains('`') {
                format!("{}…", crate::routes::clip(word))
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        // axum's text repeats the whole segment; the caller knows what they sent.
        let message = match r {
            PathRejection::FailedToDeserializePathParams(_) => {
                "not valid here (percent-encoded bytes that are not UTF-8, or a value of the wrong kind)"
            }
            _ => "the path could not be read",
        };
        AppError::InvalidParameter {
            name: "path segment".into(),
            message: message.into(),
        }
    }
}

/// Seconds a client is told to wait when the database is out of reach ("in a minute"), on pages,
/// the API and the OAuth endpoints alike.
pub const DATABASE_RETRY_AFTER_SECS: u64 = 60;

impl From<mydata_store::StoreError> for AppError {
    fn from(e: mydata_store::StoreError) -> Self {
        if e.is_unavailable() {
            // 503 and "try again in a minute" rather than 500: an outage, not a fault. The cause is
            // the driver's (no personal data: values are bound, never in the text).
            tracing::warn!(error = %e, "database unavailable");
            return AppError::DatabaseUnavailable;
        }
        AppError::Internal(e.into())
    }
}

/// Whether a request is for the machine API (problem+json) rather than a web page: the API, and
/// the JSON endpoints the sign-in and passkey pages call from script.
pub(crate) fn wants_problem_json(path: &str) -> bool {
    path.starts_with("/api/")
        || path == "/api"
        || path.starts_with("/healthz")
        || path.starts_with("/readyz")
        || path == "/metrics"
        || path.starts_with("/.well-known/")
        || path.ends_with("/options")
        || (path.starts_with("/login/") && path.ends_with("/challenge"))
}

/// The OAuth endpoints a service calls, which answer every error as RFC 6749 JSON.
fn oauth_endpoint(path: &str) -> bool {
    matches!(
        path,
        "/oauth/par" | "/oauth/token" | "/api/v1/records/service" | "/api/v1/records/agency"
    )
}

/// Rewrites error responses made outside handlers (layers, router fallbacks) into problem+json for
/// the API or an error page for the web, so that every error has the same shape and a code.
pub async fn problem_fallback(req: Request, next: Next) -> Response {
    let api = wants_problem_json(req.uri().path());
    let oauth = oauth_endpoint(req.uri().path());
    let lang = Lang::from_request(&req);
    let method = req.method().to_string();
    let limit = req.extensions().get::<BodyLimit>().map(|b| b.0);
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // A 413 is always restated here, where the configured limit is known, whoever produced it.
    // OAuth endpoints answer RFC 6749 JSON errors, which keep their standard shape.
    let known = content_type.starts_with(PROBLEM_JSON)
        || content_type.starts_with("text/html")
        || (content_type.starts_with("application/json")
            && res.headers().contains_key(header::CACHE_CONTROL));
    if known && status != StatusCode::PAYLOAD_TOO_LARGE {
        return res;
    }
    let err = match status {
        StatusCode::NOT_FOUND => AppError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => AppError::MethodNotAllowed(method),
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge { limit },
        StatusCode::REQUEST_TIMEOUT => AppError::Timeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType,
        s if s.is_client_error() => {
            AppError::InvalidBody(format!("request refused with status {}", s.as_u16()))
        }
        _ => AppError::Internal(anyhow::anyhow!(
            "unhandled error response with status {status}"
        )),
    };
    let allow = res.headers().get(header::ALLOW).cloned();
    let mut out = if oauth {
        crate::oauth::OAuthError::outside_handler(&err).into_response()
    } else if api {
        err.into_response()
    } else {
        err.into_page(lang)
    };
    if let Some(allow) = allow {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// The configured body limit, made visible to [`problem_fallback`] for its message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Converts a panic inside a handler into a logged internal error instead of a dropped connection.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    AppError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// A page handler's error: the same [`AppError`], answered as a page in the person's language.
#[derive(Debug)]
pub struct PageError(pub AppError, pub Lang);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.into_page(self.1)
    }
}

/// Renders an askama template, turning a template failure into an internal error.
pub fn render<T: askama::Template>(t: &T) -> Result<Html<String>, AppError> {
    t.render()
        .map(Html)
        .map_err(|e| AppError::Internal(e.into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mydata_store::StoreError;

    /// Every error a page can show has its explanation in Chinese on a zh-TW page (not the English
    /// sentence under a Chinese title), and in English on an English one.
    #[test]
    fn page_errors_explain_themselves_in_the_pages_language() {
        use crate::oauth::Halt;
        let errors = [
            AppError::NotFound {
                what: "transfer",
                id: "x".into(),
            },
            AppError::RouteNotFound,
            AppError::MethodNotAllowed("GET".into()),
            AppError::InvalidParameter {
                name: "path segment".into(),
                message: "not valid".into(),
            },
            AppError::InvalidQuery("unknown field `fbclid`".into()),
            AppError::MalformedJson("x".into()),
            AppError::InvalidBody("x".into()),
            AppError::UnsupportedMediaType,
            AppError::PayloadTooLarge { limit: Some(1024) },
            AppError::Timeout,
            AppError::EmptySelection,
            AppError::DatabaseUnavailable,
            AppError::PackageNotReady("t".into()),
            AppError::PackageGone("t".into()),
            AppError::CsrfRejected,
            AppError::SessionExpired,
            AppError::NotSignedIn,
            AppError::LockedOut {
                retry_after_secs: 60,
            },
            AppError::IdentityUnavailable,
            AppError::MethodNotOffered("moica_cert".into()),
            AppError::AuthorizationRefused(Halt::Finished),
            AppError::AuthorizationRefused(Halt::ExpiredOrUsed),
            AppError::Internal(anyhow::anyhow!("boom")),
        ];
        let chinese = |s: &str| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        for e in &errors {
            let zh = e.detail_in(Lang::ZhTw);
            assert!(chinese(&zh), "{:?}: {zh}", e.code());
            assert_ne!(zh, e.detail_in(Lang::En), "{:?}", e.code());
            assert!(!chinese(&e.detail_in(Lang::En)), "{:?}", e.code());
        }
    }

    #[test]
    fn a_database_outage_answers_503_with_retry_after_and_a_fault_500() {
        // SQLITE_BUSY: another process holds the database file.
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(5), None);
        let down: AppError = StoreError::Sqlite(busy).into();
        assert_eq!(down.code(), "database_unavailable");
        let res = down.into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "60");
        let fault: AppError = StoreError::Corrupt("bad row".into()).into();
        assert_eq!(fault.code(), "internal_error");
        let res = fault.into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_code_asked_again_too_soon_is_429_wherever_it_is_answered() {
        let e = AppError::CodeRefused(CodeProblem::TooSoon);
        assert_eq!(e.code(), "code_recently_sent");
        assert_eq!(e.into_response().status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            AppError::CodeRefused(CodeProblem::Wrong).status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
