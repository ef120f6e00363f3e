//! Liveness and readiness probes (no token).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use usage_sync_api::{Health, Readiness};

use crate::http::AppState;
use crate::http::error::{ApiError, Code};
use usage_sync::StoreReachability;

/// The process is alive and serving HTTP.
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Ready to take traffic: accepting requests and the store answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    let unavailable =
        |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, m);
    if !state.engine()?.is_accepting() {
        return Err(unavailable("shutting down".into()));
    }
    if let Some(why) = state.engine()?.log_failure() {
        return Err(unavailable(why));
    }
    let engine = state.engine()?;
    match engine.ping_store(Duration::from_secs(2)).await {
        StoreReachability::Reachable => Ok(Json(Readiness {
            status: "ready".to_owned(),
            store: engine.store_backend().to_owned(),
        })),
        StoreReachability::Failed(e) => Err(unavailable(format!("store unreachable: {e}"))),
        StoreReachability::TimedOut(d) => Err(unavailable(format!(
            "store did not answer within {} s",
            d.as_secs()
        ))),
    }
}
