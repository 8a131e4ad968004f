//! The agencies' identity-check API (docs/agency-api.yaml, `identity-checks`), called with a
//! platform token exactly like the dataset API. The person's data travel in the body over the
//! agency connection and are never logged.

use crate::state::AppState;
use serde::Serialize;

/// The health-insurance agency.
pub const NHI_AGENCY: &str = "nhia";
/// Household registration.
pub const HOUSEHOLD_AGENCY: &str = "moi-household";

/// A check the agency could not answer (not a mismatch: it does not count toward lockout).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "identity checks are not configured (identity.registry_url and agencies.base_url are empty)"
    )]
    NotConfigured,
    #[error("agency {agency} did not answer: {reason}")]
    Unavailable { agency: String, reason: String },
}

/// The fields one agency confirms.
#[derive(Debug, Default, Serialize)]
pub struct Check<'a> {
    pub id_number: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nhi_card_no: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub household_no: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_card_issue_date: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Asks `agency` whether every field of `check` belongs to the person.
pub async fn confirm(
    state: &AppState,
    agency: &str,
    check: &Check<'_>,
) -> Result<bool, RegistryError> {
    // Without an identity-specific address the agencies' own base URL is used.
    let settings = state.settings();
    let base = if settings.identity.registry_url.is_empty() {
        settings.agencies.base_url.trim_end_matches('/')
    } else {
        settings.identity.registry_url.trim_end_matches('/')
    };
    if base.is_empty() {
        return Err(RegistryError::NotConfigured);
    }
    let unavailable = |reason: String| RegistryError::Unavailable {
        agency: agency.to_owned(),
        reason,
    };
    let now_s = state.clock().now().millis().div_euclid(1000);
    let claims = Claims {
        iss: "mydata-platform",
        aud: agency,
        iat: now_s,
        exp: now_s + 60,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let payload = serde_json::to_vec(&claims).map_err(|e| unavailable(e.to_string()))?;
    // The platform signer's compact JWS is the agency token (ES256 over header.payload).
    let token = state.platform().sign(&payload);
    let url = format!("{base}/agencies/{agency}/v1/identity-checks");
    let res = state
        .identity()
        .http
        .post(url)
        .bearer_auth(token)
        .json(check)
        .send()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    let status = res.status();
    if !status.is_success() {
        return Err(unavailable(format!("status {status}")));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "match")]
        matched: bool,
    }
    let a: Answer = res
        .json()
        .await
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    Ok(a.matched)
}
