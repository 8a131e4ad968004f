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
