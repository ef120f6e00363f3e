//! The settings table (every key, its environment variables and type),
//! and the values each profile and preset starts from.

use super::*;

/// Every scalar setting: key (in files), environment variables (first
/// found wins), type.
pub(super) const KEYS: &[(&str, &[&str], Ty)] = &[
    (
        "heartbeat_interval",
        &["USAGE_SYNC_HEARTBEAT_INTERVAL"],
        Ty::Duration,
    ),
    (
        "sync_check_interval",
        &["USAGE_SYNC_CHECK_INTERVAL"],
        Ty::Duration,
    ),
    ("force_sync_threshold", &["USAGE_SYNC_THRESHOLD"], Ty::Count),
    (
        "max_sync_interval",
        &["USAGE_SYNC_MAX_SYNC_INTERVAL"],
        Ty::Duration,
    ),
    (
        "verbose_logging",
        &["USAGE_SYNC_VERBOSE_LOGGING", "ENABLE_VERBOSE_LOGGING"],
        Ty::Bool,
    ),
    (
        "max_active_users_check",
        &["USAGE_SYNC_MAX_ACTIVE_USERS_CHECK"],
        Ty::Count,
    ),
    (
        "session_timeout",
        &["USAGE_SYNC_SESSION_TIMEOUT"],
        Ty::Duration,
    ),
    ("sync_timeout", &["USAGE_SYNC_TIMEOUT"], Ty::Duration),
    (
        "max_concurrent_syncs",
        &["USAGE_SYNC_MAX_CONCURRENT_SYNCS"],
        Ty::Count,
    ),
    ("batch_size", &["USAGE_SYNC_BATCH_SIZE"], Ty::Count),
    (
        "max_cached_users",
        &["USAGE_SYNC_MAX_CACHED_USERS"],
        Ty::Count,
    ),
    ("enable_usage_sync", &["ENABLE_USAGE_SYNC"], Ty::Bool),
    ("performance_mode", &["SYNC_PERFORMANCE_MODE"], Ty::Text),
    ("data_dir", &["USAGE_SYNC_DATA_DIR"], Ty::Text),
    ("database_url", &["DATABASE_URL"], Ty::SecretText),
    ("db_pool_size", &["USAGE_SYNC_DB_POOL_SIZE"], Ty::Count),
    ("sharing", &["USAGE_SYNC_SHARING"], Ty::Text),
    ("redis_url", &["REDIS_URL"], Ty::SecretText),
    ("redis_cluster", &["USAGE_SYNC_REDIS_CLUSTER"], Ty::Bool),
    ("redis_fallback", &["USAGE_SYNC_REDIS_FALLBACK"], Ty::Text),
    ("redis_timeout", &["USAGE_SYNC_REDIS_TIMEOUT"], Ty::Duration),
    ("redis_prefix", &["USAGE_SYNC_REDIS_PREFIX"], Ty::Text),
    ("lease_size", &["USAGE_SYNC_LEASE_SIZE"], Ty::Count),
    ("lease_ttl", &["USAGE_SYNC_LEASE_TTL"], Ty::Duration),
    ("listen", &["USAGE_SYNC_LISTEN"], Ty::Text),
    ("api_token", &["USAGE_SYNC_API_TOKEN"], Ty::SecretText),
    ("admin_token", &["USAGE_SYNC_ADMIN_TOKEN"], Ty::SecretText),
    (
        "metrics_token",
        &["USAGE_SYNC_METRICS_TOKEN"],
        Ty::SecretText,
    ),
    (
        "alert_sync_latency",
        &["USAGE_SYNC_ALERT_SYNC_LATENCY"],
        Ty::Duration,
    ),
    (
        "alert_error_rate_percent",
        &["USAGE_SYNC_ALERT_ERROR_RATE_PERCENT"],
        Ty::Count,
    ),
    (
        "alert_cpu_percent",
        &["USAGE_SYNC_ALERT_CPU_PERCENT"],
        Ty::Count,
    ),
    ("alert_window", &["USAGE_SYNC_ALERT_WINDOW"], Ty::Duration),
    (
        "alert_interval",
        &["USAGE_SYNC_ALERT_INTERVAL"],
        Ty::Duration,
    ),
    (
        "alert_webhook",
        &["USAGE_SYNC_ALERT_WEBHOOK"],
        Ty::SecretText,
    ),
    (
        "max_concurrent_syncs_ceiling",
        &["USAGE_SYNC_MAX_CONCURRENT_SYNCS_CEILING"],
        Ty::Count,
    ),
    (
        "shutdown_timeout",
        &["USAGE_SYNC_SHUTDOWN_TIMEOUT"],
        Ty::Duration,
    ),
    (
        "header_timeout",
        &["USAGE_SYNC_HEADER_TIMEOUT"],
        Ty::Duration,
    ),
    ("body_timeout", &["USAGE_SYNC_BODY_TIMEOUT"], Ty::Duration),
    (
        "max_connections",
        &["USAGE_SYNC_MAX_CONNECTIONS"],
        Ty::Count,
    ),
    ("dedup_window", &["USAGE_SYNC_DEDUP_WINDOW"], Ty::Duration),
    (
        "max_request_ids",
        &["USAGE_SYNC_MAX_REQUEST_IDS"],
        Ty::Count,
    ),
    ("durability", &["USAGE_SYNC_DURABILITY"], Ty::Text),
    (
        "fsync_interval",
        &["USAGE_SYNC_FSYNC_INTERVAL"],
        Ty::Duration,
    ),
    (
        "fault_crash_after_commit",
        &["USAGE_SYNC_FAULT_CRASH_AFTER_COMMIT"],
        Ty::Count,
    ),
    (
        "fault_crash_in_recovery",
        &["USAGE_SYNC_FAULT_CRASH_IN_RECOVERY"],
        Ty::Bool,
    ),
    (
        "enable_simulation",
        &["USAGE_SYNC_ENABLE_SIMULATION"],
        Ty::Bool,
    ),
    ("log_format", &["USAGE_SYNC_LOG_FORMAT"], Ty::Text),
    ("log_level", &["USAGE_SYNC_LOG_LEVEL"], Ty::Text),
    ("kinds", &["USAGE_SYNC_KINDS"], Ty::List),
    ("default_plan", &["USAGE_SYNC_DEFAULT_PLAN"], Ty::Text),
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
