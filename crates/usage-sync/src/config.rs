//! Settings of the sync engine. The server builds this from its layered
//! configuration; an embedding application fills it directly.

use std::time::Duration;

use usage_sync_store::WalConfig;

use crate::de;
use crate::sharing::SharingConfig;

/// How the sync engine decides when to write to the store.
///
/// It deserializes from the keys of the server's config file
/// (`heartbeat_interval`, `sync_check_interval`, ...); keys left out keep
/// [`SyncConfig::default`], and the fields that are not settings (the log,
/// sharing, retry pacing) are always left to code.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default)]
pub struct SyncConfig {
    /// Run the triggers at all (`ENABLE_USAGE_SYNC`). When false nothing is
    /// ever flushed and units stay in memory.
    #[serde(rename = "enable_usage_sync", deserialize_with = "de::flag")]
    pub enabled: bool,
    /// Heartbeat: retries, session ends, eviction.
    #[serde(deserialize_with = "de::duration")]
    pub heartbeat_interval: Duration,
    /// Main check: the oldest pending users, up to `max_active_users_check`.
    #[serde(rename = "sync_check_interval", deserialize_with = "de::duration")]
    pub check_interval: Duration,
    /// Pending units of one counter that force a prompt flush.
    #[serde(deserialize_with = "de::count::<1, 1_000_000_000, _, _>")]
    pub force_sync_threshold: u64,
    /// Guarantee: everything pending is flushed at least this often.
    #[serde(deserialize_with = "de::duration")]
    pub max_sync_interval: Duration,
    #[serde(deserialize_with = "de::count::<1, 10_000_000, _, _>")]
    pub max_active_users_check: usize,
    /// A user idle this long with pending units is flushed (session end);
    /// idle and clean, it is evicted from memory.
    #[serde(deserialize_with = "de::duration")]
    pub session_timeout: Duration,
    /// Bound on one flush transaction; on expiry the batch is retried under
    /// the same flush id.
    #[serde(deserialize_with = "de::duration")]
    pub sync_timeout: Duration,
    #[serde(deserialize_with = "de::count::<1, 1024, _, _>")]
    pub max_concurrent_syncs: usize,
    /// Counters per batch (one transaction).
    #[serde(deserialize_with = "de::count::<1, 10_000, _, _>")]
    pub batch_size: usize,
    /// Soft bound on users held in memory; idle clean users are evicted
    /// first when it is exceeded.
    #[serde(deserialize_with = "de::count::<1, 1_000_000_000, _, _>")]
    pub max_cached_users: usize,
    /// Least time between the starts of two threshold rounds, so that
    /// crossings close together share one transaction. Bounds threshold
    /// rounds to 1/linger per second under any load; a crossing after a
    /// quiet spell is flushed at once, one under load waits at most this.
    #[serde(skip)]
    pub threshold_linger: Duration,
    /// How long a request id is remembered.
    #[serde(deserialize_with = "de::duration")]
    pub dedup_window: Duration,
    /// Most request ids remembered at once; a consume with a new id past
    /// it answers 503 and counts nothing (see `LedgerConfig`).
    #[serde(deserialize_with = "de::count::<1, 1_000_000_000, _, _>")]
    pub max_request_ids: usize,
    /// First retry delay after a failed flush; doubles up to `retry_max`.
    #[serde(skip)]
    pub retry_base: Duration,
    #[serde(skip)]
    pub retry_max: Duration,
    /// How long applied flush ids are kept in the store.
    #[serde(skip)]
    pub flush_id_retention: Duration,
    /// The write-ahead log. `None` keeps everything in memory only (units
    /// not yet flushed are lost if the process dies): for tests and for
    /// applications that accept that.
    #[serde(skip)]
    pub wal: Option<WalConfig>,
    /// Fault injection for crash tests: abort the process right after the
    /// Nth successful database commit, before the log records it. Never set
    /// this in production.
    #[serde(
        rename = "fault_crash_after_commit",
        deserialize_with = "de::some_count::<1, { u64::MAX }, _, _>"
    )]
    pub crash_after_commit: Option<u64>,
    /// Fault injection for crash tests: abort during start-up recovery,
    /// after the recovered state is installed in memory and before it is
    /// checkpointed. Never set this in production.
    #[serde(rename = "fault_crash_in_recovery", deserialize_with = "de::flag")]
    pub crash_in_recovery: bool,
    /// The shared tier for several instances; `None` is single-instance.
    #[serde(skip)]
    pub sharing: Option<SharingConfig>,
    /// Flush a counter as soon as its usage reaches this percentage of its
    /// limit (the optimized performance mode sets 90); `None` waits for
    /// the usual triggers.
    #[serde(skip)]
    pub near_limit_flush_percent: Option<u8>,
}

impl Default for SyncConfig {
    /// The development profile's values.
    fn default() -> Self {
        SyncConfig {
            enabled: true,
            heartbeat_interval: Duration::from_secs(30),
            check_interval: Duration::from_secs(60),
            force_sync_threshold: 5,
            max_sync_interval: Duration::from_secs(600),
            max_active_users_check: 100,
            session_timeout: Duration::from_secs(3600),
            sync_timeout: Duration::from_secs(5),
            max_concurrent_syncs: 3,
            batch_size: 500,
            max_cached_users: 1_000_000,
            threshold_linger: Duration::from_millis(100),
            dedup_window: Duration::from_secs(24 * 3600),
            max_request_ids: 10_000_000,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            flush_id_retention: Duration::from_secs(7 * 24 * 3600),
            wal: None,
            crash_after_commit: None,
            crash_in_recovery: false,
            sharing: None,
            near_limit_flush_percent: None,
        }
    }
}
