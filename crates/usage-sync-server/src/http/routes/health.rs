//! Liveness and readiness probes (no token).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::error::{ApiError, Code};

/// The process is alive and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready to take traffic: accepting requests and the store answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let unavailable =
        |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, m);
    if !state.engine()?.is_accepting() {
        return Err(unavailable("shutting down".into()));
    }
    if let Some(why) = state.engine()?.log_failure() {
        return Err(unavailable(why));
    }
    match tokio::time::timeout(Duration::from_secs(2), state.engine()?.store().ping()).await {
        Ok(Ok(())) => Ok(Json(
            json!({"status": "ready", "store": state.engine()?.store().backend()}),
        )),
        Ok(Err(e)) => Err(unavailable(format!("store unreachable: {e}"))),
        Err(_) => Err(unavailable("store did not answer within 2s".into())),
    }
}
