//! Settings, built in layers with figment: the profile's defaults → the
//! preset → the config file → the environment. Each layer is one figment
//! provider named after its source, so figment's metadata says which layer
//! set each value: `check-config` shows it, and every error names the
//! offending key and layer.
//!
//! The settings are grouped as the code that uses them is: the engine's
//! own [`SyncConfig`] and [`SharingConfig`] (which derive `Deserialize`
//! in the library), then [`StoreSettings`], [`HttpSettings`],
//! [`AlertSettings`] and [`LogSettings`]. Files and variables stay flat
//! (`heartbeat_interval`, `USAGE_SYNC_HEARTBEAT_INTERVAL`): the settings
//! table in `profiles.rs` says which group each key belongs to.
//!
//! The environment variable names are part of the public contract (see
//! `docs/configuration.md`); keep them exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::value::{Dict, Map, Value};
use serde::Deserialize;
use usage_sync::de::{self, choose};
use usage_sync::{SharingConfig, SharingMode, SyncConfig};
use usage_sync_core::{Kinds, Limit, PeriodKind, Plan, Plans};
use usage_sync_store::{Durability, WalConfig};

mod groups;
mod plans;
mod profiles;
mod settings;
#[cfg(test)]
mod tests;
mod values;

pub use groups::*;
use plans::*;
use profiles::*;
pub use usage_sync::de::parse_duration;
use values::*;
pub use values::{format_duration, parse_listen, redact_url};

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

impl de::Words for PerformanceMode {
    const WHAT: &'static str = "a mode";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("standard", PerformanceMode::Standard),
        ("optimized", PerformanceMode::Optimized),
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl de::Words for LogFormat {
    const WHAT: &'static str = "a log format";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("json", LogFormat::Json),
        ("pretty", LogFormat::Pretty),
        ("text", LogFormat::Pretty),
    ];
}

/// A secret: never printed by `Debug` or `check-config`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
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
    /// is set from the store settings by [`Settings::sync_config`]; its
    /// shared tier from `sharing`, `redis_url` and the `redis_*` keys).
    pub sync: SyncConfig,
    pub store: StoreSettings,
    pub http: HttpSettings,
    pub alerts: AlertSettings,
    pub log: LogSettings,
    pub performance_mode: PerformanceMode,
    pub redis_url: Option<Secret>,
    pub max_concurrent_syncs_ceiling: usize,
    /// `POST /admin/v1/users/{id}/simulate` is enabled (never in production).
    pub enable_simulation: bool,
    pub kinds: Vec<String>,
    pub default_plan: String,
    pub plans: BTreeMap<String, PlanSettings>,
    /// `USAGE_SYNC_*` variables in the environment that no setting reads,
    /// with the closest known name: warned about at start and by
    /// check-config.
    pub unknown_env: Vec<(String, &'static str)>,
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

    let text = |pairs: Vec<(&'static str, String)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<Vec<_>>()
    };
    let mut layers = Layers::default();
    layers.add(Source::Default(profile), text(profile_defaults(profile)));
    if let Some(p) = preset {
        let values = preset_values(p).into_iter().map(|(k, v)| (k, v.to_owned()));
        layers.add(Source::Preset(p), text(values.collect()));
    }
    let mut plans_from_file = None;
    if let Some((path, table)) = &file {
        let mut values = Vec::new();
        for (key, value) in table {
            if key == "profile" || key == "preset" {
                continue;
            }
            if key == "plans" {
                plans_from_file = Some(parse_plans(value, path)?);
                continue;
            }
            let Some(&(k, _, _)) = KEYS.iter().find(|(k, _, _)| k == key) else {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    path: path.clone(),
                });
            };
            let value = Value::serialize(value).map_err(|e| ConfigError::Invalid {
                key: k,
                origin: Source::File(path.clone()),
                message: e.to_string(),
            })?;
            values.push((k, value));
        }
        layers.add(Source::File(path.clone()), values);
    }
    // Each variable is a layer of its own, so that figment's metadata
    // names the variable (of a key's aliases, the first one set wins).
    for &(k, _, vars) in KEYS {
        if let Some((var, v)) = vars.iter().find_map(|var| Some((*var, env_get(var)?))) {
            layers.add(Source::Env(var), vec![(k, v.into())]);
        }
    }
    for &(k, var) in SECRET_FILES {
        if let Some(path) = env_get(var) {
            let v = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                key: k,
                origin: Source::Env(var),
                message: format!("cannot read {path}: {e}"),
            })?;
            let v = v.trim_end_matches(['\n', '\r']).to_owned();
            layers.add(Source::Env(var), vec![(k, v.into())]);
        }
    }
    let mut sources = layers.sources(profile);
    sources.insert("profile", profile_src);
    if let Some(s) = preset_src {
        sources.insert("preset", s);
    }
    let raw: Layered = layers
        .figment
        .extract()
        .map_err(|e| layers.error(e, profile))?;
    let mut settings = build(profile, preset, raw, sources, plans_from_file)?;
    settings.unknown_env = unknown_env(env);
    Ok(settings)
}

/// The layers merged so far, and the source each was made from.
#[derive(Default)]
struct Layers {
    figment: Figment,
    sources: Vec<Source>,
}

impl Layers {
    fn add(&mut self, source: Source, values: Vec<(&'static str, Value)>) {
        self.sources.push(source.clone());
        let layer = Layer { source, values };
        self.figment = std::mem::take(&mut self.figment).merge(layer);
    }

    /// The source a figment value came from: its provider is named after it.
    fn source_of(&self, metadata: &figment::Metadata) -> Option<Source> {
        self.sources
            .iter()
            .find(|s| s.to_string() == metadata.name)
            .cloned()
    }

    /// Where each key's value came from (keys no layer sets are left out).
    fn sources(&self, profile: Profile) -> BTreeMap<&'static str, Source> {
        let mut out = BTreeMap::new();
        for &(key, group, _) in KEYS {
            let path = match group {
                "" => key.to_owned(),
                g => format!("{g}.{key}"),
            };
            if let Some(m) = self.figment.find_metadata(&path) {
                let src = self.source_of(m).unwrap_or(Source::Default(profile));
                out.insert(key, src);
            }
        }
        out
    }

    /// A serde error as the key, the layer and what was wrong.
    fn error(&self, e: figment::Error, profile: Profile) -> ConfigError {
        // The innermost key the path names (`kinds.1` is `kinds`).
        let key = e
            .path
            .iter()
            .rev()
            .find_map(|k| KEYS.iter().find(|(key, _, _)| key == k))
            .map_or("settings", |(k, _, _)| *k);
        let origin = e
            .metadata
            .as_ref()
            .and_then(|m| self.source_of(m))
            .unwrap_or(Source::Default(profile));
        let message = match &e.kind {
            figment::error::Kind::Message(m) => m.clone(),
            other => other.to_string(),
        };
        ConfigError::Invalid {
            key,
            origin,
            message,
        }
    }
}

/// One layer as a figment provider: the values one source sets, each
/// under the group its key belongs to, the provider named after the
/// source.
struct Layer {
    source: Source,
    values: Vec<(&'static str, Value)>,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.source.to_string())
    }

    fn data(&self) -> Result<Map<figment::Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, value) in &self.values {
            // Every key here is from the table (the file's are checked
            // against it first), and no key is named like a group.
            let group = KEYS
                .iter()
                .find(|(k, _, _)| k == key)
                .map_or("", |(_, g, _)| *g);
            let dict = match group {
                "" => &mut root,
                g => match root.entry(g.to_owned()).or_insert(Dict::new().into()) {
                    Value::Dict(_, d) => d,
                    _ => return Err(format!("'{g}' is a group of settings, not a setting").into()),
                },
            };
            dict.insert((*key).to_owned(), value.clone());
        }
        Ok(figment::Profile::Default.collect(root))
    }
}

/// Every variable a setting is read from.
fn known_env() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .flat_map(|(_, _, vars)| vars.iter().copied())
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

/// What no single setting decides: the database URL's default, the shared
/// tier (mode, URLs, prefix), the kinds, then the rules across settings.
fn build(
    profile: Profile,
    preset: Option<Preset>,
    raw: Layered,
    mut sources: BTreeMap<&'static str, Source>,
    plans_from_file: Option<BTreeMap<String, PlanSettings>>,
) -> Result<Settings, ConfigError> {
    let Layered {
        mut sync,
        shared,
        mut store,
        mut http,
        mut alerts,
        log,
        performance_mode,
        sharing,
        redis_url,
        max_concurrent_syncs_ceiling,
        enable_simulation,
        kinds,
        default_plan,
    } = raw;
    if store.database_url.is_empty() {
        sources.insert("database_url", sources["data_dir"].clone());
        store.database_url = format!(
            "sqlite://{}",
            store.data_dir.join("usage-sync.db").display()
        );
    }
    // A blank secret in a file is as good as none (variables that are
    // set but empty are skipped before they become a layer).
    for s in [
        &mut http.api_token,
        &mut http.admin_token,
        &mut http.metrics_token,
        &mut alerts.webhook,
    ] {
        if s.as_ref().is_some_and(|t| t.0.is_empty()) {
            *s = None;
        }
    }
    let redis_url = redis_url.filter(|u| !u.0.is_empty());
    let mode = match sharing.as_deref().map(str::trim) {
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
        .map_err(|m| invalid(&sources, profile, "sharing", m))?,
    };
    let bad = |k: &'static str, m: &str| invalid(&sources, profile, k, m.to_owned());
    let scheme_ok = store.database_url.starts_with("sqlite:")
        || store.database_url.starts_with("postgres://")
        || store.database_url.starts_with("postgresql://");
    if !scheme_ok {
        return Err(bad(
            "database_url",
            "use sqlite://path or postgres://user@host/database",
        ));
    }
    sync.sharing = match (mode, &redis_url) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(bad("sharing", "the redis and lease modes need REDIS_URL"));
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
                return Err(bad(
                    "redis_url",
                    "use redis://host:6379 (several comma-separated nodes for a cluster)",
                ));
            }
            if urls.len() > 1 && !shared.cluster {
                return Err(bad(
                    "redis_url",
                    "several nodes are only meaningful with USAGE_SYNC_REDIS_CLUSTER=true",
                ));
            }
            if shared.key_prefix.is_empty() || shared.key_prefix.contains(['{', '}']) {
                return Err(bad("redis_prefix", "must be non-empty and without braces"));
            }
            Some(SharingConfig {
                mode,
                urls,
                ..shared
            })
        }
    };
    Kinds::new(&kinds).map_err(|m| bad("kinds", &m))?;
    // Users about to run out are flushed at once in optimized mode.
    sync.near_limit_flush_percent = (performance_mode == PerformanceMode::Optimized).then_some(90);
    let settings = Settings {
        profile,
        preset,
        sync,
        store,
        http,
        alerts,
        log,
        performance_mode,
        redis_url,
        max_concurrent_syncs_ceiling,
        enable_simulation,
        kinds,
        default_plan,
        plans: plans_from_file.unwrap_or_else(default_plans),
        unknown_env: Vec::new(),
        sources,
    };
    settings.validate()?;
    Ok(settings)
}

/// An invalid value of `key`, from the layer that set it.
fn invalid(
    sources: &BTreeMap<&'static str, Source>,
    profile: Profile,
    key: &'static str,
    message: String,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: sources
            .get(key)
            .cloned()
            .unwrap_or(Source::Default(profile)),
        message,
    }
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
