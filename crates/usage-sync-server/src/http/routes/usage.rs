//! The public metering API: consume, check, refund, usage.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use usage_sync_core::{Decision, Kind, RequestId, Units, UserId, UserUsage};

use crate::http::AppState;
use crate::http::error::{ApiError, Code};
use crate::http::extract::{JsonBody, UserPath};

/// Body of `POST /v1/consume` and `POST /v1/check`. Unknown fields are
/// rejected: a misspelt `"ammount": 5` must not silently consume 1.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumeBody {
    user_id: String,
    kind: String,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    user_id: String,
    kind: String,
    #[serde(default)]
    amount: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    request_id: String,
}

/// The decision as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    deduplicated: Option<bool>,
    user_id: &'a str,
    kind: &'a str,
    amount: u64,
    used: u64,
    limit: Option<u64>,
    remaining: Option<u64>,
    period_start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::openapi::ErrorDetail>)]
    error: Option<Value>,
}

struct Parsed {
    user: UserId,
    kind: Kind,
    amount: Units,
}

fn parse(
    state: &AppState,
    user_id: &str,
    kind: &str,
    amount: Option<i64>,
) -> Result<Parsed, ApiError> {
    let user = UserId::parse(user_id)?;
    let kind = state.engine()?.kind(kind)?;
    let amount = Units::parse(amount.unwrap_or(1) as i128)?;
    Ok(Parsed { user, kind, amount })
}

fn decision_response(
    user: &UserId,
    kind: &Kind,
    amount: u64,
    d: &Decision,
    deduplicated: Option<bool>,
) -> Response {
    let error = (!d.allowed).then(|| {
        ApiError::body(
            Code::LimitExceeded,
            &format!(
                "limit of {} {} units for this period reached",
                d.limit.unwrap_or(0),
                kind.name()
            ),
        )
    });
    let status = if d.allowed || deduplicated.is_none() {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let body = DecisionBody {
        allowed: d.allowed,
        deduplicated,
        user_id: user.as_str(),
        kind: kind.name(),
        amount,
        used: d.used,
        limit: d.limit,
        remaining: d.remaining,
        period_start: d.period_start.to_rfc3339(),
        // `check` answers 200 either way; only a refused consume is an error.
        error: if deduplicated.is_some() { error } else { None },
    };
    json_response(status, &body, 320)
}

/// A JSON response serialized into a buffer of about the right size (axum's
/// `Json` starts at 128 bytes and grows, one or more copies per answer).
fn json_response<T: Serialize>(status: StatusCode, body: &T, capacity: usize) -> Response {
    let mut buf = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut buf, body) {
        Ok(()) => (
            status,
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        // Not reachable for these types; answer as axum's `Json` would.
        Err(_) => (status, Json(body)).into_response(),
    }
}

pub async fn consume(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ConsumeBody>,
) -> Result<Response, ApiError> {
    let p = parse(&state, &body.user_id, &body.kind, body.amount)?;
    let rid = body
        .request_id
        .as_deref()
        .map(RequestId::parse)
        .transpose()?;
    let out = state
        .engine()?
        .consume(&p.user, &p.kind, p.amount, rid.as_ref())
        .await?;
    if state.verbose {
        tracing::debug!(
            target: "consume",
            user_id = %out.user,
            kind = out.kind.name(),
            amount = out.amount,
            allowed = out.decision.allowed,
            deduplicated = out.deduplicated,
            "consume"
        );
    }
    Ok(decision_response(
        &out.user,
        &out.kind,
        out.amount,
        &out.decision,
        Some(out.deduplicated),
    ))
}

pub async fn check(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CheckBody>,
) -> Result<Response, ApiError> {
    let p = parse(&state, &body.user_id, &body.kind, body.amount)?;
    let d = state.engine()?.check(&p.user, &p.kind, p.amount).await?;
    Ok(decision_response(
        &p.user,
        &p.kind,
        p.amount.get(),
        &d,
        None,
    ))
}

pub async fn refund(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefundBody>,
) -> Result<Response, ApiError> {
    let rid = RequestId::parse(&body.request_id)?;
    let r = state.engine()?.refund(rid.as_str()).await?;
    let k = &r.usage.kinds[r.kind.index()];
    Ok(Json(json!({
        "request_id": rid.as_str(),
        "refunded": r.refunded,
        "user_id": r.user.as_str(),
        "kind": r.kind.name(),
        "persisted": k.persisted,
        "pending": k.pending,
        "used": k.used,
        "limit": k.limit,
        "remaining": k.remaining,
        "period_start": r.usage.period_start.to_rfc3339(),
    }))
    .into_response())
}

/// The usage document shared by `GET /v1/users/{id}/usage` and the admin
/// user routes.
pub fn usage_json(u: &UserUsage) -> Value {
    let mut kinds = Map::new();
    for k in &u.kinds {
        kinds.insert(
            k.kind.name().to_owned(),
            json!({
                "persisted": k.persisted,
                "pending": k.pending,
                "used": k.used,
                "limit": k.limit,
                "remaining": k.remaining,
            }),
        );
    }
    json!({
        "user_id": u.user.as_str(),
        "plan": u.plan,
        "period_start": u.period_start.to_rfc3339(),
        "kinds": kinds,
        "last_sync_at": u.last_sync_at.map(|t| t.to_rfc3339()),
        "last_activity_at": u.last_activity_at.map(|t| t.to_rfc3339()),
    })
}

pub async fn usage(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<Value>, ApiError> {
    let u = state.engine()?.usage(&user).await?;
    Ok(Json(usage_json(&u)))
}

/// Body of `POST /v1/consume/batch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 1000 events, decided in order.
    events: Vec<BatchEvent>,
}

/// One event of a batch: the fields of `POST /v1/consume`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchEvent {
    user_id: String,
    kind: String,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    request_id: Option<String>,
}

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// `POST /v1/consume/batch {"events": [...]}`: each event decided and
/// counted as by `/v1/consume`, in order, with one durability wait for the
/// batch. 200 with one result per event: the decision (with `status` 200
/// or 429, as `/v1/consume` would answer) or `{"status", "error"}` for an
/// event that is invalid. A malformed envelope (not an object, no events,
/// over 1000 events) is a 400 and counts nothing.
pub async fn consume_batch(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BatchBody, { crate::http::extract::MAX_BATCH_BODY_BYTES }>,
) -> Result<Response, ApiError> {
    let n = body.events.len();
    if n == 0 || n > MAX_BATCH_EVENTS {
        return Err(ApiError::invalid(format!(
            "events must hold 1 to {MAX_BATCH_EVENTS} events (got {n})"
        )));
    }
    let engine = state.engine()?;
    // Parse every event first; invalid ones get their error in place and
    // are not sent to the engine.
    let mut parsed = Vec::with_capacity(n);
    let mut slots: Vec<Result<usize, ApiError>> = Vec::with_capacity(n);
    for e in &body.events {
        let p = parse(&state, &e.user_id, &e.kind, e.amount).and_then(|p| {
            let rid = e.request_id.as_deref().map(RequestId::parse).transpose()?;
            Ok((p.user, p.kind, p.amount, rid))
        });
        slots.push(p.map(|p| {
            parsed.push(p);
            parsed.len() - 1
        }));
    }
    let decided: Vec<Result<_, ApiError>> = engine
        .consume_batch(&parsed)
        .await?
        .into_iter()
        .map(|r| r.map_err(ApiError::from))
        .collect();
    let mut decided = decided.iter();
    let mut results = Vec::with_capacity(n);
    let mut allowed = 0u64;
    for slot in &slots {
        let r = match slot {
            Err(e) => Err(e),
            Ok(_) => decided
                .next()
                .expect("one decision per parsed event")
                .as_ref(),
        };
        results.push(match r {
            Ok(out) => {
                allowed += u64::from(out.decision.allowed && !out.deduplicated);
                let d = &out.decision;
                BatchItem {
                    status: if d.allowed { 200 } else { 429 },
                    allowed: Some(d.allowed),
                    deduplicated: Some(out.deduplicated),
                    user_id: Some(out.user.as_str()),
                    kind: Some(out.kind.name()),
                    amount: Some(out.amount),
                    used: Some(d.used),
                    limit: Some(d.limit),
                    remaining: Some(d.remaining),
                    period_start: Some(d.period_start.to_rfc3339()),
                    error: None,
                }
            }
            Err(e) => BatchItem {
                status: e.status.as_u16(),
                error: Some(ApiError::body(e.code, &e.message)),
                ..BatchItem::default()
            },
        });
    }
    if state.verbose {
        tracing::debug!(target: "consume", events = n, allowed, "consume batch");
    }
    Ok(json_response(
        StatusCode::OK,
        &BatchResults { results },
        n * 220,
    ))
}

/// One result of a batch, as the API shows it (see `BatchItemDoc`).
#[derive(Serialize, Default)]
struct BatchItem<'a> {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deduplicated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    used: Option<u64>,
    /// Outer `None`: not a decision (left out); `Some(None)`: unlimited,
    /// shown as `null` as `/v1/consume` does.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

#[derive(Serialize)]
struct BatchResults<'a> {
    results: Vec<BatchItem<'a>>,
}
