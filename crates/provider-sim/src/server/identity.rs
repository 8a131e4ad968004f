//! Identity checks of the simulated agencies: the health-insurance agency confirms an ID number with
//! a health-card number; household registration confirms it with a household number or the ID
//! card's issue date. The platform uses them for the `nhi_card` and `dual_id` methods.
//!
//! The answer is only `{"match": true|false}`: never which field differed, and an ID number
//! outside the population is simply "no match", so the endpoint cannot be used to learn who exists.

use super::{ApiError, Simulator};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mydata_core::IdNumber;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The agency that answers health-card checks.
pub const NHI_AGENCY: &str = "nhia";
/// The agency that answers household-number and ID-card checks.
pub const HOUSEHOLD_AGENCY: &str = "moi-household";

/// What the platform asks. Every field given must match; which fields are required depends on the
/// agency (see `docs/agency-api.yaml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    id_number: String,
    #[serde(default)]
    nhi_card_no: Option<String>,
    #[serde(default)]
    household_no: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(default)]
    id_card_issue_date: Option<String>,
}

#[derive(Debug, Serialize)]
struct CheckAnswer {
    #[serde(rename = "match")]
    matched: bool,
}

pub(super) async fn check(
    State(sim): State<Arc<Simulator>>,
    Path(agency_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    sim.gate(&agency_id).await?;
    sim.authenticate(&headers, &agency_id).await?;
    let req: CheckRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let id = IdNumber::parse(&req.id_number)
        .map_err(|_| ApiError::InvalidSubject("is not a valid ID number"))?;
    let person = sim.population.find(&id);
    let matched = match agency_id.as_str() {
        NHI_AGENCY => {
            if req.household_no.is_some() || req.id_card_issue_date.is_some() {
                return Err(ApiError::InvalidBody(
                    "the health-insurance agency checks only nhi_card_no".into(),
                ));
            }
            let card = req
                .nhi_card_no
                .ok_or_else(|| ApiError::InvalidBody("nhi_card_no is required".into()))?;
            person.is_some_and(|p| p.nhi_card_no == card.trim())
        }
        HOUSEHOLD_AGENCY => {
            if req.nhi_card_no.is_some() {
                return Err(ApiError::InvalidBody(
                    "household registration does not check nhi_card_no".into(),
                ));
            }
            if req.household_no.is_none() && req.id_card_issue_date.is_none() {
                return Err(ApiError::InvalidBody(
                    "household_no or id_card_issue_date is required".into(),
                ));
            }
            person.is_some_and(|p| {
                let household_ok = req.household_no.as_deref().is_none_or(|n| {
                    sim.population
                        .household_of(p)
                        .is_some_and(|h| h.number.eq_ignore_ascii_case(n.trim()))
                });
                let issue_ok = req
                    .id_card_issue_date
                    .as_deref()
                    .is_none_or(|d| p.id_card_issued.is_some_and(|i| i.iso() == d.trim()));
                household_ok && issue_ok
            })
        }
        _ => return Err(ApiError::RouteNotFound),
    };
    Ok(axum::Json(CheckAnswer { matched }).into_response())
}
