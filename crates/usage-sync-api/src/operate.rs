//! Operating the service: status, diagnosis, alerts and probes. The nested
//! objects of these documents are described field by field in
//! docs/metrics.md; here they are JSON objects.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = HealthDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Health {
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ReadyDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Readiness {
    pub status: String,
    /// sqlite or postgres.
    pub store: String,
}

/// The status document (see docs/metrics.md for every field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = StatusDoc))]
pub struct Status {
    pub running: bool,
    pub uptime_seconds: f64,
    pub profile: String,
    pub preset: Option<String>,
    pub durability: String,
    pub verbose_logging: bool,
    pub pending_units: i64,
    pub users_tracked: u64,
    pub users_active: u64,
    pub oldest_pending_age_seconds: f64,
    pub retry_backlog_units: i64,
    pub request_ids_remembered: u64,
    pub flush_concurrency: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub sync: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub consumes: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub cadence: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub next_runs_ms: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub top_pending_users: Vec<Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub sharing: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub store: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub process: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub checklist: Vec<Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub alerts: Vec<Value>,
}

/// One user's diagnosis (see docs/metrics.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DiagnoseDoc))]
pub struct Diagnosis {
    pub user_id: String,
    pub plan: String,
    pub period_start: String,
    pub resident: bool,
    /// Kind name → persisted, pending, in-flight and used units, the limit,
    /// the next flush and the lease held.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub kinds: Value,
    pub last_sync_at: Option<String>,
    pub last_activity_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub last_flush: Value,
    pub request_ids_remembered: u64,
    pub force_sync_threshold: i64,
    pub guarantee_ms: u64,
    pub recommendations: Vec<String>,
}

/// Alerts as last evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = AlertsDoc))]
pub struct Alerts {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub firing: Vec<Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub recent: Vec<Value>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub window: Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub actions: Value,
    /// Evaluations since the service started; each one applies the firing
    /// alerts' actions once.
    pub evaluations: u64,
}
