//! The shared tier: how several instances make one quota decision.
//!
//! Every instance counts in its own memory and flushes its own deltas;
//! deltas add up in the database, so instances never overwrite each other.
//! What must be shared is the admission decision, and that is what this
//! module does, in one of two modes:
//!
//! - [`SharingMode::Redis`] (strict): each consume runs one Lua script in
//!   Redis that checks the limit, adds the units and records the request
//!   id, atomically. N instances never admit more than the limit together.
//! - [`SharingMode::Lease`] (fast): an instance takes a lease of up to
//!   `lease_size` units from the Redis counter in one atomic step and
//!   admits from memory until it is spent. Unspent units go back when the
//!   lease expires or the instance stops. Leased units are already counted
//!   in Redis, so the limit holds exactly; near the limit leases shrink to
//!   half of what remains (down to 1) so no idle instance strands quota.
//!   Consumes that carry a request id take the strict path, so the id is
//!   deduplicated across instances.
//!
//! The Redis counter of a (user, kind, period) is created from this
//! instance's view (database count plus its own pending units) with
//! set-if-absent, and expires a day after the period ends. Admin changes
//! bump a per-user version that every script checks, so a stale instance
//! reloads the user from the database before deciding; plan changes bump a
//! catalogue version that instances poll every second.
//!
//! When Redis fails (error or timeout), the instance is *degraded* until a
//! probe succeeds: with [`RedisFallback::Local`] it admits from its own
//! counts (and adds what it admitted to the Redis counters when Redis
//! returns); with [`RedisFallback::Deny`] it refuses with `Unavailable`.
//! `docs/sharing.md` states the worst-case overshoot of each choice.

pub(crate) mod lease;
pub(crate) mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use usage_sync_core::Locked;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};
use usage_sync_core::{
    ConsumeOutcome, CoreError, Decision, Kind, Quota, RequestId, Timestamp, Units, UserId,
    UserUsage,
};

use crate::engine::{Engine, Refund, Spend};
use crate::error::Error;
use lease::{Leases, Return};
use redis::{Admission, AdmitReply, LeaseReply, Redis, RedisFailure, RefundReply};

mod admission;

/// How instances share quota decisions (`USAGE_SYNC_SHARING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharingMode {
    /// Every decision is made in Redis.
    Redis,
    /// Decisions are made from leases taken from Redis.
    Lease,
}

impl SharingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SharingMode::Redis => "redis",
            SharingMode::Lease => "lease",
        }
    }
}

/// What a degraded instance does (`USAGE_SYNC_REDIS_FALLBACK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisFallback {
    /// Admit from this instance's own counts.
    Local,
    /// Refuse with `Unavailable` (HTTP 503 `unavailable`).
    Deny,
}

impl RedisFallback {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFallback::Local => "local",
            RedisFallback::Deny => "deny",
        }
    }
}

impl crate::de::Words for RedisFallback {
    const WHAT: &'static str = "a fallback";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("local", RedisFallback::Local),
        ("deny", RedisFallback::Deny),
    ];
}

/// Settings of the shared tier.
///
/// It deserializes from the server's keys (`redis_cluster`,
/// `redis_fallback`, `redis_timeout`, `redis_prefix`, `lease_size`,
/// `lease_ttl`); the mode and the URLs are the caller's to set.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default = "SharingConfig::unset")]
pub struct SharingConfig {
    #[serde(skip)]
    pub mode: SharingMode,
    /// One URL for a single server; the seed nodes for a cluster.
    #[serde(skip)]
    pub urls: Vec<String>,
    #[serde(rename = "redis_cluster", deserialize_with = "crate::de::flag")]
    pub cluster: bool,
    #[serde(rename = "redis_fallback", deserialize_with = "crate::de::word")]
    pub fallback: RedisFallback,
    #[serde(deserialize_with = "crate::de::count::<1, 1_000_000, _, _>")]
    pub lease_size: u64,
    #[serde(deserialize_with = "crate::de::duration")]
    pub lease_ttl: Duration,
    /// Bound on one Redis call; past it the instance is degraded.
    #[serde(rename = "redis_timeout", deserialize_with = "crate::de::duration")]
    pub timeout: Duration,
    /// Prefix of every key, so several deployments can share one Redis.
    #[serde(rename = "redis_prefix")]
    pub key_prefix: String,
    /// How often a degraded instance probes Redis.
    #[serde(skip)]
    pub probe_interval: Duration,
}

impl SharingConfig {
    /// The defaults with no mode chosen yet and no URL (what a settings
    /// file starts from).
    pub fn unset() -> Self {
        SharingConfig {
            urls: Vec::new(),
            ..SharingConfig::new(SharingMode::Redis, "")
        }
    }

    pub fn new(mode: SharingMode, url: impl Into<String>) -> Self {
        SharingConfig {
            mode,
            urls: vec![url.into()],
            cluster: false,
            fallback: RedisFallback::Local,
            lease_size: 10,
            lease_ttl: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            key_prefix: "usage-sync".into(),
            probe_interval: Duration::from_millis(500),
        }
    }
}

/// Counters of the shared tier since start.
#[derive(Default)]
pub struct SharingStats {
    /// Redis commands and scripts sent.
    pub redis_operations: AtomicU64,
    pub redis_errors: AtomicU64,
    /// Decisions made without Redis while degraded (admitted or refused).
    pub fallback_decisions: AtomicU64,
    pub leases_taken: AtomicU64,
    pub lease_units_granted: AtomicU64,
    pub lease_units_returned: AtomicU64,
    /// Times the instance became degraded.
    pub outages: AtomicU64,
}

const VERSION_SHARDS: usize = 16;

/// The shared tier of one engine.
pub struct SharedTier {
    pub(crate) config: SharingConfig,
    redis: Redis,
    up: AtomicBool,
    /// Users whose Redis version is not 0 (they had admin changes), with
    /// the version this instance's copy of their profile reflects.
    versions: Vec<Mutex<HashMap<UserId, u64>>>,
    /// Units admitted while degraded, per Redis counter.
    debts: Mutex<HashMap<String, u64>>,
    /// Unspent lease units whose give-back has not reached Redis yet.
    returns: Mutex<Vec<(String, u64)>>,
    pub(crate) leases: Leases,
    plans_seen: AtomicU64,
    pub stats: SharingStats,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A point-in-time view of the shared tier, for status and metrics.
#[derive(Clone, Debug)]
pub struct SharingStatus {
    pub mode: SharingMode,
    pub fallback: RedisFallback,
    pub up: bool,
    pub redis_operations: u64,
    pub redis_errors: u64,
    pub fallback_decisions: u64,
    pub outages: u64,
    pub leases_held: usize,
    pub lease_units_held: u64,
    pub leases_taken: u64,
    pub lease_units_granted: u64,
    pub lease_units_returned: u64,
    pub debt_units: u64,
}

impl SharedTier {
    pub(crate) fn new(config: SharingConfig) -> Self {
        let redis = Redis::new(
            config.urls.clone(),
            config.cluster,
            config.timeout,
            config.key_prefix.clone(),
        );
        SharedTier {
            config,
            redis,
            up: AtomicBool::new(false),
            versions: (0..VERSION_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            debts: Mutex::new(HashMap::new()),
            returns: Mutex::new(Vec::new()),
            leases: Leases::new(),
            plans_seen: AtomicU64::new(0),
            stats: SharingStats::default(),
            task: Mutex::new(None),
        }
    }

    pub fn mode(&self) -> SharingMode {
        self.config.mode
    }

    /// False while degraded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn status(&self) -> SharingStatus {
        let s = &self.stats;
        let (leases_held, lease_units_held) = self.leases.held();
        SharingStatus {
            mode: self.config.mode,
            fallback: self.config.fallback,
            up: self.is_up(),
            redis_operations: s.redis_operations.load(Ordering::Relaxed),
            redis_errors: s.redis_errors.load(Ordering::Relaxed),
            fallback_decisions: s.fallback_decisions.load(Ordering::Relaxed),
            outages: s.outages.load(Ordering::Relaxed),
            leases_held,
            lease_units_held,
            leases_taken: s.leases_taken.load(Ordering::Relaxed),
            lease_units_granted: s.lease_units_granted.load(Ordering::Relaxed),
            lease_units_returned: s.lease_units_returned.load(Ordering::Relaxed),
            debt_units: lock(&self.debts).values().sum(),
        }
    }

    /// The lease this instance holds for one counter: (unspent units,
    /// milliseconds until it expires).
    pub fn lease_of(&self, user: &UserId, kind: &Kind) -> Option<(u64, u64)> {
        self.leases
            .of(user, u16::try_from(kind.index()).unwrap_or(u16::MAX))
            .map(|(_, left, at)| {
                (
                    left,
                    u64::try_from(at.saturating_duration_since(Instant::now()).as_millis())
                        .unwrap_or(u64::MAX),
                )
            })
    }

    fn ops(&self, n: u64) {
        self.stats.redis_operations.fetch_add(n, Ordering::Relaxed);
    }

    fn version_shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<UserId, u64>> {
        let h = foldhash::fast::FixedState::with_seed(11);
        let i = usize::try_from(std::hash::BuildHasher::hash_one(&h, user) % VERSION_SHARDS as u64)
            .unwrap_or(0);
        lock(&self.versions[i])
    }

    fn version(&self, user: &UserId) -> u64 {
        self.version_shard(user.as_str())
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    fn set_version(&self, user: &UserId, v: u64) {
        let mut s = self.version_shard(user.as_str());
        if v == 0 {
            s.remove(user);
        } else {
            s.insert(user.clone(), v);
        }
    }

    /// Records a failure (see [`SharedTier::mark_down`]) and turns it into
    /// the `Unavailable` answer of a call that needed Redis.
    fn unavailable(&self, e: &RedisFailure, what: &str) -> Error {
        self.mark_down(e);
        Error::Unavailable(format!("{what} ({e})"))
    }

    /// A failure of one request's keys (see [`RedisFailure::is_connectivity`]):
    /// counted and logged, and turned into that request's 503. `None` for a
    /// connectivity failure, after entering the degraded state: the caller
    /// then decides with the fallback.
    fn key_failure(&self, e: &RedisFailure) -> Option<Error> {
        if e.is_connectivity() {
            self.mark_down(e);
            return None;
        }
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        warn!(target: "consume", error = %e, "redis refused this request's keys; the request fails, the instance stays up");
        Some(Error::Unavailable(format!(
            "the shared quota store (redis) refused this request: {e}"
        )))
    }

    /// Records a failure and, if Redis could not be reached, enters the
    /// degraded state (logged once per outage; the probe leaves it). An
    /// error about one key never degrades the instance:
    /// `usage_sync_redis_up` reflects connectivity only.
    fn mark_down(&self, e: &RedisFailure) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        if !e.is_connectivity() {
            warn!(target: "consume", error = %e, "redis refused one operation; the instance stays up");
            return;
        }
        if self.up.swap(false, Ordering::AcqRel) {
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            warn!(
                target: "consume",
                error = %e,
                fallback = self.config.fallback.as_str(),
                "redis is unreachable: the instance is degraded and decides without the shared tier until redis answers again"
            );
        }
    }

    fn queue_returns(&self, rs: impl IntoIterator<Item = Return>, kinds: &usage_sync_core::Kinds) {
        let mut q = lock(&self.returns);
        for r in rs {
            let kind = kinds.by_index(r.kind as usize).name();
            q.push((
                self.redis
                    .counter_key(r.user.as_str(), kind, r.period_start.as_millis()),
                r.units,
            ));
        }
    }

    /// Sends queued give-backs. Failures stay queued.
    async fn send_returns(&self) -> Result<(), RedisFailure> {
        let batch = std::mem::take(&mut *lock(&self.returns));
        let mut iter = batch.into_iter();
        while let Some((key, units)) = iter.next() {
            self.ops(1);
            if let Err(e) = self.redis.give_back(&key, units).await {
                let mut q = lock(&self.returns);
                q.push((key, units));
                q.extend(iter);
                return Err(e);
            }
            self.stats
                .lease_units_returned
                .fetch_add(units, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Adds the units admitted while degraded to the counters that survived.
    async fn pay_debts(&self) -> Result<(), RedisFailure> {
        let debts = std::mem::take(&mut *lock(&self.debts));
        if debts.is_empty() {
            return Ok(());
        }
        let mut iter = debts.into_iter();
        while let Some((key, units)) = iter.next() {
            self.ops(1);
            if let Err(e) = self.redis.add_debt(&key, units).await {
                let mut d = lock(&self.debts);
                *d.entry(key).or_default() += units;
                for (k, u) in iter {
                    *d.entry(k).or_default() += u;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Tries to leave the degraded state: connect if needed, ping, pay the
    /// debts; only then are decisions made in Redis again, so a counter
    /// never misses units admitted during the outage.
    async fn try_recover(&self) -> Result<(), RedisFailure> {
        if self.redis.ping().await.is_err() {
            self.redis.connect().await?;
            self.redis.ping().await?;
        }
        self.ops(1);
        self.pay_debts().await?;
        if !self.up.swap(true, Ordering::AcqRel) {
            info!(target: "consume", "redis answers again: decisions are shared again");
        }
        Ok(())
    }
}

/// Connects to the configured Redis and pings it once (for
/// `usage-sync check-config`).
pub async fn ping(config: &SharingConfig) -> Result<(), String> {
    let r = Redis::new(
        config.urls.clone(),
        config.cluster,
        config.timeout,
        config.key_prefix.clone(),
    );
    r.connect().await.map_err(|e| e.to_string())?;
    r.ping().await.map_err(|e| e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.locked()
}

/// A day of slack after the period ends, so a late refund still finds the
/// counter; 0 (never expire) for periods without an end.
fn expire_at(period_end: Timestamp) -> i64 {
    if period_end == Timestamp::FAR_FUTURE {
        0
    } else {
        period_end
            .saturating_add_ms(usage_sync_core::time::MS_PER_DAY)
            .as_millis()
    }
}

fn decision_at(q: &Quota, allowed: bool, used: u64) -> Decision {
    Decision {
        allowed,
        used,
        limit: q.limit,
        remaining: q.limit.map(|l| l.saturating_sub(used)),
        period_start: q.period_start,
    }
}

impl Engine {
    pub(crate) fn shared(&self) -> Option<&Arc<SharedTier>> {
        self.inner.shared.as_ref()
    }

    /// The shared tier's status, when one is configured.
    pub fn sharing(&self) -> Option<SharingStatus> {
        self.shared().map(|t| t.status())
    }

    /// This instance's lease for one counter, in lease mode.
    pub fn lease_of(&self, user: &UserId, kind: &Kind) -> Option<(u64, u64)> {
        self.shared()
            .filter(|t| t.mode() == SharingMode::Lease)
            .and_then(|t| t.lease_of(user, kind))
    }

    /// Connects the shared tier at start. Redis being down at start is not
    /// fatal: the instance starts degraded and the probe connects later.
    pub(crate) async fn open_shared(&self) {
        let Some(t) = self.shared() else { return };
        match t.try_recover().await {
            Ok(()) => {
                if let Ok(v) = t.redis.plans_version().await {
                    t.plans_seen.store(v, Ordering::Release);
                }
            }
            Err(e) => {
                t.stats.outages.fetch_add(1, Ordering::Relaxed);
                warn!(target: "consume", error = %e, fallback = t.config.fallback.as_str(), "redis is unreachable at start: starting degraded");
            }
        }
    }

    /// Starts the shared tier's background task: the probe while degraded,
    /// lease expiry and give-backs, and the plan catalogue poll.
    pub(crate) fn start_shared(&self) {
        let Some(t) = self.shared() else { return };
        let mut task = lock(&t.task);
        if task.is_some() {
            return;
        }
        let engine = self.clone();
        let tick = t
            .config
            .probe_interval
            .min(t.config.lease_ttl / 4)
            .max(Duration::from_millis(10));
        *task = Some(tokio::spawn(async move {
            let t = engine.shared().expect("shared tier").clone();
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_poll = Instant::now();
            loop {
                interval.tick().await;
                if !t.is_up()
                    && let Err(e) = t.try_recover().await
                {
                    tracing::debug!(target: "consume", error = %e, "redis probe failed");
                    continue;
                }
                // A fallback decision racing the recovery (it saw the tier
                // down just before it came back) leaves a debt after the
                // recovery paid the others: pay it on the next tick.
                if let Err(e) = t.pay_debts().await {
                    t.mark_down(&e);
                    continue;
                }
                let expired = t.leases.expire(Some(Instant::now()));
                t.queue_returns(expired, engine.kinds());
                if let Err(e) = t.send_returns().await {
                    t.mark_down(&e);
                    continue;
                }
                if Instant::now() >= next_poll {
                    next_poll = Instant::now() + Duration::from_secs(1);
                    if let Err(e) = engine.poll_plans(&t).await {
                        warn!(target: "admin", error = %e, "could not refresh the plan catalogue");
                    }
                }
            }
        }));
    }

    /// Stops the background task and gives every unspent lease unit back.
    pub(crate) async fn stop_shared(&self) {
        let Some(t) = self.shared() else { return };
        if let Some(task) = lock(&t.task).take() {
            task.abort();
        }
        let all = t.leases.expire(None);
        t.queue_returns(all, self.kinds());
        if t.is_up()
            && let Err(e) = t.send_returns().await
        {
            warn!(target: "consume", error = %e, "could not give unspent lease units back to redis; they stay counted until the period ends");
        }
    }

    async fn poll_plans(&self, t: &SharedTier) -> Result<(), Error> {
        t.ops(1);
        let v = match t.redis.plans_version().await {
            Ok(v) => v,
            Err(e) => {
                t.mark_down(&e);
                return Ok(());
            }
        };
        if v != t.plans_seen.load(Ordering::Acquire) {
            self.reload_plans().await?;
            t.plans_seen.store(v, Ordering::Release);
            info!(target: "admin", version = v, "plan catalogue changed on another instance: reloaded");
        }
        Ok(())
    }

    /// An admin changed this user elsewhere: reload its profile from the
    /// database and drop the leases taken under the old one.
    async fn reload_user(&self, t: &SharedTier, user: &UserId, version: u64) -> Result<(), Error> {
        let (profile, _) = self.read_user(user).await?;
        self.inner
            .ledger
            .set_profile(user.as_str(), profile, self.now());
        t.set_version(user, version);
        t.queue_returns(t.leases.drop_user(user), self.kinds());
        Ok(())
    }

    /// Tells the other instances that this user changed. Called after the
    /// database write, so an instance that sees the new version reads the
    /// new profile.
    pub(crate) async fn publish_user_change(&self, user: &UserId) -> Result<(), Error> {
        let Some(t) = self.shared() else {
            return Ok(());
        };
        t.ops(1);
        match t.redis.bump_user(user.as_str()).await {
            Ok(v) => {
                t.set_version(user, v);
                t.queue_returns(t.leases.drop_user(user), self.kinds());
                Ok(())
            }
            Err(e) => Err(t.unavailable(
                &e,
                "the change is saved but the other instances could not be told; repeat the request",
            )),
        }
    }

    pub(crate) async fn publish_plans_change(&self) -> Result<(), Error> {
        let Some(t) = self.shared() else {
            return Ok(());
        };
        t.ops(1);
        match t.redis.bump_plans().await {
            Ok(v) => {
                t.plans_seen.store(v, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(t.unavailable(
                &e,
                "the plan is saved but the other instances could not be told; repeat the request",
            )),
        }
    }
}
