//! Self-download pages (自行下載): choose datasets (a basket carried in the form, never in a
//! process's memory) → terms and privacy notice → sign-in with a method every chosen dataset
//! accepts → consent (one form token: one transfer) → progress per dataset → preview → save the
//! zip or one file → confirm deletion. Only the transfer's own person can open its pages.

use crate::download::{self, TERMS_VERSION, basket_from_pairs, basket_query, owned_transfer_of};
use crate::error::{AppError, render};
use crate::i18n::Lang;
use crate::identity::session::{self, Session, Verified};
use crate::notices::taipei_time;
use crate::pages::{Chrome, DatasetCard, SelectOption};
use crate::routes::catalog_api::DatasetQuery;
use crate::routes::form::{PostedForm, lang_of, no_store, on_page};
use crate::routes::path::Path;
use crate::state::AppState;
use askama::Template;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::catalog::Selection;
use mydata_core::transfer::{TransferKind, TransferState};
use mydata_core::{IdentityMethod, Timestamp};
use mydata_store::{DownloadClaim, NewAuditEvent, PackageRecord, Transfer, fetch_status};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::Duration;

type Pairs = Vec<(String, String)>;

/// The purpose recorded on a self-download transfer (shown localized in usage records).
pub const PURPOSE: &str = "self_download";

fn chrome(lang: Lang, uri: &Uri) -> Chrome {
    Chrome::new(lang).keep_query(uri.query().unwrap_or_default())
}

fn page<T: Template>(status: StatusCode, t: &T, lang: Lang) -> Response {
    match render(t) {
        Ok(html) => no_store((status, html).into_response()),
        Err(e) => e.into_page(lang),
    }
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn to_login(next: &str, basket: &[String]) -> Response {
    no_store(Redirect::to(&super::login::login_href(next, basket)).into_response())
}

/// An agency's expected time to answer, in words.
pub(crate) fn ready_text(minutes: u32, lang: Lang) -> String {
    match (minutes, lang) {
        (0, Lang::ZhTw) => "立即取得".into(),
        (0, Lang::En) => "Ready at once".into(),
        (n, Lang::ZhTw) => format!("約 {n} 分鐘"),
        (n, Lang::En) => format!("About {n} minutes"),
    }
}

fn methods_text(methods: &[IdentityMethod], lang: Lang) -> String {
    methods
        .iter()
        .map(|m| lang.pick(m.name_zh(), m.name_en()))
        .collect::<Vec<_>>()
        .join(lang.pick("、", ", "))
}

/// What the basket needs, in words: accepted methods, which dataset rules out which, the wait.
#[derive(Debug, Default)]
pub struct BasketSummary {
    pub methods: String,
    pub exclusions: Vec<String>,
    pub wait: String,
    pub none_common: bool,
}

fn summary(state: &AppState, sel: &Selection, lang: Lang) -> BasketSummary {
    let c = state.catalog();
    let name = |id: &str| {
        c.dataset(id)
            .map(|d| lang.pick(&d.name_zh, &d.name_en).to_owned())
            .unwrap_or_else(|| id.to_owned())
    };
    let exclusions = sel
        .excluded_methods
        .iter()
        .map(|ex| {
            let names: Vec<String> = ex.excluded_by.iter().map(|d| name(d)).collect();
            match lang {
                Lang::ZhTw => format!(
                    "不能使用{}：「{}」不接受此方式。",
                    ex.method.name_zh(),
                    names.join("」、「")
                ),
                Lang::En => format!(
                    "{} cannot be used: {} does not accept it.",
                    ex.method.name_en(),
                    names.join(", ")
                ),
            }
        })
        .collect();
    BasketSummary {
        methods: methods_text(&sel.identity_methods, lang),
        exclusions,
        wait: ready_text(sel.ready_minutes, lang),
        none_common: sel.identity_methods.is_empty(),
    }
}

fn selection(state: &AppState, basket: &[String]) -> Result<Selection, AppError> {
    state.catalog().selection(basket).map_err(|e| match e {
        mydata_core::catalog::SelectionError::UnknownDataset(id) => {
            super::not_found("dataset", &id)
        }
        mydata_core::catalog::SelectionError::Empty => AppError::EmptySelection,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Choose datasets

#[derive(Debug)]
pub struct BasketItem {
    pub id: String,
    pub name: String,
    pub agency: String,
    pub ready: String,
}

#[derive(Debug)]
pub struct PickCard {
    pub card: DatasetCard,
    pub in_basket: bool,
}

#[derive(Debug)]
pub struct PickGroup {
    pub id: String,
    pub title: String,
    pub cards: Vec<PickCard>,
}

#[derive(Debug, Template)]
#[template(path = "download/choose.html")]
pub struct ChoosePage {
    pub chrome: Chrome,
    pub lang: &'static str,
    pub t: ChooseTexts,
    pub basket: Vec<BasketItem>,
    pub summary: BasketSummary,
    pub groups: Vec<PickGroup>,
    pub count_text: String,
    pub query: String,
    pub by_category: bool,
    pub categories: Vec<SelectOption>,
    pub agencies: Vec<SelectOption>,
    pub formats: Vec<SelectOption>,
    pub methods: Vec<SelectOption>,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct ChooseTexts {
    pub title: &'static str,
    pub intro: &'static str,
    pub search_label: &'static str,
    pub category_label: &'static str,
    pub agency_label: &'static str,
    pub format_label: &'static str,
    pub method_label: &'static str,
    pub any: &'static str,
    pub group_label: &'static str,
    pub by_agency: &'static str,
    pub by_category: &'static str,
    pub update: &'static str,
    pub basket_title: &'static str,
    pub basket_empty: &'static str,
    pub basket_hint: &'static str,
    pub accepted: &'static str,
    pub wait: &'static str,
    pub why: &'static str,
    pub next: &'static str,
    pub add: &'static str,
    pub added: &'static str,
    pub formats: &'static str,
    pub methods: &'static str,
    pub ready: &'static str,
    pub none_found: &'static str,
    pub none_common: &'static str,
    pub records: &'static str,
}

impl ChooseTexts {
    fn new(lang: Lang) -> Self {
        Self {
            title: lang.pick("自行下載：選擇資料", "Download your data: choose datasets"),
            intro: lang.pick(
                "勾選要下載的資料後按「下一步」。取得的資料暫存於您的個人空間最多 8 小時，儲存到裝置並確認刪除後即刪除。",
                "Tick the data you want and press Next. What is fetched stays in your temporary space for at most 8 hours and is deleted once you save it and confirm.",
            ),
            search_label: lang.pick("搜尋資料集", "Search datasets"),
            category_label: lang.pick("類別", "Category"),
            agency_label: lang.pick("機關", "Agency"),
            format_label: lang.pick("格式", "Format"),
            method_label: lang.pick("身分驗證方式", "Identity method"),
            any: lang.pick("全部", "All"),
            group_label: lang.pick("分組方式", "Group by"),
            by_agency: lang.pick("依機關", "By agency"),
            by_category: lang.pick("依類別", "By category"),
            update: lang.pick("搜尋並更新清單", "Search and update the list"),
            basket_title: lang.pick("已選擇的資料", "Your selection"),
            basket_empty: lang.pick("尚未選擇任何資料。", "Nothing chosen yet."),
            basket_hint: lang.pick("取消勾選後按「搜尋並更新清單」即可移除。", "Untick and press “Search and update the list” to remove."),
            accepted: lang.pick("可用的身分驗證方式", "Identity methods you can use"),
            wait: lang.pick("預計等待時間", "Expected wait"),
            why: lang.pick("為什麼有些方式不能用", "Why some methods are not offered"),
            next: lang.pick("下一步：閱讀服務條款", "Next: read the terms"),
            add: lang.pick("加入", "Add"),
            added: lang.pick("已加入", "Added"),
            formats: lang.pick("格式", "Formats"),
            methods: lang.pick("可用身分驗證", "Identity methods"),
            ready: lang.pick("預計取得時間", "Expected wait"),
            none_found: lang.pick("找不到符合條件的資料集，請換個關鍵字或清除篩選條件。", "No dataset matches. Try other words or clear the filters."),
            none_common: lang.pick(
                "沒有一種身分驗證方式是這些資料都接受的，請分開申請。",
                "No identity method is accepted by all of these datasets; request them separately.",
            ),
            records: lang.pick("查看我的使用紀錄", "See my usage records"),
        }
    }
}

/// `GET /download`
pub async fn choose(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    match choose_inner(&state, &uri, query, lang, None) {
        Ok(r) => r,
        Err(e) => no_store(e.into_page(lang)),
    }
}

fn choose_inner(
    state: &AppState,
    uri: &Uri,
    query: Result<Query<Pairs>, QueryRejection>,
    lang: Lang,
    error: Option<String>,
) -> Result<Response, AppError> {
    let Query(pairs) = query?;
    let basket = basket_from_pairs(state, &pairs)?;
    let c = state.catalog();
    let dq = DatasetQuery {
        agency: get(&pairs, "agency").map(str::to_owned),
        category: get(&pairs, "category").map(str::to_owned),
        identity_method: get(&pairs, "identity_method").map(str::to_owned),
        format: get(&pairs, "format").map(str::to_owned),
        q: get(&pairs, "q").map(str::to_owned),
    };
    let filter = dq.to_filter(c)?;
    let found = c.find_datasets(&filter);
    let by_category = get(&pairs, "group") == Some("category");
    let card = |d: &mydata_core::catalog::Dataset| PickCard {
        card: DatasetCard::new(c, d, lang),
        in_basket: basket.iter().any(|b| b == &d.id),
    };
    let labels = if by_category {
        c.categories()
    } else {
        c.agencies()
    };
    let groups: Vec<PickGroup> = labels
        .iter()
        .map(|l| PickGroup {
            id: l.id.clone(),
            title: lang.pick(&l.name_zh, &l.name_en).to_owned(),
            cards: found
                .iter()
                .filter(|d| {
                    if by_category {
                        d.category == l.id
                    } else {
                        d.agency == l.id
                    }
                })
                .map(|d| card(d))
                .collect(),
        })
        .filter(|g| !g.cards.is_empty())
        .collect();
    let items: Vec<BasketItem> = basket
        .iter()
        .filter_map(|id| c.dataset(id))
        .map(|d| BasketItem {
            id: d.id.clone(),
            name: lang.pick(&d.name_zh, &d.name_en).to_owned(),
            agency: c
                .agency(&d.agency)
                .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
                .unwrap_or_default(),
            ready: ready_text(d.ready_minutes, lang),
        })
        .collect();
    let summary = if basket.is_empty() {
        BasketSummary::default()
    } else {
        summary(state, &selection(state, &basket)?, lang)
    };
    let opt = |v: &str, l: &str, cur: Option<&str>| SelectOption::new(v, l, cur == Some(v));
    let count_text = match lang {
        Lang::ZhTw => format!(
            "共 {} 項資料集，顯示 {} 項",
            c.datasets().len(),
            found.len()
        ),
        Lang::En => format!("Showing {} of {} datasets", found.len(), c.datasets().len()),
    };
    let p = ChoosePage {
        chrome: chrome(lang, uri),
        lang: lang.tag(),
        t: ChooseTexts::new(lang),
        basket: items,
        summary,
        groups,
        count_text,
        query: filter.query.clone().unwrap_or_default(),
        by_category,
        categories: c
            .categories()
            .iter()
            .map(|x| {
                opt(
                    &x.id,
                    lang.pick(&x.name_zh, &x.name_en),
                    filter.category.as_deref(),
                )
            })
            .collect(),
        agencies: c
            .agencies()
            .iter()
            .map(|x| {
                opt(
                    &x.id,
                    lang.pick(&x.name_zh, &x.name_en),
                    filter.agency.as_deref(),
                )
            })
            .collect(),
        formats: ["json", "csv", "pdf", "xml"]
            .iter()
            .map(|f| opt(f, &f.to_uppercase(), get(&pairs, "format")))
            .collect(),
        methods: IdentityMethod::ALL
            .iter()
            .map(|m| {
                opt(
                    m.code(),
                    lang.pick(m.name_zh(), m.name_en()),
                    get(&pairs, "identity_method"),
                )
            })
            .collect(),
        error,
    };
    let status = if p.error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(page(status, &p, lang))
}

// ---------------------------------------------------------------------------------------------
// 2. Terms and privacy notice

#[derive(Debug, Template)]
#[template(path = "download/terms.html")]
pub struct TermsPage {
    pub chrome: Chrome,
    pub zh: bool,
    pub title: &'static str,
    pub basket: Vec<BasketItem>,
    pub summary: BasketSummary,
    pub basket_title: &'static str,
    pub accepted: &'static str,
    pub why: &'static str,
    pub wait: &'static str,
    pub agree_label: &'static str,
    pub submit: &'static str,
    pub back: &'static str,
    pub back_href: String,
    pub version_label: &'static str,
    pub version: &'static str,
    pub error: Option<&'static str>,
}

fn terms_page(
    state: &AppState,
    uri: &Uri,
    basket: &[String],
    lang: Lang,
    error: Option<&'static str>,
) -> Result<Response, AppError> {
    let c = state.catalog();
    let sel = selection(state, basket)?;
    let items = basket
        .iter()
        .filter_map(|id| c.dataset(id))
        .map(|d| BasketItem {
            id: d.id.clone(),
            name: lang.pick(&d.name_zh, &d.name_en).to_owned(),
            agency: c
                .agency(&d.agency)
                .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
                .unwrap_or_default(),
            ready: ready_text(d.ready_minutes, lang),
        })
        .collect();
    let p = TermsPage {
        chrome: chrome(lang, uri),
        zh: lang == Lang::ZhTw,
        title: lang.pick(
            "服務條款與隱私權保護政策",
            "Terms of use and privacy notice",
        ),
        basket: items,
        summary: summary(state, &sel, lang),
        basket_title: lang.pick("您要下載的資料", "The data you are requesting"),
        accepted: lang.pick("可用的身分驗證方式", "Identity methods you can use"),
        why: lang.pick("為什麼有些方式不能用", "Why some methods are not offered"),
        wait: lang.pick("預計等待時間", "Expected wait"),
        agree_label: lang.pick(
            "我已閱讀並同意上述服務條款與隱私權保護政策",
            "I have read and agree to the terms of use and the privacy notice above",
        ),
        submit: lang.pick(
            "同意，下一步：驗證身分",
            "Agree and continue: prove who you are",
        ),
        back: lang.pick("修改選擇", "Change my selection"),
        back_href: format!("/download?{}", basket_query(basket)),
        version_label: lang.pick("版本", "Version"),
        version: TERMS_VERSION,
        error,
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(page(status, &p, lang))
}

/// `GET /download/terms`
pub async fn terms(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let Query(pairs) = query?;
        let basket = basket_from_pairs(&state, &pairs)?;
        if basket.is_empty() {
            let msg = lang.pick("請至少選擇一項資料。", "Choose at least one dataset.");
            return choose_inner(&state, &uri, Ok(Query(pairs)), lang, Some(msg.into()));
        }
        terms_page(&state, &uri, &basket, lang, None)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3 + 4. Identity, then consent

#[derive(Debug)]
pub struct ConsentRow {
    pub name: String,
    pub agency: String,
    pub formats: String,
    pub ready: String,
}

#[derive(Debug, Template)]
#[template(path = "download/consent.html")]
pub struct ConsentPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub intro: &'static str,
    pub rows: Vec<ConsentRow>,
    pub facts: Vec<(&'static str, String)>,
    pub csrf: String,
    pub token: String,
    pub basket: Vec<String>,
    pub terms_version: &'static str,
    pub submit: &'static str,
    pub cancel: &'static str,
    pub cancel_href: String,
    pub col_name: &'static str,
    pub col_agency: &'static str,
    pub col_formats: &'static str,
    pub col_ready: &'static str,
}

fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// `GET /download/consent`: after the terms, with a verified session whose method every dataset
/// accepts (else to `/login`, which offers only those methods and says which dataset rules out
/// which); the form carries a fresh one-time token.
pub async fn consent_form(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let Query(pairs) = query?;
        let basket = basket_from_pairs(&state, &pairs)?;
        if basket.is_empty() {
            return Ok(no_store(Redirect::to("/download").into_response()));
        }
        if get(&pairs, "agree") != Some(TERMS_VERSION) {
            let msg = lang.pick(
                "請先勾選同意服務條款與隱私權保護政策。",
                "Tick the box to agree to the terms and privacy notice first.",
            );
            return terms_page(&state, &uri, &basket, lang, Some(msg));
        }
        let sel = selection(&state, &basket)?;
        let s = session::load(&state, &headers).await?;
        let v = s.as_ref().and_then(Session::verified);
        let (Some(s), Some(v)) = (s, v) else {
            let next = format!("/download/consent?{}", uri.query().unwrap_or_default());
            return Ok(to_login(&next, &basket));
        };
        if !crate::routes::login::satisfies(&v, &sel) {
            let next = format!("/download/consent?{}", uri.query().unwrap_or_default());
            return Ok(to_login(&next, &basket));
        }
        let c = state.catalog();
        let rows = basket
            .iter()
            .filter_map(|id| c.dataset(id))
            .map(|d| {
                let card = DatasetCard::new(c, d, lang);
                ConsentRow {
                    name: card.name,
                    agency: card.agency,
                    formats: card.formats,
                    ready: card.ready,
                }
            })
            .collect();
        let facts = vec![
            (lang.pick("用途", "Purpose"), lang.pick("自行下載，供您本人保存與運用", "Self-download, for you to keep and use").to_owned()),
            (lang.pick("資料接收者", "Recipient"), lang.pick("您本人", "You").to_owned()),
            (
                lang.pick("身分驗證", "Identity"),
                match lang {
                    Lang::ZhTw => format!("{}（等級 {}）", v.method.name_zh(), v.level),
                    Lang::En => format!("{} (level {})", v.method.name_en(), v.level),
                },
            ),
            (lang.pick("預計等待時間", "Expected wait"), ready_text(sel.ready_minutes, lang)),
            (
                lang.pick("保存期限", "Kept for"),
                lang.pick(
                    "取得後最多 8 小時；您儲存並確認刪除後立即刪除。",
                    "At most 8 hours after it is fetched; deleted as soon as you save it and confirm.",
                )
                .to_owned(),
            ),
            (
                lang.pick("通知", "Notice"),
                lang.pick(
                    "資料備妥時，我們會寄送通知到您登記的電子郵件（及手機簡訊），內容不含資料本身。",
                    "When the data is ready we send a notice to your registered email (and mobile); it never contains the data.",
                )
                .to_owned(),
            ),
        ];
        let p = ConsentPage {
            chrome: chrome(lang, &uri),
            title: lang.pick("確認並同意本次下載", "Confirm and consent to this download"),
            intro: lang.pick(
                "本次同意只用於這一次下載，不是長期授權。按下按鈕後，平臺會向各機關取得以下資料。",
                "This consent is for this one download only, never a standing permission. When you press the button the platform fetches the following from the agencies.",
            ),
            rows,
            facts,
            csrf: s.csrf().to_owned(),
            token: new_token(),
            basket: basket.clone(),
            terms_version: TERMS_VERSION,
            submit: lang.pick("同意並開始取得資料", "Consent and start fetching"),
            cancel: lang.pick("不同意，回到選擇資料", "Do not consent, back to the selection"),
            cancel_href: format!("/download?{}", basket_query(&basket)),
            col_name: lang.pick("資料", "Dataset"),
            col_agency: lang.pick("提供機關", "Agency"),
            col_formats: lang.pick("格式", "Formats"),
            col_ready: lang.pick("預計取得時間", "Expected wait"),
        };
        Ok(page(StatusCode::OK, &p, lang))
    })
    .await
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `POST /download`: the consent. One form token starts at most one transfer; sending the same
/// form again (double click, back and resubmit, refresh) leads to the transfer it started.
pub async fn start(
    State(state): State<AppState>,
    uri: Uri,
    PostedForm {
        session: s,
        form: pairs,
        lang,
    }: PostedForm<Pairs>,
) -> Response {
    on_page(lang, async {
        let Some(v) = s.verified() else {
            return Err(AppError::NotSignedIn);
        };
        let basket = basket_from_pairs(&state, &pairs)?;
        if basket.is_empty() {
            return Err(AppError::EmptySelection);
        }
        if get(&pairs, "agree") != Some(TERMS_VERSION) {
            // The terms changed since the form was shown: show them again.
            let msg = lang.pick(
                "服務條款已更新，請重新閱讀並同意。",
                "The terms have changed; read and agree to them again.",
            );
            return terms_page(&state, &uri, &basket, lang, Some(msg));
        }
        let token = get(&pairs, "token")
            .filter(|t| (20..=100).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .ok_or_else(|| AppError::InvalidBody("the form's one-time token is missing or malformed; open the consent page again".into()))?;
        let sel = selection(&state, &basket)?;
        if !crate::routes::login::satisfies(&v, &sel) {
            return Err(AppError::InsufficientLevel {
                required: sel.required_level,
            });
        }
        let now = state.clock().now();
        let store = state.store();
        let hash = token_hash(token);
        // Old tokens go (a day is far longer than any form stays open).
        store
            .prune_download_requests(Timestamp::from_millis(now.millis() - 86_400_000))
            .await?;
        match store
            .claim_download_request(&hash, &v.subject, TERMS_VERSION, now)
            .await?
        {
            DownloadClaim::New => {}
            DownloadClaim::Existing {
                subject,
                transfer_id,
            } => {
                if subject != v.subject {
                    return Err(AppError::CsrfRejected);
                }
                let to = match transfer_id {
                    Some(t) => format!("/download/t/{t}"),
                    // The first submit is still starting it: it will be in the usage records.
                    None => "/records".into(),
                };
                return Ok(no_store(Redirect::to(&to).into_response()));
            }
        }
        let started = crate::agencies::start_for_session(
            &state,
            &v,
            crate::agencies::PersonRequest {
                kind: TransferKind::SelfDownload,
                recipient: None,
                purpose: PURPOSE.into(),
                datasets: basket.clone(),
                answers: None,
            },
        )
        .await;
        let t = match started {
            Ok(t) => t,
            Err(e) => {
                store.release_download_request(&hash).await?;
                return Err(e);
            }
        };
        store.attach_download_transfer(&hash, &t.id).await?;
        store
            .append_audit(&NewAuditEvent {
                at: now,
                kind: "download.terms_agreed".into(),
                subject: Some(v.subject.clone()),
                transfer_id: Some(t.id.clone()),
                actor: v.subject.clone(),
                detail: serde_json::json!({ "terms_version": TERMS_VERSION }),
            })
            .await?;
        Ok(no_store(
            Redirect::to(&format!("/download/t/{}", t.id)).into_response(),
        ))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. Progress, and what is ready

/// The signed-in person, or a redirect to sign in and come back to `uri`.
async fn person(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Result<(Session, Verified), Response>, AppError> {
    let s = session::load(state, headers).await?;
    match s.and_then(|s| s.verified().map(|v| (s, v))) {
        Some(x) => Ok(Ok(x)),
        None => {
            let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Ok(Err(to_login(next, &[])))
        }
    }
}

/// One dataset's fetch, in words.
#[derive(Debug, Serialize)]
pub struct DatasetStatus {
    pub id: String,
    pub name: String,
    pub agency: String,
    pub status: String,
    /// `waiting`, `done` or `problem` (for the page's styling and the script).
    pub tone: &'static str,
    pub label: String,
    pub detail: String,
    /// A link to ask for this dataset again, for failures that a new request can fix.
    pub retry_href: Option<String>,
}

fn dataset_status(
    state: &AppState,
    t: &Transfer,
    d: &mydata_store::TransferDataset,
    now: Timestamp,
    lang: Lang,
) -> DatasetStatus {
    let c = state.catalog();
    let ds = c.dataset(&d.dataset_id);
    let name = ds
        .map(|x| lang.pick(&x.name_zh, &x.name_en).to_owned())
        .unwrap_or_else(|| d.dataset_id.clone());
    let agency = ds
        .and_then(|x| c.agency(&x.agency))
        .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
        .unwrap_or_default();
    let minutes = ds.map_or(0, |x| x.ready_minutes);
    let expected = t
        .created_at
        .plus(Duration::from_secs(u64::from(minutes) * 60));
    let retry = Some(format!(
        "/download/terms?d={}",
        super::login::urlencode(&d.dataset_id)
    ));
    let code = d.error_code.clone().unwrap_or_default();
    let (tone, label, detail, retry_href) = match d.status.as_str() {
        fetch_status::SUCCEEDED => (
            "done",
            lang.pick("已取得，簽章驗證通過", "Fetched, signature verified").to_owned(),
            String::new(),
            None,
        ),
        fetch_status::REFUSED => (
            "problem",
            lang.pick("機關未提供", "Not provided by the agency").to_owned(),
            match lang {
                Lang::ZhTw => format!("機關回覆查無您的資料或不提供此項資料（代碼 {code}）。如您認為應有資料，請洽{agency}。"),
                Lang::En => format!("The agency found no such data about you or does not provide it (code {code}). If you think it should, contact {agency}."),
            },
            None,
        ),
        fetch_status::REJECTED => (
            "problem",
            lang.pick("資料未通過驗證，已丟棄", "Failed verification, discarded").to_owned(),
            lang.pick(
                "機關回傳的資料簽章不正確，平臺不會交付未經驗證的資料。請稍後重新申請這項資料。",
                "The agency's signature on the data did not verify, and the platform never hands out unverified data. Request this dataset again later.",
            )
            .to_owned(),
            retry,
        ),
        fetch_status::FAILED => (
            "problem",
            lang.pick("機關暫時無法提供", "Agency unavailable").to_owned(),
            lang.pick(
                "機關系統暫時無法連線或維護中，其他資料不受影響。請稍後重新申請這項資料。",
                "The agency's system could not be reached or is under maintenance; your other data is not affected. Request this dataset again later.",
            )
            .to_owned(),
            retry,
        ),
        _ => {
            let late = now > expected;
            (
                "waiting",
                lang.pick("處理中", "In progress").to_owned(),
                match (lang, minutes, late) {
                    (Lang::ZhTw, 0, _) => "通常立即完成。".into(),
                    (Lang::En, 0, _) => "Usually ready at once.".into(),
                    (Lang::ZhTw, _, false) => format!("此機關約需 {minutes} 分鐘，預計 {} 前後完成。", taipei_time(expected)),
                    (Lang::En, _, false) => format!("This agency needs about {minutes} minutes; expected around {} (Taiwan time).", taipei_time(expected)),
                    (Lang::ZhTw, _, true) => "比預期久，機關仍在處理中。您可以離開此頁，完成時會寄通知給您。".into(),
                    (Lang::En, _, true) => "Taking longer than expected; the agency is still working. You can leave this page: we will notify you when it is ready.".into(),
                },
                None,
            )
        }
    };
    DatasetStatus {
        id: d.dataset_id.clone(),
        name,
        agency,
        status: d.status.clone(),
        tone,
        label,
        detail,
        retry_href,
    }
}

/// The whole transfer's progress, for the page and its script.
#[derive(Debug, Serialize)]
pub struct Progress {
    pub state: &'static str,
    pub settled: usize,
    pub total: usize,
    pub summary: String,
    pub datasets: Vec<DatasetStatus>,
    /// The page should be loaded again to show the next step (ready, or gone).
    pub next_step: bool,
}

fn progress_of(state: &AppState, t: &Transfer, lang: Lang) -> Progress {
    let now = state.clock().now();
    let datasets: Vec<DatasetStatus> = t
        .datasets
        .iter()
        .map(|d| dataset_status(state, t, d, now, lang))
        .collect();
    let settled = t
        .datasets
        .iter()
        .filter(|d| fetch_status::is_settled(&d.status))
        .count();
    let total = t.datasets.len();
    let summary = match (lang, t.state) {
        (Lang::ZhTw, TransferState::Fetching | TransferState::Created) => {
            format!("資料取得中：{total} 項中已完成 {settled} 項。")
        }
        (Lang::En, TransferState::Fetching | TransferState::Created) => {
            format!("Fetching: {settled} of {total} done.")
        }
        (Lang::ZhTw, TransferState::Ready) => "資料已備妥。".into(),
        (Lang::En, TransferState::Ready) => "Your data is ready.".into(),
        (Lang::ZhTw, _) => "此次下載已結束。".into(),
        (Lang::En, _) => "This download has ended.".into(),
    };
    Progress {
        state: t.state.code(),
        settled,
        total,
        summary,
        datasets,
        next_step: !matches!(t.state, TransferState::Fetching | TransferState::Created),
    }
}

fn remaining_text(until: Timestamp, now: Timestamp, lang: Lang) -> String {
    let left = now.until(until);
    let mins = left.as_secs().div_ceil(60);
    let (h, m) = (mins / 60, mins % 60);
    match lang {
        Lang::ZhTw => format!(
            "將於 {}（剩餘 {h} 小時 {m} 分鐘）自動刪除。",
            taipei_time(until)
        ),
        Lang::En => format!(
            "It is deleted automatically at {} (Taiwan time), in {h} h {m} min.",
            taipei_time(until)
        ),
    }
}

#[derive(Debug, Template)]
#[template(path = "download/progress.html")]
pub struct ProgressPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub id: String,
    pub request_label: &'static str,
    pub progress: Progress,
    pub fetching: bool,
    pub email_note: &'static str,
    pub refresh: &'static str,
    pub col_dataset: &'static str,
    pub col_status: &'static str,
    pub col_detail: &'static str,
    pub retry: &'static str,
    /// Present when there is a package to look at and save.
    pub ready: Option<ReadyBlock>,
    pub nothing: Option<&'static str>,
    pub records: &'static str,
}

#[derive(Debug)]
pub struct ReadyBlock {
    pub remaining: String,
    pub preview: &'static str,
    pub save_title: &'static str,
    pub save_zip: &'static str,
    pub size: String,
    pub verify_hint: &'static str,
    pub delete_title: &'static str,
    pub delete_intro: &'static str,
    pub delete_button: &'static str,
    pub csrf: String,
}

#[derive(Debug, Template)]
#[template(path = "download/deleted.html")]
pub struct DeletedPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub detail: String,
    pub id: String,
    pub request_label: &'static str,
    pub again: &'static str,
    pub again_href: String,
    pub records: &'static str,
}

fn deleted_at(t: &Transfer, pkg: Option<&PackageRecord>) -> Timestamp {
    pkg.and_then(|p| p.deleted_at)
        .unwrap_or(if t.state.is_terminal() {
            t.updated_at.min(t.expires_at.max(t.updated_at))
        } else {
            t.expires_at
        })
}

fn deleted_page(t: &Transfer, pkg: Option<&PackageRecord>, uri: &Uri, lang: Lang) -> Response {
    let at = taipei_time(deleted_at(t, pkg));
    let by_person = pkg.is_some_and(|p| p.taken_at.is_some());
    let detail = match (lang, by_person) {
        (Lang::ZhTw, true) => format!("您已儲存並確認刪除，平臺上的資料與其金鑰已於 {at} 刪除。"),
        (Lang::En, true) => format!(
            "You saved it and confirmed: the data and its key were deleted from the platform at {at} (Taiwan time)."
        ),
        (Lang::ZhTw, false) => {
            format!("資料暫存期限（8 小時）已到，平臺上的資料與其金鑰已於 {at} 刪除。")
        }
        (Lang::En, false) => format!(
            "The 8-hour limit passed: the data and its key were deleted from the platform at {at} (Taiwan time)."
        ),
    };
    let basket: Vec<String> = t.datasets.iter().map(|d| d.dataset_id.clone()).collect();
    let p = DeletedPage {
        chrome: chrome(lang, uri),
        title: lang.pick("資料已刪除", "Data deleted"),
        detail,
        id: t.id.clone(),
        request_label: lang.pick("申請編號：", "Request number: "),
        again: lang.pick("重新申請相同資料", "Request the same data again"),
        again_href: format!("/download?{}", basket_query(&basket)),
        records: lang.pick("查看我的使用紀錄", "See my usage records"),
    };
    page(StatusCode::GONE, &p, lang)
}

/// Whether a transfer's data is gone for good (ended, released, or past its 8 hours).
fn is_gone(t: &Transfer, now: Timestamp) -> bool {
    t.state.is_terminal() || t.state == TransferState::Delivered || t.expires_at <= now
}

/// `GET /download/t/{id}`
pub async fn progress(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (s, v) = match person(&state, &headers, &uri).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let t = owned_transfer_of(&state, &v, &id, TransferKind::SelfDownload).await?;
        let now = state.clock().now();
        let pkg = state.store().package(&t.id).await?;
        if is_gone(&t, now) || pkg.as_ref().is_some_and(|p| p.sealed_key.is_none()) {
            return Ok(deleted_page(&t, pkg.as_ref(), &uri, lang));
        }
        let prog = progress_of(&state, &t, lang);
        let fetching = !prog.next_step;
        let ready = match (&pkg, t.state) {
            (Some(p), TransferState::Ready) => Some(ReadyBlock {
                remaining: remaining_text(p.expires_at.min(t.expires_at), now, lang),
                preview: lang.pick("線上預覽檔案", "Preview the files online"),
                save_title: lang.pick("轉存到您的裝置", "Save to your device"),
                save_zip: lang.pick("下載整個資料包（ZIP，含機關簽章）", "Download the whole package (ZIP, with the agencies' signatures)"),
                size: match lang {
                    Lang::ZhTw => format!("{} 項資料，{} KB", p.datasets, p.size_bytes.div_ceil(1024)),
                    Lang::En => format!("{} datasets, {} KB", p.datasets, p.size_bytes.div_ceil(1024)),
                },
                verify_hint: lang.pick(
                    "資料包內含各機關的數位簽章與平臺收據，可用 mydata verify 或 openssl 離線驗證。也可在預覽頁逐一下載單一檔案。",
                    "The package holds each agency's digital signature and the platform's receipt; check it offline with mydata verify or openssl. Single files can be saved from the preview.",
                ),
                delete_title: lang.pick("儲存後請確認刪除", "After saving, confirm deletion"),
                delete_intro: lang.pick(
                    "確認您已把資料存到裝置後，按下按鈕即從平臺刪除資料與其金鑰，無法復原。未確認者於期限到時自動刪除。",
                    "Once your data is safely on your device, press the button to delete it and its key from the platform; this cannot be undone. Otherwise it is deleted when the time runs out.",
                ),
                delete_button: lang.pick("我已儲存，立即從平臺刪除", "I have saved it: delete it from the platform now"),
                csrf: s.csrf().to_owned(),
            }),
            _ => None,
        };
        let nothing = (t.state == TransferState::Ready && pkg.is_none()).then(|| {
            lang.pick(
                "沒有取得任何資料，平臺沒有保存任何資料。請依上方各項說明處理後重新申請。",
                "No data could be fetched, and the platform holds none for this request. See each dataset above, then request again.",
            )
        });
        let p = ProgressPage {
            chrome: chrome(lang, &uri),
            title: lang.pick("自行下載：取得進度", "Download: progress"),
            id: t.id.clone(),
            request_label: lang.pick("申請編號：", "Request number: "),
            progress: prog,
            fetching,
            email_note: lang.pick(
                "您可以離開此頁面：資料備妥時，我們會寄通知到您登記的電子郵件（及手機簡訊）。",
                "You can leave this page: when the data is ready we send a notice to your registered email (and mobile).",
            ),
            refresh: lang.pick("重新整理狀態", "Refresh the status"),
            col_dataset: lang.pick("資料", "Dataset"),
            col_status: lang.pick("狀態", "Status"),
            col_detail: lang.pick("說明", "Details"),
            retry: lang.pick("重新申請這項資料", "Request this dataset again"),
            ready,
            nothing,
            records: lang.pick("查看我的使用紀錄", "See my usage records"),
        };
        Ok(page(StatusCode::OK, &p, lang))
    })
    .await
}

/// `GET /download/t/{id}/status`: the progress as JSON for the page's script (owner only).
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    let run = async {
        let s = session::load(&state, &headers).await?;
        let v = s.and_then(|s| s.verified()).ok_or(AppError::NotSignedIn)?;
        let t = owned_transfer_of(&state, &v, &id, TransferKind::SelfDownload).await?;
        let mut p = progress_of(&state, &t, lang);
        if is_gone(&t, state.clock().now()) {
            p.next_step = true;
        }
        Ok(no_store(Json(p).into_response()))
    };
    run.await
        .unwrap_or_else(|e: AppError| no_store(e.into_response()))
}

// ---------------------------------------------------------------------------------------------
// 6. Preview and save

/// The owner's transfer with a package that can still be read, or the response to give instead.
async fn readable(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
    lang: Lang,
) -> Result<Result<(Session, Verified, Transfer, zeroize::Zeroizing<Vec<u8>>), Response>, AppError>
{
    let (s, v) = match person(state, headers, uri).await? {
        Ok(x) => x,
        Err(r) => return Ok(Err(r)),
    };
    let t = owned_transfer_of(state, &v, id, TransferKind::SelfDownload).await?;
    let now = state.clock().now();
    let pkg = state.store().package(&t.id).await?;
    if is_gone(&t, now) || pkg.as_ref().is_some_and(|p| p.sealed_key.is_none()) {
        return Ok(Err(deleted_page(&t, pkg.as_ref(), uri, lang)));
    }
    if pkg.is_none() || t.state != TransferState::Ready {
        // Not ready (or nothing fetched): the progress page says which.
        return Ok(Err(no_store(
            Redirect::to(&format!("/download/t/{}", t.id)).into_response(),
        )));
    }
    match crate::packages::read_package(state, &t.id).await {
        Ok(zip) => Ok(Ok((s, v, t, zip))),
        Err(crate::packages::TakeError::Gone(_)) => {
            Ok(Err(deleted_page(&t, pkg.as_ref(), uri, lang)))
        }
        Err(crate::packages::TakeError::Store(e)) => Err(e.into()),
        Err(e) => Err(AppError::Internal(anyhow::anyhow!("{e}"))),
    }
}

async fn audit(
    state: &AppState,
    t: &Transfer,
    kind: &str,
    detail: serde_json::Value,
) -> Result<(), AppError> {
    state
        .store()
        .append_audit(&NewAuditEvent {
            at: state.clock().now(),
            kind: kind.into(),
            subject: Some(t.subject.clone()),
            transfer_id: Some(t.id.clone()),
            actor: t.subject.clone(),
            detail,
        })
        .await?;
    Ok(())
}

#[derive(Debug)]
pub struct PreviewFileView {
    pub name: String,
    pub media_type: String,
    pub size: String,
    pub table_html: Option<String>,
    pub is_pdf: bool,
    pub href: String,
    pub inline_href: String,
    pub save: String,
}

#[derive(Debug)]
pub struct PreviewDatasetView {
    pub id: String,
    pub name: String,
    pub agency: String,
    pub verified: bool,
    pub verdict: String,
    pub problem: Option<String>,
    pub issued: String,
    pub files: Vec<PreviewFileView>,
}

#[derive(Debug, Template)]
#[template(path = "download/preview.html")]
pub struct PreviewPage {
    pub chrome: Chrome,
    pub title: &'static str,
    pub id: String,
    pub caution: &'static str,
    pub receipt: String,
    pub receipt_ok: bool,
    pub datasets: Vec<PreviewDatasetView>,
    pub issued_label: &'static str,
    pub pdf_title: &'static str,
    pub pdf_open: &'static str,
    pub back: &'static str,
    pub remaining: String,
}

/// `GET /download/t/{id}/preview`
pub async fn preview(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (_, _, t, zip) = match readable(&state, &headers, &uri, &id, lang).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let pv = download::preview(&state, &zip).await?;
        drop(zip);
        let c = state.catalog();
        let datasets = pv
            .datasets
            .into_iter()
            .map(|d| {
                let ds = c.dataset(&d.dataset_id);
                PreviewDatasetView {
                    name: ds
                        .map(|x| lang.pick(&x.name_zh, &x.name_en).to_owned())
                        .unwrap_or_else(|| d.dataset_id.clone()),
                    agency: ds
                        .and_then(|x| c.agency(&x.agency))
                        .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
                        .unwrap_or_default(),
                    verified: d.verified,
                    verdict: if d.verified {
                        lang.pick(
                            "✔ 機關數位簽章有效，資料未經竄改",
                            "✔ Agency signature valid; the data is unaltered",
                        )
                        .to_owned()
                    } else {
                        lang.pick(
                            "✘ 驗證未通過：請勿使用此資料",
                            "✘ Verification failed: do not rely on this data",
                        )
                        .to_owned()
                    },
                    problem: d.problem,
                    issued: d
                        .issued_at_ms
                        .map(|ms| taipei_time(Timestamp::from_millis(ms)))
                        .unwrap_or_default(),
                    files: d
                        .files
                        .into_iter()
                        .map(|f| {
                            let href =
                                format!("/download/t/{}/files/{}/{}", t.id, d.dataset_id, f.name);
                            PreviewFileView {
                                inline_href: format!("{href}?inline=1"),
                                save: match lang {
                                    Lang::ZhTw => format!("儲存 {}", f.name),
                                    Lang::En => format!("Save {}", f.name),
                                },
                                href,
                                size: format!("{} KB", f.size.div_ceil(1024)),
                                name: f.name,
                                media_type: f.media_type,
                                table_html: f.table_html,
                                is_pdf: f.is_pdf,
                            }
                        })
                        .collect(),
                    id: d.dataset_id,
                }
            })
            .collect();
        audit(&state, &t, "download.previewed", serde_json::json!({})).await?;
        let now = state.clock().now();
        let p = PreviewPage {
            chrome: chrome(lang, &uri),
            title: lang.pick("線上預覽", "Preview"),
            id: t.id.clone(),
            caution: lang.pick(
                "畫面資料僅供您本人檢視參考，列印或截圖不具證明效力；需要證明時，請使用含簽章的資料包或臨櫃核驗。",
                "What you see here is for your own reference; a printout or screenshot proves nothing. Use the signed package, or counter verification, as evidence.",
            ),
            receipt_ok: pv.receipt_ok,
            receipt: if pv.receipt_ok {
                lang.pick("✔ 平臺收據簽章有效，資料包內容完整", "✔ Platform receipt valid; the package is complete").to_owned()
            } else {
                lang.pick("✘ 平臺收據驗證未通過", "✘ Platform receipt did not verify").to_owned()
            },
            datasets,
            issued_label: lang.pick("機關簽發時間", "Signed by the agency at"),
            pdf_title: lang.pick("PDF 文件預覽", "PDF document preview"),
            pdf_open: lang.pick("在新分頁開啟 PDF", "Open the PDF in a new tab"),
            back: lang.pick("回到儲存與刪除", "Back to saving and deletion"),
            remaining: remaining_text(t.expires_at, now, lang),
        };
        Ok(page(StatusCode::OK, &p, lang))
    })
    .await
}

fn attachment(name: &str) -> HeaderValue {
    // Names are `[A-Za-z0-9._-]` (package format rule), so no quoting issue arises.
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET /download/t/{id}/files/{dataset}/{file}`: one file, for saving (or `?inline=1` for the
/// PDF shown in the preview).
pub async fn file(
    State(state): State<AppState>,
    Path((id, dataset, name)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    let inline = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "inline=1"));
    on_page(lang, async {
        let (_, _, t, zip) = match readable(&state, &headers, &uri, &id, lang).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        let bytes =
            download::find_file(&zip, &dataset, &name)?.ok_or_else(|| AppError::NotFound {
                what: "file",
                id: format!(
                    "{}/{}",
                    dataset.chars().take(64).collect::<String>(),
                    name.chars().take(64).collect::<String>()
                ),
            })?;
        drop(zip);
        let pdf = name.ends_with(".pdf");
        let mut res = bytes.into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(download::media_type_of(&name)),
        );
        if inline && pdf {
            h.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("inline"),
            );
            // Framed by our own preview page only (CSP frame-ancestors overrides X-Frame-Options).
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; object-src 'self'; frame-ancestors 'self'",
                ),
            );
        } else {
            h.insert(
                header::CONTENT_DISPOSITION,
                attachment(&format!("{dataset}-{name}")),
            );
            audit(
                &state,
                &t,
                "download.file_saved",
                serde_json::json!({ "dataset": dataset, "file": name }),
            )
            .await?;
        }
        Ok(no_store(res))
    })
    .await
}

/// `GET /download/t/{id}/package`: the whole signed package, to save. It stays on the platform
/// until the person confirms deletion (or its 8 hours end).
pub async fn package(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = lang_of(&uri, &headers);
    on_page(lang, async {
        let (_, _, t, zip) = match readable(&state, &headers, &uri, &id, lang).await? {
            Ok(x) => x,
            Err(r) => return Ok(r),
        };
        audit(&state, &t, "download.package_saved", serde_json::json!({})).await?;
        let short: String = t.id.chars().take(8).collect();
        let mut res = zip.to_vec().into_response();
        drop(zip);
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/zip"),
        );
        h.insert(
            header::CONTENT_DISPOSITION,
            attachment(&format!("mydata-{short}.zip")),
        );
        Ok(no_store(res))
    })
    .await
}

/// `POST /download/t/{id}/delete`: the person saved the data and confirms deletion.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    PostedForm {
        session: s,
        form: _,
        lang,
    }: PostedForm<Pairs>,
) -> Response {
    on_page(lang, async {
        let v = s.verified().ok_or(AppError::NotSignedIn)?;
        let t = owned_transfer_of(&state, &v, &id, TransferKind::SelfDownload).await?;
        match crate::packages::delete_saved_package(&state, &t.id, &v.subject).await {
            // Already gone (a second click, or the 8 hours ended): the page says when.
            Ok(_)
            | Err(crate::packages::TakeError::Gone(_))
            | Err(crate::packages::TakeError::NotFound(_)) => {}
            Err(crate::packages::TakeError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(AppError::Internal(anyhow::anyhow!("{e}"))),
        }
        Ok(no_store(
            Redirect::to(&format!("/download/t/{}", t.id)).into_response(),
        ))
    })
    .await
}
