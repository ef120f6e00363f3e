//! Extractors that turn every client mistake into the API's error shape:
//! a JSON body (size-limited, strictly typed) and a user id path segment.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use usage_sync_core::UserId;

use super::error::{ApiError, Code};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest accepted body of `POST /v1/consume/batch` (1000 events with
/// 128-byte ids fit with room to spare).
pub const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body. Unlike `axum::Json` it does not insist on a content type,
/// and maps size, syntax and type errors to `payload_too_large` and
/// `invalid_request`.
pub struct JsonBody<T, const MAX: usize = MAX_BODY_BYTES>(pub T);

impl<S, T, const MAX: usize> FromRequest<S> for JsonBody<T, MAX>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::PayloadTooLarge,
                    format!("request body exceeds {MAX} bytes"),
                )
            } else {
                ApiError::invalid(format!("cannot read request body: {r}"))
            }
        })?;
        if bytes.len() > MAX {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("request body exceeds {MAX} bytes"),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    }
}

/// The `{user_id}` path segment, validated.
pub struct UserPath(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
        Ok(UserPath(UserId::parse(&raw)?))
    }
}

/// The `{plan}` path segment.
pub struct PlanPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PlanPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
        Ok(PlanPath(raw))
    }
}
