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
