//! Developer endpoints (`dev.endpoints`, on in `demo` only): start a fetch for a synthetic person
//! without the identity flow, follow it, and take its package. They skip identity verification and
//! consent, so they must never be enabled where real people's data could be fetched.

use crate::agencies::{StartError, StartFetch, start_fetch};
use crate::error::AppError;
use crate::packages::{TakeError, take_package};
use crate::routes::path::Path;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mydata_core::transfer::TransferKind;
use mydata_core::{BusinessId, IdNumber, IdentityMethod};
use mydata_store::NewTransfer;
use serde::Deserialize;

/// Most datasets one dev fetch may ask for (the whole catalogue fits).
const MAX_DATASETS: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// ID number or 統一編號 of a synthetic person or company.
    subject: String,
    datasets: Vec<String>,
    /// Identity method code; default: the strongest method every dataset accepts for this kind of
    /// subject.
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    purpose: Option<String>,
}

/// `POST /api/v1/dev/fetches`
pub async fn create_fetch(
    State(state): State<AppState>,
    body: Result<Json<FetchRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(req) = body?;
    if req.datasets.is_empty() {
        return Err(AppError::EmptySelection);
    }
    if req.datasets.len() > MAX_DATASETS {
        return Err(AppError::InvalidBody(format!(
            "at most {MAX_DATASETS} datasets per fetch"
        )));
    }
    let subject = req.subject.trim().to_owned();
    let company = BusinessId::parse(&subject).is_ok();
    if IdNumber::parse(&subject).is_err() && !company {
        return Err(AppError::InvalidBody(
            "`subject` must be a valid ID number or 統一編號".into(),
        ));
    }
    let catalog = state.catalog();
    let mut datasets = Vec::new();
    for id in &req.datasets {
        datasets.push(
            catalog
                .dataset(id)
                .ok_or_else(|| super::not_found("dataset", id))?,
        );
    }
    let method = match &req.method {
        Some(code) => IdentityMethod::ALL
            .into_iter()
            .find(|m| m.code() == code)
            .ok_or_else(|| AppError::InvalidParameter {
                name: "method".into(),
                message: format!(
                    "unknown method (allowed: {})",
                    IdentityMethod::allowed_codes()
                ),
            })?,
        None => IdentityMethod::ALL
            .into_iter()
            .filter(|m| (m.subject_kind() == mydata_core::identity::SubjectKind::Legal) == company)
            .find(|m| {
                datasets
                    .iter()
                    .all(|d| d.accepts(*m) && m.level().satisfies(d.min_level()))
            })
            .ok_or_else(|| {
                AppError::InvalidBody(
                    "no identity method is accepted by every chosen dataset for this subject"
                        .into(),
                )
            })?,
    };
    let transfer_id = crate::agencies::new_transfer_id();
    let subject_id = match (IdNumber::parse(&subject), BusinessId::parse(&subject)) {
        (Ok(n), _) => crate::identity::SubjectId::Person(n),
        (_, Ok(b)) => crate::identity::SubjectId::Company(b),
        _ => {
            return Err(AppError::InvalidBody(
                "`subject` must be a valid ID number or 統一編號".into(),
            ));
        }
    };
    let pseudonym = crate::identity::subject_pseudonym(&state, &subject_id);
    let start = StartFetch {
        transfer: NewTransfer {
            id: transfer_id.clone(),
            kind: TransferKind::SelfDownload,
            subject: pseudonym.clone(),
            recipient: None,
            purpose: req
                .purpose
                .unwrap_or_else(|| "developer test download".into()),
            datasets: req.datasets.clone(),
        },
        subject_id: subject,
        method,
        level: method.level(),
        answers: None,
    };
    let t = start_fetch(&state, start, &pseudonym)
        .await
        .map_err(StartError::into_app_error)?;
    let links = serde_json::json!({
        "transfer_id": t.id,
        "method": method.code(),
        "status": format!("/api/v1/dev/transfers/{}", t.id),
        "package": format!("/api/v1/dev/transfers/{}/package", t.id),
    });
    Ok((StatusCode::CREATED, Json(links)).into_response())
}

/// `GET /api/v1/dev/transfers/{id}`: the transfer, each dataset's outcome, and its package.
pub async fn get_transfer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    let store = state.store();
    let t = store
        .transfer(&id)
        .await?
        .ok_or_else(|| super::not_found("transfer", &id))?;
    let package = store.package(&id).await?;
    Ok(Json(serde_json::json!({
        "id": t.id,
        "state": t.state,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "datasets": t.datasets,
        "package": package,
    })))
}

/// `GET /api/v1/dev/transfers/{id}/package`: the zip, once.
pub async fn take(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let t = state
        .store()
        .transfer(&id)
        .await?
        .ok_or_else(|| super::not_found("transfer", &id))?;
    match take_package(&state, &id, &t.subject).await {
        Ok(zip) => Ok((
            [
                (header::CONTENT_TYPE, "application/zip".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"mydata-{id}.zip\""),
                ),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            zip,
        )
            .into_response()),
        Err(TakeError::NotFound(_))
            if !t.state.is_terminal() && t.state != mydata_core::transfer::TransferState::Ready =>
        {
            Err(AppError::PackageNotReady(id))
        }
        Err(TakeError::NotFound(_)) => Err(AppError::NotFound {
            what: "package",
            id,
        }),
        Err(TakeError::Gone(_)) => Err(AppError::PackageGone(id)),
        Err(TakeError::Store(e)) => Err(e.into()),
        Err(TakeError::Internal(m)) => Err(AppError::Internal(anyhow::anyhow!(m))),
    }
}
