//! The pre-deploy checklist printed by `usage-sync check-config`: one line
//! per check, ✓ or ✗, and for each ✗ the fix. It reads and connects but
//! runs no migration; opening a SQLite database that does not exist yet
//! creates the empty file, as the service's first start would.

use std::time::Duration;

use crate::configuration::{Profile, Settings};
use crate::startup::open_store;

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub name: &'static str,
    pub detail: String,
    /// What to change when `ok` is false.
    pub fix: Option<String>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        ok: true,
        name,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        ok: false,
        name,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check.
pub async fn pre_deploy(s: &Settings) -> Vec<Check> {
    let production = s.profile == Profile::Production;
    let mut checks = vec![pass("configuration", "valid")];
    checks.push(pass(
        "profile",
        if production {
            "production".to_owned()
        } else {
            "development (for local use; set NODE_ENV=production or USAGE_SYNC_ENV=production to deploy)".to_owned()
        },
    ));
    checks.push(
        match (
            production,
            s.http.api_token.is_some() && s.http.admin_token.is_some(),
        ) {
            (_, true) => pass(
                "tokens",
                if production {
                    "API and admin tokens set, distinct, at least 16 bytes"
                } else {
                    "API and admin tokens set"
                },
            ),
            (false, false) => pass(
                "tokens",
                "not set (allowed in development; the routes are open)",
            ),
            (true, false) => fail(
                "tokens",
                "missing",
                "set USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN",
            ),
        },
    );
    if !s.unknown_env.is_empty() {
        let list: Vec<String> = s
            .unknown_env
            .iter()
            .map(|(v, c)| format!("{v} (did you mean {c}?)"))
            .collect();
        checks.push(fail(
            "environment",
            format!("not settings, ignored: {}", list.join(", ")),
            "fix the variable names (docs/configuration.md lists every setting)",
        ));
    }
    checks.push(data_dir_writable(s));
    checks.push(database(s).await);
    if let Some(c) = &s.sync.sharing {
        checks.push(redis(c).await);
    }
    checks.push(pool(s));
    checks.push(match s.store.durability {
        usage_sync_store::Durability::Fsync => pass(
            "durability",
            "fsync: nothing acknowledged is lost, even on power loss",
        ),
        usage_sync_store::Durability::Batched => pass(
            "durability",
            format!(
                "batched: a process crash loses nothing; power loss may lose the last {} ms",
                s.store.fsync_interval.as_millis()
            ),
        ),
        usage_sync_store::Durability::None => fail(
            "durability",
            "none: a crash loses acknowledged usage",
            "set USAGE_SYNC_DURABILITY=fsync (or batched)",
        ),
    });
    let filter_ok = tracing_subscriber::EnvFilter::try_new(&s.log.level).is_ok();
    checks.push(match (filter_ok, production && s.log.verbose) {
        (false, _) => fail(
            "logging",
            format!(
                "USAGE_SYNC_LOG_LEVEL '{}' is not a valid filter",
                s.log.level
            ),
            "use e.g. info, warn or info,flush=debug",
        ),
        (true, true) => fail(
            "logging",
            "verbose logging in production writes a line per request",
            "set USAGE_SYNC_VERBOSE_LOGGING=false",
        ),
        (true, false) => pass(
            "logging",
            format!("level {}, verbose {}", s.log.level, s.log.verbose),
        ),
    });
    checks.push(pass(
        "metrics",
        if s.http.metrics_token.is_some() {
            "GET /metrics requires USAGE_SYNC_METRICS_TOKEN".to_owned()
        } else {
            "GET /metrics is open (set USAGE_SYNC_METRICS_TOKEN to protect it)".to_owned()
        },
    ));
    checks.push(if s.sync.check_interval > s.sync.max_sync_interval {
        fail(
            "intervals",
            format!(
                "sync_check_interval ({:?}) is longer than max_sync_interval ({:?}): the check never runs before the guarantee",
                s.sync.check_interval, s.sync.max_sync_interval
            ),
            "lower USAGE_SYNC_CHECK_INTERVAL or raise USAGE_SYNC_MAX_SYNC_INTERVAL",
        )
    } else {
        pass(
            "intervals",
            format!(
                "threshold {}, check every {:?}, guarantee every {:?}",
                s.sync.force_sync_threshold, s.sync.check_interval, s.sync.max_sync_interval
            ),
        )
    });
    checks
}

fn data_dir_writable(s: &Settings) -> Check {
    // Looked at without taking it or reading the log: an instance may be
    // running on this directory right now.
    if let Some(pid) = usage_sync_store::wal::lock::holder(&s.store.data_dir.join("wal")) {
        return fail(
            "data dir",
            format!(
                "{} is in use{} by a running usage-sync instance: `serve` with these settings would exit 2",
                s.store.data_dir.display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
            "give each instance its own USAGE_SYNC_DATA_DIR (or stop the running one)",
        );
    }
    let probe = s.store.data_dir.join(".usage-sync-write-test");
    let result = std::fs::create_dir_all(&s.store.data_dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
        .and_then(|_| std::fs::remove_file(&probe));
    match result {
        Ok(()) => pass(
            "data dir",
            format!(
                "{} is writable (write-ahead log in wal/)",
                s.store.data_dir.display()
            ),
        ),
        Err(e) => fail(
            "data dir",
            format!("{} is not writable: {e}", s.store.data_dir.display()),
            "set USAGE_SYNC_DATA_DIR to a writable directory (it holds the write-ahead log)",
        ),
    }
}

async fn database(s: &Settings) -> Check {
    let url = crate::configuration::redact_url(&s.store.database_url);
    let store = match open_store(s) {
        Ok(store) => store,
        Err(e) => {
            return fail(
                "database",
                format!("cannot open {url}: {e:#}"),
                "check DATABASE_URL",
            );
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), store.ping()).await {
        Ok(Ok(())) => pass("database", format!("{url} reachable ({})", store.backend())),
        Ok(Err(e)) => {
            use usage_sync_store::StoreError;
            let fix = match &e {
                StoreError::Auth(_) => "fix the user or password in DATABASE_URL",
                StoreError::MissingDatabase(_) => {
                    "create the database (createdb) or fix its name in DATABASE_URL"
                }
                _ => "start the database or fix DATABASE_URL",
            };
            // The error names the URL (redacted) and the server's words.
            fail("database", e.to_string(), fix)
        }
        Err(_) => fail(
            "database",
            format!("{url} did not answer within 5 s"),
            "check the network path to the database",
        ),
    }
}

async fn redis(c: &usage_sync::SharingConfig) -> Check {
    let where_ = c
        .urls
        .iter()
        .map(|u| crate::configuration::redact_url(u))
        .collect::<Vec<_>>()
        .join(",");
    match usage_sync::sharing::ping(c).await {
        Ok(()) => pass(
            "redis",
            format!(
                "{where_} reachable ({} mode, fallback {})",
                c.mode.as_str(),
                c.fallback.as_str()
            ),
        ),
        Err(e) => fail(
            "redis",
            format!("{where_} unreachable: {e}"),
            "start Redis or fix REDIS_URL (USAGE_SYNC_SHARING=none runs without it)",
        ),
    }
}

fn pool(s: &Settings) -> Check {
    if s.store.database_url.starts_with("sqlite:") {
        return pass("pool", "SQLite: one writer and one reader connection");
    }
    // Flushes run in parallel and each holds a connection; loading users
    // and admin calls need a few more.
    let needed = s.sync.max_concurrent_syncs + 2;
    if s.store.db_pool_size < needed {
        fail(
            "pool",
            format!(
                "USAGE_SYNC_DB_POOL_SIZE {} is below max_concurrent_syncs {} + 2",
                s.store.db_pool_size, s.sync.max_concurrent_syncs
            ),
            format!("set USAGE_SYNC_DB_POOL_SIZE to at least {needed}"),
        )
    } else {
        pass(
            "pool",
            format!(
                "{} connections for {} concurrent flushes",
                s.store.db_pool_size, s.sync.max_concurrent_syncs
            ),
        )
    }
}
