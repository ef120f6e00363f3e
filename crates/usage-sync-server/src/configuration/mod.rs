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

mod plans;
mod profiles;
mod settings;
#[cfg(test)]
mod tests;
mod values;

use plans::*;
use profiles::*;
use values::*;
pub use values::{format_duration, parse_duration, parse_listen, redact_url};

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
    /// The sync engine's settings, in the engine's own struct (its log
    /// is set from `data_dir`, `durability` and `fsync_interval` by
    /// [`Settings::sync_config`]).
    pub sync: SyncConfig,
    pub verbose_logging: bool,
    pub performance_mode: PerformanceMode,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub db_pool_size: usize,
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
    pub durability: Durability,
    pub fsync_interval: Duration,
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
        raw.insert(k, (v, Source::Default(profile)));
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
    // A count that sizes something in memory (all bounds fit any usize).
    let size = |k: &'static str, min: u64, max: u64| -> Result<usize, ConfigError> {
        Ok(usize::try_from(count(k, min, max)?).unwrap_or(usize::MAX))
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
    let performance_mode = choose(
        &text("performance_mode"),
        "a mode",
        &[
            ("standard", PerformanceMode::Standard),
            ("optimized", PerformanceMode::Optimized),
        ],
    )
    .map_err(|m| invalid("performance_mode", m))?;
    let log_format = choose(
        &text("log_format"),
        "a log format",
        &[
            ("json", LogFormat::Json),
            ("pretty", LogFormat::Pretty),
            ("text", LogFormat::Pretty),
        ],
    )
    .map_err(|m| invalid("log_format", m))?;
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
        Some(t) => choose(
            t,
            "a sharing mode",
            &[
                ("none", None),
                ("redis", Some(SharingMode::Redis)),
                ("lease", Some(SharingMode::Lease)),
            ],
        )
        .map_err(|m| invalid("sharing", m))?,
    };
    let fallback = choose(
        &text("redis_fallback"),
        "a fallback",
        &[
            ("local", RedisFallback::Local),
            ("deny", RedisFallback::Deny),
        ],
    )
    .map_err(|m| invalid("redis_fallback", m))?;
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
        sync: SyncConfig {
            enabled: boolean("enable_usage_sync")?,
            heartbeat_interval: dur("heartbeat_interval")?,
            check_interval: dur("sync_check_interval")?,
            force_sync_threshold: count("force_sync_threshold", 1, 1_000_000_000)?,
            max_sync_interval: dur("max_sync_interval")?,
            max_active_users_check: size("max_active_users_check", 1, 10_000_000)?,
            session_timeout: dur("session_timeout")?,
            sync_timeout: dur("sync_timeout")?,
            max_concurrent_syncs: size("max_concurrent_syncs", 1, 1024)?,
            batch_size: size("batch_size", 1, 10_000)?,
            max_cached_users: size("max_cached_users", 1, 1_000_000_000)?,
            dedup_window: dur("dedup_window")?,
            max_request_ids: size("max_request_ids", 1, 1_000_000_000)?,
            crash_after_commit: fault_crash_after_commit,
            crash_in_recovery: boolean("fault_crash_in_recovery")?,
            sharing,
            // Users about to run out are flushed at once in optimized mode.
            near_limit_flush_percent: (performance_mode == PerformanceMode::Optimized)
                .then_some(90),
            // The log is set by `sync_config`, from the log settings.
            wal: None,
            ..SyncConfig::default()
        },
        verbose_logging: boolean("verbose_logging")?,
        performance_mode,
        data_dir,
        database_url,
        db_pool_size: size("db_pool_size", 1, 1000)?,
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
        max_concurrent_syncs_ceiling: size("max_concurrent_syncs_ceiling", 1, 1024)?,
        shutdown_timeout: dur("shutdown_timeout")?,
        header_timeout: positive("header_timeout")?,
        body_timeout: positive("body_timeout")?,
        max_connections: match count("max_connections", 0, 1_000_000)? {
            0 => default_max_connections(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        durability,
        fsync_interval: dur("fsync_interval")?,
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

/// Shortest token the production profile accepts, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// How the token errors tell an operator to make one.
const MAKE_TOKEN: &str = "make one with `openssl rand -hex 32`";
