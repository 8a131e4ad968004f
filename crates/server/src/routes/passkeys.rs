//! Passkey pages and endpoints (TW FidO analogue, level 2): the sign-in options for an ID number,
//! and the person's own page listing their passkeys, registering one (level-1 sessions only) and
//! removing one. Every POST carries the session's CSRF token (a form field, or the `x-csrf-token`
//! header for the JSON calls the page script makes).

use crate::error::AppError;
use crate::i18n::Lang;
use crate::identity::passkey::{self, PasskeyMethod, PasskeyProblem};
use crate::identity::session::{self, CSRF_HEADER, Session};
use crate::identity::{Form, Method};
use crate::pages::Chrome;
use crate::routes::form::{PostedForm, no_store, on_page};
use crate::routes::login::{
    FormError, audit, check_lock, client_address, count_failure, lang_of, page, platform_origin,
    time_text, with_cookie,
};
use crate::routes::path::Path;
use crate::state::AppState;
use askama::Template;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::header::HeaderMap;
use axum::http::{Extensions, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use mydata_core::IdentityMethod;
use serde::Deserialize;

const PAGE: &str = "/account/passkeys";

/// Texts the passkey scripts show, in the page's language.
#[derive(Debug, Clone)]
pub struct PasskeyTexts {
    pub options_url: &'static str,
    pub busy: &'static str,
    pub failed: &'static str,
    pub cancelled: &'static str,
    pub unsupported: &'static str,
    pub none: &'static str,
    pub locked: &'static str,
}

impl PasskeyTexts {
    pub fn sign_in(lang: Lang) -> Self {
        Self {
            options_url: "/login/tw_fido/options",
            busy: lang.pick(
                "請依裝置指示確認（指紋、臉部或螢幕鎖）…",
                "Confirm on your device (fingerprint, face or screen lock)…",
            ),
            failed: lang.pick(
                "無法以通行密鑰登入，請檢查身分證號後再試。",
                "The passkey sign-in did not work; check the ID number and try again.",
            ),
            cancelled: lang.pick(
                "已取消，或裝置上沒有此帳號的通行密鑰。",
                "Cancelled, or this device has no passkey for this account.",
            ),
            unsupported: lang.pick(
                "此瀏覽器不支援通行密鑰，請改用其他方式。",
                "This browser does not support passkeys; use another method.",
            ),
            none: PasskeyProblem::NotRegistered.message_zh_or_en(lang),
            locked: lang.pick(
                "失敗次數過多，請 15 分鐘後再試。",
                "Too many failed attempts; try again in 15 minutes.",
            ),
        }
    }

    fn register(lang: Lang) -> Self {
        Self {
            options_url: "/account/passkeys/options",
            busy: lang.pick(
                "請依裝置指示建立通行密鑰…",
                "Follow your device's steps to create the passkey…",
            ),
            failed: lang.pick(
                "無法建立通行密鑰，請再試一次。",
                "The passkey could not be created; try again.",
            ),
            cancelled: lang.pick(
                "已取消，或此裝置已有您的通行密鑰。",
                "Cancelled, or this device already holds a passkey of yours.",
            ),
            unsupported: lang.pick(
                "此瀏覽器不支援通行密鑰。",
                "This browser does not support passkeys.",
            ),
            none: "",
            locked: "",
        }
    }
}

impl PasskeyProblem {
    fn message_zh_or_en(self, lang: Lang) -> &'static str {
        match (self, lang) {
            (p, Lang::ZhTw) => p.message_zh(),
            (PasskeyProblem::NotRegistered, Lang::En) => {
                "No passkey is registered for this ID number: sign in with a citizen certificate and register one first."
            }
            _ => "",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sign-in options

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInBody {
    pub id_number: String,
}

/// `POST /login/tw_fido/options` (JSON `{id_number}`, CSRF in `x-csrf-token`): the passkeys of that
/// person to choose from, with a single-use challenge. An ID number with no passkey is refused
/// and counted toward lockout like a failed sign-in, so the endpoint cannot be used to probe.
pub async fn sign_in_options(
    State(state): State<AppState>,
    headers: HeaderMap,
    ext: Extensions,
    body: Result<Json<SignInBody>, JsonRejection>,
) -> Result<Response, AppError> {
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let s = session::for_post(&state, &headers, csrf).await?;
    if !state.identity().offers(IdentityMethod::TwFido) {
        return Err(AppError::MethodNotOffered("tw_fido".into()));
    }
    let Json(body) = body?;
    let addr_key = state
        .identity()
        .pseudonyms
        .address(&client_address(&state, &headers, &ext));
    check_lock(&state, &[&addr_key]).await?;
    let form: Form = [("id_number".to_owned(), body.id_number)].into();
    let account = match PasskeyMethod.account(&form) {
        Ok(a) => a,
        Err(r) => {
            fail(&state, None, r.code()).await?;
            if let Some(locked) = count_failure(&state, &[&addr_key], None).await? {
                return Err(locked);
            }
            return Err(AppError::IdentityRefused(r));
        }
    };
    let subject = session::pseudonym(&state, &account);
    let acct_key = format!("acct-{subject}");
    check_lock(&state, &[&acct_key, &addr_key]).await?;
    let origin = platform_origin(&state, &headers);
    match passkey::start_authentication(&state, s.id_hash(), &subject, &origin).await? {
        Some(started) => Ok(no_store(Json(started).into_response())),
        None => {
            let p = PasskeyProblem::NotRegistered;
            fail(&state, Some(&subject), p.code()).await?;
            if let Some(locked) =
                count_failure(&state, &[&acct_key, &addr_key], Some(&subject)).await?
            {
                return Err(locked);
            }
            Err(p.into())
        }
    }
}

async fn fail(state: &AppState, subject: Option<&str>, code: &str) -> Result<(), AppError> {
    tracing::info!(method = "tw_fido", code, "identity verification failed");
    audit(
        state,
        "identity.failed",
        subject,
        serde_json::json!({ "method": "tw_fido", "code": code }),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The person's passkeys

#[derive(Debug)]
pub struct PasskeyItem {
    pub id: String,
    pub name: String,
    pub created: String,
    pub last_used: String,
    pub synced: &'static str,
}

#[derive(Debug, Template)]
#[template(path = "account/passkeys.html")]
pub struct PasskeysPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub error: Option<FormError>,
    pub notice: Option<&'static str>,
    pub csrf: String,
    pub items: Vec<PasskeyItem>,
    pub empty: &'static str,
    pub col_name: &'static str,
    pub col_created: &'static str,
    pub col_used: &'static str,
    pub col_synced: &'static str,
    pub remove: &'static str,
    pub can_register: bool,
    pub register_title: &'static str,
    pub name_label: &'static str,
    pub name_hint: &'static str,
    pub register: &'static str,
    pub need_level1: &'static str,
    pub level1_href: String,
    pub texts: PasskeyTexts,
    /// The sign-out button (a shared computer must be left signed out).
    pub sign_out: &'static str,
}

async fn passkeys_page(
    state: &AppState,
    s: &Session,
    lang: Lang,
    error: Option<FormError>,
    notice: Option<&'static str>,
) -> Result<PasskeysPage, AppError> {
    let v = s.verified().ok_or(AppError::NotSignedIn)?;
    let rows = state.store().passkeys_of(&v.subject).await?;
    let items = rows
        .into_iter()
        .map(|r| PasskeyItem {
            id: r.id,
            name: r.name,
            created: time_text(r.created_at),
            last_used: r
                .last_used_at
                .map(time_text)
                .unwrap_or_else(|| lang.pick("尚未使用", "Not used yet").into()),
            synced: if r.backup_state != 0 {
                lang.pick("是", "Yes")
            } else {
                lang.pick("否", "No")
            },
        })
        .collect();
    Ok(PasskeysPage {
        chrome: Chrome::new(lang),
        title: lang.pick("我的通行密鑰（TW FidO）", "My passkeys (TW FidO)"),
        intro: lang.pick(
            "通行密鑰存在您的手機或電腦中，以指紋、臉部或螢幕鎖確認是您本人，可用於身分驗證等級 2。遺失裝置時請在此移除。",
            "A passkey lives on your phone or computer and checks it is you by fingerprint, face or screen lock; it signs you in at assurance level 2. Remove it here if you lose the device.",
        ),
        error,
        notice,
        csrf: s.csrf().to_owned(),
        items,
        empty: lang.pick("您還沒有註冊通行密鑰。", "You have no passkey yet."),
        col_name: lang.pick("名稱", "Name"),
        col_created: lang.pick("註冊時間", "Registered"),
        col_used: lang.pick("最後使用", "Last used"),
        col_synced: lang.pick("已同步備份", "Synced"),
        remove: lang.pick("移除", "Remove"),
        can_register: passkey::may_register(&v),
        register_title: lang.pick("在此裝置註冊通行密鑰", "Register a passkey on this device"),
        name_label: lang.pick("名稱（方便您辨認，例如「我的手機」）", "Name (to tell it apart, e.g. “my phone”)"),
        name_hint: lang.pick("最多 40 個字。", "Up to 40 characters."),
        register: lang.pick("建立通行密鑰", "Create the passkey"),
        need_level1: lang.pick(
            "註冊通行密鑰需要先以自然人憑證登入（等級 1）。",
            "Registering a passkey needs a citizen-certificate sign-in (level 1) first.",
        ),
        level1_href: format!("/login/moica_cert?next={PAGE}"),
        texts: PasskeyTexts::register(lang),
        sign_out: lang.pick("登出", "Sign out"),
    })
}

/// `GET /account/passkeys`
pub async fn list(State(state): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let s = session::load(&state, &headers).await?;
        let Some(s) = s.filter(|s| s.verified().is_some()) else {
            return Ok(Redirect::to(&format!("/login/moica_cert?next={PAGE}")).into_response());
        };
        let notice = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "added=1"))
            .then(|| lang.pick("通行密鑰已註冊。", "Passkey registered."));
        let p = passkeys_page(&state, &s, lang, None, notice).await?;
        Ok::<_, AppError>(with_cookie(page(StatusCode::OK, &p), None))
    })
    .await
}

/// `POST /account/passkeys/options` (CSRF in `x-csrf-token`): creation options for this device.
pub async fn register_options(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let s = session::for_post(&state, &headers, csrf).await?;
    let origin = platform_origin(&state, &headers);
    let started = passkey::start_registration(&state, &s, &origin).await?;
    Ok(no_store(Json(started).into_response()))
}

/// `POST /account/passkeys` (form: csrf, ceremony_id, credential, name)
pub async fn register(
    State(state): State<AppState>,
    PostedForm {
        session: s,
        form,
        lang,
    }: PostedForm,
) -> Response {
    on_page(lang, async {
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        match passkey::finish_registration(
            &state,
            &s,
            get("ceremony_id"),
            get("credential"),
            get("name"),
        )
        .await
        {
            Ok(row) => {
                audit(
                    &state,
                    "identity.passkey_registered",
                    Some(&row.subject),
                    serde_json::json!({ "passkey": row.id, "backup_eligible": row.backup_eligible != 0 }),
                )
                .await?;
                Ok(with_cookie(
                    Redirect::to(&format!("{PAGE}?added=1")).into_response(),
                    None,
                ))
            }
            // Refusals a person can act on are shown on the page itself.
            Err(e @ (AppError::Passkey(_) | AppError::IdentityRefused(_))) => {
                if let Some(v) = s.verified() {
                    audit(
                        &state,
                        "identity.passkey_refused",
                        Some(&v.subject),
                        serde_json::json!({ "code": e.code() }),
                    )
                    .await?;
                }
                // The device's answer was refused, not the name typed.
                let fe = FormError {
                    code: e.code(),
                    message: e.detail_in(lang),
                    invalid: false,
                };
                let p = passkeys_page(&state, &s, lang, Some(fe), None).await?;
                Ok(with_cookie(page(e.status(), &p), None))
            }
            Err(e) => Err(e),
        }
    })
    .await
}

/// `POST /account/passkeys/{id}/delete` (form: csrf)
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PostedForm {
        session: s,
        form: _,
        lang,
    }: PostedForm,
) -> Response {
    on_page(lang, async {
        let v = s.verified().ok_or(AppError::NotSignedIn)?;
        if !state.store().delete_passkey(&v.subject, &id).await? {
            return Err(PasskeyProblem::NotFound.into());
        }
        audit(
            &state,
            "identity.passkey_removed",
            Some(&v.subject),
            serde_json::json!({ "passkey": id }),
        )
        .await?;
        Ok::<_, AppError>(with_cookie(Redirect::to(PAGE).into_response(), None))
    })
    .await
}
