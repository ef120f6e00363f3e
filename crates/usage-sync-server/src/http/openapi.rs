//! `GET /openapi.json`: the OpenAPI 3.1 description of every route.
//!
//! Request bodies are the structs the handlers deserialize (they derive
//! `ToSchema` where they are defined); responses built with `json!` are
//! described by the schema structs below. Three tests keep this true: a
//! snapshot of the document (`docs/openapi.json`), a check that every route
//! the router serves is described, and a check that real responses of
//! every operation validate against their schemas.

use std::collections::BTreeMap;

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::http::error::Code;
use crate::http::routes::admin::{ListParams, PlanBody, SimulateBody, UserBody};
use crate::http::routes::usage::{
    BatchBody, BatchEvent, CheckBody, ConsumeBody, DecisionBody, RefundBody,
};

/// The error shape of every route.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: Code,
    /// For humans; may change between versions.
    pub message: String,
}

/// The result of one event of a batch, in the event's position: the
/// decision as `/v1/consume` gives it (with the status it would have
/// answered, 200 or 429), or `status` and `error` for an invalid event.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItemDoc {
    /// 200 allowed, 429 over the limit, 4xx/503 error.
    pub status: u16,
    pub allowed: Option<bool>,
    pub deduplicated: Option<bool>,
    pub user_id: Option<String>,
    pub kind: Option<String>,
    pub amount: Option<u64>,
    pub used: Option<u64>,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub period_start: Option<String>,
    pub error: Option<ErrorDetail>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchResultDoc {
    pub results: Vec<BatchItemDoc>,
}

/// Usage of one kind in the current period.
#[derive(Serialize, ToSchema)]
pub struct KindUsageDoc {
    /// Units in the database.
    pub persisted: u64,
    /// Units counted in memory and not yet in the database (may be
    /// negative after refunds).
    pub pending: i64,
    /// persisted + pending.
    pub used: u64,
    /// `null`: unlimited.
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
}

/// The usage document of one user.
#[derive(Serialize, ToSchema)]
pub struct UsageDoc {
    pub user_id: String,
    pub plan: String,
    /// RFC 3339.
    pub period_start: String,
    /// Kind name → usage.
    pub kinds: BTreeMap<String, KindUsageDoc>,
    pub last_sync_at: Option<String>,
    pub last_activity_at: Option<String>,
}

/// The answer to a refund.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundDoc {
    pub request_id: String,
    /// Units given back (0 when the original consume was denied).
    pub refunded: u64,
    pub user_id: String,
    pub kind: String,
    pub persisted: u64,
    pub pending: i64,
    pub used: u64,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub period_start: String,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanDoc {
    pub plan: String,
    /// monthly, daily or none.
    pub period: String,
    /// Kind name → limit (`null`: unlimited).
    pub limits: BTreeMap<String, Option<u64>>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncReportDoc {
    pub checked: u64,
    pub flushed_users: u64,
    pub flushed_units: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSyncDoc {
    pub user_id: String,
    pub flushed_units: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KindTotalDoc {
    pub used: u64,
    pub pending: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTotalsDoc {
    pub users: u64,
    pub usage: BTreeMap<String, KindTotalDoc>,
    pub users_per_plan: BTreeMap<String, u64>,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserListDoc {
    pub page: u64,
    pub limit: u64,
    /// Users matching the filters.
    pub matched: u64,
    pub users: Vec<UsageDoc>,
    /// Over all users, whatever the filters.
    pub totals: UserTotalsDoc,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvictDoc {
    pub flushed_units: i64,
    pub evicted: u64,
    pub kept_with_pending: u64,
    pub resident_users: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateDoc {
    pub allowed: u64,
    pub denied: u64,
    pub usage: UsageDoc,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetDoc {
    pub reset: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthDoc {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyDoc {
    pub status: String,
    /// sqlite or postgres.
    pub store: String,
}

/// The status document (see docs/metrics.md for every field).
#[derive(Serialize, ToSchema)]
pub struct StatusDoc {
    pub running: bool,
    pub uptime_seconds: f64,
    pub profile: String,
    pub durability: String,
    pub pending_units: i64,
    pub users_tracked: u64,
    #[schema(value_type = Object)]
    pub sync: Value,
    #[schema(value_type = Object)]
    pub sharing: Value,
    #[schema(value_type = Object)]
    pub store: Value,
    #[schema(value_type = Vec<Object>)]
    pub checklist: Vec<Value>,
}

/// One user's diagnosis (see docs/metrics.md).
#[derive(Serialize, ToSchema)]
pub struct DiagnoseDoc {
    pub user_id: String,
    pub resident: bool,
    #[schema(value_type = Object)]
    pub kinds: Value,
    #[schema(value_type = Object)]
    pub last_flush: Value,
    pub request_ids_remembered: u64,
    pub recommendations: Vec<String>,
}

/// Alerts as last evaluated.
#[derive(Serialize, ToSchema)]
pub struct AlertsDoc {
    #[schema(value_type = Vec<Object>)]
    pub firing: Vec<Value>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("api_token", "USAGE_SYNC_API_TOKEN, when set"),
            ("admin_token", "USAGE_SYNC_ADMIN_TOKEN, when set"),
            ("metrics_token", "USAGE_SYNC_METRICS_TOKEN, when set"),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(format!("Bearer token: {what}")))
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "usage-sync",
        description = "Per-user usage metering and quota enforcement. Consume decides and counts atomically; counts reach the database in batches, exactly once. Every error has the shape {\"error\": {\"code\", \"message\"}} with a stable code.",
        license(name = "Apache-2.0")
    ),
    paths(
        consume, consume_batch, check, refund, usage, put_plan, put_user, reset_user, sync_user, sync_all,
        list_users, evict, simulate, status, alerts, diagnose, reset_stats, metrics, healthz,
        readyz, openapi_json, dashboard
    ),
    components(schemas(
        ConsumeBody, BatchBody, BatchEvent, BatchItemDoc, BatchResultDoc, CheckBody, RefundBody, DecisionBody, PlanBody, UserBody, SimulateBody,
        ErrorBody, ErrorDetail, Code, KindUsageDoc, UsageDoc, RefundDoc, PlanDoc,
        SyncReportDoc, UserSyncDoc, UserListDoc, UserTotalsDoc, KindTotalDoc, EvictDoc,
        SimulateDoc, ResetDoc, HealthDoc, ReadyDoc, StatusDoc, DiagnoseDoc, AlertsDoc
    )),
    modifiers(&Security),
    tags(
        (name = "metering", description = "The request path: consume, check, refund, usage"),
        (name = "admin", description = "Plans, users, flushes, diagnostics (admin token)"),
        (name = "operate", description = "Metrics, probes and this document")
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}

pub async fn openapi() -> Json<Value> {
    Json(document())
}

// The operations. Each function only carries its description; the handler
// with the same name in `routes` does the work.

#[utoipa::path(post, path = "/v1/consume", tag = "metering",
    request_body = ConsumeBody,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "Allowed and counted (or a repeated request_id: the original decision, `deduplicated: true`)", body = DecisionBody),
        (status = 429, description = "Over the limit: nothing counted; `allowed: false` and an `error` with code limit_exceeded", body = DecisionBody),
        (status = 409, description = "request_id_conflict: the request_id was first used with another user_id, kind or amount; nothing counted", body = ErrorBody),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields, bad ids or amounts, unknown kind", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "Starting, stopping, or the shared tier is unreachable with fallback deny", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn consume() {}

#[utoipa::path(post, path = "/v1/consume/batch", tag = "metering",
    request_body = BatchBody,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "One result per event, in order; each event decided and counted as by /v1/consume, made durable together", body = BatchResultDoc),
        (status = 400, description = "Malformed envelope, or not 1 to 1000 events; nothing counted", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn consume_batch() {}

#[utoipa::path(post, path = "/v1/check", tag = "metering",
    request_body = CheckBody,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "The decision, counting nothing", body = DecisionBody),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn check() {}

#[utoipa::path(post, path = "/v1/refund", tag = "metering",
    request_body = RefundBody,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "Refunded once", body = RefundDoc),
        (status = 404, description = "unknown_request: no consume with this request_id is remembered", body = ErrorBody),
        (status = 409, description = "already_refunded; or request_id_conflict: `user_id` was given and the consume was another user's (nothing refunded)", body = ErrorBody),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn refund() {}

#[utoipa::path(get, path = "/v1/users/{user_id}/usage", tag = "metering",
    params(("user_id" = String, Path, description = "1 to 128 bytes, no control or format characters (Cc, Cf, Zl, Zp)")),
    security(("api_token" = [])),
    responses(
        (status = 200, description = "Usage including pending units; unknown users show zeros on the default plan", body = UsageDoc),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn usage() {}

#[utoipa::path(put, path = "/admin/v1/plans/{plan}", tag = "admin",
    params(("plan" = String, Path, description = "1-64 of A-Z a-z 0-9 _ - .")),
    request_body = PlanBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The plan as saved; applies to every user's next request", body = PlanDoc),
        (status = 400, description = "Bad plan", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn put_plan() {}

#[utoipa::path(put, path = "/admin/v1/users/{user_id}", tag = "admin",
    params(("user_id" = String, Path)),
    request_body = UserBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The user's usage under the new plan or limits", body = UsageDoc),
        (status = 400, description = "Unknown plan or kind, bad limits", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn put_user() {}

#[utoipa::path(post, path = "/admin/v1/users/{user_id}/reset", tag = "admin",
    params(("user_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A new period starts now", body = UsageDoc),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn reset_user() {}

#[utoipa::path(post, path = "/admin/v1/users/{user_id}/sync", tag = "admin",
    params(("user_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The user's pending units are in the database", body = UserSyncDoc),
        (status = 503, description = "The store failed; the units stay pending", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn sync_user() {}

#[utoipa::path(post, path = "/admin/v1/sync", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Everything acknowledged before the call is in the database", body = SyncReportDoc),
        (status = 503, description = "The store failed; the units stay pending", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn sync_all() {}

#[utoipa::path(get, path = "/admin/v1/users", tag = "admin",
    params(ListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One page of users with usage including pending units, and totals", body = UserListDoc),
        (status = 400, description = "Bad query", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn list_users() {}

#[utoipa::path(post, path = "/admin/v1/cache/evict", tag = "admin",
    params(("idle_seconds" = Option<u64>, Query, description = "Evict users idle at least this long (default 0)")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Flushed, then evicted idle users whose counters are clean", body = EvictDoc),
        (status = 400, description = "Bad query", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn evict() {}

#[utoipa::path(post, path = "/admin/v1/users/{user_id}/simulate", tag = "admin",
    params(("user_id" = String, Path)),
    request_body = SimulateBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Consumed `count` single units", body = SimulateDoc),
        (status = 404, description = "Simulation is disabled (USAGE_SYNC_ENABLE_SIMULATION)", body = ErrorBody),
        (status = 400, description = "Bad input", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn simulate() {}

#[utoipa::path(get, path = "/admin/v1/status", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Sync statistics, pending units, triggers, alerts, store and Redis, checklist", body = StatusDoc)))]
#[allow(dead_code)]
fn status() {}

#[utoipa::path(get, path = "/admin/v1/alerts", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Alerts as last evaluated", body = AlertsDoc)))]
#[allow(dead_code)]
fn alerts() {}

#[utoipa::path(get, path = "/admin/v1/users/{user_id}/diagnose", tag = "admin",
    params(("user_id" = String, Path)),
    security(("admin_token" = [])),
    responses((status = 200, description = "Pending, in-flight and persisted units per kind, the next trigger, the last flush, advice", body = DiagnoseDoc)))]
#[allow(dead_code)]
fn diagnose() {}

#[utoipa::path(post, path = "/admin/v1/stats/reset", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Sync statistics zeroed", body = ResetDoc)))]
#[allow(dead_code)]
fn reset_stats() {}

#[utoipa::path(get, path = "/metrics", tag = "operate",
    security((), ("metrics_token" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/healthz", tag = "operate",
    responses((status = 200, description = "The process is alive", body = HealthDoc)))]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "operate",
    responses(
        (status = 200, description = "Recovered, store reachable, not stopping", body = ReadyDoc),
        (status = 503, description = "Not ready", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(get, path = "/dashboard", tag = "operate",
    params(("token" = Option<String>, Query, description = "The admin token, for browsers that cannot send the header")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The live dashboard page", body = String, content_type = "text/html"),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn dashboard() {}

#[utoipa::path(get, path = "/openapi.json", tag = "operate",
    responses((status = 200, description = "This document", body = Object)))]
#[allow(dead_code)]
fn openapi_json() {}
