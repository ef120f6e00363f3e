//! Extractors that turn every client mistake into the API's error shape:
//! a JSON body (size-limited, strictly typed), a query string and a user
//! id path segment.

use std::task::Poll;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use usage_sync_core::UserId;

use super::AppState;
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

impl<T, const MAX: usize> FromRequest<AppState> for JsonBody<T, MAX>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let BodyBytes(bytes) = BodyBytes::<MAX>::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The raw body, at most `MAX` bytes, for handlers that parse it with
/// [`parse_json`] into types that borrow from it.
pub struct BodyBytes<const MAX: usize>(pub Bytes);

impl<const MAX: usize> FromRequest<AppState> for BodyBytes<MAX> {
    type Rejection = ApiError;

    /// Reads the body within `USAGE_SYNC_BODY_TIMEOUT`: a client that
    /// sends its body a byte at a time gets 408 `request_timeout` and its
    /// connection closed, instead of holding a connection (and memory)
    /// for as long as it likes.
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("request body exceeds {MAX} bytes"),
            )
        };
        let limit = state.body_timeout;
        let mut read = std::pin::pin!(Bytes::from_request(req, state));
        // A small body almost always arrives with the headers, and hyper
        // hands it over before the handler first runs: then the body is
        // read in this first poll, and no timer is armed (a timer costs
        // two clock reads and a timer-wheel entry per request). Only a
        // body still on its way waits under the timeout.
        let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        let read = match first {
            Poll::Ready(read) => read,
            Poll::Pending => tokio::time::timeout(limit, read).await.map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    Code::RequestTimeout,
                    format!(
                        "the request body was not received within {} ms (USAGE_SYNC_BODY_TIMEOUT)",
                        limit.as_millis()
                    ),
                )
            })?,
        };
        let bytes = read.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::invalid(format!("cannot read request body: {r}"))
            }
        })?;
        if bytes.len() > MAX {
            return Err(too_large());
        }
        Ok(BodyBytes(bytes))
    }
}

/// Parses a JSON body, mapping syntax and type errors to `invalid_request`.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// The one path segment of a route, in the same error shape as a body's.
async fn segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    let Path(raw) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
    Ok(raw)
}

/// A query string, strictly typed: a malformed or unknown parameter is
/// `invalid_request`.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(e.body_text()))?;
        Ok(QueryParams(q))
    }
}

/// The `{user_id}` path segment, validated.
pub struct UserPath(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(UserPath(UserId::parse(&segment(parts, state).await?)?))
    }
}

/// The `{plan}` path segment.
pub struct PlanPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PlanPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        segment(parts, state).await.map(PlanPath)
    }
}
