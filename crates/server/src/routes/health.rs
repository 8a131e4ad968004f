//! Liveness and readiness probes for load balancers and orchestrators.

use crate::error::AppError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use std::time::Duration;

/// How long the readiness probe waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving requests.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the process can do useful work, i.e. its database answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store().ping()).await {
        Ok(Ok(())) => {
            let backend = match state.store().backend() {
                mydata_store::Backend::Sqlite => "sqlite",
                mydata_store::Backend::Postgres => "postgres",
            };
            Ok(Json(
                serde_json::json!({ "status": "ready", "database": backend }),
            ))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(AppError::DatabaseUnavailable)
        }
        Err(_) => Err(AppError::DatabaseUnavailable),
    }
}

/// `GET /.well-known/mydata/jwks.json`: the platform's public signing keys (the current one, then
/// those it replaced), to check receipts and audit tree heads offline.
pub async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "keys": state.platform_keys().public_jwks() }))
}

/// `GET /api/v1/audit/tree-head`: the latest signed tree head of the audit log.
pub async fn latest_tree_head(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, AppError> {
    let heads = state.store().tree_heads().await?;
    let head = heads
        .iter()
        .rev()
        .find(|h| h.signature.is_some())
        .ok_or_else(|| AppError::NotFound {
            what: "signed tree head",
            id: "latest".into(),
        })?;
    Ok(Json(serde_json::json!({
        "tree_size": head.tree_size,
        "root_hash": head.root_hash,
        "created_at_ms": head.created_at.millis(),
        "signature": head.signature,
    })))
}
