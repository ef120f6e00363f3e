//! The one error shape of the API: `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};

/// Stable error codes. Clients switch on these; never rename one. (The
/// OpenAPI document lists them from this enum.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", schema(as = ErrorCode))]
pub enum Code {
    InvalidRequest,
    UnknownKind,
    LimitExceeded,
    Unauthorized,
    NotFound,
    UnknownRequest,
    AlreadyRefunded,
    RequestIdConflict,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    Internal,
}

impl Code {
    /// The code as it stands in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::UnknownKind => "unknown_kind",
            Code::LimitExceeded => "limit_exceeded",
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::UnknownRequest => "unknown_request",
            Code::AlreadyRefunded => "already_refunded",
            Code::RequestIdConflict => "request_id_conflict",
            Code::PayloadTooLarge => "payload_too_large",
            Code::RequestTimeout => "request_timeout",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }
}

/// The error shape of every route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: Code,
    /// For humans; may change between versions.
    pub message: String,
}
