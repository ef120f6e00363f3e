//! `GET /dashboard`: one live page over the admin API. The page and its
//! assets are compiled into the binary (uPlot is vendored under `assets/`),
//! so it needs no network beyond the service itself.
//!
//! A browser cannot send a bearer header when it navigates, so the page
//! accepts the admin token as `?token=` too (and passes it on as a header
//! to the API calls it makes). The assets hold no data and need no token.

use axum::extract::{Query, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::http::auth::constant_time_eq;
use crate::http::error::{ApiError, Code};

const PAGE: &str = include_str!("../../../assets/dashboard.html");
const APP_JS: &str = include_str!("../../../assets/dashboard.js");
const UPLOT_JS: &str = include_str!("../../../assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../../assets/vendor/uPlot.min.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn uplot_js() -> Response {
    asset("text/javascript; charset=utf-8", UPLOT_JS)
}

pub async fn uplot_css() -> Response {
    asset("text/css; charset=utf-8", UPLOT_CSS)
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The admin token, from the bearer header or `?token=`.
pub async fn require_admin(
    token: Option<std::sync::Arc<str>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = token {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::http::auth::bearer);
        let given = header
            .map(str::to_owned)
            .or_else(|| {
                Query::<TokenQuery>::try_from_uri(req.uri())
                    .ok()
                    .and_then(|Query(q)| q.token)
            })
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                Code::Unauthorized,
                "missing or invalid admin token (header or ?token=)",
            ));
        }
    }
    Ok(next.run(req).await)
}
