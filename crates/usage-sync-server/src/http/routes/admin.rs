//! Admin routes: plans, per-user settings, resets and manual syncs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use usage_sync::{SortKey, UserListQuery};
use usage_sync_api::{
    Eviction, KindTotal, Plan, PlanRequest, SimulateRequest, Simulation, SyncReport, Usage,
    UserList, UserRequest, UserSync, UserTotals,
};
use usage_sync_core::{Limit, PeriodKind};

use crate::http::AppState;
use crate::http::error::{ApiError, Code};
use crate::http::extract::{JsonBody, PlanPath, QueryParams, UserPath};
use crate::http::routes::usage::usage_doc;

pub async fn put_plan(
    State(state): State<AppState>,
    PlanPath(name): PlanPath,
    JsonBody(body): JsonBody<PlanRequest>,
) -> Result<Json<Plan>, ApiError> {
    let period: PeriodKind = body.period.as_deref().unwrap_or("monthly").parse()?;
    let limits: Vec<(String, Limit)> = body.limits.into_iter().collect();
    let plan = state.engine()?.set_plan(&name, period, &limits).await?;
    tracing::info!(target: "admin", plan = %name, period = period.as_str(), "plan updated");
    let limits = state
        .engine()?
        .kinds()
        .iter()
        .map(|k| (k.name().to_owned(), plan.limits[k.index()]))
        .collect();
    Ok(Json(Plan {
        plan: plan.name.to_string(),
        period: plan.period.as_str().to_owned(),
        limits,
    }))
}

pub async fn put_user(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    JsonBody(body): JsonBody<UserRequest>,
) -> Result<Json<Usage>, ApiError> {
    if body.plan.is_none() && body.limits.is_none() {
        return Err(ApiError::invalid("give at least one of plan and limits"));
    }
    let limits: Option<Vec<(String, Limit)>> = body.limits.map(|l| l.into_iter().collect());
    let u = state
        .engine()?
        .set_user(&user, body.plan.as_deref(), limits.as_deref())
        .await?;
    tracing::info!(target: "admin", user_id = %user, "user updated");
    Ok(Json(usage_doc(&u)))
}

pub async fn reset_user(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<Usage>, ApiError> {
    let u = state.engine()?.reset_user(&user).await?;
    tracing::info!(target: "admin", user_id = %user, "usage reset: a new period starts now");
    Ok(Json(usage_doc(&u)))
}

pub async fn sync_user(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<UserSync>, ApiError> {
    let units = state.engine()?.sync_user(&user).await?;
    Ok(Json(UserSync {
        user_id: user.as_str().to_owned(),
        flushed_units: units,
    }))
}

pub async fn sync_all(State(state): State<AppState>) -> Result<Json<SyncReport>, ApiError> {
    let r = state.engine()?.sync_all().await?;
    tracing::info!(target: "admin", users = r.flushed_users, units = r.flushed_units, "manual sync of all users");
    Ok(Json(SyncReport {
        checked: r.checked as u64,
        flushed_users: r.flushed_users as u64,
        flushed_units: r.flushed_units,
    }))
}

/// Query of `GET /admin/v1/users`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    search: Option<String>,
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    plan: Option<String>,
}

/// `GET /admin/v1/users?page=&limit=&search=&sort=&order=&plan=`: users
/// with usage including pending units, and totals over all users. Sorts by
/// `user_id` (default), `used`, `pending`, `last_activity` or a kind name.
pub async fn list_users(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Json<UserList>, ApiError> {
    let engine = state.engine()?;
    let page = p.page.unwrap_or(1);
    if !(1..=1_000_000).contains(&page) {
        return Err(ApiError::invalid("page must be 1..=1000000"));
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1..=1000"));
    }
    let sort = match p.sort.as_deref().unwrap_or("user_id") {
        "user_id" => SortKey::UserId,
        "used" => SortKey::Used,
        "pending" => SortKey::Pending,
        "last_activity" => SortKey::LastActivity,
        other => match engine.kinds().get(other) {
            Ok(k) => SortKey::UsedOf(*k),
            Err(_) => {
                return Err(ApiError::invalid(
                    "sort must be user_id, used, pending, last_activity or a kind name",
                ));
            }
        },
    };
    let descending = match p.order.as_deref().unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        _ => return Err(ApiError::invalid("order must be asc or desc")),
    };
    let q = UserListQuery {
        page: usize::try_from(page).unwrap_or(usize::MAX),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        search: p.search.filter(|s| !s.is_empty()),
        plan: p.plan.filter(|s| !s.is_empty()),
        sort,
        descending,
    };
    let list = engine.list_users(&q).await?;
    let usage = list
        .per_kind
        .iter()
        .map(|t| {
            let total = KindTotal {
                used: t.used,
                pending: t.pending,
            };
            (t.kind.name().to_owned(), total)
        })
        .collect();
    Ok(Json(UserList {
        page,
        limit,
        matched: list.matched as u64,
        users: list.users.iter().map(usage_doc).collect(),
        totals: UserTotals {
            users: list.total_users as u64,
            usage,
            users_per_plan: list
                .per_plan
                .into_iter()
                .map(|(p, n)| (p, n as u64))
                .collect(),
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvictParams {
    #[serde(default)]
    idle_seconds: Option<u64>,
}

/// `POST /admin/v1/cache/evict[?idle_seconds=N]`: flushes everything, then
/// evicts users idle for at least N seconds (default 0: every idle user)
/// whose counters are clean. Never drops pending units.
pub async fn evict(
    State(state): State<AppState>,
    QueryParams(p): QueryParams<EvictParams>,
) -> Result<Json<Eviction>, ApiError> {
    let idle = p.idle_seconds.unwrap_or(0);
    if idle > 365 * 86_400 {
        return Err(ApiError::invalid("idle_seconds must be at most one year"));
    }
    let r = state
        .engine()?
        .evict_idle(i64::try_from(idle).unwrap_or(i64::MAX).saturating_mul(1000))
        .await?;
    tracing::info!(target: "admin", evicted = r.evicted, kept = r.kept, "cache eviction");
    Ok(Json(Eviction {
        flushed_units: r.flushed_units,
        evicted: r.evicted as u64,
        kept_with_pending: r.kept as u64,
        resident_users: r.resident_after as u64,
    }))
}

/// `POST /admin/v1/users/{user_id}/simulate {"kind", "count"}`: consumes
/// `count` single units as requests would, to watch the triggers react.
/// Only with `USAGE_SYNC_ENABLE_SIMULATION=true` (refused in production).
pub async fn simulate(
    State(state): State<AppState>,
    UserPath(user): UserPath,
    JsonBody(body): JsonBody<SimulateRequest>,
) -> Result<Json<Simulation>, ApiError> {
    if !state.info.simulation {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "simulation is disabled; USAGE_SYNC_ENABLE_SIMULATION=true enables it outside production",
        ));
    }
    let count = body.count.unwrap_or(1);
    if !(1..=10_000).contains(&count) {
        return Err(ApiError::invalid("count must be 1..=10000"));
    }
    let engine = state.engine()?;
    let kind = engine.kind(&body.kind)?;
    let (allowed, denied) = engine
        .simulate(&user, &kind, u32::try_from(count).unwrap_or(10_000))
        .await?;
    tracing::info!(target: "admin", user_id = %user, kind = kind.name(), allowed, denied, "simulated consumes");
    let usage = engine.usage(&user).await?;
    Ok(Json(Simulation {
        allowed: allowed.into(),
        denied: denied.into(),
        usage: usage_doc(&usage),
    }))
}
