//! Page form posts: one extractor per kind of form, and one way a page handler's error becomes
//! the person's error page.
//!
//! A form post is checked in a fixed order before the handler runs: the body is within the limit
//! and is a form, then the session is live and the form carries its CSRF token. Any failure is
//! answered as a localized, never-cached error page and the handler does not run.

use crate::counter::clerk::{self, ClerkSession};
use crate::error::AppError;
use crate::i18n::Lang;
use crate::identity::session::{self, CSRF_FIELD, Session};
use crate::state::AppState;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use std::future::Future;

/// The page language: `?lang=` first, then the remembered cookie, then zh-TW.
pub(crate) fn lang_of(uri: &Uri, headers: &HeaderMap) -> Lang {
    Lang::from_query(uri.query())
        .or_else(|| Lang::from_cookie(headers))
        .unwrap_or_default()
}

/// Personal pages are never cached or stored by the browser.
pub(crate) fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Runs a page handler; its error becomes the localized, no-store error page.
pub(crate) async fn on_page<F>(lang: Lang, run: F) -> Response
where
    F: Future<Output = Result<Response, AppError>>,
{
    match run.await {
        Ok(res) => res,
        Err(e) => no_store(e.into_page(lang)),
    }
}

/// A form that carries the CSRF token of the session it was served in.
pub trait CsrfField {
    /// The submitted token, if any.
    fn csrf(&self) -> Option<&str>;
}

impl CsrfField for crate::identity::Form {
    fn csrf(&self) -> Option<&str> {
        self.get(CSRF_FIELD).map(String::as_str)
    }
}

impl CsrfField for Vec<(String, String)> {
    fn csrf(&self) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.as_str())
    }
}

fn rejection(e: FormRejection) -> AppError {
    match e {
        FormRejection::InvalidFormContentType(_) => AppError::UnsupportedMediaType,
        FormRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::PayloadTooLarge { limit: None }
        }
        other => AppError::InvalidBody(other.body_text()),
    }
}

/// Splits the request, reads the form and returns it with the language and headers.
async fn read_form<F>(req: Request, state: &AppState) -> Result<(F, Lang, HeaderMap), Response>
where
    F: DeserializeOwned + Send,
{
    let lang = lang_of(req.uri(), req.headers());
    let headers = req.headers().clone();
    match Form::<F>::from_request(req, state).await {
        Ok(Form(f)) => Ok((f, lang, headers)),
        Err(e) => Err(no_store(rejection(e).into_page(lang))),
    }
}

/// A person's form post: the form, the live session whose CSRF token it carries, and the page
/// language.
#[derive(Debug)]
pub struct PostedForm<F = crate::identity::Form> {
    pub session: Session,
    pub form: F,
    pub lang: Lang,
}

impl<F> FromRequest<AppState> for PostedForm<F>
where
    F: DeserializeOwned + CsrfField + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (form, lang, headers) = read_form::<F>(req, state).await?;
        match session::for_post(state, &headers, form.csrf()).await {
            Ok(session) => Ok(PostedForm {
                session,
                form,
                lang,
            }),
            Err(e) => Err(no_store(e.into_page(lang))),
        }
    }
}

/// A clerk's form post: the form, the live clerk session whose CSRF token it carries, and the
/// page language. Without a clerk session the clerk is sent to the clerk sign-in.
#[derive(Debug)]
pub struct ClerkPost<F> {
    pub session: ClerkSession,
    pub form: F,
    pub lang: Lang,
}

impl<F> FromRequest<AppState> for ClerkPost<F>
where
    F: DeserializeOwned + CsrfField + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (form, lang, headers) = read_form::<F>(req, state).await?;
        let session = match clerk::load(state, &headers).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Redirect::to("/clerk/login").into_response()),
            Err(e) => return Err(no_store(e.into_page(lang))),
        };
        if let Err(e) = session.check_csrf(form.csrf()) {
            return Err(no_store(e.into_page(lang)));
        }
        Ok(ClerkPost {
            session,
            form,
            lang,
        })
    }
}

/// A form posted before any session exists (the clerk sign-in): the form and the page language.
#[derive(Debug)]
pub struct Posted<F> {
    pub form: F,
    pub lang: Lang,
}

impl<F> FromRequest<AppState> for Posted<F>
where
    F: DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (form, lang, _) = read_form::<F>(req, state).await?;
        Ok(Posted { form, lang })
    }
}
