//! Admin routes: plans, per-user settings, flushes, eviction, simulation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metering::Usage;

// Body of `PUT /admin/v1/plans/{plan}` (a plain comment: doc comments are
// the OpenAPI descriptions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = PlanBody))]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Kind → limit; `null` is unlimited; kinds not listed get 0.
    pub limits: BTreeMap<String, Option<u64>>,
    #[serde(default)]
    pub period: Option<String>,
}

// Body of `PUT /admin/v1/users/{user_id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = UserBody))]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Option<u64>>>,
}

// Body of `POST /admin/v1/users/{user_id}/simulate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SimulateBody))]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    pub kind: String,
    #[serde(default)]
    pub count: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = PlanDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Plan {
    pub plan: String,
    /// monthly, daily or none.
    pub period: String,
    /// Kind name → limit (`null`: unlimited).
    pub limits: BTreeMap<String, Option<u64>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SyncReportDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct SyncReport {
    pub checked: u64,
    pub flushed_users: u64,
    pub flushed_units: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = UserSyncDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct UserSync {
    pub user_id: String,
    pub flushed_units: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = KindTotalDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct KindTotal {
    pub used: u64,
    pub pending: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = UserTotalsDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct UserTotals {
    pub users: u64,
    pub usage: BTreeMap<String, KindTotal>,
    pub users_per_plan: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = UserListDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct UserList {
    pub page: u64,
    pub limit: u64,
    /// Users matching the filters.
    pub matched: u64,
    pub users: Vec<Usage>,
    /// Over all users, whatever the filters.
    pub totals: UserTotals,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = EvictDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Eviction {
    pub flushed_units: i64,
    pub evicted: u64,
    pub kept_with_pending: u64,
    pub resident_users: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = SimulateDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Simulation {
    pub allowed: u64,
    pub denied: u64,
    pub usage: Usage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ResetDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct StatsReset {
    pub reset: bool,
}
