//! Server-rendered pages (askama templates) and the texts they show in each language.

use crate::i18n::Lang;
use askama::Template;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use mydata_core::Catalog;
use mydata_core::catalog::Dataset;

/// Texts shared by every page.
#[derive(Debug)]
pub struct Chrome {
    pub lang_tag: &'static str,
    pub site_name: &'static str,
    pub switch_label: &'static str,
    pub switch_tag: &'static str,
    /// The language switch's link: this page in the other language (see [`Chrome::keep_query`]).
    pub switch_href: String,
    pub skip_link: &'static str,
    pub footer: &'static str,
    pub api_link: &'static str,
}

impl Chrome {
    /// The page's frame; its language switch keeps the query of the GET being answered (see
    /// [`crate::i18n::page_language`]).
    pub fn new(lang: Lang) -> Self {
        let chrome = Self::bare(lang);
        match crate::i18n::page_query() {
            Some(q) => chrome.keep_query(&q),
            None => chrome,
        }
    }

    fn bare(lang: Lang) -> Self {
        Self {
            lang_tag: lang.tag(),
            site_name: lang.pick("MyData 個人化資料自主運用平臺", "MyData personal data platform"),
            switch_label: lang.pick("English", "中文"),
            switch_tag: lang.other().tag(),
            switch_href: format!("?lang={}", lang.other().tag()),
            skip_link: lang.pick("跳到主要內容", "Skip to main content"),
            footer: lang.pick(
                "您的資料只在您同意的這一次傳送中使用，平臺不保留個人資料。每一次使用都會記錄，您可以隨時查閱。",
                "Your data is used only for the one transfer you consent to; the platform keeps no personal data. Every use is recorded and visible to you.",
            ),
            api_link: lang.pick("開放 API", "Open API"),
        }
    }
}

impl Chrome {
    /// Keeps this page's other query parameters (a basket, say) on the language switch.
    pub fn keep_query(mut self, query: &str) -> Self {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k != "lang" {
                q.append_pair(&k, &v);
            }
        }
        q.append_pair("lang", self.switch_tag);
        self.switch_href = format!("?{}", q.finish());
        self
    }
}

/// A dataset's fetch status in a few words, for the person's pages (the consent confirmation, the
/// counter barcode page). Only a status not settled yet reads as "being fetched".
pub fn fetch_status_label(status: &str, lang: Lang) -> &'static str {
    use mydata_store::fetch_status as st;
    match status {
        st::SUCCEEDED => lang.pick("已取得並驗證", "fetched and verified"),
        st::REFUSED => lang.pick("機關未提供", "not provided by the agency"),
        st::REJECTED => lang.pick("未通過驗證，已丟棄", "failed verification, discarded"),
        st::FAILED => lang.pick("機關暫時無法提供", "the agency was unavailable"),
        st::PENDING | st::NOT_READY => lang.pick("取得中", "being fetched"),
        _ => lang.pick("狀態不明", "status unknown"),
    }
}

/// A dataset as a card on the home page.
#[derive(Debug)]
pub struct DatasetCard {
    pub id: String,
    pub name: String,
    pub other_name: String,
    /// The language tag of `other_name` (the other one than the page's).
    pub other_lang: &'static str,
    pub agency: String,
    pub formats: String,
    pub methods: String,
    pub ready: String,
    pub slow: bool,
}

impl DatasetCard {
    pub fn new(c: &Catalog, d: &Dataset, lang: Lang) -> Self {
        let agency = c
            .agency(&d.agency)
            .map(|a| lang.pick(&a.name_zh, &a.name_en).to_owned())
            .unwrap_or_default();
        let methods: Vec<&str> = d
            .identity_methods
            .iter()
            .map(|m| lang.pick(m.name_zh(), m.name_en()))
            .collect();
        let formats: Vec<String> = d.formats.iter().map(|f| f.code().to_uppercase()).collect();
        let ready = match (d.ready_minutes, lang) {
            (0, Lang::ZhTw) => "立即取得".to_owned(),
            (0, Lang::En) => "Ready at once".to_owned(),
            (n, Lang::ZhTw) => format!("約 {n} 分鐘"),
            (n, Lang::En) => format!("About {n} minutes"),
        };
        Self {
            id: d.id.clone(),
            name: lang.pick(&d.name_zh, &d.name_en).to_owned(),
            other_name: lang.other().pick(&d.name_zh, &d.name_en).to_owned(),
            other_lang: lang.other().tag(),
            agency,
            formats: formats.join(" · "),
            methods: methods.join(lang.pick("、", ", ")),
            ready,
            slow: d.ready_minutes > 0,
        }
    }
}

/// A titled group of datasets (one agency or one category).
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub title: String,
    pub datasets: Vec<DatasetCard>,
}

impl Group {
    pub fn new(id: &str, title: &str, datasets: Vec<DatasetCard>) -> Self {
        Self {
            id: id.to_owned(),
            title: title.to_owned(),
            datasets,
        }
    }
}

/// One `<option>` of a filter.
#[derive(Debug)]
pub struct SelectOption {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl SelectOption {
    pub fn new(value: &str, label: &str, selected: bool) -> Self {
        Self {
            value: value.to_owned(),
            label: label.to_owned(),
            selected,
        }
    }
}

/// Texts of the home page.
#[derive(Debug)]
pub struct HomeTexts {
    pub title: &'static str,
    pub intro: &'static str,
    pub search_label: &'static str,
    pub search_placeholder: &'static str,
    pub search_button: &'static str,
    pub category_label: &'static str,
    pub agency_label: &'static str,
    pub any: &'static str,
    pub group_label: &'static str,
    pub by_agency: &'static str,
    pub by_category: &'static str,
    pub formats: &'static str,
    pub methods: &'static str,
    pub ready: &'static str,
    pub none_found: &'static str,
    pub clear: &'static str,
    pub start_download: &'static str,
    pub records: &'static str,
}

impl HomeTexts {
    fn new(lang: Lang) -> Self {
        Self {
            title: lang.pick("可申請的個人資料", "Personal data you can request"),
            intro: lang.pick(
                "選擇政府機關持有的您的資料，驗證身分並同意後，可自行下載、於臨櫃出示，或傳送給線上服務。",
                "Choose data that government agencies hold about you. After you prove who you are and consent, you can download it, show it at a service counter, or send it to an online service.",
            ),
            search_label: lang.pick("搜尋資料集", "Search datasets"),
            search_placeholder: lang.pick("例如：戶籍、所得、低收入", "e.g. household, income, low-income"),
            search_button: lang.pick("搜尋", "Search"),
            category_label: lang.pick("類別", "Category"),
            agency_label: lang.pick("機關", "Agency"),
            any: lang.pick("全部", "All"),
            group_label: lang.pick("分組方式", "Group by"),
            by_agency: lang.pick("依機關", "By agency"),
            by_category: lang.pick("依類別", "By category"),
            formats: lang.pick("格式", "Formats"),
            methods: lang.pick("可用身分驗證", "Identity methods"),
            ready: lang.pick("預計取得時間", "Expected wait"),
            none_found: lang.pick("找不到符合條件的資料集，請換個關鍵字或清除篩選條件。", "No dataset matches. Try other words or clear the filters."),
            clear: lang.pick("清除篩選", "Clear filters"),
            start_download: lang.pick("自行下載資料", "Download your data"),
            records: lang.pick("我的使用紀錄", "My usage records"),
        }
    }
}

#[derive(Debug, Template)]
#[template(path = "home.html")]
pub struct HomePage {
    pub chrome: Chrome,
    pub t: HomeTexts,
    pub groups: Vec<Group>,
    pub shown: usize,
    pub total: usize,
    pub count_text: String,
    pub query: String,
    pub by_category: bool,
    pub categories: Vec<SelectOption>,
    pub agencies: Vec<SelectOption>,
}

impl HomePage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lang: Lang,
        groups: Vec<Group>,
        shown: usize,
        total: usize,
        query: String,
        by_category: bool,
        categories: Vec<SelectOption>,
        agencies: Vec<SelectOption>,
    ) -> Self {
        let count_text = match lang {
            Lang::ZhTw => format!("共 {total} 項資料集，顯示 {shown} 項"),
            Lang::En => format!("Showing {shown} of {total} datasets"),
        };
        Self {
            chrome: Chrome::new(lang),
            t: HomeTexts::new(lang),
            groups,
            shown,
            total,
            count_text,
            query,
            by_category,
            categories,
            agencies,
        }
    }
}

/// A readable page for any error.
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub chrome: Chrome,
    pub status: u16,
    pub title: String,
    pub detail: String,
    pub code: String,
    pub home_link: &'static str,
    pub code_label: &'static str,
}

impl ErrorPage {
    pub fn new(lang: Lang, status: u16, title: &str, detail: &str, code: &str) -> Self {
        Self {
            chrome: Chrome::new(lang),
            status,
            title: title.to_owned(),
            detail: detail.to_owned(),
            code: code.to_owned(),
            home_link: lang.pick("回到首頁", "Back to the home page"),
            code_label: lang.pick("錯誤代碼", "Error code"),
        }
    }
}

impl IntoResponse for ErrorPage {
    fn into_response(self) -> Response {
        match self.render() {
            Ok(html) => Html(html).into_response(),
            // The error page itself failed: fall back to plain text rather than nothing.
            Err(_) => (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{} ({})", self.title, self.code),
            )
                .into_response(),
        }
    }
}

/// The stylesheet, served from `/static/app.css` (no inline styles, so the CSP can forbid them).
pub const APP_CSS: &str = include_str!("../static/app.css");

/// The certificate sign-in script, served from `/static/login.js` (the CSP forbids inline script).
pub const LOGIN_JS: &str = include_str!("../static/login.js");

/// The self-download pages' script (live progress, one consent per click): `/static/download.js`.
pub const DOWNLOAD_JS: &str = include_str!("../static/download.js");
/// The OAuth wait step's script (see the file).
pub const CONSENT_JS: &str = include_str!("../static/consent.js");
pub const PASSKEY_JS: &str = include_str!("../static/passkey.js");

#[cfg(test)]
mod tests {
    use super::fetch_status_label;
    use crate::i18n::Lang;
    use mydata_store::fetch_status as st;

    #[test]
    fn a_settled_dataset_never_reads_as_being_fetched() {
        let pending = fetch_status_label(st::PENDING, Lang::En);
        for s in [st::SUCCEEDED, st::REFUSED, st::REJECTED, st::FAILED] {
            assert!(st::is_settled(s));
            for lang in [Lang::ZhTw, Lang::En] {
                assert_ne!(
                    fetch_status_label(s, lang),
                    fetch_status_label(st::PENDING, lang),
                    "{s}"
                );
            }
        }
        assert_eq!(fetch_status_label(st::NOT_READY, Lang::En), pending);
    }
}
