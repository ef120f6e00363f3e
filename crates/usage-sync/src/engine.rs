//! The engine: the public face of the library. It owns the in-memory ledger
//! and the store, makes cold users resident on first touch, and exposes
//! consume / check / refund / usage and the admin operations.
//!
//! The request path is: parse (done by the caller, into core types) →
//! `Ledger::consume` under one shard lock → wake the sync engine if a
//! threshold was reached → return. It touches the store only for a user
//! that is not in memory yet (one indexed read), never for a resident one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use usage_sync_core::{
    ConsumeOutcome, CoreError, Decision, Kind, Kinds, Ledger, LedgerConfig, Limit, PeriodKind,
    PersistedRow, Plan, Plans, RequestId, Timestamp, Units, UserId, UserProfile, UserUsage,
};
use usage_sync_store::{Store, StoredPlan, StoredUser, UserState, Wal, WalConfig};

use crate::clock::SharedClock;
use crate::config::SyncConfig;
use crate::error::Error;
use crate::loading::Loaded;
use crate::metrics::RequestMetrics;
use crate::recovery::RecoveryReport;
use crate::sharing::SharedTier;
use crate::sync::SyncEngine;

/// A handle to the engine. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) ledger: Ledger,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: SharedClock,
    pub(crate) config: SyncConfig,
    /// The sync engine: its triggers, flushes, retries and statistics.
    pub(crate) sync: SyncEngine,
    /// False while starting and once shutdown began: requests get
    /// `Unavailable` instead of a decision.
    pub(crate) accepting: AtomicBool,
    pub(crate) started_at: Timestamp,
    /// The write-ahead log, when configured.
    pub(crate) wal: Option<Arc<Wal>>,
    pub(crate) recovery: OnceLock<RecoveryReport>,
    /// Successful commits, for the crash-after-commit fault hook.
    pub(crate) commits: AtomicU64,
    pub(crate) requests: RequestMetrics,
    /// The shared tier (Redis), when several instances share quotas.
    pub(crate) shared: Option<Arc<SharedTier>>,
    /// Cold loads queued and in flight.
    pub(crate) loads: crate::loading::Loads,
}

/// Result of a refund.
#[derive(Clone, Debug)]
pub struct Refund {
    pub user: UserId,
    pub kind: Kind,
    pub refunded: u64,
    pub usage: UserUsage,
}

/// Result of [`Engine::sync_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncAllReport {
    /// Users examined (those with pending units).
    pub checked: usize,
    pub flushed_users: usize,
    pub flushed_units: i64,
}

/// One consume on its way through admission: may `user` spend `amount`
/// of `kind`, under the client's idempotency key `request_id`?
#[derive(Clone, Copy)]
pub(crate) struct Spend<'a> {
    pub user: &'a UserId,
    pub kind: &'a Kind,
    pub amount: Units,
    pub request_id: Option<&'a RequestId>,
}

impl Engine {
    /// Opens the engine over `store`: runs migrations, loads the plans saved
    /// by admins (they take precedence over `plans` from configuration) and
    /// builds the in-memory ledger. Call [`Engine::start`] to run the sync
    /// engine's triggers.
    pub async fn open(
        store: Arc<dyn Store>,
        kinds: Kinds,
        plans: Plans,
        config: SyncConfig,
        clock: SharedClock,
    ) -> Result<Engine, Error> {
        if cfg!(not(feature = "redis")) && config.sharing.is_some() {
            // Before anything is opened: a shared tier that can never
            // connect would otherwise retry for ever.
            return Err(Error::Invalid(
                "sharing needs Redis, and this build of usage-sync has no Redis client: \
                 enable the `redis` feature of the usage-sync crate"
                    .into(),
            ));
        }
        store.migrate().await?;
        let mut plans = plans;
        for stored in store.load_plans().await? {
            plans = plans.with_plan(plan_from_stored(&kinds, &stored)?);
        }
        let (wal, recovered) = match &config.wal {
            Some(cfg) => {
                // Segments holding request ids are kept as long as the
                // ledger remembers them.
                let cfg = WalConfig {
                    dedup_window: config.dedup_window,
                    ..cfg.clone()
                };
                let (wal, rec) = Wal::open(cfg)?;
                (Some(wal), Some(rec))
            }
            None => (None, None),
        };
        let ledger = Ledger::new(
            kinds,
            plans,
            LedgerConfig {
                shards: LedgerConfig::shards_for(config.max_cached_users),
                threshold: config.force_sync_threshold,
                dedup_window_ms: i64::try_from(config.dedup_window.as_millis()).unwrap_or(i64::MAX),
                max_request_ids: config.max_request_ids,
                instance_nonce: fastrand::u64(..),
                // Fingerprints in the log stay valid only under its key.
                dedup_key: recovered.as_ref().and_then(|r| r.dedup_key),
                near_limit_percent: config.near_limit_flush_percent,
            },
        );
        let started_at = clock.now();
        let shared = config.sharing.clone().map(|c| Arc::new(SharedTier::new(c)));
        let engine = Engine {
            inner: Arc::new(Inner {
                ledger,
                store,
                clock,
                sync: SyncEngine::new(config.max_concurrent_syncs, started_at),
                config,
                accepting: AtomicBool::new(true),
                started_at,
                wal: wal.clone(),
                recovery: OnceLock::new(),
                commits: AtomicU64::new(0),
                requests: RequestMetrics::default(),
                shared,
                loads: Default::default(),
            }),
        };
        engine.open_shared().await;
        if let (Some(wal), Some(rec)) = (wal, recovered) {
            match engine.recover(&wal, rec).await {
                Ok(report) => {
                    let _ = engine.inner.recovery.set(report);
                }
                Err(e) => {
                    // Stop the writer; nothing was written to the old
                    // segment, so the next attempt replays the same state.
                    wal.close();
                    return Err(e);
                }
            }
        }
        Ok(engine)
    }

    /// Consume decisions and latency since start.
    pub fn request_metrics(&self) -> &RequestMetrics {
        &self.inner.requests
    }

    /// What start-up recovery found (None without a write-ahead log).
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.inner.recovery.get()
    }

    /// The write-ahead log, when configured.
    pub(crate) fn wal(&self) -> Option<&Arc<Wal>> {
        self.inner.wal.as_ref()
    }

    /// Waits until a log record is as durable as the configured mode
    /// promises; only then may the operation be acknowledged.
    pub(crate) async fn durable(&self, lsn: Option<usage_sync_core::Lsn>) -> Result<(), Error> {
        if let (Some(wal), Some(lsn)) = (&self.inner.wal, lsn) {
            wal.wait(lsn).await.map_err(|e| {
                Error::Unavailable(format!("the write-ahead log cannot make this durable: {e}"))
            })?;
        }
        Ok(())
    }

    pub fn kinds(&self) -> &Kinds {
        self.inner.ledger.kinds()
    }

    pub fn plans(&self) -> Arc<Plans> {
        self.inner.ledger.plans()
    }

    pub fn config(&self) -> &SyncConfig {
        &self.inner.config
    }

    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    pub fn started_at(&self) -> Timestamp {
        self.inner.started_at
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The ledger. Outside the engine, [`Engine::ledger_figures`] and the
    /// other typed queries (`queries.rs`) show what it holds.
    pub(crate) fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// Whether the engine answers requests (false during shutdown).
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    fn ensure_accepting(&self) -> Result<(), Error> {
        if self.is_accepting() {
            Ok(())
        } else {
            Err(Error::Unavailable("the service is shutting down".into()))
        }
    }

    /// Why the write-ahead log cannot take records now (a full disk), if
    /// it cannot. Consumes and refunds are refused while it cannot: a
    /// record that cannot be written must not be counted in memory and
    /// flushed while its request is answered 503.
    pub fn log_failure(&self) -> Option<String> {
        self.inner.wal.as_ref().and_then(|w| w.failure())
    }

    /// Refuses a change the log could not record.
    fn ensure_loggable(&self) -> Result<(), Error> {
        match &self.inner.wal {
            Some(w) if w.failed() => {
                Err(Error::Unavailable(w.failure().unwrap_or_else(|| {
                    "the write-ahead log cannot write".into()
                })))
            }
            _ => Ok(()),
        }
    }

    pub fn kind(&self, name: &str) -> Result<Kind, Error> {
        Ok(*self.kinds().get(name)?)
    }

    /// May `user` spend `amount` of `kind`? If so, it is counted in the same
    /// atomic step. With a `request_id`, a repeat returns the original
    /// decision with `deduplicated = true` and counts nothing.
    pub async fn consume(
        &self,
        user: &UserId,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
    ) -> Result<ConsumeOutcome, Error> {
        self.ensure_accepting()?;
        self.ensure_loggable()?;
        let started = std::time::Instant::now();
        let out = self
            .decide(Spend {
                user,
                kind,
                amount,
                request_id,
            })
            .await?;
        if out.threshold_reached {
            self.inner.sync.threshold_wake.notify_one();
        }
        self.durable(out.lsn).await?;
        let m = &self.inner.requests;
        m.record(out.deduplicated, out.decision.allowed);
        m.latency.observe(started.elapsed());
        Ok(out)
    }

    /// Consumes a batch of events in order, each decided and counted as by
    /// [`Engine::consume`], with one durability wait for the whole batch
    /// (the log makes the batch durable together). In a shared mode each
    /// event is still one Redis decision, made one after the other. Events
    /// are independent: one refused or failing event does not stop the
    /// others. If the log cannot make the batch durable, every event that
    /// counted reports `Unavailable` (nothing of it was acknowledged).
    pub async fn consume_batch(
        &self,
        events: &[(UserId, Kind, Units, Option<RequestId>)],
    ) -> Result<Vec<Result<ConsumeOutcome, Error>>, Error> {
        self.ensure_accepting()?;
        self.ensure_loggable()?;
        let mut out = Vec::with_capacity(events.len());
        let mut last_lsn = None;
        let mut wake = false;
        for (user, kind, amount, rid) in events {
            let r = self
                .decide(Spend {
                    user,
                    kind,
                    amount: *amount,
                    request_id: rid.as_ref(),
                })
                .await;
            if let Ok(o) = &r {
                wake |= o.threshold_reached;
                last_lsn = last_lsn.max(o.lsn);
            }
            out.push(r);
        }
        if wake {
            self.inner.sync.threshold_wake.notify_one();
        }
        // Log records are appended in order: waiting for the last one
        // covers every earlier one.
        if let Err(e) = self.durable(last_lsn).await {
            let msg = e.to_string();
            for r in &mut out {
                if r.as_ref().is_ok_and(|o| o.lsn.is_some()) {
                    *r = Err(Error::Unavailable(msg.clone()));
                }
            }
        }
        let m = &self.inner.requests;
        for r in out.iter().flatten() {
            m.record(r.deduplicated, r.decision.allowed);
        }
        // Not observed in the consume latency histogram: one batch of a
        // thousand events is not one consume.
        Ok(out)
    }

    /// Decides and counts one consume: through the shared tier when one is
    /// configured, else from this instance's own counts.
    async fn decide(&self, s: Spend<'_>) -> Result<ConsumeOutcome, Error> {
        match &self.inner.shared {
            Some(t) => self.consume_shared(t, s).await,
            None => self.consume_local(s).await,
        }
    }

    /// Runs a ledger operation on `user`, loading the user from the store
    /// first if it is not in memory (and again if it was evicted in
    /// between): the one place that turns `NotResident` into a load.
    pub(crate) async fn resident<T>(
        &self,
        user: &UserId,
        mut op: impl FnMut(&Ledger, Timestamp) -> Result<T, CoreError>,
    ) -> Result<T, Error> {
        loop {
            match op(&self.inner.ledger, self.now()) {
                Err(CoreError::NotResident) => self.make_resident(user).await?,
                other => return Ok(other?),
            }
        }
    }

    /// The consume decision from this instance's own counts.
    pub(crate) async fn consume_local(&self, s: Spend<'_>) -> Result<ConsumeOutcome, Error> {
        self.resident(s.user, |l, now| {
            l.consume(s.user.as_str(), s.kind, s.amount, s.request_id, now)
        })
        .await
    }

    /// Answers the consume question without counting.
    pub async fn check(
        &self,
        user: &UserId,
        kind: &Kind,
        amount: Units,
    ) -> Result<Decision, Error> {
        self.ensure_accepting()?;
        if let Some(t) = &self.inner.shared {
            return self.check_shared(t, user, kind, amount).await;
        }
        self.resident(user, |l, now| l.check(user.as_str(), kind, amount, now))
            .await
    }

    /// Reverses the consume made under `request_id`, once. With `user`,
    /// refuses ([`CoreError::RequestIdConflict`]) unless the consume was
    /// that user's.
    pub async fn refund(&self, request_id: &str, user: Option<&UserId>) -> Result<Refund, Error> {
        self.ensure_accepting()?;
        self.ensure_loggable()?;
        match &self.inner.shared {
            Some(t) => self.refund_shared(t, request_id, user).await,
            None => self.refund_local(request_id, user).await,
        }
    }

    /// A refund from this instance's own request records.
    pub(crate) async fn refund_local(
        &self,
        request_id: &str,
        user: Option<&UserId>,
    ) -> Result<Refund, Error> {
        let ledger = &self.inner.ledger;
        let user = user.map(UserId::as_str);
        loop {
            let owner = ledger
                .request_owner(request_id, self.now())
                .ok_or(CoreError::UnknownRequest)?;
            match ledger.refund(request_id, user, self.now()) {
                Err(CoreError::NotResident) => self.make_resident(&owner).await?,
                Err(e) => return Err(e.into()),
                Ok(r) => {
                    self.durable(r.lsn).await?;
                    let usage = self.usage(&r.user).await?;
                    return Ok(Refund {
                        user: r.user,
                        kind: r.kind,
                        refunded: r.refunded,
                        usage,
                    });
                }
            }
        }
    }

    /// Current usage of `user`: persisted + pending for the current period.
    /// A user not in memory is read from the store without being loaded.
    /// In a shared mode, `used` is the shared count, the same on every
    /// instance (see [`Engine::shared_view`]).
    pub async fn usage(&self, user: &UserId) -> Result<UserUsage, Error> {
        let mut u = self.local_usage(user).await?;
        match self.shared() {
            Some(t) => self.shared_view(t, &mut u).await,
            None => self.database_view(&mut u).await,
        }
        Ok(u)
    }

    /// Without a shared tier, on PostgreSQL (which several instances may
    /// share), adds to a resident user's counts the units other instances
    /// flushed since this one last read or flushed them: the database holds
    /// more than this instance's `persisted`. One query per call; a counter
    /// with a batch of this instance in flight is left as it is (its units
    /// may already be in the database), and a store error leaves the local
    /// view rather than failing the read. Decisions are unaffected: without
    /// Redis each instance enforces the limit on its own counts
    /// (docs/sharing.md).
    async fn database_view(&self, u: &mut UserUsage) {
        if !u.resident || self.inner.store.backend() != "postgres" {
            return;
        }
        let Ok((_, rows)) = self.read_user(&u.user).await else {
            return;
        };
        for k in &mut u.kinds {
            if k.in_flight != 0 {
                continue;
            }
            let Some(db) = rows
                .iter()
                .find(|r| r.kind == k.kind.index() && r.period_start == u.period_start)
                .and_then(|r| u64::try_from(r.used).ok())
            else {
                continue;
            };
            if db > k.persisted {
                k.used = k.used.saturating_add(db - k.persisted);
                k.persisted = db;
                k.remaining = k.limit.map(|l| l.saturating_sub(k.used));
            }
        }
    }

    /// [`Engine::usage`] from this instance's own counts.
    async fn local_usage(&self, user: &UserId) -> Result<UserUsage, Error> {
        let now = self.now();
        if let Some(u) = self.inner.ledger.usage(user.as_str(), now) {
            return Ok(u);
        }
        if self.inner.ledger.is_resident(user.as_str()) {
            // Resident with a counter of a period it never read (a plan
            // switch, the clock stepped back): read it, then answer from
            // memory, which also holds the units the store lacks.
            self.make_resident(user).await?;
            if let Some(u) = self.inner.ledger.usage(user.as_str(), self.now()) {
                return Ok(u);
            }
        }
        let (profile, rows) = self.read_user(user).await?;
        // It may have become resident while we read: prefer memory.
        if let Some(u) = self.inner.ledger.usage(user.as_str(), now) {
            return Ok(u);
        }
        Ok(self
            .inner
            .ledger
            .usage_from_store(user, &profile, &rows, now))
    }

    /// The earliest period start any plan could resolve to now: loading rows
    /// from there covers the user's current period whatever its plan.
    pub(crate) fn load_since(&self) -> Timestamp {
        let now = self.now();
        self.plans()
            .iter()
            .map(|p| p.period.calendar_bounds(now).0)
            .min()
            .unwrap_or(Timestamp::EPOCH)
    }

    /// Reads a user's profile and persisted counters from the store,
    /// mapping kind names to the configured kinds (unknown kinds skipped).
    pub(crate) async fn read_user(
        &self,
        user: &UserId,
    ) -> Result<(UserProfile, Vec<PersistedRow>), Error> {
        let started = std::time::Instant::now();
        let state = self
            .inner
            .store
            .load_user(user.to_string(), self.load_since())
            .await?;
        self.inner.requests.store_load.observe(started.elapsed());
        Ok(self.user_from_state(state))
    }

    /// The ledger's view of a user read from the store.
    pub(crate) fn user_from_state(&self, state: UserState) -> (UserProfile, Vec<PersistedRow>) {
        let kinds = self.kinds();
        let profile = state
            .profile
            .map(|p| profile_from_stored(kinds, p))
            .unwrap_or_default();
        let rows = state
            .usage
            .into_iter()
            .filter_map(|r| {
                kinds.get(&r.kind).ok().map(|k| PersistedRow {
                    kind: k.index(),
                    period_start: r.period_start,
                    used: r.used,
                })
            })
            .collect();
        (profile, rows)
    }

    /// Loads a user into memory. Retries if an eviction or admin change
    /// raced with the read (the ledger detects it through the load epoch),
    /// so a stale read can never become the in-memory truth.
    pub(crate) async fn make_resident(&self, user: &UserId) -> Result<(), Error> {
        for _ in 0..8 {
            let (loaded, start) = self.inner.loads.enqueue(user);
            if start {
                tokio::spawn(self.clone().load_rounds());
            }
            match loaded.await {
                Ok(Loaded::Warmed) => return Ok(()),
                Ok(Loaded::Retry) => continue,
                // The batch failed or its task died: alone, so that this
                // request gets the store's own error.
                Ok(Loaded::Failed) | Err(_) => return self.make_resident_alone(user).await,
            }
        }
        Err(Error::Unavailable(
            "user state kept changing while loading; retry".into(),
        ))
    }

    /// Loads one user with its own store call (see [`crate::loading`] for
    /// the batched path every miss takes first).
    async fn make_resident_alone(&self, user: &UserId) -> Result<(), Error> {
        for _ in 0..8 {
            let epoch = self.inner.ledger.load_epoch(user.as_str());
            let (profile, rows) = self.read_user(user).await?;
            if self
                .inner
                .ledger
                .warm(user, profile, &rows, epoch, self.now())
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(Error::Unavailable(
            "user state kept changing while loading; retry".into(),
        ))
    }

    /// The profile of a user: from memory if resident, else the store.
    async fn profile(&self, user: &UserId) -> Result<UserProfile, Error> {
        if let Some(p) = self.inner.ledger.profile(user.as_str()) {
            return Ok(p);
        }
        Ok(self.read_user(user).await?.0)
    }

    async fn save_profile(&self, user: &UserId, profile: UserProfile) -> Result<(), Error> {
        let stored = StoredUser {
            plan: profile.plan.clone(),
            overrides: profile
                .overrides
                .iter()
                .map(|&(k, l)| (self.kinds().by_index(k).name().to_owned(), l))
                .collect(),
            reset_at: profile.reset_at,
        };
        self.inner.store.save_user(user.to_string(), stored).await?;
        // Store first, memory second: a concurrent cold load either reads
        // the new row or is refused by the epoch bump in `set_profile`.
        self.inner
            .ledger
            .set_profile(user.as_str(), profile, self.now());
        Ok(())
    }

    /// Reloads the plans saved by admins (a change made on another
    /// instance).
    pub(crate) async fn reload_plans(&self) -> Result<(), Error> {
        for stored in self.inner.store.load_plans().await? {
            self.inner
                .ledger
                .set_plan(plan_from_stored(self.kinds(), &stored)?);
        }
        Ok(())
    }

    /// Creates or replaces a plan. Applies to every user's next request.
    pub async fn set_plan(
        &self,
        name: &str,
        period: PeriodKind,
        limits: &[(String, Limit)],
    ) -> Result<Plan, Error> {
        validate_plan_name(name)?;
        let plan = Plan::from_named_limits(
            name,
            period,
            self.kinds(),
            limits.iter().map(|(k, l)| (k.as_str(), *l)),
        )?;
        self.inner
            .store
            .save_plan(StoredPlan {
                name: name.to_owned(),
                period,
                limits: limits.to_vec(),
            })
            .await?;
        self.inner.ledger.set_plan(plan.clone());
        self.publish_plans_change().await?;
        Ok(plan)
    }

    /// Assigns a plan and/or per-kind limit overrides to a user. `plan:
    /// None` keeps the current plan; `limits: None` keeps the overrides.
    /// Pending units are never lost; a changed limit applies to the next
    /// consume.
    pub async fn set_user(
        &self,
        user: &UserId,
        plan: Option<&str>,
        limits: Option<&[(String, Limit)]>,
    ) -> Result<UserUsage, Error> {
        if let Some(p) = plan
            && self.plans().get(p).is_none()
        {
            return Err(Error::Invalid(format!(
                "unknown plan '{}'",
                usage_sync_core::ids::truncate_for_message(p)
            )));
        }
        let mut overrides = None;
        if let Some(limits) = limits {
            let mut o = Vec::with_capacity(limits.len());
            for (k, l) in limits {
                let kind = self.kinds().get(k)?.index();
                o.push((kind, usage_sync_core::quota::validate_limit(k, *l)?));
            }
            overrides = Some(o);
        }
        let mut profile = self.profile(user).await?;
        if let Some(p) = plan {
            profile.plan = Some(p.to_owned());
        }
        if let Some(o) = overrides {
            profile.overrides = o;
        }
        self.save_profile(user, profile).await?;
        self.publish_user_change(user).await?;
        self.usage(user).await
    }

    /// Starts a new period for `user` now. Units counted before stay in the
    /// old period and are still flushed there.
    pub async fn reset_user(&self, user: &UserId) -> Result<UserUsage, Error> {
        let mut profile = self.profile(user).await?;
        profile.reset_at = Some(self.now());
        self.save_profile(user, profile).await?;
        self.publish_user_change(user).await?;
        self.usage(user).await
    }
}

fn validate_plan_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "plan names are 1-64 of A-Z, a-z, 0-9, '_', '-' and '.'".into(),
        ))
    }
}

/// A plan saved by an admin, as a core plan. A stored plan naming a kind
/// that is no longer configured keeps its other limits; the unknown kind
/// is ignored.
fn plan_from_stored(kinds: &Kinds, stored: &StoredPlan) -> Result<Plan, Error> {
    let limits: Vec<(&str, Limit)> = stored
        .limits
        .iter()
        .filter(|(k, _)| kinds.get(k).is_ok())
        .map(|(k, l)| (k.as_str(), *l))
        .collect();
    Ok(Plan::from_named_limits(
        &stored.name,
        stored.period,
        kinds,
        limits,
    )?)
}

pub(crate) fn profile_from_stored(kinds: &Kinds, p: StoredUser) -> UserProfile {
    UserProfile {
        plan: p.plan,
        overrides: p
            .overrides
            .into_iter()
            .filter_map(|(k, l)| kinds.get(&k).ok().map(|k| (k.index(), l)))
            .collect(),
        reset_at: p.reset_at,
    }
}

/// Built without the `redis` feature (`.ci/run` runs these with
/// `--no-default-features --features sqlite`): a sharing configuration is
/// refused before anything is opened, with the feature to enable.
#[cfg(all(test, not(feature = "redis")))]
mod without_redis {
    use std::sync::Arc;

    use usage_sync_core::default_catalogue;
    use usage_sync_store::SqliteStore;

    use crate::{Engine, Error, SharingConfig, SharingMode, SyncConfig, SystemClock};

    #[tokio::test]
    async fn a_sharing_configuration_is_refused_with_the_feature_to_enable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("u.db")).unwrap());
        let (kinds, plans) = default_catalogue();
        let config = SyncConfig {
            sharing: Some(SharingConfig::new(
                SharingMode::Redis,
                "redis://127.0.0.1:6379",
            )),
            ..SyncConfig::default()
        };
        let Err(e) = Engine::open(store, kinds, plans, config, Arc::new(SystemClock)).await else {
            panic!("opened with sharing and no Redis client");
        };
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "sharing needs Redis, and this build of usage-sync has no Redis client: \
             enable the `redis` feature of the usage-sync crate"
        );
    }
}
