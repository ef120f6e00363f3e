//! An HTTP client for usage-sync, for Rust services that do not embed the
//! engine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), usage_sync_client::Error> {
//! use usage_sync_client::Client;
//!
//! let usage = Client::builder("http://127.0.0.1:8080")
//!     .api_token("secret")
//!     .build()?;
//! let d = usage.consume("u1", "premium", 1, None).await?;
//! if !d.allowed {
//!     // over the limit: nothing was counted
//! }
//! // The work failed: give the unit back (safe to retry).
//! usage.refund(&d.request_id, Some("u1")).await?;
//! # Ok(()) }
//! ```
//!
//! Retries: connection errors, timeouts and 503 answers are retried with
//! exponential backoff and jitter. A consume always carries a request id
//! (generated when the caller gives none) and every retry reuses it, so if
//! an earlier attempt was counted and only its answer was lost, the service
//! answers the retry from its record (`deduplicated: Some(true)`) and
//! nothing is counted twice. Client errors (4xx) are never retried.
//!
//! Batching (opt-in, [`ClientBuilder::batch`]): concurrent
//! [`Client::consume`] calls are gathered for up to `max_wait` (or until
//! `max_events` wait) and sent as one `POST /v1/consume/batch`. Each call
//! still gets its own decision; every event keeps its own request id, so a
//! retried batch counts nothing twice; an event the service refuses fails
//! its own call only.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error (its stable `code`).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The service could not be reached (after the retries).
    #[error("usage-sync unreachable: {0}")]
    Unreachable(String),
    /// No answer within the per-attempt timeout (after the retries).
    #[error("usage-sync did not answer in time")]
    Timeout,
    /// The answer was not what the API describes.
    #[error("unexpected answer: {0}")]
    Decode(String),
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The service's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The API's own types (shared with the service, so they cannot drift).
pub use usage_sync_api as api;
pub use usage_sync_api::{
    Alerts, BatchItem, Diagnosis, Eviction, KindUsage, Plan, Refund, Status, SyncReport, Usage,
    UserList,
};

/// A consume or check decision, as the service gave it, and the request id
/// the consume was sent under (empty for `check`). Derefs to the decision:
/// `d.allowed`, `d.used`, ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub decision: api::Decision<'static>,
    pub request_id: String,
}

impl std::ops::Deref for Decision {
    type Target = api::Decision<'static>;
    fn deref(&self) -> &Self::Target {
        &self.decision
    }
}

/// One result of a batch as the service wrote it. An event the service
/// refused is its error, read from the JSON itself so that a code newer
/// than this client still comes through as it was sent.
fn batch_item(v: Value) -> Result<BatchItem<'static>, Error> {
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        return Err(Error::Api {
            status: v["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0),
            code: e["code"].as_str().unwrap_or("unexpected").to_owned(),
            message: e["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    decode(v)
}

/// One event's decision in a batch (allowed or over the limit); events the
/// service refused are errors already (`batch_item`).
fn batch_result(item: BatchItem<'static>, request_id: String) -> Result<Decision, Error> {
    let status = item.status;
    let missing = || Error::Decode(format!("batch result {status} without a decision"));
    let decision = api::Decision {
        allowed: item.allowed.ok_or_else(missing)?,
        deduplicated: item.deduplicated,
        user_id: item.user_id.ok_or_else(missing)?,
        kind: item.kind.ok_or_else(missing)?,
        amount: item.amount.ok_or_else(missing)?,
        used: item.used.ok_or_else(missing)?,
        limit: item.limit.ok_or_else(missing)?,
        remaining: item.remaining.ok_or_else(missing)?,
        period_start: item.period_start.ok_or_else(missing)?,
        error: None,
    };
    Ok(Decision {
        decision,
        request_id,
    })
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    base_url: String,
    api_token: Option<String>,
    admin_token: Option<String>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    batch: Option<(Duration, usize)>,
}

impl ClientBuilder {
    pub fn api_token(mut self, t: impl Into<String>) -> Self {
        self.api_token = Some(t.into());
        self
    }
    pub fn admin_token(mut self, t: impl Into<String>) -> Self {
        self.admin_token = Some(t.into());
        self
    }
    /// Per attempt (default 2 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Attempts after the first (default 3).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// First retry delay; doubles each attempt, with jitter (default 100 ms).
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }
    /// Opt-in: gather concurrent [`Client::consume`] calls into one
    /// batch request, sent after `max_wait` or once `max_events` (1 to
    /// 1000) calls wait. Needs a Tokio runtime (the batch is sent from a
    /// task of its own, so a caller that gives up does not cancel its
    /// neighbours).
    pub fn batch(mut self, max_wait: Duration, max_events: usize) -> Self {
        self.batch = Some((max_wait, max_events));
        self
    }
    pub fn build(self) -> Result<Client, Error> {
        if let Some((_, n)) = self.batch
            && !(1..=1000).contains(&n)
        {
            return Err(Error::Config(format!(
                "batch max_events must be 1 to 1000, not {n}"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client {
            http,
            base: self.base_url.trim_end_matches('/').to_owned(),
            api_token: self.api_token,
            admin_token: self.admin_token,
            retries: self.retries,
            backoff: self.backoff,
            batch: self.batch.map(|(max_wait, max_events)| {
                Arc::new(Batcher {
                    max_wait,
                    max_events,
                    queue: Mutex::new(Queue::default()),
                })
            }),
        })
    }
}

/// A consume waiting for its batch: the event, and where its result goes.
type Queued = (
    api::BatchEvent<'static>,
    tokio::sync::oneshot::Sender<Result<BatchItem<'static>, Error>>,
);

#[derive(Debug, Default)]
struct Queue {
    items: Vec<Queued>,
    /// Bumped each time the queue is taken, so a timer armed for an
    /// earlier batch does not send a later one early.
    generation: u64,
}

impl Queue {
    fn take(&mut self) -> Vec<Queued> {
        self.generation += 1;
        std::mem::take(&mut self.items)
    }
}

#[derive(Debug)]
struct Batcher {
    max_wait: Duration,
    max_events: usize,
    queue: Mutex<Queue>,
}

/// A usage-sync client. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_token: Option<String>,
    admin_token: Option<String>,
    retries: u32,
    backoff: Duration,
    batch: Option<Arc<Batcher>>,
}

/// A fresh request id: 128 random bits as hex.
pub fn new_request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn path_segment(s: &str) -> String {
    // Percent-encode everything but unreserved characters.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_token: None,
            admin_token: None,
            timeout: Duration::from_secs(2),
            retries: 3,
            backoff: Duration::from_millis(100),
            batch: None,
        }
    }

    /// One call with retries. Returns the status and the JSON body of an
    /// answer whose status is in `ok`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        admin: bool,
        ok: &[u16],
        ambiguous: &mut bool,
    ) -> Result<(u16, Value), Error> {
        let token = if admin {
            &self.admin_token
        } else {
            &self.api_token
        };
        let mut last = Error::Unreachable("no attempt made".into());
        for attempt in 0..=self.retries {
            if attempt > 0 {
                let base = self.backoff.saturating_mul(1 << (attempt - 1).min(16));
                let jitter = base.mul_f64(fastrand::f64() / 2.0);
                tokio::time::sleep(base / 2 + jitter).await;
            }
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_owned());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // The request may have reached the service.
                    *ambiguous = true;
                    last = if e.is_timeout() {
                        Error::Timeout
                    } else {
                        Error::Unreachable(e.to_string())
                    };
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) => {
                    *ambiguous = true;
                    last = Error::Unreachable(e.to_string());
                    continue;
                }
            };
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if ok.contains(&status) {
                return Ok((status, json));
            }
            last = Error::Api {
                status,
                code: json["error"]["code"]
                    .as_str()
                    .unwrap_or("unexpected")
                    .to_owned(),
                message: json["error"]["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| text.chars().take(200).collect()),
            };
            if status != 503 {
                return Err(last);
            }
        }
        Err(last)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        admin: bool,
    ) -> Result<T, Error> {
        let (_, v) = self
            .call(method, path, body, admin, &[200], &mut false)
            .await?;
        decode(v)
    }

    /// May `user` spend `amount` of `kind`? Counted if allowed. A 429 from
    /// the service is the answer `allowed: false`, not an error.
    pub async fn consume(
        &self,
        user: &str,
        kind: &str,
        amount: u64,
        request_id: Option<&str>,
    ) -> Result<Decision, Error> {
        let rid = request_id.map_or_else(new_request_id, str::to_owned);
        let event = api::BatchEvent {
            user_id: user.to_owned().into(),
            kind: kind.to_owned().into(),
            amount: Some(amount_field(amount)),
            request_id: Some(rid.clone().into()),
        };
        if let Some(b) = &self.batch {
            return self.consume_batched(b, event, rid).await;
        }
        // A batch event has exactly the fields of a consume.
        let body = encode(&event)?;
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/consume",
                Some(&body),
                false,
                &[200, 429],
                &mut false,
            )
            .await?;
        Ok(Decision {
            decision: decode(v)?,
            request_id: rid,
        })
    }

    /// Queues one consume for the next batch and waits for its own result.
    async fn consume_batched(
        &self,
        b: &Arc<Batcher>,
        event: api::BatchEvent<'static>,
        rid: String,
    ) -> Result<Decision, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (full, arm) = {
            let mut q = b.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.items.push((event, tx));
            if q.items.len() >= b.max_events {
                (Some(q.take()), None)
            } else {
                (None, (q.items.len() == 1).then_some(q.generation))
            }
        };
        if let Some(items) = full {
            let c = self.clone();
            tokio::spawn(async move { c.send_batch(items).await });
        } else if let Some(generation) = arm {
            // The first of a batch: send it after `max_wait`, unless it
            // filled up and went already.
            let (c, b) = (self.clone(), b.clone());
            tokio::spawn(async move {
                tokio::time::sleep(b.max_wait).await;
                let items = {
                    let mut q = b.queue.lock().unwrap_or_else(|e| e.into_inner());
                    if q.generation != generation {
                        return;
                    }
                    q.take()
                };
                c.send_batch(items).await;
            });
        }
        let item = rx
            .await
            .map_err(|_| Error::Unreachable("the batch was dropped before it was sent".into()))??;
        batch_result(item, rid)
    }

    /// Sends queued consumes as one batch and hands each its result (or
    /// the batch's error, when the request failed after its retries).
    async fn send_batch(&self, items: Vec<Queued>) {
        let (events, senders): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        match self.post_batch(events).await {
            Ok(results) => {
                for (tx, r) in senders.into_iter().zip(results) {
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                for tx in senders {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }

    /// `POST /v1/consume/batch`: one result per event, in order. Each
    /// result is read on its own, so one the client cannot read (a code
    /// newer than this client) fails its own event only.
    async fn post_batch(
        &self,
        events: Vec<api::BatchEvent<'static>>,
    ) -> Result<Vec<Result<BatchItem<'static>, Error>>, Error> {
        let n = events.len();
        let body = encode(&api::BatchRequest { events })?;
        let v: Value = self
            .json(
                reqwest::Method::POST,
                "/v1/consume/batch",
                Some(&body),
                false,
            )
            .await?;
        match v {
            Value::Object(mut o) => match o.remove("results") {
                Some(Value::Array(r)) if r.len() == n => {
                    Ok(r.into_iter().map(batch_item).collect())
                }
                _ => Err(Error::Decode(Value::Object(o).to_string())),
            },
            v => Err(Error::Decode(v.to_string())),
        }
    }

    /// Up to 1000 events in one call, decided in order as by
    /// [`Client::consume`]. Events without a request id get one, so a
    /// retried batch counts nothing twice. One result per event, in order:
    /// its decision (allowed or not), or the error the service gave that
    /// event alone.
    pub async fn consume_batch(
        &self,
        events: &[(&str, &str, u64, Option<&str>)],
    ) -> Result<Vec<Result<Decision, Error>>, Error> {
        let (events, ids): (Vec<_>, Vec<_>) = events
            .iter()
            .map(|(u, k, a, r)| {
                let rid = r.map_or_else(new_request_id, str::to_owned);
                let event = api::BatchEvent {
                    user_id: (*u).to_owned().into(),
                    kind: (*k).to_owned().into(),
                    amount: Some(amount_field(*a)),
                    request_id: Some(rid.clone().into()),
                };
                (event, rid)
            })
            .unzip();
        let results = self.post_batch(events).await?;
        Ok(results
            .into_iter()
            .zip(ids)
            .map(|(r, rid)| r.and_then(|item| batch_result(item, rid)))
            .collect())
    }

    /// The same question without counting.
    pub async fn check(&self, user: &str, kind: &str, amount: u64) -> Result<Decision, Error> {
        let body = encode(&api::CheckRequest {
            user_id: user.into(),
            kind: kind.into(),
            amount: Some(amount_field(amount)),
        })?;
        let decision = self
            .json(reqwest::Method::POST, "/v1/check", Some(&body), false)
            .await?;
        Ok(Decision {
            decision,
            request_id: String::new(),
        })
    }

    /// Gives back the units of a consume, once. With `user`, the service
    /// refuses (409 `request_id_conflict`) unless the consume was that
    /// user's: pass it whenever the caller knows it.
    ///
    /// `Ok(None)`: a retry found the refund already done by an earlier
    /// attempt whose answer was lost; the units are back all the same.
    pub async fn refund(
        &self,
        request_id: &str,
        user: Option<&str>,
    ) -> Result<Option<Refund>, Error> {
        let body = encode(&api::RefundRequest {
            request_id: request_id.to_owned(),
            user_id: user.map(str::to_owned),
        })?;
        let mut ambiguous = false;
        match self
            .call(
                reqwest::Method::POST,
                "/v1/refund",
                Some(&body),
                false,
                &[200],
                &mut ambiguous,
            )
            .await
        {
            Ok((_, v)) => decode(v).map(Some),
            // An earlier attempt landed before its answer was lost.
            Err(e) if ambiguous && e.code() == Some("already_refunded") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn usage(&self, user: &str) -> Result<Usage, Error> {
        let path = format!("/v1/users/{}/usage", path_segment(user));
        self.json(reqwest::Method::GET, &path, None, false).await
    }

    // ---- admin (admin token) ---------------------------------------------

    /// Creates or replaces a plan; `None` limits are unlimited.
    pub async fn put_plan(
        &self,
        name: &str,
        period: &str,
        limits: &BTreeMap<String, Option<u64>>,
    ) -> Result<Plan, Error> {
        let path = format!("/admin/v1/plans/{}", path_segment(name));
        let body = encode(&api::PlanRequest {
            limits: limits.clone(),
            period: Some(period.to_owned()),
        })?;
        self.json(reqwest::Method::PUT, &path, Some(&body), true)
            .await
    }

    /// Assigns a plan and/or per-kind limit overrides.
    pub async fn put_user(
        &self,
        user: &str,
        plan: Option<&str>,
        limits: Option<&BTreeMap<String, Option<u64>>>,
    ) -> Result<Usage, Error> {
        let path = format!("/admin/v1/users/{}", path_segment(user));
        let body = encode(&api::UserRequest {
            plan: plan.map(str::to_owned),
            limits: limits.cloned(),
        })?;
        self.json(reqwest::Method::PUT, &path, Some(&body), true)
            .await
    }

    pub async fn reset_user(&self, user: &str) -> Result<Usage, Error> {
        let path = format!("/admin/v1/users/{}/reset", path_segment(user));
        self.json(reqwest::Method::POST, &path, None, true).await
    }

    /// Flushes one user now; returns the units written.
    pub async fn sync_user(&self, user: &str) -> Result<i64, Error> {
        let path = format!("/admin/v1/users/{}/sync", path_segment(user));
        let r: api::UserSync = self.json(reqwest::Method::POST, &path, None, true).await?;
        Ok(r.flushed_units)
    }

    pub async fn sync_all(&self) -> Result<SyncReport, Error> {
        self.json(reqwest::Method::POST, "/admin/v1/sync", None, true)
            .await
    }

    /// `GET /admin/v1/users` with the given query pairs (page, limit,
    /// search, sort, order, plan).
    pub async fn list_users(&self, query: &[(&str, &str)]) -> Result<UserList, Error> {
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", path_segment(v)))
            .collect();
        let path = if q.is_empty() {
            "/admin/v1/users".to_owned()
        } else {
            format!("/admin/v1/users?{}", q.join("&"))
        };
        self.json(reqwest::Method::GET, &path, None, true).await
    }

    /// Flushes, then evicts users idle at least `idle_seconds`.
    pub async fn evict(&self, idle_seconds: u64) -> Result<Eviction, Error> {
        let path = format!("/admin/v1/cache/evict?idle_seconds={idle_seconds}");
        self.json(reqwest::Method::POST, &path, None, true).await
    }

    pub async fn status(&self) -> Result<Status, Error> {
        self.json(reqwest::Method::GET, "/admin/v1/status", None, true)
            .await
    }

    pub async fn alerts(&self) -> Result<Alerts, Error> {
        self.json(reqwest::Method::GET, "/admin/v1/alerts", None, true)
            .await
    }

    pub async fn diagnose(&self, user: &str) -> Result<Diagnosis, Error> {
        let path = format!("/admin/v1/users/{}/diagnose", path_segment(user));
        self.json(reqwest::Method::GET, &path, None, true).await
    }

    pub async fn reset_stats(&self) -> Result<(), Error> {
        let _: api::StatsReset = self
            .json(reqwest::Method::POST, "/admin/v1/stats/reset", None, true)
            .await?;
        Ok(())
    }
}

/// An amount as the API's signed field holds it. Past `i64::MAX` it
/// saturates, and the service refuses it as over its largest amount: the
/// same 400 `invalid_request` as before it was sent.
fn amount_field(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

fn encode<T: serde::Serialize>(body: &T) -> Result<String, Error> {
    serde_json::to_string(body).map_err(|e| Error::Config(e.to_string()))
}

fn decode<T: DeserializeOwned>(v: Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(path_segment("user-1_x.y~"), "user-1_x.y~");
    }
}
