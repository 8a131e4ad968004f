//! Path parameters whose refusal has the platform's shape, like every other error.

use crate::error::AppError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// axum's `Path`, with a parameter that does not decode (percent-encoded bytes that are not UTF-8,
/// a value of the wrong type) refused as 400 `invalid_parameter`: problem+json for the API, the
/// error page in the person's language for the web. axum's own refusal is plain text, which the
/// error layer could only restate as a bad body.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => {
                let e = AppError::from(r);
                // The whole path: a nested router's handler sees its own part only.
                let path = parts
                    .extensions
                    .get::<axum::extract::OriginalUri>()
                    .map_or(parts.uri.path(), |u| u.0.path());
                Err(if crate::error::wants_problem_json(path) {
                    e.into_response()
                } else {
                    e.into_page(super::form::lang_of(&parts.uri, &parts.headers))
                })
            }
        }
    }
}
