//! The one error shape of the API: `{"error": {"code", "message"}}` with a
//! stable machine-readable `code`, and the mapping from engine errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use usage_sync::Error as EngineError;
use usage_sync_core::CoreError;

// The codes and the body live with the API types; see `usage_sync_api::error`.
pub use usage_sync_api::{Code, ErrorBody, ErrorDetail};

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
    /// (the 429 consume answer and a batch's invalid events carry one).
    pub fn detail(code: Code, message: impl Into<String>) -> ErrorDetail {
        ErrorDetail {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ApiError::detail(self.code, self.message),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let (status, code) = match e {
            CoreError::UnknownKind(_) => (StatusCode::BAD_REQUEST, Code::UnknownKind),
            CoreError::UnknownRequest => (StatusCode::NOT_FOUND, Code::UnknownRequest),
            CoreError::AlreadyRefunded => (StatusCode::CONFLICT, Code::AlreadyRefunded),
            CoreError::RequestIdConflict(_) => (StatusCode::CONFLICT, Code::RequestIdConflict),
            CoreError::RequestIdsFull | CoreError::NotResident => {
                (StatusCode::SERVICE_UNAVAILABLE, Code::Unavailable)
            }
            CoreError::InvalidUserId(_)
            | CoreError::InvalidRequestId(_)
            | CoreError::InvalidAmount(_)
            | CoreError::UnknownPlan(_)
            | CoreError::InvalidPeriod(_)
            | CoreError::InvalidTimestamp(_)
            | CoreError::InvalidLimit(_)
            | CoreError::Overflow => (StatusCode::BAD_REQUEST, Code::InvalidRequest),
        };
        ApiError::new(status, code, e.to_string())
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
