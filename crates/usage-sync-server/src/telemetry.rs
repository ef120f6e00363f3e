//! Logging. One tracing target per component (`consume`, `flush`,
//! `heartbeat`, `check`, `guarantee`, `admin`), JSON lines in production and
//! human-readable text in development.
//!
//! `verbose_logging = false` keeps only state changes, warnings and errors:
//! per-request and per-flush lines are at debug level and are enabled only
//! when verbose logging is on.

use tracing_subscriber::EnvFilter;

use crate::configuration::{LogFormat, Settings};

/// The filter for the settings: `RUST_LOG` wins when set (for debugging).
pub fn filter(settings: &Settings) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_env("RUST_LOG") {
        return f;
    }
    let base = &settings.log.level;
    let spec = if settings.log.verbose {
        format!(
            "{base},consume=debug,flush=debug,heartbeat=debug,check=debug,guarantee=debug,admin=debug"
        )
    } else {
        base.clone()
    };
    EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(settings: &Settings) {
    // Colours only on a terminal: in a file or a pipe, escape codes are
    // noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(settings))
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Logs warnings about settings that are valid but risky.
pub fn warn_about(settings: &Settings) {
    for (var, closest) in &settings.unknown_env {
        tracing::warn!("{var} is not a usage-sync setting and is ignored; did you mean {closest}?");
    }
    if settings.http.api_token.is_none() {
        tracing::warn!(
            "USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN are not set: every route is open to anyone who can reach {}",
            settings.http.listen
        );
    }
    if !settings.sync.enabled {
        tracing::warn!(
            "ENABLE_USAGE_SYNC=false: usage is counted in memory only and NEVER written to the database"
        );
    }
}
