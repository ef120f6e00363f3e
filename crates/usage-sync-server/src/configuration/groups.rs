//! The service's own groups of settings, each read by serde from the
//! layered figment (the engine's groups, `SyncConfig` and `SharingConfig`,
//! derive `Deserialize` in the library). Field names are the keys of the
//! config file; bounds sit next to the field they bound. An `Option`
//! that no layer sets is `None` (serde's rule for missing options).

use serde::Deserializer;

use super::*;

/// Where the counts are kept.
#[derive(Clone, Debug, Deserialize)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    /// Unset in every layer, SQLite in `data_dir`.
    #[serde(default)]
    pub database_url: String,
    #[serde(deserialize_with = "de::count::<1, 1000, _, _>")]
    pub db_pool_size: usize,
    #[serde(deserialize_with = "durability")]
    pub durability: Durability,
    #[serde(deserialize_with = "de::duration")]
    pub fsync_interval: Duration,
    /// `serve --accept-log-loss`: start even if the write-ahead log lost
    /// records it had made durable, reporting the loss. A command-line
    /// flag only, for one start: never a setting that stays on.
    #[serde(skip)]
    pub accept_log_loss: bool,
}

/// The HTTP front: address, tokens, and the bounds on what a client may
/// hold open.
#[derive(Clone, Debug, Deserialize)]
pub struct HttpSettings {
    #[serde(deserialize_with = "listen")]
    pub listen: SocketAddr,
    pub api_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub metrics_token: Option<Secret>,
    /// How long SIGTERM waits for in-flight requests, and then again at
    /// most for the final flush.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_timeout: Duration,
    /// Time a client has to send a request's headers, counted from when the
    /// connection is ready for a request: it also closes a keep-alive
    /// connection idle that long. At least 1 ms (0 would close every
    /// connection at once).
    #[serde(deserialize_with = "de::duration")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    #[serde(deserialize_with = "de::duration")]
    pub body_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    /// 0 in the settings means three quarters of the open-files limit.
    #[serde(deserialize_with = "connections")]
    pub max_connections: usize,
}

/// When the alert evaluator raises an alert, and where it sends it.
#[derive(Clone, Debug, Deserialize)]
pub struct AlertSettings {
    #[serde(rename = "alert_sync_latency", deserialize_with = "de::duration")]
    pub sync_latency: Duration,
    #[serde(
        rename = "alert_error_rate_percent",
        deserialize_with = "de::count::<0, 100, _, _>"
    )]
    pub error_rate_percent: u64,
    #[serde(
        rename = "alert_cpu_percent",
        deserialize_with = "de::count::<0, 10_000, _, _>"
    )]
    pub cpu_percent: u64,
    #[serde(rename = "alert_window", deserialize_with = "de::duration")]
    pub window: Duration,
    #[serde(rename = "alert_interval", deserialize_with = "de::duration")]
    pub interval: Duration,
    #[serde(rename = "alert_webhook")]
    pub webhook: Option<Secret>,
}

/// What the service logs, and how.
#[derive(Clone, Debug, Deserialize)]
pub struct LogSettings {
    #[serde(rename = "log_format", deserialize_with = "de::word")]
    pub format: LogFormat,
    /// A filter such as `info,flush=debug`, checked (see [`log_filter`]).
    #[serde(rename = "log_level", deserialize_with = "log_level")]
    pub level: String,
    #[serde(rename = "verbose_logging", deserialize_with = "de::flag")]
    pub verbose: bool,
}

/// Everything the layers hold, as serde reads it; [`Settings`] adds what
/// is derived from several of these (the database URL's default, the
/// shared tier's mode and URLs) and where each came from.
#[derive(Deserialize)]
pub(super) struct Layered {
    pub sync: SyncConfig,
    pub shared: SharingConfig,
    pub store: StoreSettings,
    pub http: HttpSettings,
    pub alerts: AlertSettings,
    pub log: LogSettings,
    #[serde(deserialize_with = "de::word")]
    pub performance_mode: PerformanceMode,
    /// `none`, `redis` or `lease`; unset, chosen by `redis_url`.
    pub sharing: Option<String>,
    pub redis_url: Option<Secret>,
    #[serde(deserialize_with = "de::count::<1, 1024, _, _>")]
    pub max_concurrent_syncs_ceiling: usize,
    #[serde(deserialize_with = "de::flag")]
    pub enable_simulation: bool,
    #[serde(deserialize_with = "list")]
    pub kinds: Vec<String>,
    pub default_plan: String,
}

/// Reads text and turns it into `T` with `f`, whose message is the error.
fn from_text<'de, D: Deserializer<'de>, T>(
    d: D,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    f(&text).map_err(serde::de::Error::custom)
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    from_text(d, parse_listen)
}

fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    from_text(d, log_filter)
}

fn durability<'de, D: Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
    from_text(d, |t| {
        Durability::parse(t)
            .ok_or_else(|| format!("'{t}' is not a durability mode (use fsync, batched or none)"))
    })
}

fn connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    Ok(match de::count::<0, 1_000_000, usize, D>(d)? {
        0 => default_max_connections(),
        n => n,
    })
}

/// A list: comma-separated text (`premium,fast`, as a variable holds it)
/// or an array of strings (as a file does); items trimmed, blanks dropped.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Items;
    impl<'de> serde::de::Visitor<'de> for Items {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("comma-separated text or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(v.split(',').map(str::to_owned).collect())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = a.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }
    let items = d.deserialize_any(Items)?;
    Ok(items
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}
