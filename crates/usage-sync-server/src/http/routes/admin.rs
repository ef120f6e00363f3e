//! Admin routes: plans, per-user settings, resets and manual syncs.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use usage_sync_core::{Limit, PeriodKind};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, PlanPath, UserPath};
use crate::http::routes::usage::usage_json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// Kind → limit; `null` is unlimited; kinds not listed get 0.
    limits: BTreeMap<String, Limit>,
    #[serde(default)]
    period: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    limits: Option<BTreeMap<String, Limit>>,
}

pub async fn put_plan(
    State(state): State<AppState>,
    PlanPath(name): PlanPath,
    JsonBody(body): JsonBody<PlanBody>,
) -> Result<Json<Value>, ApiError> {
    let period: PeriodKind = body.period.as_deref().unwrap_or("monthly").parse()?;
    let limits: Vec<(String, Limit)> = body.limits.into_iter().collect();
    let plan = state.engine()?.set_plan(&name, period, &limits).await?;
    tracing::info!(target: "admin", plan = %name, period = period.as_str(), "plan updated");
    let mut out = Map::new();
    for k in state.engine()?.kinds().iter() {
        out.insert(k.name().to_owned(), json!(plan.limits[k.index()]));
    }
    Ok(Json(
        json!({"plan": plan.name, "period": plan.period.as_str(), "limits": out}),
    ))
}

pub async fn put_user(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    JsonBody(body): JsonBody<UserBody>,
) -> Result<Json<Value>, ApiError> {
    if body.plan.is_none() && body.limits.is_none() {
        return Err(ApiError::invalid("give at least one of plan and limits"));
    }
    let limits: Option<Vec<(String, Limit)>> = body.limits.map(|l| l.into_iter().collect());
    let u = state
        .engine()?
        .set_user(&user, body.plan.as_deref(), limits.as_deref())
        .await?;
    tracing::info!(target: "admin", user_id = %user, "user updated");
    Ok(Json(usage_json(&u)))
}

pub async fn reset_user(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<Value>, ApiError> {
    let u = state.engine()?.reset_user(&user).await?;
    tracing::info!(target: "admin", user_id = %user, "usage reset: a new period starts now");
    Ok(Json(usage_json(&u)))
}

pub async fn sync_user(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<Value>, ApiError> {
    let units = state.engine()?.sync_user(&user).await?;
    Ok(Json(
        json!({"user_id": user.as_str(), "flushed_units": units}),
    ))
}

pub async fn sync_all(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let r = state.engine()?.sync_all().await?;
    tracing::info!(target: "admin", users = r.flushed_users, units = r.flushed_units, "manual sync of all users");
    Ok(Json(json!({
        "checked": r.checked,
        "flushed_users": r.flushed_users,
        "flushed_units": r.flushed_units,
    })))
}
