//! `GET /dashboard`: one live page over the admin API. The page and its
//! assets are compiled into the binary (uPlot is vendored under `assets/`),
//! so it needs no network beyond the service itself.
//!
//! A browser cannot send a bearer header when it navigates, so the page
//! accepts the admin token once as `?token=`: the answer is a redirect to
//! `/dashboard` without it (so it leaves the address bar, the history and
//! proxy logs) that sets an HttpOnly, SameSite=Strict cookie scoped to
//! `/dashboard`. The page's script reads its data from `/dashboard/data/…`
//! (the status and the user diagnosis), which that cookie authorises; the
//! script never sees the token. A bearer header works everywhere too.
//! Every dashboard response carries a Content-Security-Policy that allows
//! only the service's own files and no framing. The assets hold no data
//! and need no token.

use axum::extract::{Query, Request};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION,
    REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::http::auth::constant_time_eq;
use crate::http::error::{ApiError, Code};

const PAGE: &str = include_str!("../../../assets/dashboard.html");
const APP_JS: &str = include_str!("../../../assets/dashboard.js");
const APP_CSS: &str = include_str!("../../../assets/dashboard.css");

/// The cookie the `?token=` exchange sets.
const COOKIE_NAME: &str = "usage_sync_dashboard";

/// Only the service's own files, no inline script or style, no framing,
/// no form posts elsewhere.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";
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

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// Adds the browser-hardening headers to every dashboard response.
pub async fn hardened(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

fn hex(s: &str) -> String {
    use std::fmt::Write;
    s.bytes()
        .fold(String::with_capacity(s.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The value of the dashboard cookie, if the request carries it.
fn cookie(req: &Request) -> Option<&str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// Guards the dashboard's page and data routes with the admin token: a
/// bearer header or the dashboard cookie. On the page (`exchange`), a
/// valid `?token=` is exchanged for the cookie and a redirect to the page
/// without it.
pub async fn require_admin(
    token: Option<std::sync::Arc<str>>,
    exchange: bool,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = token else {
        return Ok(next.run(req).await);
    };
    let valid = |given: &str| constant_time_eq(given.as_bytes(), expected.as_bytes());
    // The cookie holds the token in hex: any byte a token may hold is then
    // a valid cookie value, and `;` or `,` cannot cut it short.
    let expected_hex = hex(&expected);
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::auth::bearer);
    if header.is_some_and(valid)
        || cookie(&req).is_some_and(|c| constant_time_eq(c.as_bytes(), expected_hex.as_bytes()))
    {
        return Ok(next.run(req).await);
    }
    if exchange
        && let Some(given) = Query::<TokenQuery>::try_from_uri(req.uri())
            .ok()
            .and_then(|Query(q)| q.token)
        && valid(&given)
    {
        let set = format!(
            "{COOKIE_NAME}={expected_hex}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
        if let Ok(set) = HeaderValue::from_str(&set) {
            return Ok((
                StatusCode::SEE_OTHER,
                [
                    (LOCATION, HeaderValue::from_static("/dashboard")),
                    (SET_COOKIE, set),
                    (CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response());
        }
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        Code::Unauthorized,
        "missing or invalid admin token: open /dashboard?token=<admin token> once, or send Authorization: Bearer",
    ))
}
