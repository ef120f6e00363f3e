//! Wiring: settings → store → engine → HTTP server.
//!
//! The listener is bound first and serves at once, so orchestrators see
//! `/healthz` 200 and `/readyz` 503 while the engine recovers from the
//! write-ahead log; requests get 503 `unavailable` until recovery is done.
//! `Application::build` can bind port 0 (tests read the port back).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use usage_sync::{Engine, ShutdownReport, SystemClock};
use usage_sync_store::{PostgresStore, SqliteStore, Store};

use crate::configuration::Settings;
use crate::http::{self, AppState};

/// Opens the store named by `DATABASE_URL`.
pub fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let url = &settings.store.database_url;
    if url.starts_with("sqlite:") {
        let path = SqliteStore::path_from_url(url)?;
        let store = SqliteStore::open(&path)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Statements share the sync timeout: see `connect_with_timeout`.
        return Ok(Arc::new(PostgresStore::connect_with_timeout(
            url,
            settings.store.db_pool_size,
            settings.sync.sync_timeout,
        )?));
    }
    anyhow::bail!(
        "unsupported DATABASE_URL scheme in '{}'",
        crate::configuration::redact_url(url)
    )
}

/// A start-up failure that waiting cannot heal (a data dir in use, a
/// damaged log, an invalid catalogue): `serve` exits 2 with it instead of
/// retrying.
#[derive(Debug)]
pub struct CannotStart;

impl std::fmt::Display for CannotStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot start")
    }
}

/// The error of an engine that did not open, reworded where the operator
/// knows the setting better than the library's path (the data dir).
fn open_error(settings: &Settings, e: usage_sync::Error) -> anyhow::Error {
    if let usage_sync::Error::Store(usage_sync_store::StoreError::InUse { pid, .. }) = &e {
        return anyhow::anyhow!(
            "data dir {} is in use{}: another usage-sync instance owns its write-ahead log. \
             Stop that instance, or give this one its own USAGE_SYNC_DATA_DIR \
             (and, for a second instance, its own USAGE_SYNC_LISTEN port)",
            settings.store.data_dir.display(),
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        );
    }
    if let usage_sync::Error::Store(usage_sync_store::StoreError::LogDamage(what)) = &e {
        return anyhow::anyhow!(
            "the write-ahead log in {}/wal is damaged: {what}",
            settings.store.data_dir.display()
        );
    }
    // The store's own message names the URL and the cause; "store
    // unavailable" in front of a refused login would mislead.
    if let usage_sync::Error::Store(s) = &e {
        return anyhow::anyhow!("{s}");
    }
    anyhow::Error::new(e)
}

/// Makes sure the data dir exists and is writable, so a file in its place
/// or a directory without permission stops the start (exit 2) with the
/// path and the cause, instead of a retry every second forever.
fn prepare_data_dir(settings: &Settings) -> anyhow::Result<()> {
    let dir = &settings.store.data_dir;
    let probe = dir.join(".usage-sync-write-test");
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "data dir {} is not a writable directory (USAGE_SYNC_DATA_DIR)",
                dir.display()
            )
        })
}

/// Opens the engine: migrations, plans, recovery from the log.
pub async fn open_engine(settings: &Settings) -> Result<Engine, (bool, anyhow::Error)> {
    prepare_data_dir(settings).map_err(|e| {
        // A full disk can heal; a file in the way or missing permission
        // cannot by waiting.
        let heals = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull);
        (heals, e)
    })?;
    let store = open_store(settings).map_err(|e| (true, e))?;
    let (kinds, plans) = settings
        .catalogue()
        .map_err(|e| (false, anyhow::Error::msg(e)))?;
    Engine::open(
        store,
        kinds,
        plans,
        settings.sync_config(),
        Arc::new(SystemClock),
    )
    .await
    .map_err(|e| (e.is_transient(), open_error(settings, e)))
}

/// A bound, not yet running service.
pub struct Application {
    listener: TcpListener,
    settings: Settings,
    engine: Arc<OnceLock<Engine>>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.http.listen).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another process, maybe another usage-sync, listens there: choose another \
                 port with --listen or USAGE_SYNC_LISTEN, and give a second instance its own \
                 USAGE_SYNC_DATA_DIR too)"
            } else {
                " (set another address with --listen or USAGE_SYNC_LISTEN)"
            };
            anyhow::Error::new(e)
                .context(format!("cannot listen on {}{hint}", settings.http.listen))
                .context(CannotStart)
        })?;
        Ok(Application {
            listener,
            settings,
            engine: Arc::new(OnceLock::new()),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Filled with the engine once recovery is complete.
    pub fn engine_slot(&self) -> Arc<OnceLock<Engine>> {
        self.engine.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish, and flushes everything pending within
    /// `shutdown_timeout` (what cannot be flushed stays in the log).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<ShutdownReport> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let token = |s: &Option<crate::configuration::Secret>| {
            s.as_ref().map(|s| Arc::<str>::from(s.expose()))
        };
        let info = http::ServiceInfo {
            profile: self.settings.profile.as_str().to_owned(),
            preset: self.settings.preset.map(|p| p.as_str().to_owned()),
            durability: self.settings.store.durability.as_str().to_owned(),
            simulation: self.settings.enable_simulation,
        };
        let state = AppState::new(
            self.engine.clone(),
            self.settings.log.verbose,
            info,
            self.settings.http.body_timeout,
        );
        let alerts = state.alerts.clone();
        let router = http::router(
            state,
            token(&self.settings.http.api_token),
            token(&self.settings.http.admin_token),
            token(&self.settings.http.metrics_token),
        );
        let listen = self.listener.local_addr()?;
        let limits = http::serve::ConnectionLimits {
            header_timeout: self.settings.http.header_timeout,
            max_connections: self.settings.http.max_connections,
        };
        // Kept until the engine's final flush is done (see
        // `ConnectionThreads`).
        let threads = Arc::new(http::serve::ConnectionThreads::start_or_none(
            http::serve::ConnectionThreads::per_core(),
        ));
        let server = tokio::spawn(http::serve::serve(
            self.listener,
            router,
            limits,
            threads.clone(),
            stop_rx.clone(),
            self.settings.http.shutdown_timeout,
        ));
        tracing::info!(%listen, "listening; recovering before accepting requests");

        // Recovery needs the store (to resolve unfinished flushes and load
        // users); while it is unreachable, keep trying and stay unready.
        let mut stop = stop_rx.clone();
        let engine = loop {
            match open_engine(&self.settings).await {
                Ok(e) => break e,
                Err((true, e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot start yet; retrying in 1s (readyz stays 503)");
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                        r = stop.wait_for(|s| *s) => r.is_ok(),
                    };
                    if stopped {
                        let _ = server.await;
                        anyhow::bail!("stopped before the service became ready");
                    }
                }
                Err((false, e)) => {
                    server.abort();
                    return Err(e.context(CannotStart));
                }
            }
        };
        engine.start();
        let _ = self.engine.set(engine.clone());
        let alert_config = crate::alerts::AlertConfig {
            sync_latency_ms: self.settings.alerts.sync_latency.as_secs_f64() * 1000.0,
            error_rate: self.settings.alerts.error_rate_percent as f64 / 100.0,
            cpu_percent: self.settings.alerts.cpu_percent as f64,
            window: self.settings.alerts.window,
            interval: self.settings.alerts.interval,
            webhook: self
                .settings
                .alerts
                .webhook
                .as_ref()
                .map(|s| s.expose().to_owned()),
            concurrency_ceiling: self.settings.max_concurrent_syncs_ceiling,
            adaptive: self.settings.performance_mode
                == crate::configuration::PerformanceMode::Optimized,
            cpu_cores: crate::http::routes::operate::cpu_basis_cores(),
        };
        tokio::spawn(crate::alerts::run(engine.clone(), alert_config, alerts));
        tracing::info!(
            %listen,
            store = engine.store_backend(),
            durability = self.settings.store.durability.as_str(),
            profile = self.settings.profile.as_str(),
            "usage-sync is ready"
        );
        let cut = server.await.context("HTTP server task failed")?;
        tracing::info!(
            connections_cut = cut,
            "stopped accepting requests; flushing pending usage"
        );
        let report = engine.shutdown(self.settings.http.shutdown_timeout).await;
        // The store's last call is made: the HTTP threads may go (joined
        // off the runtime, as joining blocks).
        let _ = tokio::task::spawn_blocking(move || drop(threads)).await;
        Ok(report)
    }
}
