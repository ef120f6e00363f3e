//! The public metering API: consume, check, refund, usage.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use usage_sync_api::{
    BatchRequest, CheckRequest, ConsumeRequest, ErrorDetail, KindUsage, Refund, RefundRequest,
    Usage,
};
use usage_sync_core::{Decision, Kind, RequestId, Units, UserId, UserUsage};

use crate::http::AppState;
use crate::http::error::{ApiError, Code};
use crate::http::extract::{BodyBytes, JsonBody, MAX_BODY_BYTES, UserPath, parse_json};

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

/// The answer of `/v1/consume` (`deduplicated` given) and `/v1/check`
/// (`None`): the fields of [`usage_sync_api::Decision`], written by hand
/// into one buffer of about the right size (see [`push_decision`]; a test
/// checks the bytes against the serde-derived shape).
fn decision_response(
    user: &UserId,
    kind: &Kind,
    amount: u64,
    d: &Decision,
    deduplicated: Option<bool>,
) -> Response {
    let (status, body) = decision_body(user.as_str(), kind, amount, d, deduplicated);
    json_bytes(status, body)
}

fn decision_body(
    user: &str,
    kind: &Kind,
    amount: u64,
    d: &Decision,
    deduplicated: Option<bool>,
) -> (StatusCode, Vec<u8>) {
    // `check` answers 200 either way; only a refused consume is an error.
    let refused = !d.allowed && deduplicated.is_some();
    let mut buf = Vec::with_capacity(if refused { 512 } else { 256 });
    buf.push(b'{');
    push_decision(&mut buf, user, kind.name(), amount, deduplicated, d);
    let status = if refused {
        let error = ApiError::detail(Code::LimitExceeded, refusal(kind, amount, d));
        buf.extend_from_slice(b",\"error\":");
        // A derived `Serialize` of strings and a code always succeeds into
        // a `Vec`.
        let _ = serde_json::to_writer(&mut buf, &error);
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::OK
    };
    buf.push(b'}');
    (status, buf)
}

/// Why a consume was refused, in words.
fn refusal(kind: &Kind, amount: u64, d: &Decision) -> String {
    match d.remaining {
        Some(left) if left > 0 => format!(
            "{amount} {} units asked for, but only {left} of the {} for this period \
             remain; nothing was counted",
            kind.name(),
            d.limit.unwrap_or(0)
        ),
        _ => format!(
            "limit of {} {} units for this period reached",
            d.limit.unwrap_or(0),
            kind.name()
        ),
    }
}

/// A response whose body is JSON already serialized.
fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub async fn consume(
    State(state): State<AppState>,
    BodyBytes(bytes): BodyBytes<MAX_BODY_BYTES>,
) -> Result<Response, ApiError> {
    let body: ConsumeRequest<'_> = parse_json(&bytes)?;
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
    BodyBytes(bytes): BodyBytes<MAX_BODY_BYTES>,
) -> Result<Response, ApiError> {
    let body: CheckRequest<'_> = parse_json(&bytes)?;
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
    JsonBody(body): JsonBody<RefundRequest>,
) -> Result<Response, ApiError> {
    let rid = RequestId::parse(&body.request_id)?;
    let owner = body.user_id.as_deref().map(UserId::parse).transpose()?;
    let r = state.engine()?.refund(rid.as_str(), owner.as_ref()).await?;
    let k = &r.usage.kinds[r.kind.index()];
    Ok(Json(Refund {
        request_id: rid.as_str().to_owned(),
        refunded: r.refunded,
        user_id: r.user.as_str().to_owned(),
        kind: r.kind.name().to_owned(),
        persisted: k.persisted,
        pending: k.pending,
        used: k.used,
        limit: k.limit,
        remaining: k.remaining,
        period_start: r.usage.period_start.to_rfc3339(),
    })
    .into_response())
}

/// The usage document shared by `GET /v1/users/{id}/usage` and the admin
/// user routes.
pub fn usage_doc(u: &UserUsage) -> Usage {
    Usage {
        user_id: u.user.as_str().to_owned(),
        plan: u.plan.clone(),
        period_start: u.period_start.to_rfc3339(),
        kinds: u
            .kinds
            .iter()
            .map(|k| {
                let usage = KindUsage {
                    persisted: k.persisted,
                    pending: k.pending,
                    used: k.used,
                    limit: k.limit,
                    remaining: k.remaining,
                };
                (k.kind.name().to_owned(), usage)
            })
            .collect(),
        last_sync_at: u.last_sync_at.map(|t| t.to_rfc3339()),
        last_activity_at: u.last_activity_at.map(|t| t.to_rfc3339()),
    }
}

pub async fn usage(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<Usage>, ApiError> {
    let u = state.engine()?.usage(&user).await?;
    Ok(Json(usage_doc(&u)))
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
    BodyBytes(bytes): BodyBytes<{ crate::http::extract::MAX_BATCH_BODY_BYTES }>,
) -> Result<Response, ApiError> {
    let body: BatchRequest<'_> = parse_json(&bytes)?;
    let n = body.events.len();
    if n == 0 || n > MAX_BATCH_EVENTS {
        return Err(ApiError::invalid(format!(
            "events must hold 1 to {MAX_BATCH_EVENTS} events (got {n})"
        )));
    }
    let engine = state.engine()?;
    // Parse every event first; invalid ones keep their error in place and
    // are not sent to the engine, whose results then fill the other places
    // in order.
    let mut parsed = Vec::with_capacity(n);
    let mut slots: Vec<Result<(), ApiError>> = Vec::with_capacity(n);
    for e in &body.events {
        let p = parse(&state, &e.user_id, &e.kind, e.amount).and_then(|p| {
            let rid = e.request_id.as_deref().map(RequestId::parse).transpose()?;
            Ok((p.user, p.kind, p.amount, rid))
        });
        slots.push(p.map(|p| parsed.push(p)));
    }
    let mut decided = engine.consume_batch(&parsed).await?.into_iter();
    let mut out = BatchWriter::with_capacity(n);
    let mut allowed = 0u64;
    for slot in slots {
        let r = match slot {
            Err(e) => Err(e),
            Ok(_) => decided
                .next()
                .expect("one decision per parsed event")
                .map_err(ApiError::from),
        };
        match r {
            Ok(o) => {
                allowed += u64::from(o.decision.allowed && !o.deduplicated);
                out.decision(
                    o.user.as_str(),
                    o.kind.name(),
                    o.amount,
                    o.deduplicated,
                    &o.decision,
                );
            }
            Err(e) => out.error(e.status.as_u16(), &ApiError::detail(e.code, e.message)),
        }
    }
    if state.verbose {
        tracing::debug!(target: "consume", events = n, allowed, "consume batch");
    }
    Ok(json_bytes(StatusCode::OK, out.finish()))
}

/// Writes the answer of `/v1/consume/batch`: `{"results":[...]}` with the
/// fields of [`usage_sync_api::BatchItem`], in that order, skipping the absent ones.
///
/// Written by hand rather than derived: for a thousand results, serde's
/// escaping of every key and string and the formatting of each result's
/// `period_start` were a tenth of the server's CPU under batch ingest.
/// A test checks the bytes against the serde-derived shape.
struct BatchWriter {
    buf: Vec<u8>,
    first: bool,
}

impl BatchWriter {
    fn with_capacity(results: usize) -> Self {
        let mut buf = Vec::with_capacity(16 + results * 220);
        buf.extend_from_slice(b"{\"results\":[");
        BatchWriter { buf, first: true }
    }

    fn open(&mut self, status: u16) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.extend_from_slice(b"{\"status\":");
        push_u64(&mut self.buf, status.into());
    }

    fn decision(&mut self, user: &str, kind: &str, amount: u64, dedup: bool, d: &Decision) {
        self.open(if d.allowed { 200 } else { 429 });
        self.buf.push(b',');
        push_decision(&mut self.buf, user, kind, amount, Some(dedup), d);
        self.buf.push(b'}');
    }

    fn error(&mut self, status: u16, error: &ErrorDetail) {
        self.open(status);
        self.buf.extend_from_slice(b",\"error\":");
        // A derived `Serialize` of strings and a code always succeeds into
        // a `Vec`.
        let _ = serde_json::to_writer(&mut self.buf, error);
        self.buf.push(b'}');
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(b"]}");
        self.buf
    }
}

/// The fields of a decision, `"allowed"` to `"period_start"`, in the
/// order (and with the omissions) of [`usage_sync_api::Decision`]'s serde
/// derive, without the braces: shared by `/v1/consume`, `/v1/check` and
/// each result of `/v1/consume/batch`, for the reasons [`BatchWriter`]
/// gives (on a single consume, serde's writer also cost an allocation
/// for `period_start` and a copy).
fn push_decision(
    b: &mut Vec<u8>,
    user: &str,
    kind: &str,
    amount: u64,
    deduplicated: Option<bool>,
    d: &Decision,
) {
    b.extend_from_slice(if d.allowed {
        b"\"allowed\":true"
    } else {
        b"\"allowed\":false"
    });
    match deduplicated {
        Some(true) => b.extend_from_slice(b",\"deduplicated\":true"),
        Some(false) => b.extend_from_slice(b",\"deduplicated\":false"),
        None => {}
    }
    b.extend_from_slice(b",\"user_id\":");
    push_str(b, user);
    b.extend_from_slice(b",\"kind\":");
    push_str(b, kind);
    b.extend_from_slice(b",\"amount\":");
    push_u64(b, amount);
    b.extend_from_slice(b",\"used\":");
    push_u64(b, d.used);
    // Unlimited is `null`.
    b.extend_from_slice(b",\"limit\":");
    push_opt_u64(b, d.limit);
    b.extend_from_slice(b",\"remaining\":");
    push_opt_u64(b, d.remaining);
    b.extend_from_slice(b",\"period_start\":\"");
    match d.period_start.rfc3339_bytes() {
        Some(text) => b.extend_from_slice(&text),
        None => b.extend_from_slice(d.period_start.to_rfc3339().as_bytes()),
    }
    b.push(b'"');
}

fn push_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_opt_u64(b: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => push_u64(b, v),
        None => b.extend_from_slice(b"null"),
    }
}

/// A JSON string. Ids are printable (control characters are rejected at
/// parse time), so the copy is almost always verbatim; a quote or
/// backslash goes through serde_json's escaping.
fn push_str(b: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\') {
        b.push(b'"');
        b.extend_from_slice(s.as_bytes());
        b.push(b'"');
    } else {
        // A `str` always serializes into a `Vec`.
        let _ = serde_json::to_writer(&mut *b, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::borrow::Cow;

    use usage_sync_core::Timestamp;

    use serde_json::Value;
    use usage_sync_api::{BatchItem, BatchResults};

    #[test]
    fn batch_writer_matches_the_serde_shape_byte_for_byte() {
        let nov = Timestamp::parse_rfc3339("2026-11-01T00:00:00.000Z").unwrap();
        let dec = Timestamp::parse_rfc3339("2026-12-01T00:00:00.000Z").unwrap();
        let decision = |allowed, used, limit: Option<u64>, period_start| Decision {
            allowed,
            used,
            limit,
            remaining: limit.map(|l: u64| l.saturating_sub(used)),
            period_start,
        };
        // Plain, quoted, backslashed, non-ASCII and long ids; limited and
        // unlimited; denied; a repeated request; a period change; errors.
        let long = "x".repeat(128);
        let cases: Vec<(&str, u64, bool, Decision)> = vec![
            ("user-1", 1, false, decision(true, 1, Some(10), nov)),
            ("quo\"te", 3, false, decision(true, 7, None, nov)),
            ("back\\slash", 1, true, decision(true, 2, Some(2), nov)),
            ("ünï-€", 5, false, decision(false, 9, Some(10), nov)),
            (
                &long,
                u64::MAX,
                false,
                decision(true, u64::MAX, Some(u64::MAX), dec),
            ),
            ("user-1", 1, false, decision(true, 2, Some(10), nov)),
        ];
        let error = ApiError::detail(Code::InvalidRequest, "user_id: empty \"id\"");
        let mut w = BatchWriter::with_capacity(cases.len() + 1);
        let mut expected = Vec::new();
        for (i, (user, amount, dedup, d)) in cases.iter().enumerate() {
            w.decision(user, "fast", *amount, *dedup, d);
            expected.push(BatchItem {
                status: if d.allowed { 200 } else { 429 },
                allowed: Some(d.allowed),
                deduplicated: Some(*dedup),
                user_id: Some(Cow::Borrowed(*user)),
                kind: Some(Cow::Borrowed("fast")),
                amount: Some(*amount),
                used: Some(d.used),
                limit: Some(d.limit),
                remaining: Some(d.remaining),
                period_start: Some(d.period_start.to_rfc3339()),
                error: None,
            });
            if i == 2 {
                w.error(400, &error);
                expected.push(BatchItem {
                    status: 400,
                    error: Some(error.clone()),
                    ..BatchItem::default()
                });
            }
        }
        let got = String::from_utf8(w.finish()).unwrap();
        // The API's own type, serialized by serde: the same bytes.
        let want = serde_json::to_string(&BatchResults { results: expected }).unwrap();
        assert_eq!(got, want);
        // And the type reads them back as they were written.
        let back: BatchResults<'_> = serde_json::from_str(&got).unwrap();
        assert_eq!(back.results[1].limit, Some(None));
        assert_eq!(back.results[3].status, 400);
        assert_eq!(back.results[3].error, Some(error));
        // And it is what a client parses: unlimited shows as null.
        let v: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["results"][1]["limit"], Value::Null);
        assert_eq!(v["results"][1]["user_id"], "quo\"te");
        assert_eq!(v["results"][3]["error"]["code"], "invalid_request");
    }

    /// `/v1/consume` and `/v1/check` answers, written by hand: the bytes
    /// serde writes for the API's own `Decision`, with `deduplicated` only
    /// on a consume and `error` only on a refused consume (429).
    #[test]
    fn single_decisions_match_the_serde_shape_byte_for_byte() {
        use usage_sync_api::Decision as ApiDecision;

        let kinds = usage_sync_core::Kinds::new(&["fast"]).unwrap();
        let fast = kinds.get("fast").unwrap();
        let nov = Timestamp::parse_rfc3339("2026-11-01T00:00:00.000Z").unwrap();
        let d = |allowed, used, limit: Option<u64>| Decision {
            allowed,
            used,
            limit,
            remaining: limit.map(|l: u64| l.saturating_sub(used)),
            period_start: nov,
        };
        let cases = [
            ("user-1", 1, Some(false), d(true, 1, Some(10))),
            ("quo\"te", 2, Some(true), d(true, 3, None)),
            ("ünï-€", 5, Some(false), d(false, 9, Some(10))),
            ("user-2", 1, Some(false), d(false, 10, Some(10))),
            ("user-3", 4, None, d(false, 9, Some(10))),
            ("user-4", 1, None, d(true, 0, None)),
        ];
        for (user, amount, dedup, dec) in cases {
            let (status, got) = decision_body(user, fast, amount, &dec, dedup);
            let refused = !dec.allowed && dedup.is_some();
            let want = ApiDecision {
                allowed: dec.allowed,
                deduplicated: dedup,
                user_id: Cow::Borrowed(user),
                kind: Cow::Borrowed("fast"),
                amount,
                used: dec.used,
                limit: dec.limit,
                remaining: dec.remaining,
                period_start: "2026-11-01T00:00:00.000Z".into(),
                error: refused
                    .then(|| ApiError::detail(Code::LimitExceeded, refusal(fast, amount, &dec))),
            };
            assert_eq!(
                String::from_utf8(got).unwrap(),
                serde_json::to_string(&want).unwrap(),
                "{user}"
            );
            let expected = if refused {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "{user}");
        }
        // The two refusal texts: some left, none left.
        assert_eq!(
            refusal(fast, 5, &d(false, 9, Some(10))),
            "5 fast units asked for, but only 1 of the 10 for this period remain; \
             nothing was counted"
        );
        assert_eq!(
            refusal(fast, 1, &d(false, 10, Some(10))),
            "limit of 10 fast units for this period reached"
        );
    }
}
