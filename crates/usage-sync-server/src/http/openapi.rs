//! `GET /openapi.json`: the OpenAPI 3.1 description of every route.
//!
//! The schemas are those of the request and response types the handlers
//! use, from `usage_sync_api` (which keeps the schema names the document
//! has always published). Three tests keep this true: a snapshot of the
//! document (`docs/openapi.json`), a check that every route the router
//! serves is described, and a check that real responses of every operation
//! validate against their schemas.

use axum::Json;
use serde_json::Value;
use usage_sync_api::{
    Alerts, BatchEvent, BatchItem, BatchRequest, BatchResults, CheckRequest, Code, ConsumeRequest,
    Decision, Diagnosis, ErrorBody, ErrorDetail, Eviction, Health, KindTotal, KindUsage, Plan,
    PlanRequest, Readiness, Refund, RefundRequest, SimulateRequest, Simulation, StatsReset, Status,
    SyncReport, Usage, UserList, UserRequest, UserSync, UserTotals,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::routes::admin::ListParams;

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
        ConsumeRequest, BatchRequest, BatchEvent, BatchItem, BatchResults, CheckRequest, RefundRequest, Decision, PlanRequest, UserRequest, SimulateRequest,
        ErrorBody, ErrorDetail, Code, KindUsage, Usage, Refund, Plan,
        SyncReport, UserSync, UserList, UserTotals, KindTotal, Eviction,
        Simulation, StatsReset, Health, Readiness, Status, Diagnosis, Alerts
    )),
    modifiers(&Security),
    tags(
        (name = "metering", description = "The request path: consume, check, refund, usage"),
        (name = "admin", description = "Plans, users, flushes, diagnostics (admin token)"),
        (name = "operate", description = "Metrics, probes and this document")
    )
)]
pub struct Description;

/// The document as JSON.
pub fn document() -> Value {
    serde_json::to_value(Description::openapi()).expect("the OpenAPI document serializes")
}

pub async fn openapi() -> Json<Value> {
    Json(document())
}

// The operations. Each function only carries its description; the handler
// with the same name in `routes` does the work.

#[utoipa::path(post, path = "/v1/consume", tag = "metering",
    request_body = ConsumeRequest,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "Allowed and counted (or a repeated request_id: the original decision, `deduplicated: true`)", body = Decision),
        (status = 429, description = "Over the limit: nothing counted; `allowed: false` and an `error` with code limit_exceeded", body = Decision),
        (status = 409, description = "request_id_conflict: the request_id was first used with another user_id, kind or amount; nothing counted", body = ErrorBody),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields, bad ids or amounts, unknown kind", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 503, description = "Starting, stopping, or the shared tier is unreachable with fallback deny", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn consume() {}

#[utoipa::path(post, path = "/v1/consume/batch", tag = "metering",
    request_body = BatchRequest,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "One result per event, in order; each event decided and counted as by /v1/consume, made durable together", body = BatchResults),
        (status = 400, description = "Malformed envelope, or not 1 to 1000 events; nothing counted", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn consume_batch() {}

#[utoipa::path(post, path = "/v1/check", tag = "metering",
    request_body = CheckRequest,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "The decision, counting nothing", body = Decision),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn check() {}

#[utoipa::path(post, path = "/v1/refund", tag = "metering",
    request_body = RefundRequest,
    security(("api_token" = [])),
    responses(
        (status = 200, description = "Refunded once", body = Refund),
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
        (status = 200, description = "Usage including pending units; unknown users show zeros on the default plan", body = Usage),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn usage() {}

#[utoipa::path(put, path = "/admin/v1/plans/{plan}", tag = "admin",
    params(("plan" = String, Path, description = "1-64 of A-Z a-z 0-9 _ - .")),
    request_body = PlanRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The plan as saved; applies to every user's next request", body = Plan),
        (status = 400, description = "Bad plan", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn put_plan() {}

#[utoipa::path(put, path = "/admin/v1/users/{user_id}", tag = "admin",
    params(("user_id" = String, Path)),
    request_body = UserRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The user's usage under the new plan or limits", body = Usage),
        (status = 400, description = "Unknown plan or kind, bad limits", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn put_user() {}

#[utoipa::path(post, path = "/admin/v1/users/{user_id}/reset", tag = "admin",
    params(("user_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A new period starts now", body = Usage),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn reset_user() {}

#[utoipa::path(post, path = "/admin/v1/users/{user_id}/sync", tag = "admin",
    params(("user_id" = String, Path)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The user's pending units are in the database", body = UserSync),
        (status = 503, description = "The store failed; the units stay pending", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn sync_user() {}

#[utoipa::path(post, path = "/admin/v1/sync", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Everything acknowledged before the call is in the database", body = SyncReport),
        (status = 503, description = "The store failed; the units stay pending", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn sync_all() {}

#[utoipa::path(get, path = "/admin/v1/users", tag = "admin",
    params(ListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "One page of users with usage including pending units, and totals", body = UserList),
        (status = 400, description = "Bad query", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn list_users() {}

#[utoipa::path(post, path = "/admin/v1/cache/evict", tag = "admin",
    params(("idle_seconds" = Option<u64>, Query, description = "Evict users idle at least this long (default 0)")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Flushed, then evicted idle users whose counters are clean", body = Eviction),
        (status = 400, description = "Bad query", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn evict() {}

#[utoipa::path(post, path = "/admin/v1/users/{user_id}/simulate", tag = "admin",
    params(("user_id" = String, Path)),
    request_body = SimulateRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Consumed `count` single units", body = Simulation),
        (status = 404, description = "Simulation is disabled (USAGE_SYNC_ENABLE_SIMULATION)", body = ErrorBody),
        (status = 400, description = "Bad input", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn simulate() {}

#[utoipa::path(get, path = "/admin/v1/status", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Sync statistics, pending units, triggers, alerts, store and Redis, checklist", body = Status)))]
#[allow(dead_code)]
fn status() {}

#[utoipa::path(get, path = "/admin/v1/alerts", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Alerts as last evaluated", body = Alerts)))]
#[allow(dead_code)]
fn alerts() {}

#[utoipa::path(get, path = "/admin/v1/users/{user_id}/diagnose", tag = "admin",
    params(("user_id" = String, Path)),
    security(("admin_token" = [])),
    responses((status = 200, description = "Pending, in-flight and persisted units per kind, the next trigger, the last flush, advice", body = Diagnosis)))]
#[allow(dead_code)]
fn diagnose() {}

#[utoipa::path(post, path = "/admin/v1/stats/reset", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Sync statistics zeroed", body = StatsReset)))]
#[allow(dead_code)]
fn reset_stats() {}

#[utoipa::path(get, path = "/metrics", tag = "operate",
    security((), ("metrics_token" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/healthz", tag = "operate",
    responses((status = 200, description = "The process is alive", body = Health)))]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "operate",
    responses(
        (status = 200, description = "Recovered, store reachable, not stopping", body = Readiness),
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
