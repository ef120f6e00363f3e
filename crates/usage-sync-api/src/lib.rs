//! The HTTP API's request and response types: one definition of each
//! shape, used by the service's handlers, its OpenAPI document (feature
//! `openapi`) and the Rust client.
//!
//! - [`error`]: the one error shape and its stable codes;
//! - [`metering`]: consume, check, refund and usage (the request path);
//! - [`admin`]: plans, users, flushes and diagnostics;
//! - [`operate`]: status, alerts and probes.
//!
//! The Rust names are the API's; the OpenAPI document keeps the schema
//! names it has always published (`UsageDoc`, `DecisionBody`, ...) so
//! clients generated from it do not change.
//!
//! Unknown fields: a request with one is refused (a misspelt `"ammount"`
//! must not silently consume 1), always. An answer is read tolerantly: a
//! field a newer service adds does not break an older client. The
//! `openapi` feature alone makes the answers' types strict too, so that
//! their schemas say `additionalProperties: false`, as the service's
//! answers are exactly these fields.

#![forbid(unsafe_code)]

pub mod admin;
pub mod error;
pub mod metering;
pub mod operate;

pub use admin::{
    Eviction, KindTotal, Plan, PlanRequest, SimulateRequest, Simulation, StatsReset, SyncReport,
    UserList, UserRequest, UserSync, UserTotals,
};
pub use error::{Code, ErrorBody, ErrorDetail};
pub use metering::{
    BatchEvent, BatchItem, BatchRequest, BatchResults, CheckRequest, ConsumeRequest, Decision,
    KindUsage, Refund, RefundRequest, Usage,
};
pub use operate::{Alerts, Diagnosis, Health, Readiness, Status};

#[cfg(all(test, not(feature = "openapi")))]
mod tests {
    use super::*;

    /// A field a newer service sends is ignored by an older client; a
    /// request with an unknown field is still refused.
    #[test]
    fn answers_read_tolerantly_and_requests_strictly() {
        let answer = r#"{"allowed": true, "user_id": "u", "kind": "fast", "amount": 1,
            "used": 1, "limit": null, "remaining": null,
            "period_start": "2026-12-01T00:00:00.000Z", "added_later": 7}"#;
        let d: Decision<'_> = serde_json::from_str(answer).unwrap();
        assert_eq!((d.allowed, d.used, d.limit), (true, 1, None));
        let report = r#"{"checked": 1, "flushed_users": 1, "flushed_units": 2, "new": []}"#;
        let r: SyncReport = serde_json::from_str(report).unwrap();
        assert_eq!(r.flushed_units, 2);
        let request = r#"{"user_id": "u", "kind": "fast", "ammount": 5}"#;
        let err = serde_json::from_str::<ConsumeRequest>(request).unwrap_err();
        assert!(err.to_string().contains("unknown field `ammount`"), "{err}");
    }
}
