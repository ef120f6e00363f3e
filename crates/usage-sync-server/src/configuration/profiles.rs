//! The settings table (every key, its group and environment variables),
//! and the values each profile and preset starts from.

use super::*;

/// Every scalar setting: key (in files), the group that holds it (see
/// `groups.rs`; "" for the top level), environment variables (first
/// found wins).
pub(super) const KEYS: &[(&str, &str, &[&str])] = &[
    (
        "heartbeat_interval",
        "sync",
        &["USAGE_SYNC_HEARTBEAT_INTERVAL"],
    ),
    (
        "sync_check_interval",
        "sync",
        &["USAGE_SYNC_CHECK_INTERVAL"],
    ),
    ("force_sync_threshold", "sync", &["USAGE_SYNC_THRESHOLD"]),
    (
        "max_sync_interval",
        "sync",
        &["USAGE_SYNC_MAX_SYNC_INTERVAL"],
    ),
    (
        "verbose_logging",
        "log",
        &["USAGE_SYNC_VERBOSE_LOGGING", "ENABLE_VERBOSE_LOGGING"],
    ),
    (
        "max_active_users_check",
        "sync",
        &["USAGE_SYNC_MAX_ACTIVE_USERS_CHECK"],
    ),
    ("session_timeout", "sync", &["USAGE_SYNC_SESSION_TIMEOUT"]),
    ("sync_timeout", "sync", &["USAGE_SYNC_TIMEOUT"]),
    (
        "max_concurrent_syncs",
        "sync",
        &["USAGE_SYNC_MAX_CONCURRENT_SYNCS"],
    ),
    ("batch_size", "sync", &["USAGE_SYNC_BATCH_SIZE"]),
    ("max_cached_users", "sync", &["USAGE_SYNC_MAX_CACHED_USERS"]),
    ("enable_usage_sync", "sync", &["ENABLE_USAGE_SYNC"]),
    ("performance_mode", "", &["SYNC_PERFORMANCE_MODE"]),
    ("data_dir", "store", &["USAGE_SYNC_DATA_DIR"]),
    ("database_url", "store", &["DATABASE_URL"]),
    ("db_pool_size", "store", &["USAGE_SYNC_DB_POOL_SIZE"]),
    ("sharing", "", &["USAGE_SYNC_SHARING"]),
    ("redis_url", "", &["REDIS_URL"]),
    ("redis_cluster", "shared", &["USAGE_SYNC_REDIS_CLUSTER"]),
    ("redis_fallback", "shared", &["USAGE_SYNC_REDIS_FALLBACK"]),
    ("redis_timeout", "shared", &["USAGE_SYNC_REDIS_TIMEOUT"]),
    ("redis_prefix", "shared", &["USAGE_SYNC_REDIS_PREFIX"]),
    ("lease_size", "shared", &["USAGE_SYNC_LEASE_SIZE"]),
    ("lease_ttl", "shared", &["USAGE_SYNC_LEASE_TTL"]),
    ("listen", "http", &["USAGE_SYNC_LISTEN"]),
    ("api_token", "http", &["USAGE_SYNC_API_TOKEN"]),
    ("admin_token", "http", &["USAGE_SYNC_ADMIN_TOKEN"]),
    ("metrics_token", "http", &["USAGE_SYNC_METRICS_TOKEN"]),
    (
        "alert_sync_latency",
        "alerts",
        &["USAGE_SYNC_ALERT_SYNC_LATENCY"],
    ),
    (
        "alert_error_rate_percent",
        "alerts",
        &["USAGE_SYNC_ALERT_ERROR_RATE_PERCENT"],
    ),
    (
        "alert_cpu_percent",
        "alerts",
        &["USAGE_SYNC_ALERT_CPU_PERCENT"],
    ),
    ("alert_window", "alerts", &["USAGE_SYNC_ALERT_WINDOW"]),
    ("alert_interval", "alerts", &["USAGE_SYNC_ALERT_INTERVAL"]),
    ("alert_webhook", "alerts", &["USAGE_SYNC_ALERT_WEBHOOK"]),
    (
        "max_concurrent_syncs_ceiling",
        "",
        &["USAGE_SYNC_MAX_CONCURRENT_SYNCS_CEILING"],
    ),
    ("shutdown_timeout", "http", &["USAGE_SYNC_SHUTDOWN_TIMEOUT"]),
    ("header_timeout", "http", &["USAGE_SYNC_HEADER_TIMEOUT"]),
    ("body_timeout", "http", &["USAGE_SYNC_BODY_TIMEOUT"]),
    ("max_connections", "http", &["USAGE_SYNC_MAX_CONNECTIONS"]),
    ("dedup_window", "sync", &["USAGE_SYNC_DEDUP_WINDOW"]),
    ("max_request_ids", "sync", &["USAGE_SYNC_MAX_REQUEST_IDS"]),
    ("durability", "store", &["USAGE_SYNC_DURABILITY"]),
    ("fsync_interval", "store", &["USAGE_SYNC_FSYNC_INTERVAL"]),
    (
        "fault_crash_after_commit",
        "sync",
        &["USAGE_SYNC_FAULT_CRASH_AFTER_COMMIT"],
    ),
    (
        "fault_crash_in_recovery",
        "sync",
        &["USAGE_SYNC_FAULT_CRASH_IN_RECOVERY"],
    ),
    ("enable_simulation", "", &["USAGE_SYNC_ENABLE_SIMULATION"]),
    ("log_format", "log", &["USAGE_SYNC_LOG_FORMAT"]),
    ("log_level", "log", &["USAGE_SYNC_LOG_LEVEL"]),
    ("kinds", "", &["USAGE_SYNC_KINDS"]),
    ("default_plan", "", &["USAGE_SYNC_DEFAULT_PLAN"]),
];

/// Environment variables holding the name of a file whose content is the
/// secret (for Docker and Kubernetes secrets mounted as files).
pub(super) const SECRET_FILES: &[(&str, &str)] = &[
    ("api_token", "USAGE_SYNC_API_TOKEN_FILE"),
    ("admin_token", "USAGE_SYNC_ADMIN_TOKEN_FILE"),
    ("metrics_token", "USAGE_SYNC_METRICS_TOKEN_FILE"),
];

/// Every setting's default in profile `p`, as text (what a variable
/// would hold). The engine's own settings are not written here: they come
/// from the library's defaults (`SyncConfig::default`, `SharingConfig::new`,
/// `WalConfig::new`), which are the development profile's; production
/// changes the sync intervals, the threshold and the durability.
pub(super) fn profile_defaults(p: Profile) -> Vec<(&'static str, String)> {
    let engine = SyncConfig::default();
    let sharing = SharingConfig::new(SharingMode::Redis, "");
    let wal = WalConfig::new("", Durability::Batched);
    let d = format_duration;
    let (hb, check, threshold, max_sync, verbose, fmt, durability) = match p {
        Profile::Development => (
            d(engine.heartbeat_interval),
            d(engine.check_interval),
            engine.force_sync_threshold.to_string(),
            d(engine.max_sync_interval),
            "true",
            "pretty",
            Durability::Batched.as_str(),
        ),
        Profile::Production => (
            "2m".to_owned(),
            "5m".to_owned(),
            "10".to_owned(),
            "30m".to_owned(),
            "false",
            "json",
            Durability::Fsync.as_str(),
        ),
    };
    let text = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let mut v = vec![
        ("heartbeat_interval", hb),
        ("sync_check_interval", check),
        ("force_sync_threshold", threshold),
        ("max_sync_interval", max_sync),
        (
            "max_active_users_check",
            engine.max_active_users_check.to_string(),
        ),
        ("session_timeout", d(engine.session_timeout)),
        ("sync_timeout", d(engine.sync_timeout)),
        (
            "max_concurrent_syncs",
            engine.max_concurrent_syncs.to_string(),
        ),
        ("batch_size", engine.batch_size.to_string()),
        ("max_cached_users", engine.max_cached_users.to_string()),
        ("enable_usage_sync", engine.enabled.to_string()),
        ("dedup_window", d(engine.dedup_window)),
        ("max_request_ids", engine.max_request_ids.to_string()),
        ("redis_cluster", sharing.cluster.to_string()),
        ("redis_fallback", sharing.fallback.as_str().to_owned()),
        ("redis_timeout", d(sharing.timeout)),
        ("redis_prefix", sharing.key_prefix),
        ("lease_size", sharing.lease_size.to_string()),
        ("lease_ttl", d(sharing.lease_ttl)),
        ("fsync_interval", d(wal.fsync_interval)),
        ("durability", durability.to_owned()),
        ("verbose_logging", verbose.to_owned()),
        ("log_format", fmt.to_owned()),
    ];
    // The service's own settings.
    v.extend(text(&[
        ("performance_mode", "standard"),
        ("data_dir", "./data"),
        ("db_pool_size", "10"),
        ("alert_sync_latency", "5s"),
        ("alert_error_rate_percent", "5"),
        ("alert_cpu_percent", "80"),
        ("alert_window", "5m"),
        ("alert_interval", "15s"),
        ("max_concurrent_syncs_ceiling", "12"),
        ("listen", "127.0.0.1:8080"),
        ("shutdown_timeout", "15s"),
        ("header_timeout", "10s"),
        ("body_timeout", "10s"),
        ("max_connections", "0"),
        ("fault_crash_in_recovery", "false"),
        ("enable_simulation", "false"),
        ("log_level", "info"),
        ("kinds", "premium,fast"),
        ("default_plan", "free"),
    ]));
    v
}

pub(super) fn preset_values(p: Preset) -> Vec<(&'static str, &'static str)> {
    let mut v = match p {
        Preset::Small => vec![
            ("heartbeat_interval", "5m"),
            ("sync_check_interval", "10m"),
            ("force_sync_threshold", "15"),
            ("max_active_users_check", "50"),
        ],
        Preset::Medium => vec![
            ("heartbeat_interval", "2m"),
            ("sync_check_interval", "5m"),
            ("force_sync_threshold", "10"),
            ("max_active_users_check", "100"),
        ],
        Preset::Large => vec![
            ("heartbeat_interval", "1m"),
            ("sync_check_interval", "3m"),
            ("force_sync_threshold", "8"),
            ("max_active_users_check", "200"),
        ],
    };
    if p == Preset::Large {
        v.push(("max_concurrent_syncs", "5"));
    }
    v
}
