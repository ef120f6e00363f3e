//! Wiring: settings → store → engine → HTTP server. `Application::build`
//! binds the listener (port 0 works, for tests) before anything is served.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use usage_sync::{Engine, ShutdownReport, SystemClock};
use usage_sync_store::{SqliteStore, Store};

use crate::configuration::Settings;
use crate::http::{self, AppState};

/// Opens the store named by `DATABASE_URL`.
pub fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let url = &settings.database_url;
    if url.starts_with("sqlite:") {
        let path = SqliteStore::path_from_url(url)?;
        let store = SqliteStore::open(&path)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!(
        "unsupported DATABASE_URL scheme in '{}'",
        crate::configuration::redact_url(url)
    )
}

/// A built, bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    engine: Engine,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = open_store(&settings)?;
        let (kinds, plans) = settings.catalogue().map_err(anyhow::Error::msg)?;
        let engine = Engine::open(
            store,
            kinds,
            plans,
            settings.sync_config(),
            Arc::new(SystemClock),
        )
        .await
        .context("opening the engine (migrations, plans)")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let token = |s: &Option<crate::configuration::Secret>| {
            s.as_ref().map(|s| Arc::<str>::from(s.expose()))
        };
        let router = http::router(
            AppState {
                engine: engine.clone(),
                verbose: settings.verbose_logging,
            },
            token(&settings.api_token),
            token(&settings.admin_token),
        );
        Ok(Application {
            listener,
            router,
            engine,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish, and flushes everything pending within
    /// `shutdown_timeout`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<ShutdownReport> {
        self.engine.start();
        tracing::info!(
            listen = %self.listener.local_addr()?,
            store = self.engine.store().backend(),
            profile = self.settings.profile.as_str(),
            "usage-sync is serving"
        );
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server failed")?;
        tracing::info!("stopped accepting requests; flushing pending usage");
        Ok(self.engine.shutdown(self.settings.shutdown_timeout).await)
    }
}
