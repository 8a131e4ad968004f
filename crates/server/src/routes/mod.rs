//! Request handlers, one module per audience.

pub mod audit;
pub mod catalog_api;
pub mod clerk;
pub mod counter;
pub mod dev;
pub mod download;
pub mod form;
pub mod health;
pub mod home;
pub mod login;
pub mod metrics;
pub mod party_records;
pub mod passkeys;
pub mod path;
pub mod usage;

use crate::error::AppError;

/// Most characters of a caller's input that an error repeats.
pub const ECHO_CHARS: usize = 40;

/// A caller's input as an error may repeat it: cut to [`ECHO_CHARS`] characters, so an error
/// never repeats a huge value.
pub fn clip(s: &str) -> String {
    s.chars().take(ECHO_CHARS).collect()
}

/// Whether the request carries `Authorization: Bearer {expected}` (compared in constant time);
/// never for an empty `expected`.
pub fn bearer_is(headers: &axum::http::HeaderMap, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// `what` named `id` (the caller's input, clipped) does not exist.
pub fn not_found(what: &'static str, id: &str) -> AppError {
    AppError::NotFound { what, id: clip(id) }
}
