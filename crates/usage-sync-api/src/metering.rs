//! The request path: consume, check, refund and usage.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorDetail;

/// Body of `POST /v1/consume` and `POST /v1/check`. Unknown fields are
/// rejected: a misspelt `"ammount": 5` must not silently consume 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ConsumeBody))]
#[serde(deny_unknown_fields)]
pub struct ConsumeRequest<'a> {
    // Borrowed from the request body unless it holds escapes: a consume
    // parses without allocating.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user_id: Cow<'a, str>,
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub request_id: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = CheckBody))]
#[serde(deny_unknown_fields)]
pub struct CheckRequest<'a> {
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user_id: Cow<'a, str>,
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub amount: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = RefundBody))]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub request_id: String,
    /// When given, the refund is refused (409 `request_id_conflict`)
    /// unless the consume was this user's.
    #[serde(default)]
    pub user_id: Option<String>,
}

// Ids and kinds borrow from the request body (unless they hold JSON
// escapes), so parsing a thousand events does not allocate two strings per
// event. Not a doc comment: that would go into the OpenAPI description.
/// Body of `POST /v1/consume/batch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = BatchBody))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<'a> {
    /// 1 to 1000 events, decided in order.
    #[serde(borrow)]
    pub events: Vec<BatchEvent<'a>>,
}

/// One event of a batch: the fields of `POST /v1/consume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchEvent<'a> {
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user_id: Cow<'a, str>,
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default, borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub request_id: Option<Cow<'a, str>>,
}

/// The decision as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = DecisionBody))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Decision<'a> {
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub user_id: Cow<'a, str>,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kind: Cow<'a, str>,
    pub amount: u64,
    pub used: u64,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub period_start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The result of one event of a batch, in the event's position: the
/// decision as `/v1/consume` gives it (with the status it would have
/// answered, 200 or 429), or `status` and `error` for an invalid event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = BatchItemDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct BatchItem<'a> {
    /// 200 allowed, 429 over the limit, 4xx/503 error.
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplicated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// Present with every decision, `null` when unlimited.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_or_null"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub limit: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_or_null"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub remaining: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// `Option<Option<T>>` as a field: absent is `None`, `null` is
/// `Some(None)` (plain serde reads both as `None`).
mod present_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// The answer of `POST /v1/consume/batch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = BatchResultDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct BatchResults<'a> {
    pub results: Vec<BatchItem<'a>>,
}

/// Usage of one kind in the current period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = KindUsageDoc))]
pub struct KindUsage {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = UsageDoc))]
pub struct Usage {
    pub user_id: String,
    pub plan: String,
    /// RFC 3339.
    pub period_start: String,
    /// Kind name → usage.
    pub kinds: BTreeMap<String, KindUsage>,
    pub last_sync_at: Option<String>,
    pub last_activity_at: Option<String>,
}

/// The answer to a refund.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = RefundDoc))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Refund {
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
