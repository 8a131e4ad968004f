//! The person's language: Traditional Chinese (zh-TW) by default, English on request.
//!
//! Chosen by `?lang=en` / `?lang=zh-TW` (remembered in a cookie), then the `lang` cookie; never guessed
//! from the browser, so that a counter clerk and a citizen see the same page by default.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    /// The query string of the page being answered to a GET, kept on its language switch.
    static PAGE_QUERY: Option<String>;
}

/// The query string of the GET request whose page is being rendered (`None` for a form post,
/// whose page has no address of its own to switch, or outside a request).
pub fn page_query() -> Option<String> {
    PAGE_QUERY.try_with(Clone::clone).ok().flatten()
}

/// Around every request: an explicit `?lang=` is remembered in the `lang` cookie for the pages
/// that follow (links and forms do not carry it), and a page answering a GET knows its own query,
/// so that its language switch keeps the request in progress (`next`, an OAuth request, a search).
pub async fn page_language(req: Request, next: Next) -> Response {
    let chosen = Lang::from_query(req.uri().query());
    let query = matches!(*req.method(), Method::GET | Method::HEAD)
        .then(|| req.uri().query().unwrap_or_default().to_owned());
    let mut res = PAGE_QUERY.scope(query, next.run(req)).await;
    if let Some(l) = chosen {
        let cookie = format!("lang={}; Path=/; Max-Age=31536000; SameSite=Lax", l.tag());
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// A supported page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    ZhTw,
    En,
}

impl Lang {
    /// The BCP 47 tag, as used in `<html lang>` and the `lang` parameter.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::ZhTw => "zh-TW",
            Lang::En => "en",
        }
    }

    /// The other language, for the switch link.
    pub fn other(self) -> Lang {
        match self {
            Lang::ZhTw => Lang::En,
            Lang::En => Lang::ZhTw,
        }
    }

    /// Picks the text for this language.
    pub fn pick<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::ZhTw => zh,
            Lang::En => en,
        }
    }

    /// Parses a `lang` value; accepts the tags case-insensitively and `zh` for zh-TW.
    pub fn parse(s: &str) -> Option<Lang> {
        match s.to_ascii_lowercase().as_str() {
            "zh-tw" | "zh" | "zh-hant" => Some(Lang::ZhTw),
            "en" | "en-us" | "en-gb" => Some(Lang::En),
            _ => None,
        }
    }

    /// The language of a request: query parameter first, then cookie, then zh-TW.
    pub fn from_request(req: &Request) -> Lang {
        Self::from_query(req.uri().query())
            .or_else(|| Self::from_cookie(req.headers()))
            .unwrap_or_default()
    }

    pub fn from_query(query: Option<&str>) -> Option<Lang> {
        query?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "lang")
            .and_then(|(_, v)| Lang::parse(v))
    }

    pub fn from_cookie(headers: &axum::http::HeaderMap) -> Option<Lang> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == "lang")
            .and_then(|(_, v)| Lang::parse(v))
    }
}

/// The language tag of a text a service or agency wrote in one language only (its name, purpose,
/// terms), for a `lang` attribute where it shows on a page in the other: Chinese if it has any
/// Han character or CJK punctuation, else English. Screen readers read it with the right voice.
pub fn text_lang(text: &str) -> &'static str {
    let cjk = |c: char| {
        matches!(c as u32,
            0x3000..=0x303F     // CJK punctuation (，。「」)
            | 0x3400..=0x4DBF   // Han, extension A
            | 0x4E00..=0x9FFF   // Han
            | 0xF900..=0xFAFF   // Han compatibility
            | 0xFF00..=0xFFEF   // full-width forms
            | 0x20000..=0x2FFFF)
    };
    if text.chars().any(cjk) {
        Lang::ZhTw.tag()
    } else {
        Lang::En.tag()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_wins_over_cookie_and_default_is_zh_tw() {
        let req = |uri: &str, cookie: Option<&str>| {
            let mut b = axum::http::Request::builder().uri(uri);
            if let Some(c) = cookie {
                b = b.header(header::COOKIE, c);
            }
            b.body(axum::body::Body::empty()).unwrap_or_default()
        };
        assert_eq!(Lang::from_request(&req("/", None)), Lang::ZhTw);
        assert_eq!(Lang::from_request(&req("/?lang=en", None)), Lang::En);
        assert_eq!(
            Lang::from_request(&req("/", Some("a=b; lang=en"))),
            Lang::En
        );
        assert_eq!(
            Lang::from_request(&req("/?lang=zh-TW", Some("lang=en"))),
            Lang::ZhTw
        );
        assert_eq!(Lang::from_request(&req("/?lang=klingon", None)), Lang::ZhTw);
    }

    #[test]
    fn a_text_is_chinese_if_it_has_han_characters_or_cjk_punctuation() {
        assert_eq!(super::text_lang("學雜費減免資格審核"), "zh-TW");
        assert_eq!(super::text_lang("MyData 平臺"), "zh-TW");
        assert_eq!(super::text_lang("「OK」"), "zh-TW");
        assert_eq!(super::text_lang("Tuition reduction, 2026"), "en");
        assert_eq!(super::text_lang(""), "en");
    }
}
