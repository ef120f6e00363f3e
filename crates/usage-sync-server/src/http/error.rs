//! The one error shape of the API: `{"error": {"code", "message"}}` with a
//! stable machine-readable `code`, and the mapping from engine errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use usage_sync::Error as EngineError;
use usage_sync_core::CoreError;

/// Stable error codes. Clients switch on these; never rename one. (The
/// OpenAPI document lists them from this enum.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ErrorCode)]
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

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidRequest, message)
    }

    /// The `{"code", "message"}` object, for embedding in other bodies
    /// (the 429 consume answer carries one).
    pub fn body(code: Code, message: &str) -> serde_json::Value {
        json!({"code": code.as_str(), "message": message})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": ApiError::body(self.code, &self.message)});
        (self.status, Json(body)).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let msg = e.to_string();
        match e {
            CoreError::UnknownKind(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, Code::UnknownKind, msg)
            }
            CoreError::UnknownRequest => {
                ApiError::new(StatusCode::NOT_FOUND, Code::UnknownRequest, msg)
            }
            CoreError::AlreadyRefunded => {
                ApiError::new(StatusCode::CONFLICT, Code::AlreadyRefunded, msg)
            }
            CoreError::RequestIdConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, Code::RequestIdConflict, msg)
            }
            CoreError::RequestIdsFull => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, msg)
            }
            CoreError::NotResident => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, msg)
            }
            CoreError::InvalidUserId(_)
            | CoreError::InvalidRequestId(_)
            | CoreError::InvalidAmount(_)
            | CoreError::UnknownPlan(_)
            | CoreError::InvalidPeriod(_)
            | CoreError::InvalidTimestamp(_)
            | CoreError::InvalidLimit(_)
            | CoreError::Overflow => ApiError::invalid(msg),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Core(c) => c.into(),
            EngineError::Invalid(m) => ApiError::invalid(m),
            EngineError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable, m)
            }
            EngineError::Store(s) => {
                tracing::warn!(target: "consume", error = %s, "store unavailable while serving a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Code::Unavailable,
                    "the database is unavailable; retry shortly",
                )
            }
        }
    }
}
