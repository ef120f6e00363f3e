//! The HTTP API: routing, authentication, request parsing and the error
//! shape. Handlers parse into domain types and call the engine; nothing
//! here holds state of its own.

pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod serve;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::routing::{get, post, put};
use usage_sync::Engine;

use self::error::{ApiError, Code};
use self::extract::MAX_BODY_BYTES;
use self::routes::{admin, dashboard, health, operate, usage};

/// What every handler can reach. One `Arc`: axum clones the state for
/// every request, and one reference count is cheaper than four.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    /// Set once start-up recovery is complete. Until then every request
    /// but the probes gets 503 `unavailable`: no decision is ever made on
    /// a partially recovered state.
    engine: Arc<OnceLock<Engine>>,
    /// Log one line per request (`verbose_logging`).
    pub verbose: bool,
    /// Settings shown by the status document.
    pub info: Arc<ServiceInfo>,
    /// Alerts as last evaluated.
    pub alerts: crate::alerts::SharedAlerts,
    /// How long a client may take to send a body once its headers are in
    /// (`USAGE_SYNC_BODY_TIMEOUT`); the body extractors enforce it.
    pub body_timeout: std::time::Duration,
}

/// What the status document reports about the configuration.
#[derive(Clone, Debug, Default)]
pub struct ServiceInfo {
    pub profile: String,
    pub preset: Option<String>,
    pub durability: String,
    /// `POST /admin/v1/users/{id}/simulate` is enabled.
    pub simulation: bool,
}

impl AppState {
    pub fn new(
        engine: Arc<OnceLock<Engine>>,
        verbose: bool,
        info: ServiceInfo,
        body_timeout: std::time::Duration,
    ) -> Self {
        AppState(Arc::new(AppStateInner {
            engine,
            verbose,
            info: Arc::new(info),
            alerts: Arc::default(),
            body_timeout,
        }))
    }

    /// The engine, or 503 while the service is still recovering.
    pub fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                "starting: recovering the write-ahead log",
            )
        })
    }
}

fn guarded(router: Router<AppState>, token: Option<Arc<str>>) -> Router<AppState> {
    // No token configured: no layer at all (a pass-through layer still
    // costs a boxed service clone and a future per request).
    let Some(token) = token else {
        return router;
    };
    let token = Some(token);
    router.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        let token = token.clone();
        async move { auth::require(token, req, next).await }
    }))
}

/// Builds the full router.
pub fn router(
    state: AppState,
    api_token: Option<Arc<str>>,
    admin_token: Option<Arc<str>>,
    metrics_token: Option<Arc<str>>,
) -> Router {
    let api = Router::new()
        .route("/v1/consume", post(usage::consume))
        .route(
            "/v1/consume/batch",
            post(usage::consume_batch)
                .layer(DefaultBodyLimit::max(self::extract::MAX_BATCH_BODY_BYTES)),
        )
        .route("/v1/check", post(usage::check))
        .route("/v1/refund", post(usage::refund))
        .route("/v1/users/{user_id}/usage", get(usage::usage));
    let admin = Router::new()
        .route("/admin/v1/plans/{plan}", put(admin::put_plan))
        .route("/admin/v1/users", get(admin::list_users))
        .route("/admin/v1/cache/evict", post(admin::evict))
        .route("/admin/v1/users/{user_id}/simulate", post(admin::simulate))
        .route("/admin/v1/users/{user_id}", put(admin::put_user))
        .route("/admin/v1/users/{user_id}/reset", post(admin::reset_user))
        .route("/admin/v1/users/{user_id}/sync", post(admin::sync_user))
        .route("/admin/v1/sync", post(admin::sync_all))
        .route("/admin/v1/status", get(operate::status))
        .route("/admin/v1/alerts", get(operate::alerts))
        .route("/admin/v1/users/{user_id}/diagnose", get(operate::diagnose))
        .route("/admin/v1/stats/reset", post(operate::reset_stats));
    let dashboard_guard = |exchange: bool| {
        let token = admin_token.clone();
        middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move { dashboard::require_admin(token, exchange, req, next).await }
        })
    };
    let dashboard_page = Router::new()
        .route("/dashboard", get(dashboard::page))
        .route_layer(dashboard_guard(true));
    // The page's data, behind the dashboard cookie (see `dashboard`).
    let dashboard_data = Router::new()
        .route("/dashboard/data/status", get(operate::status))
        .route(
            "/dashboard/data/users/{user_id}/diagnose",
            get(operate::diagnose),
        )
        .route_layer(dashboard_guard(false));
    let dashboard = Router::new()
        .merge(dashboard_page)
        .merge(dashboard_data)
        .route("/dashboard/app.js", get(dashboard::app_js))
        .route("/dashboard/app.css", get(dashboard::app_css))
        .route("/dashboard/uPlot.iife.min.js", get(dashboard::uplot_js))
        .route("/dashboard/uPlot.min.css", get(dashboard::uplot_css))
        .layer(middleware::from_fn(dashboard::hardened));
    // Scrapers expect no token; USAGE_SYNC_METRICS_TOKEN makes one required.
    let metrics = Router::new().route("/metrics", get(operate::metrics));
    Router::new()
        .merge(guarded(api, api_token))
        .merge(guarded(admin, admin_token))
        .merge(guarded(metrics, metrics_token))
        .merge(dashboard)
        .route("/openapi.json", get(openapi::openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, Code::NotFound, "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::InvalidRequest,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
