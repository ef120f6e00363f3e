//! Settings, built in layers: the profile's defaults → the preset → the
//! config file → the environment. Every value remembers which layer set
//! it, so `check-config` can show where each setting came from, and every
//! error names the offending key and layer.
//!
//! The environment variable names are part of the public contract (see
//! `docs/configuration.md`); keep them exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use usage_sync::{RedisFallback, SharingConfig, SharingMode, SyncConfig};
use usage_sync_core::{Kinds, Limit, PeriodKind, Plan, Plans};
use usage_sync_store::{Durability, WalConfig};

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default(Profile),
    Preset(Preset),
    File(PathBuf),
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default(p) => write!(f, "default ({})", p.as_str()),
            Source::Preset(p) => write!(f, "preset ({})", p.as_str()),
            Source::File(p) => write!(f, "file ({})", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Development,
    Production,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Development => "development",
            Profile::Production => "production",
        }
    }

    fn parse(s: &str) -> Option<Profile> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" | "test" => Some(Profile::Development),
            "production" | "prod" => Some(Profile::Production),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Small,
    Medium,
    Large,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Small => "small",
            Preset::Medium => "medium",
            Preset::Large => "large",
        }
    }

    fn parse(s: &str) -> Option<Preset> {
        match s.trim().to_ascii_lowercase().as_str() {
            "small" => Some(Preset::Small),
            "medium" => Some(Preset::Medium),
            "large" => Some(Preset::Large),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerformanceMode {
    Standard,
    Optimized,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A secret: never printed by `Debug` or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configured plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSettings {
    pub period: PeriodKind,
    pub limits: BTreeMap<String, Limit>,
}

/// The effective settings of one process.
#[derive(Clone, Debug)]
pub struct Settings {
    pub profile: Profile,
    pub preset: Option<Preset>,
    pub heartbeat_interval: Duration,
    pub sync_check_interval: Duration,
    pub force_sync_threshold: u64,
    pub max_sync_interval: Duration,
    pub verbose_logging: bool,
    pub max_active_users_check: usize,
    pub session_timeout: Duration,
    pub sync_timeout: Duration,
    pub max_concurrent_syncs: usize,
    pub batch_size: usize,
    pub max_cached_users: usize,
    pub enable_usage_sync: bool,
    pub performance_mode: PerformanceMode,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub db_pool_size: usize,
    /// The shared tier; `None` is the single-instance mode.
    pub sharing: Option<SharingConfig>,
    pub redis_url: Option<Secret>,
    pub listen: SocketAddr,
    pub api_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub metrics_token: Option<Secret>,
    pub alert_sync_latency: Duration,
    pub alert_error_rate_percent: u64,
    pub alert_cpu_percent: u64,
    pub alert_window: Duration,
    pub alert_interval: Duration,
    pub alert_webhook: Option<Secret>,
    pub max_concurrent_syncs_ceiling: usize,
    /// How long SIGTERM waits for in-flight requests, and then again at
    /// most for the final flush.
    pub shutdown_timeout: Duration,
    /// Time a client has to send a request's headers, counted from when the
    /// connection is ready for a request: it also closes a keep-alive
    /// connection idle that long.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    /// 0 in the settings means three quarters of the open-files limit.
    pub max_connections: usize,
    pub dedup_window: Duration,
    /// Most request ids remembered at once (about 240 bytes each).
    pub max_request_ids: usize,
    pub durability: Durability,
    pub fsync_interval: Duration,
    /// Test-only fault injection (see `SyncConfig::crash_after_commit`).
    pub fault_crash_after_commit: Option<u64>,
    /// Test-only fault injection (see `SyncConfig::crash_in_recovery`).
    pub fault_crash_in_recovery: bool,
    /// `USAGE_SYNC_*` variables in the environment that no setting reads,
    /// with the closest known name: warned about at start and by
    /// check-config.
    pub unknown_env: Vec<(String, &'static str)>,
    /// `serve --accept-log-loss`: start even if the write-ahead log lost
    /// records it had made durable, reporting the loss. A command-line
    /// flag only, for one start: never a setting that stays on.
    pub accept_log_loss: bool,
    /// `POST /admin/v1/users/{id}/simulate` is enabled (never in production).
    pub enable_simulation: bool,
    pub log_format: LogFormat,
    pub log_level: String,
    pub kinds: Vec<String>,
    pub default_plan: String,
    pub plans: BTreeMap<String, PlanSettings>,
    /// Key → where its value came from, for `check-config`.
    pub sources: BTreeMap<&'static str, Source>,
}

/// A configuration error that names the key and the layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for {key} from {origin}: {message}")]
    Invalid {
        key: &'static str,
        origin: Source,
        message: String,
    },
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("unknown key '{key}' in {path} (see docs/configuration.md)")]
    UnknownKey { key: String, path: PathBuf },
    #[error("{0}")]
    Rule(String),
}

/// How a key's raw text is interpreted.
#[derive(Clone, Copy)]
enum Ty {
    Duration,
    Count,
    Bool,
    Text,
    SecretText,
    List,
}

/// Every scalar setting: key (in files), environment variables (first
/// found wins), type.
const KEYS: &[(&str, &[&str], Ty)] = &[
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
const SECRET_FILES: &[(&str, &str)] = &[
    ("api_token", "USAGE_SYNC_API_TOKEN_FILE"),
    ("admin_token", "USAGE_SYNC_ADMIN_TOKEN_FILE"),
    ("metrics_token", "USAGE_SYNC_METRICS_TOKEN_FILE"),
];

fn profile_defaults(p: Profile) -> Vec<(&'static str, &'static str)> {
    let (hb, check, threshold, max_sync, verbose, fmt, durability) = match p {
        Profile::Development => ("30s", "1m", "5", "10m", "true", "pretty", "batched"),
        Profile::Production => ("2m", "5m", "10", "30m", "false", "json", "fsync"),
    };
    vec![
        ("heartbeat_interval", hb),
        ("sync_check_interval", check),
        ("force_sync_threshold", threshold),
        ("max_sync_interval", max_sync),
        ("verbose_logging", verbose),
        ("max_active_users_check", "100"),
        ("session_timeout", "60m"),
        ("sync_timeout", "5s"),
        ("max_concurrent_syncs", "3"),
        ("batch_size", "500"),
        ("max_cached_users", "1000000"),
        ("enable_usage_sync", "true"),
        ("performance_mode", "standard"),
        ("data_dir", "./data"),
        ("db_pool_size", "10"),
        ("redis_cluster", "false"),
        ("redis_fallback", "local"),
        ("redis_timeout", "500ms"),
        ("redis_prefix", "usage-sync"),
        ("lease_size", "10"),
        ("lease_ttl", "2s"),
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
        ("dedup_window", "24h"),
        ("max_request_ids", "10000000"),
        ("durability", durability),
        ("fsync_interval", "10ms"),
        ("fault_crash_in_recovery", "false"),
        ("enable_simulation", "false"),
        ("log_format", fmt),
        ("log_level", "info"),
        ("kinds", "premium,fast"),
        ("default_plan", "free"),
    ]
}

fn preset_values(p: Preset) -> Vec<(&'static str, &'static str)> {
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

/// Parses `1500` (milliseconds), `500ms`, `30s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a duration (use milliseconds or 500ms, 30s, 5m, 2h, 1d)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is out of range"))?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        u => {
            return Err(format!(
                "unknown duration unit '{u}' (use ms, s, m, h or d)"
            ));
        }
    }
    .ok_or_else(|| format!("'{s}' is out of range"))?;
    if ms == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(Duration::from_millis(ms))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("'{s}' is not a boolean (use true or false)")),
    }
}

/// Shows a duration the way a person writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Reads settings from the process environment and an optional file.
pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    load_from(config_file, &env)
}

/// Reads settings from the given environment (for tests) and file.
pub fn load_from(
    config_file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let file = match config_file {
        Some(p) => Some((p.to_owned(), read_file(p)?)),
        None => None,
    };
    let file_str = |key: &str| -> Option<String> {
        file.as_ref()
            .and_then(|(_, t)| t.get(key))
            .and_then(|v| v.as_str().map(str::to_owned))
    };
    let env_get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();

    // The profile and preset choose the defaults, so they are resolved
    // first: environment, then file, then development / none.
    let (profile, profile_src) = if let Some(v) = env_get("USAGE_SYNC_ENV") {
        (
            parse_profile(&v, Source::Env("USAGE_SYNC_ENV"))?,
            Source::Env("USAGE_SYNC_ENV"),
        )
    } else if let Some(v) = env_get("NODE_ENV") {
        (
            parse_profile(&v, Source::Env("NODE_ENV"))?,
            Source::Env("NODE_ENV"),
        )
    } else if let (Some(v), Some((p, _))) = (file_str("profile"), &file) {
        (
            parse_profile(&v, Source::File(p.clone()))?,
            Source::File(p.clone()),
        )
    } else {
        (Profile::Development, Source::Default(Profile::Development))
    };
    let (preset, preset_src) = if let Some(v) = env_get("USAGE_SYNC_PRESET") {
        (
            Some(parse_preset(&v, Source::Env("USAGE_SYNC_PRESET"))?),
            Some(Source::Env("USAGE_SYNC_PRESET")),
        )
    } else if let (Some(v), Some((p, _))) = (file_str("preset"), &file) {
        (
            Some(parse_preset(&v, Source::File(p.clone()))?),
            Some(Source::File(p.clone())),
        )
    } else {
        (None, None)
    };

    let mut raw: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
    for (k, v) in profile_defaults(profile) {
        raw.insert(k, (v.to_owned(), Source::Default(profile)));
    }
    if let Some(p) = preset {
        for (k, v) in preset_values(p) {
            raw.insert(k, (v.to_owned(), Source::Preset(p)));
        }
    }
    let mut plans_from_file = None;
    if let Some((path, table)) = &file {
        for (key, value) in table {
            if key == "profile" || key == "preset" {
                continue;
            }
            if key == "plans" {
                plans_from_file = Some(parse_plans(value, path)?);
                continue;
            }
            let Some(&(k, _, ty)) = KEYS.iter().find(|(k, _, _)| k == key) else {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    path: path.clone(),
                });
            };
            let src = Source::File(path.clone());
            let text = toml_scalar(value, ty).map_err(|message| ConfigError::Invalid {
                key: k,
                origin: src.clone(),
                message,
            })?;
            raw.insert(k, (text, src));
        }
    }
    for &(k, vars, _) in KEYS {
        for var in vars {
            if let Some(v) = env_get(var) {
                raw.insert(k, (v, Source::Env(var)));
                break;
            }
        }
    }
    for &(k, var) in SECRET_FILES {
        if let Some(path) = env_get(var) {
            let v = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                key: k,
                origin: Source::Env(var),
                message: format!("cannot read {path}: {e}"),
            })?;
            raw.insert(
                k,
                (
                    v.trim_end_matches(['\n', '\r']).to_owned(),
                    Source::Env(var),
                ),
            );
        }
    }
    let mut settings = build(
        profile,
        profile_src,
        preset,
        preset_src,
        raw,
        plans_from_file,
    )?;
    settings.unknown_env = unknown_env(env);
    Ok(settings)
}

/// Every variable a setting is read from.
fn known_env() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .flat_map(|(_, vars, _)| vars.iter().copied())
        .chain(SECRET_FILES.iter().map(|(_, v)| *v))
        .chain(["USAGE_SYNC_ENV", "USAGE_SYNC_PRESET", "USAGE_SYNC_CONFIG"])
}

/// `USAGE_SYNC_*` variables no setting reads (a typo such as
/// `USAGE_SYNC_DURABLITY` would otherwise pass without a word), each with
/// the closest known name. The test suite's own `USAGE_SYNC_TEST_*` are
/// not settings and are left alone.
fn unknown_env(env: &BTreeMap<String, String>) -> Vec<(String, &'static str)> {
    env.keys()
        .filter(|k| k.starts_with("USAGE_SYNC_") && !k.starts_with("USAGE_SYNC_TEST_"))
        .filter(|k| !known_env().any(|v| v == k.as_str()))
        .map(|k| {
            let closest = known_env()
                .min_by_key(|v| edit_distance(v, k))
                .expect("settings exist");
            (k.clone(), closest)
        })
        .collect()
}

fn parse_profile(v: &str, src: Source) -> Result<Profile, ConfigError> {
    Profile::parse(v).ok_or_else(|| ConfigError::Invalid {
        key: "profile",
        origin: src,
        message: format!("'{v}' is not a profile (use development or production)"),
    })
}

fn parse_preset(v: &str, src: Source) -> Result<Preset, ConfigError> {
    Preset::parse(v).ok_or_else(|| ConfigError::Invalid {
        key: "preset",
        origin: src,
        message: format!("'{v}' is not a preset (use small, medium or large)"),
    })
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    text.parse::<toml::Table>().map_err(|e| {
        let mut message = e.to_string();
        // TOML has no null: `fast = null` reads as a malformed number.
        if text.lines().any(|l| {
            l.split_once('=')
                .is_some_and(|(_, v)| v.trim().trim_end_matches(['}', ',']).trim() == "null")
                || l.contains("= null")
        }) {
            message.push_str(
                "\nTOML has no null: write an unlimited limit as \"unlimited\" (fast = \"unlimited\")",
            );
        }
        ConfigError::File {
            path: path.to_owned(),
            message,
        }
    })
}

/// Turns a TOML value into the same text an environment variable would
/// hold, so one parser handles both.
fn toml_scalar(v: &toml::Value, ty: Ty) -> Result<String, String> {
    match (v, ty) {
        (toml::Value::String(s), _) => Ok(s.clone()),
        (toml::Value::Integer(i), Ty::Duration | Ty::Count) => Ok(i.to_string()),
        (toml::Value::Boolean(b), Ty::Bool) => Ok(b.to_string()),
        (toml::Value::Array(a), Ty::List) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or("list items must be strings".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        (other, _) => Err(format!("unexpected {} value", other.type_str())),
    }
}

fn parse_plans(
    v: &toml::Value,
    path: &Path,
) -> Result<BTreeMap<String, PlanSettings>, ConfigError> {
    let err = |message: String| ConfigError::Invalid {
        key: "plans",
        origin: Source::File(path.to_owned()),
        message,
    };
    let table = v
        .as_table()
        .ok_or_else(|| err("[plans] must be a table".into()))?;
    let mut out = BTreeMap::new();
    for (name, plan) in table {
        let plan = plan
            .as_table()
            .ok_or_else(|| err(format!("[plans.{name}] must be a table")))?;
        let mut period = PeriodKind::Monthly;
        let mut limits = BTreeMap::new();
        for (k, v) in plan {
            match k.as_str() {
                "period" => {
                    period = v
                        .as_str()
                        .ok_or_else(|| err(format!("plans.{name}.period must be a string")))?
                        .parse()
                        .map_err(|e: usage_sync_core::CoreError| {
                            err(format!("plans.{name}.period: {e}"))
                        })?;
                }
                "limits" => {
                    let t = v
                        .as_table()
                        .ok_or_else(|| err(format!("plans.{name}.limits must be a table")))?;
                    for (kind, l) in t {
                        let limit = match l {
                            toml::Value::Integer(i) if *i >= 0 => Some(i.unsigned_abs()),
                            toml::Value::String(s) if s == "unlimited" => None,
                            _ => {
                                return Err(err(format!(
                                    "plans.{name}.limits.{kind} must be a non-negative integer or \"unlimited\""
                                )));
                            }
                        };
                        limits.insert(kind.clone(), limit);
                    }
                }
                other => return Err(err(format!("unknown key plans.{name}.{other}"))),
            }
        }
        out.insert(name.clone(), PlanSettings { period, limits });
    }
    Ok(out)
}

fn default_plans() -> BTreeMap<String, PlanSettings> {
    let plan = |p: u64, f: u64| PlanSettings {
        period: PeriodKind::Monthly,
        limits: [
            ("premium".to_owned(), Some(p)),
            ("fast".to_owned(), Some(f)),
        ]
        .into(),
    };
    [
        ("free".to_owned(), plan(10, 50)),
        ("premium".to_owned(), plan(100, 1000)),
    ]
    .into()
}

fn build(
    profile: Profile,
    profile_src: Source,
    preset: Option<Preset>,
    preset_src: Option<Source>,
    raw: BTreeMap<&'static str, (String, Source)>,
    plans_from_file: Option<BTreeMap<String, PlanSettings>>,
) -> Result<Settings, ConfigError> {
    let mut sources: BTreeMap<&'static str, Source> =
        raw.iter().map(|(k, (_, s))| (*k, s.clone())).collect();
    sources.insert("profile", profile_src);
    if let Some(s) = preset_src {
        sources.insert("preset", s);
    }
    let get = |k: &'static str| -> Option<&(String, Source)> { raw.get(k) };
    let invalid = |k: &'static str, message: String| ConfigError::Invalid {
        key: k,
        origin: raw
            .get(k)
            .map_or(Source::Default(profile), |(_, s)| s.clone()),
        message,
    };
    let text = |k: &'static str| -> String { get(k).map(|(v, _)| v.clone()).unwrap_or_default() };
    let dur = |k: &'static str| parse_duration(&text(k)).map_err(|m| invalid(k, m));
    let count = |k: &'static str, min: u64, max: u64| -> Result<u64, ConfigError> {
        let t = text(k);
        let n: u64 = t
            .trim()
            .parse()
            .map_err(|_| invalid(k, format!("'{t}' is not a whole number")))?;
        if n < min || n > max {
            return Err(invalid(k, format!("{n} is outside {min}..={max}")));
        }
        Ok(n)
    };
    let boolean = |k: &'static str| parse_bool(&text(k)).map_err(|m| invalid(k, m));
    // A zero timeout would close every connection at once.
    let positive = |k: &'static str| {
        let d = dur(k)?;
        if d.is_zero() {
            return Err(invalid(k, "must be longer than 0".into()));
        }
        Ok(d)
    };
    let secret = |k: &'static str| {
        get(k)
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, _)| Secret(v.clone()))
    };

    let data_dir = PathBuf::from(text("data_dir"));
    let database_url = match get("database_url") {
        Some((v, _)) => v.clone(),
        None => {
            sources.insert("database_url", sources["data_dir"].clone());
            format!("sqlite://{}", data_dir.join("usage-sync.db").display())
        }
    };
    let scheme_ok = database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://");
    if !scheme_ok {
        return Err(invalid(
            "database_url",
            "use sqlite://path or postgres://user@host/database".into(),
        ));
    }
    let listen_text = text("listen");
    let listen = parse_listen(&listen_text).map_err(|m| invalid("listen", m))?;
    let performance_mode = match text("performance_mode").trim() {
        "standard" => PerformanceMode::Standard,
        "optimized" => PerformanceMode::Optimized,
        other => {
            return Err(invalid(
                "performance_mode",
                format!("'{other}' is not a mode (use standard or optimized)"),
            ));
        }
    };
    let log_format = match text("log_format").trim() {
        "json" => LogFormat::Json,
        "pretty" | "text" => LogFormat::Pretty,
        other => {
            return Err(invalid(
                "log_format",
                format!("'{other}' is not json or pretty"),
            ));
        }
    };
    let durability_text = text("durability");
    let durability = Durability::parse(&durability_text).ok_or_else(|| {
        invalid(
            "durability",
            format!("'{durability_text}' is not a durability mode (use fsync, batched or none)"),
        )
    })?;
    let fault_crash_after_commit = match get("fault_crash_after_commit") {
        Some(_) => Some(count("fault_crash_after_commit", 1, u64::MAX)?),
        None => None,
    };
    let redis_url = secret("redis_url");
    let mode = match get("sharing").map(|(v, _)| v.trim()) {
        None | Some("") => {
            // Chosen by REDIS_URL: say so where check-config shows sources.
            if redis_url.is_some()
                && let Some(src) = sources.get("redis_url").cloned()
            {
                sources.insert("sharing", src);
            }
            redis_url.as_ref().map(|_| SharingMode::Redis)
        }
        Some("none") => None,
        Some("redis") => Some(SharingMode::Redis),
        Some("lease") => Some(SharingMode::Lease),
        Some(other) => {
            return Err(invalid(
                "sharing",
                format!("'{other}' is not a sharing mode (use none, redis or lease)"),
            ));
        }
    };
    let fallback = match text("redis_fallback").trim() {
        "local" => RedisFallback::Local,
        "deny" => RedisFallback::Deny,
        other => {
            return Err(invalid(
                "redis_fallback",
                format!("'{other}' is not a fallback (use local or deny)"),
            ));
        }
    };
    let sharing = match (mode, &redis_url) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(invalid(
                "sharing",
                "the redis and lease modes need REDIS_URL".into(),
            ));
        }
        (Some(mode), Some(url)) => {
            let urls: Vec<String> = url
                .expose()
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            if urls.is_empty()
                || urls
                    .iter()
                    .any(|u| !u.starts_with("redis://") && !u.starts_with("rediss://"))
            {
                return Err(invalid(
                    "redis_url",
                    "use redis://host:6379 (several comma-separated nodes for a cluster)".into(),
                ));
            }
            let cluster = boolean("redis_cluster")?;
            if urls.len() > 1 && !cluster {
                return Err(invalid(
                    "redis_url",
                    "several nodes are only meaningful with USAGE_SYNC_REDIS_CLUSTER=true".into(),
                ));
            }
            let prefix = text("redis_prefix");
            if prefix.is_empty() || prefix.contains(['{', '}']) {
                return Err(invalid(
                    "redis_prefix",
                    "must be non-empty and without braces".into(),
                ));
            }
            Some(SharingConfig {
                mode,
                urls,
                cluster,
                fallback,
                lease_size: count("lease_size", 1, 1_000_000)?,
                lease_ttl: dur("lease_ttl")?,
                timeout: dur("redis_timeout")?,
                key_prefix: prefix,
                probe_interval: Duration::from_millis(500),
            })
        }
    };
    let kinds: Vec<String> = text("kinds")
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    Kinds::new(&kinds).map_err(|m| invalid("kinds", m))?;

    let settings = Settings {
        profile,
        preset,
        heartbeat_interval: dur("heartbeat_interval")?,
        sync_check_interval: dur("sync_check_interval")?,
        force_sync_threshold: count("force_sync_threshold", 1, 1_000_000_000)?,
        max_sync_interval: dur("max_sync_interval")?,
        verbose_logging: boolean("verbose_logging")?,
        max_active_users_check: usize::try_from(count("max_active_users_check", 1, 10_000_000)?)
            .unwrap_or(usize::MAX),
        session_timeout: dur("session_timeout")?,
        sync_timeout: dur("sync_timeout")?,
        max_concurrent_syncs: usize::try_from(count("max_concurrent_syncs", 1, 1024)?)
            .unwrap_or(usize::MAX),
        batch_size: usize::try_from(count("batch_size", 1, 10_000)?).unwrap_or(usize::MAX),
        max_cached_users: usize::try_from(count("max_cached_users", 1, 1_000_000_000)?)
            .unwrap_or(usize::MAX),
        enable_usage_sync: boolean("enable_usage_sync")?,
        performance_mode,
        data_dir,
        database_url,
        db_pool_size: usize::try_from(count("db_pool_size", 1, 1000)?).unwrap_or(usize::MAX),
        sharing,
        redis_url,
        listen,
        api_token: secret("api_token"),
        admin_token: secret("admin_token"),
        metrics_token: secret("metrics_token"),
        alert_sync_latency: dur("alert_sync_latency")?,
        alert_error_rate_percent: count("alert_error_rate_percent", 0, 100)?,
        alert_cpu_percent: count("alert_cpu_percent", 0, 10_000)?,
        alert_window: dur("alert_window")?,
        alert_interval: dur("alert_interval")?,
        alert_webhook: secret("alert_webhook"),
        max_concurrent_syncs_ceiling: usize::try_from(count(
            "max_concurrent_syncs_ceiling",
            1,
            1024,
        )?)
        .unwrap_or(usize::MAX),
        shutdown_timeout: dur("shutdown_timeout")?,
        header_timeout: positive("header_timeout")?,
        body_timeout: positive("body_timeout")?,
        max_connections: match count("max_connections", 0, 1_000_000)? {
            0 => default_max_connections(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        dedup_window: dur("dedup_window")?,
        max_request_ids: usize::try_from(count("max_request_ids", 1, 1_000_000_000)?)
            .unwrap_or(usize::MAX),
        durability,
        fsync_interval: dur("fsync_interval")?,
        fault_crash_after_commit,
        fault_crash_in_recovery: boolean("fault_crash_in_recovery")?,
        accept_log_loss: false,
        unknown_env: Vec::new(),
        enable_simulation: boolean("enable_simulation")?,
        log_format,
        log_level: log_filter(&text("log_level")).map_err(|m| invalid("log_level", m))?,
        kinds,
        default_plan: text("default_plan"),
        plans: plans_from_file.unwrap_or_else(default_plans),
        sources,
    };
    settings.validate()?;
    Ok(settings)
}

/// `host:port`, the host an IP address or a name (`localhost:18081`),
/// resolved once here to the first address it names.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let t = text.trim();
    if let Ok(a) = t.parse() {
        return Ok(a);
    }
    let shape = || format!("'{t}' is not host:port (for example 127.0.0.1:8080 or localhost:8080)");
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(shape()),
    }
    t.to_socket_addrs()
        .map_err(|e| format!("'{t}' cannot be resolved: {e}"))?
        .next()
        .ok_or_else(shape)
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a log filter: comma-separated directives, each a level
/// (`warn`) or `target=level` (`flush=debug`). A bare word that is no
/// level (`warnn`) would be taken by the filter as a target name and
/// silence everything else, the warnings included: refused, with the
/// closest level.
fn log_filter(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match d.split_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("'{d}' names no target before '='")),
            None if d.contains('[') => continue,
            None => d,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            let closest = LEVELS
                .iter()
                .min_by_key(|l| edit_distance(l, &level.to_ascii_lowercase()))
                .expect("levels exist");
            return Err(format!(
                "'{level}' is not a level (did you mean '{closest}'?): use trace, debug, info, warn, error or off, \
                 optionally with target=level directives such as info,flush=debug"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(v).map_err(|e| e.to_string())?;
    Ok(v.to_owned())
}

/// Levenshtein distance, for "did you mean" hints on short names.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Three quarters of the soft open-files limit (`RLIMIT_NOFILE`, read from
/// `/proc/self/limits`), leaving the rest for the database pool, the log
/// and Redis; 768 when the limit cannot be read (a 1024 default).
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (soft / 4 * 3).max(16)
}

/// Shortest token the production profile accepts, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// How the token errors tell an operator to make one.
const MAKE_TOKEN: &str = "make one with `openssl rand -hex 32`";

impl Settings {
    /// Tokens are set both or neither: with one set, the routes of the
    /// other stay open to anyone, which a half-configured deployment
    /// would not notice (a warning at start is easy to miss). Blank
    /// tokens are typos in any profile; production also refuses short
    /// ones and one token used for both route sets.
    fn validate_tokens(&self) -> Result<(), ConfigError> {
        let rule = |m: String| Err(ConfigError::Rule(m));
        for (t, var) in [
            (&self.api_token, "USAGE_SYNC_API_TOKEN"),
            (&self.admin_token, "USAGE_SYNC_ADMIN_TOKEN"),
        ] {
            if t.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
                return rule(format!("{var} is blank; {MAKE_TOKEN}"));
            }
        }
        match (&self.api_token, &self.admin_token) {
            (Some(_), None) => {
                return rule(format!(
                    "USAGE_SYNC_API_TOKEN is set but USAGE_SYNC_ADMIN_TOKEN is not: the admin routes \
                     would stay open. Set USAGE_SYNC_ADMIN_TOKEN too ({MAKE_TOKEN}), or neither \
                     (development only)"
                ));
            }
            (None, Some(_)) => {
                return rule(format!(
                    "USAGE_SYNC_ADMIN_TOKEN is set but USAGE_SYNC_API_TOKEN is not: the /v1 routes \
                     would stay open. Set USAGE_SYNC_API_TOKEN too ({MAKE_TOKEN}), or neither \
                     (development only)"
                ));
            }
            (None, None) if self.profile == Profile::Production => {
                return rule(format!(
                    "the production profile requires USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN \
                     (or their _FILE variants); {MAKE_TOKEN} for each"
                ));
            }
            (Some(api), Some(admin)) if self.profile == Profile::Production => {
                for (t, var) in [
                    (api, "USAGE_SYNC_API_TOKEN"),
                    (admin, "USAGE_SYNC_ADMIN_TOKEN"),
                ] {
                    if t.expose().len() < MIN_TOKEN_BYTES {
                        return rule(format!(
                            "{var} is shorter than {MIN_TOKEN_BYTES} bytes, refused in production; {MAKE_TOKEN}"
                        ));
                    }
                }
                if api.expose() == admin.expose() {
                    return rule(format!(
                        "USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN are the same: an API client \
                         could call the admin routes. Use two different tokens ({MAKE_TOKEN})"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Rules that involve several settings.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_tokens()?;
        if self.profile == Profile::Production && self.durability == Durability::None {
            return Err(ConfigError::Rule(
                "USAGE_SYNC_DURABILITY=none can lose acknowledged usage and is refused in the production profile (use fsync or batched)"
                    .into(),
            ));
        }
        if self.profile == Profile::Production
            && (self.fault_crash_after_commit.is_some() || self.fault_crash_in_recovery)
        {
            return Err(ConfigError::Rule(
                "USAGE_SYNC_FAULT_* settings are test-only fault injection and are refused in the production profile".into(),
            ));
        }
        if self.profile == Profile::Production && self.enable_simulation {
            return Err(ConfigError::Rule(
                "USAGE_SYNC_ENABLE_SIMULATION consumes units for made-up requests and is refused in the production profile".into(),
            ));
        }
        if !self.plans.contains_key(&self.default_plan) {
            return Err(ConfigError::Rule(format!(
                "default_plan '{}' is not among the configured plans ({})",
                self.default_plan,
                self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        self.catalogue().map_err(ConfigError::Rule)?;
        Ok(())
    }

    /// The kinds and plans as core types.
    pub fn catalogue(&self) -> Result<(Kinds, Plans), String> {
        let kinds = Kinds::new(&self.kinds)?;
        let mut plans = Vec::new();
        for (name, p) in &self.plans {
            let plan = Plan::from_named_limits(
                name,
                p.period,
                &kinds,
                p.limits.iter().map(|(k, l)| (k.as_str(), *l)),
            )
            .map_err(|e| format!("plan '{name}': {e}"))?;
            plans.push(plan);
        }
        let plans = Plans::new(&self.default_plan, plans).map_err(|e| e.to_string())?;
        Ok((kinds, plans))
    }

    /// The sync engine's part.
    pub fn sync_config(&self) -> SyncConfig {
        SyncConfig {
            enabled: self.enable_usage_sync,
            heartbeat_interval: self.heartbeat_interval,
            check_interval: self.sync_check_interval,
            force_sync_threshold: self.force_sync_threshold,
            max_sync_interval: self.max_sync_interval,
            max_active_users_check: self.max_active_users_check,
            session_timeout: self.session_timeout,
            sync_timeout: self.sync_timeout,
            max_concurrent_syncs: self.max_concurrent_syncs,
            batch_size: self.batch_size,
            max_cached_users: self.max_cached_users,
            dedup_window: self.dedup_window,
            max_request_ids: self.max_request_ids,
            wal: Some(WalConfig {
                fsync_interval: self.fsync_interval,
                accept_loss: self.accept_log_loss,
                ..WalConfig::new(self.data_dir.join("wal"), self.durability)
            }),
            crash_after_commit: self.fault_crash_after_commit,
            crash_in_recovery: self.fault_crash_in_recovery,
            sharing: self.sharing.clone(),
            // Users about to run out are flushed at once in optimized mode.
            near_limit_flush_percent: (self.performance_mode == PerformanceMode::Optimized)
                .then_some(90),
            ..SyncConfig::default()
        }
    }

    /// `(key, shown value)` for every setting, secrets redacted.
    pub fn redacted(&self) -> Vec<(&'static str, String)> {
        let secret = |s: &Option<Secret>| {
            if s.is_some() {
                "<redacted>".to_owned()
            } else {
                "<not set>".to_owned()
            }
        };
        let plans = self
            .plans
            .iter()
            .map(|(n, p)| {
                let limits = p
                    .limits
                    .iter()
                    .map(|(k, l)| {
                        format!(
                            "{k}={}",
                            l.map_or("unlimited".to_owned(), |v| v.to_string())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{n}({}: {limits})", p.period.as_str())
            })
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            ("profile", self.profile.as_str().to_owned()),
            (
                "preset",
                self.preset
                    .map_or("<none>".to_owned(), |p| p.as_str().to_owned()),
            ),
            (
                "heartbeat_interval",
                format_duration(self.heartbeat_interval),
            ),
            (
                "sync_check_interval",
                format_duration(self.sync_check_interval),
            ),
            (
                "force_sync_threshold",
                self.force_sync_threshold.to_string(),
            ),
            ("max_sync_interval", format_duration(self.max_sync_interval)),
            ("verbose_logging", self.verbose_logging.to_string()),
            (
                "max_active_users_check",
                self.max_active_users_check.to_string(),
            ),
            ("session_timeout", format_duration(self.session_timeout)),
            ("sync_timeout", format_duration(self.sync_timeout)),
            (
                "max_concurrent_syncs",
                self.max_concurrent_syncs.to_string(),
            ),
            ("batch_size", self.batch_size.to_string()),
            ("max_cached_users", self.max_cached_users.to_string()),
            ("enable_usage_sync", self.enable_usage_sync.to_string()),
            (
                "performance_mode",
                match self.performance_mode {
                    PerformanceMode::Standard => "standard".into(),
                    PerformanceMode::Optimized => "optimized".into(),
                },
            ),
            ("data_dir", self.data_dir.display().to_string()),
            ("database_url", redact_url(&self.database_url)),
            ("db_pool_size", self.db_pool_size.to_string()),
            (
                "sharing",
                self.sharing
                    .as_ref()
                    .map_or("none", |s| s.mode.as_str())
                    .to_owned(),
            ),
            (
                "redis_url",
                self.redis_url.as_ref().map_or("<not set>".to_owned(), |u| {
                    u.expose()
                        .split(',')
                        .map(redact_url)
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ),
            (
                "redis_cluster",
                self.sharing.as_ref().is_some_and(|s| s.cluster).to_string(),
            ),
            (
                "redis_fallback",
                self.sharing
                    .as_ref()
                    .map_or("local", |s| s.fallback.as_str())
                    .to_owned(),
            ),
            (
                "redis_timeout",
                format_duration(
                    self.sharing
                        .as_ref()
                        .map_or(Duration::from_millis(500), |s| s.timeout),
                ),
            ),
            (
                "redis_prefix",
                self.sharing
                    .as_ref()
                    .map_or("usage-sync".to_owned(), |s| s.key_prefix.clone()),
            ),
            (
                "lease_size",
                self.sharing
                    .as_ref()
                    .map_or(10, |s| s.lease_size)
                    .to_string(),
            ),
            (
                "lease_ttl",
                format_duration(
                    self.sharing
                        .as_ref()
                        .map_or(Duration::from_secs(2), |s| s.lease_ttl),
                ),
            ),
            ("listen", self.listen.to_string()),
            ("api_token", secret(&self.api_token)),
            ("admin_token", secret(&self.admin_token)),
            ("metrics_token", secret(&self.metrics_token)),
            (
                "alert_sync_latency",
                format_duration(self.alert_sync_latency),
            ),
            (
                "alert_error_rate_percent",
                self.alert_error_rate_percent.to_string(),
            ),
            ("alert_cpu_percent", self.alert_cpu_percent.to_string()),
            ("alert_window", format_duration(self.alert_window)),
            ("alert_interval", format_duration(self.alert_interval)),
            ("alert_webhook", secret(&self.alert_webhook)),
            (
                "max_concurrent_syncs_ceiling",
                self.max_concurrent_syncs_ceiling.to_string(),
            ),
            ("shutdown_timeout", format_duration(self.shutdown_timeout)),
            ("header_timeout", format_duration(self.header_timeout)),
            ("body_timeout", format_duration(self.body_timeout)),
            ("max_connections", self.max_connections.to_string()),
            ("dedup_window", format_duration(self.dedup_window)),
            ("max_request_ids", self.max_request_ids.to_string()),
            ("durability", self.durability.as_str().to_owned()),
            ("fsync_interval", format_duration(self.fsync_interval)),
            (
                "fault_crash_after_commit",
                self.fault_crash_after_commit
                    .map_or("<not set>".to_owned(), |n| n.to_string()),
            ),
            (
                "fault_crash_in_recovery",
                self.fault_crash_in_recovery.to_string(),
            ),
            ("enable_simulation", self.enable_simulation.to_string()),
            (
                "log_format",
                match self.log_format {
                    LogFormat::Json => "json".into(),
                    LogFormat::Pretty => "pretty".into(),
                },
            ),
            ("log_level", self.log_level.clone()),
            ("kinds", self.kinds.join(",")),
            ("default_plan", self.default_plan.clone()),
            ("plans", plans),
        ]
    }
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:<redacted>@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn development_defaults() {
        let s = load_from(None, &env(&[])).unwrap();
        assert_eq!(s.profile, Profile::Development);
        assert_eq!(s.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(s.sync_check_interval, Duration::from_secs(60));
        assert_eq!(s.force_sync_threshold, 5);
        assert_eq!(s.max_sync_interval, Duration::from_secs(600));
        assert!(s.verbose_logging);
        assert_eq!(s.database_url, "sqlite://./data/usage-sync.db");
        assert_eq!(
            s.sources["heartbeat_interval"],
            Source::Default(Profile::Development)
        );
    }

    #[test]
    fn sharing_and_simulation_settings() {
        let s = load_from(None, &env(&[])).unwrap();
        assert!(s.sharing.is_none(), "none without REDIS_URL");
        let s = load_from(None, &env(&[("REDIS_URL", "redis://127.0.0.1:6379")])).unwrap();
        let c = s.sharing.unwrap();
        assert_eq!(
            (c.mode, c.fallback, c.lease_size),
            (SharingMode::Redis, RedisFallback::Local, 10)
        );
        assert_eq!(c.lease_ttl, Duration::from_secs(2));
        let s = load_from(
            None,
            &env(&[
                ("REDIS_URL", "redis://a:1,redis://b:2"),
                ("USAGE_SYNC_REDIS_CLUSTER", "true"),
                ("USAGE_SYNC_SHARING", "lease"),
                ("USAGE_SYNC_REDIS_FALLBACK", "deny"),
                ("USAGE_SYNC_LEASE_SIZE", "25"),
            ]),
        )
        .unwrap();
        let c = s.sharing.unwrap();
        assert_eq!(c.urls, ["redis://a:1", "redis://b:2"]);
        assert_eq!(
            (c.mode, c.fallback, c.lease_size, c.cluster),
            (SharingMode::Lease, RedisFallback::Deny, 25, true)
        );
        for bad in [
            vec![("USAGE_SYNC_SHARING", "redis")],
            vec![("USAGE_SYNC_SHARING", "gossip"), ("REDIS_URL", "redis://x")],
            vec![("REDIS_URL", "http://x")],
            vec![("REDIS_URL", "redis://a,redis://b")],
            vec![
                ("REDIS_URL", "redis://x"),
                ("USAGE_SYNC_REDIS_FALLBACK", "maybe"),
            ],
            vec![("REDIS_URL", "redis://x"), ("USAGE_SYNC_LEASE_SIZE", "0")],
        ] {
            assert!(load_from(None, &env(&bad)).is_err(), "{bad:?}");
        }
        let e = load_from(
            None,
            &env(&[
                ("NODE_ENV", "production"),
                ("USAGE_SYNC_API_TOKEN", "api-token-0123456789"),
                ("USAGE_SYNC_ADMIN_TOKEN", "admin-token-0123456789"),
                ("USAGE_SYNC_ENABLE_SIMULATION", "true"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("SIMULATION"), "{e}");
    }

    #[test]
    fn tokens_cannot_be_half_set_blank_short_or_shared_in_production() {
        let err = |vars: &[(&str, &str)]| load_from(None, &env(vars)).unwrap_err().to_string();
        let e = err(&[("USAGE_SYNC_API_TOKEN", "only-the-api-one")]);
        assert!(
            e.contains("USAGE_SYNC_ADMIN_TOKEN is not") && e.contains("openssl rand -hex 32"),
            "{e}"
        );
        let e = err(&[("USAGE_SYNC_ADMIN_TOKEN", "only-the-admin-one")]);
        assert!(e.contains("USAGE_SYNC_API_TOKEN is not"), "{e}");
        let e = err(&[
            ("USAGE_SYNC_API_TOKEN", " "),
            ("USAGE_SYNC_ADMIN_TOKEN", "admin-token-0123456789"),
        ]);
        assert!(e.contains("USAGE_SYNC_API_TOKEN is blank"), "{e}");
        let prod = |api: &'static str, admin: &'static str| {
            err(&[
                ("NODE_ENV", "production"),
                ("USAGE_SYNC_API_TOKEN", api),
                ("USAGE_SYNC_ADMIN_TOKEN", admin),
            ])
        };
        let e = prod("short", "admin-token-0123456789");
        assert!(
            e.contains("USAGE_SYNC_API_TOKEN is shorter than 16 bytes"),
            "{e}"
        );
        let e = prod("same-token-0123456789", "same-token-0123456789");
        assert!(e.contains("are the same"), "{e}");
        let e = err(&[("NODE_ENV", "production")]);
        assert!(
            e.contains("USAGE_SYNC_API_TOKEN and USAGE_SYNC_ADMIN_TOKEN")
                && e.contains("openssl rand -hex 32"),
            "{e}"
        );
        // Development accepts short tokens, as long as both are set.
        load_from(
            None,
            &env(&[
                ("USAGE_SYNC_API_TOKEN", "a"),
                ("USAGE_SYNC_ADMIN_TOKEN", "b"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn production_needs_tokens_and_uses_its_defaults() {
        let e = load_from(None, &env(&[("NODE_ENV", "production")])).unwrap_err();
        assert!(e.to_string().contains("USAGE_SYNC_API_TOKEN"), "{e}");
        let s = load_from(
            None,
            &env(&[
                ("NODE_ENV", "production"),
                ("USAGE_SYNC_API_TOKEN", "api-token-0123456789"),
                ("USAGE_SYNC_ADMIN_TOKEN", "admin-token-0123456789"),
            ]),
        )
        .unwrap();
        assert_eq!(s.heartbeat_interval, Duration::from_secs(120));
        assert_eq!(s.force_sync_threshold, 10);
        assert!(!s.verbose_logging);
        assert_eq!(s.log_format, LogFormat::Json);
        // USAGE_SYNC_ENV wins over NODE_ENV.
        let s = load_from(
            None,
            &env(&[
                ("NODE_ENV", "production"),
                ("USAGE_SYNC_ENV", "development"),
            ]),
        )
        .unwrap();
        assert_eq!(s.profile, Profile::Development);
    }

    #[test]
    fn layers_apply_in_order_and_record_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("usage-sync.toml");
        std::fs::write(
            &f,
            "preset = \"large\"\nsync_check_interval = \"7m\"\nforce_sync_threshold = 9\n",
        )
        .unwrap();
        let s = load_from(Some(&f), &env(&[("USAGE_SYNC_THRESHOLD", "12")])).unwrap();
        assert_eq!(s.preset, Some(Preset::Large));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(60)); // preset
        assert_eq!(
            s.sources["heartbeat_interval"],
            Source::Preset(Preset::Large)
        );
        assert_eq!(s.max_concurrent_syncs, 5); // preset
        assert_eq!(s.sync_check_interval, Duration::from_secs(420)); // file
        assert_eq!(s.sources["sync_check_interval"], Source::File(f.clone()));
        assert_eq!(s.force_sync_threshold, 12); // env beats file
        assert_eq!(
            s.sources["force_sync_threshold"],
            Source::Env("USAGE_SYNC_THRESHOLD")
        );
    }

    #[test]
    fn env_intervals_are_milliseconds() {
        let s = load_from(None, &env(&[("USAGE_SYNC_CHECK_INTERVAL", "300000")])).unwrap();
        assert_eq!(s.sync_check_interval, Duration::from_secs(300));
        let s = load_from(None, &env(&[("ENABLE_VERBOSE_LOGGING", "false")])).unwrap();
        assert!(!s.verbose_logging);
    }

    #[test]
    fn redis_url_is_the_source_of_sharing_and_toml_null_gets_a_hint() {
        let s = load_from(None, &env(&[("REDIS_URL", "redis://127.0.0.1:6379")])).unwrap();
        assert_eq!(
            s.sources["sharing"].to_string(),
            s.sources["redis_url"].to_string()
        );
        assert!(s.sources["sharing"].to_string().contains("REDIS_URL"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[plans.free]\nlimits = { premium = 5, fast = null }\n").unwrap();
        let e = load_from(Some(&f), &env(&[])).unwrap_err().to_string();
        assert!(
            e.contains("write an unlimited limit as \"unlimited\""),
            "{e}"
        );
    }

    #[test]
    fn listen_takes_names_and_typos_are_named() {
        let s = load_from(None, &env(&[("USAGE_SYNC_LISTEN", "localhost:18081")])).unwrap();
        assert_eq!(s.listen.port(), 18081);
        assert!(s.listen.ip().is_loopback());
        // A misspelt variable is reported with the name it was meant to be.
        let s = load_from(
            None,
            &env(&[
                ("USAGE_SYNC_DURABLITY", "fsync"),
                ("USAGE_SYNC_TEST_X", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.unknown_env,
            vec![("USAGE_SYNC_DURABLITY".to_owned(), "USAGE_SYNC_DURABILITY")]
        );
        // A level typo would silence the service: refused with the level meant.
        let e = load_from(None, &env(&[("USAGE_SYNC_LOG_LEVEL", "warnn")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("USAGE_SYNC_LOG_LEVEL") && e.contains("did you mean 'warn'"),
            "{e}"
        );
        for ok in ["info", "warn,flush=debug", "usage_sync_server=trace", "OFF"] {
            load_from(None, &env(&[("USAGE_SYNC_LOG_LEVEL", ok)])).unwrap();
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (var, val, key) in [
            ("USAGE_SYNC_CHECK_INTERVAL", "soon", "sync_check_interval"),
            ("USAGE_SYNC_THRESHOLD", "0", "force_sync_threshold"),
            ("USAGE_SYNC_HEARTBEAT_INTERVAL", "0", "heartbeat_interval"),
            ("SYNC_PERFORMANCE_MODE", "turbo", "performance_mode"),
            ("USAGE_SYNC_LISTEN", "localhost", "listen"),
            ("USAGE_SYNC_BATCH_SIZE", "-1", "batch_size"),
            ("ENABLE_USAGE_SYNC", "maybe", "enable_usage_sync"),
        ] {
            let e = load_from(None, &env(&[(var, val)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(var), "{var}={val}: {e}");
        }
        let e = load_from(None, &env(&[("USAGE_SYNC_PRESET", "huge")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("preset"), "{e}");
    }

    #[test]
    fn file_plans_unknown_keys_and_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "kinds = [\"fast\"]\ndefault_plan = \"open\"\n[plans.open]\nperiod = \"daily\"\nlimits = { fast = \"unlimited\" }\n",
        )
        .unwrap();
        let s = load_from(Some(&f), &env(&[])).unwrap();
        assert_eq!(s.plans["open"].limits["fast"], None);
        assert_eq!(s.plans["open"].period, PeriodKind::Daily);
        std::fs::write(&f, "heartbeat_intervall = \"1m\"\n").unwrap();
        let e = load_from(Some(&f), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("heartbeat_intervall"), "{e}");
        let tok = dir.path().join("tok");
        std::fs::write(&tok, "s3cret\n").unwrap();
        let s = load_from(
            None,
            &env(&[
                ("USAGE_SYNC_ADMIN_TOKEN_FILE", tok.to_str().unwrap()),
                ("USAGE_SYNC_API_TOKEN", "api"),
            ]),
        )
        .unwrap();
        assert_eq!(s.admin_token.unwrap().expose(), "s3cret");
    }

    #[test]
    fn redaction() {
        let s = load_from(
            None,
            &env(&[
                ("USAGE_SYNC_API_TOKEN", "topsecret"),
                ("USAGE_SYNC_ADMIN_TOKEN", "topsecret2"),
            ]),
        )
        .unwrap();
        let shown = format!("{:?}", s.redacted());
        assert!(!shown.contains("topsecret"));
        assert!(
            format!("{s:?}").contains("Secret(***)") && !format!("{s:?}").contains("topsecret")
        );
        assert_eq!(
            redact_url("postgres://u:pw@h/db"),
            "postgres://u:<redacted>@h/db"
        );
    }

    /// docs/configuration.md must list every key and environment variable,
    /// so the documentation cannot silently drift from the code.
    #[test]
    fn the_configuration_doc_lists_every_setting() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .unwrap();
        for (key, vars, _) in KEYS {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/configuration.md misses key {key}"
            );
            for v in *vars {
                assert!(
                    doc.contains(&format!("`{v}`")),
                    "docs/configuration.md misses {v}"
                );
            }
        }
        for (_, var) in SECRET_FILES {
            assert!(
                doc.contains(&format!("`{var}`")),
                "docs/configuration.md misses {var}"
            );
        }
        for var in ["USAGE_SYNC_ENV", "NODE_ENV", "USAGE_SYNC_PRESET"] {
            assert!(
                doc.contains(&format!("`{var}`")),
                "docs/configuration.md misses {var}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    }
}
