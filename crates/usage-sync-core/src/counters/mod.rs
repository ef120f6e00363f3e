//! The in-memory ledger: every resident user's counters, the atomic
//! check-and-count, the idempotency table, and the due-structures the sync
//! engine drains.
//!
//! # Shape
//!
//! Users are spread over `N` shards by a hash of their id; each shard is a
//! mutex around a hash table of boxed entries plus three queues. A consume
//! locks exactly one shard (two with a request id: the dedup shard, then
//! the user shard), so different users almost never contend and the same
//! user is serialised, which is what makes check-and-count atomic: the
//! limit test and the increment happen under one lock. A consume hashes
//! the id once: the high bits pick the shard, the low bits the bucket, and
//! a bucket holds only the entry's pointer, so the table stays small
//! enough to stay cached and the id is compared in the entry the consume
//! reads next anyway.
//!
//! # Counter states
//!
//! Each (user, kind, period) slot holds three numbers:
//! - `persisted`: what the store held after our last flush of this slot;
//! - `pending`: units counted here and not yet taken into a batch (signed,
//!   because a refund of already-flushed units is a negative delta);
//! - `in_flight`: units taken into a batch whose outcome is not known yet.
//!
//! `used = persisted + pending + in_flight` is what the limit is checked
//! against. Taking a batch moves `pending` into `in_flight`; a successful
//! flush moves `in_flight` into `persisted` (replacing it with the store's
//! value); a failed flush changes nothing, and the engine retries the same
//! batch. So units are never dropped and never counted twice in memory.
//!
//! Invariant: a slot is in at most one outstanding batch (`flushing`). Two
//! batches for one slot could be acknowledged out of order and leave a stale
//! `persisted`; units counted while a slot is flushing simply wait in
//! `pending` for the next batch.
//!
//! # Due-structures (why no trigger ever scans every user)
//!
//! - `dirty`: a FIFO of users that went from clean to having pending units,
//!   stamped with that time. Time only moves forward, so the FIFO is ordered
//!   oldest-first; entries are invalidated lazily by a generation number.
//!   The check pass merges the shard fronts with a heap: cost is shards +
//!   users taken, independent of users tracked.
//! - `threshold`: users whose pending reached the threshold, queued once.
//! - `activity`: one entry per resident user stamped with a time at or before
//!   its last activity. The heartbeat pops entries older than the session
//!   timeout; a user active since is pushed back with its real last activity
//!   (each user is re-queued at most once per session timeout), an idle one
//!   is flushed (session end) or evicted.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use foldhash::fast::RandomState;
use smallvec::SmallVec;

use crate::batches::{BatchBuilder, Delta, FlushBatch, FlushId, Trigger};
use crate::dedup::{DedupKey, DedupTable, Fingerprint, Remembered, Window};
use crate::error::CoreError;
use crate::ids::{Kind, Kinds, RequestId, Units, UserId};
use crate::journal::{Cut, Journal, Lsn, Record};
use crate::lock::Locked;
use crate::quota::{Limit, Plan, Plans, UserProfile};
use crate::time::Timestamp;
use shard::{Shard, ShardTotals, UserMap};

/// Request-id tables: at most this many (fewer when the ledger has fewer
/// shards).
const DEDUP_SHARDS: usize = 64;

/// Tuning of the ledger.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Number of user shards, rounded up to a power of two; see
    /// [`LedgerConfig::shards_for`].
    pub shards: usize,
    /// Pending units of one counter that make it due (`force_sync_threshold`).
    pub threshold: u64,
    /// How long a request id is remembered, in milliseconds.
    pub dedup_window_ms: i64,
    /// Most request ids remembered at once (spread over the shards). A
    /// consume with a new id past it is refused, counting nothing
    /// ([`CoreError::RequestIdsFull`]): memory stays bounded, and an id is
    /// never forgotten early (which could count a retry twice).
    pub max_request_ids: usize,
    /// Random bits that make flush ids unique across processes.
    pub instance_nonce: u64,
    /// The key request ids are fingerprinted with: the one recovery used
    /// for the ids it read from the log; `None` draws a new one.
    pub dedup_key: Option<DedupKey>,
    /// When set, a counter whose usage reached this percentage of its
    /// limit is due at once, whatever its pending units: the database (and
    /// anything reading it) learns promptly that a user is about to run
    /// out, and a crash-restart reloads a near-exact figure. The optimized
    /// performance mode sets 90.
    pub near_limit_percent: Option<u8>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            shards: 64,
            threshold: 5,
            dedup_window_ms: 24 * 3600 * 1000,
            max_request_ids: usize::MAX,
            instance_nonce: 0,
            dedup_key: None,
            near_limit_percent: None,
        }
    }
}

impl LedgerConfig {
    /// The defaults, with the shards sized for `max_users` resident users
    /// (see [`LedgerConfig::shards_for`]).
    pub fn sized_for(max_users: usize) -> Self {
        LedgerConfig {
            shards: Self::shards_for(max_users),
            ..LedgerConfig::default()
        }
    }

    /// User shards for at most `max_users` resident users: about one per
    /// thousand of them, between 64 and 1 024.
    ///
    /// A checkpoint copies one shard at a time (in runs of 64 users, each
    /// under the shard's lock), and a consume of the shard being copied
    /// can wait behind a run. With more shards a consume meets the copy
    /// less often: with a million users holding units, the p99 of consumes
    /// during a checkpoint measured 5.8× to 54× their p99 without one at
    /// 1 024 shards, 68× to 650× at 64 (`--bench checkpoint`). Not more
    /// shards for fewer users: the heartbeat's resident bound is kept per
    /// shard (`max_users / shards`), and a bound of one or two users a
    /// shard would evict users still in use wherever two hash together.
    pub fn shards_for(max_users: usize) -> usize {
        (max_users / 1000).clamp(64, 1024).next_power_of_two()
    }
}

/// The answer to "may this user spend this much?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Usage of the period after this decision (unchanged when denied).
    pub used: u64,
    pub limit: Limit,
    pub remaining: Option<u64>,
    pub period_start: Timestamp,
}

/// Result of [`Ledger::consume`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumeOutcome {
    pub user: UserId,
    pub kind: Kind,
    pub amount: u64,
    pub decision: Decision,
    /// The request id was seen before: nothing was counted and `decision`
    /// is the original one.
    pub deduplicated: bool,
    /// This consume made a counter due by threshold: wake the sync engine.
    pub threshold_reached: bool,
    /// The log record of this consume, if one was written: acknowledge only
    /// once it is durable.
    pub lsn: Option<Lsn>,
}

/// How a consume is admitted.
pub(crate) enum Admit<'f> {
    /// By the local limit.
    Limit,
    /// Already, by a shared tier (Redis): counted whatever the local view
    /// of the limit says.
    Granted,
    /// As `cover` answers, under the shard lock (see
    /// [`Ledger::consume_covered`]).
    Covered(&'f mut dyn FnMut(&Quota) -> Cover),
}

/// What covers a consume (see [`Ledger::consume_covered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cover {
    /// A decision made elsewhere, such as a lease held in memory: counted
    /// with this decision as the answer.
    Decided(Decision),
    /// The local limit decides, as in [`Ledger::consume`].
    Local,
    /// Nothing covers it: nothing is counted.
    No,
}

/// One counter's quota as this instance sees it (see [`Ledger::quota`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: Limit,
    /// Persisted plus this instance's pending units.
    pub used: u64,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
}

/// Result of [`Ledger::refund`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundOutcome {
    pub user: UserId,
    pub kind: Kind,
    /// Units given back (0 when the original consume was denied).
    pub refunded: u64,
    pub lsn: Option<Lsn>,
}

/// Usage of one kind, for the usage endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindUsage {
    pub kind: Kind,
    pub persisted: u64,
    /// Units counted in memory and not yet known to be in the store
    /// (pending plus in flight). May be negative after refunds.
    pub pending: i64,
    pub in_flight: i64,
    pub used: u64,
    pub limit: Limit,
    pub remaining: Option<u64>,
}

/// Usage of one user in its current period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserUsage {
    pub user: UserId,
    pub plan: String,
    pub period_start: Timestamp,
    pub kinds: Vec<KindUsage>,
    pub last_sync_at: Option<Timestamp>,
    /// The trigger of the flush that last landed for this user.
    pub last_sync_trigger: Option<Trigger>,
    pub last_activity_at: Option<Timestamp>,
    pub resident: bool,
}

/// A persisted usage row handed to [`Ledger::warm`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedRow {
    pub kind: usize,
    pub period_start: Timestamp,
    pub used: i64,
}

/// Token from [`Ledger::load_epoch`]: lets `warm` detect that the user was
/// evicted or changed by an admin while its state was being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadEpoch(u64);

/// What a heartbeat pass did.
#[derive(Debug, Default)]
pub struct HeartbeatOutcome {
    /// Batches for idle users that still had pending units.
    pub session_end: Vec<FlushBatch>,
    pub session_end_users: usize,
    pub evicted: usize,
    /// Expired request ids dropped from the dedup table.
    pub dedup_expired: usize,
}

/// Counters of one (user, kind, period).
#[derive(Clone, Debug)]
struct Slot {
    period_start: Timestamp,
    /// The limit of this counter's period; `UNLIMITED` for none. Kept in
    /// the slot (not a separate per-user array) to save an allocation per
    /// user.
    limit: u64,
    persisted: i64,
    pending: i64,
    in_flight: i64,
    /// A batch holding `in_flight` is outstanding.
    flushing: bool,
    /// `persisted` is the store's value for this period: read when the
    /// user was loaded, or returned by a flush of this counter. False for
    /// a period the entry moved to without reading it (a plan switched
    /// back, the clock stepped back over a boundary, a refund into an old
    /// period): its `persisted` is a placeholder 0, and deciding on it
    /// would hand out the period's units a second time. Decisions on such
    /// a counter ask for a load first ([`CoreError::NotResident`]), which
    /// fills it ([`Ledger::warm`]).
    loaded: bool,
}

impl Slot {
    /// A counter whose persisted value is known.
    fn new(period_start: Timestamp, persisted: i64, limit: Limit) -> Self {
        Slot {
            period_start,
            limit: limit.unwrap_or(UNLIMITED),
            persisted,
            pending: 0,
            in_flight: 0,
            flushing: false,
            loaded: true,
        }
    }

    /// A counter of a period whose persisted value has not been read.
    fn unloaded(period_start: Timestamp, limit: Limit) -> Self {
        Slot {
            loaded: false,
            ..Slot::new(period_start, 0, limit)
        }
    }

    fn limit(&self) -> Limit {
        (self.limit != UNLIMITED).then_some(self.limit)
    }

    fn used(&self) -> i64 {
        self.persisted + self.pending + self.in_flight
    }

    fn is_clean(&self) -> bool {
        self.pending == 0 && self.in_flight == 0 && !self.flushing
    }
}

/// Sentinel for "no limit" inside a slot.
const UNLIMITED: u64 = u64::MAX;

// Conversions between the signed counters (units can go negative after
// refunds) and the unsigned figures clients see, written once so no `as`
// cast can wrap a number a client chose (the crate denies those casts).

/// A counter shown to a client: negative (after refunds) reads as 0.
fn shown(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A limit or threshold compared with a signed counter. Limits are at
/// most `i64::MAX` (`quota::validate_limit`); a larger one is no limit.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A kind index as stored beside a stale counter (kinds are at most
/// `u16::MAX`, `Kinds::new`).
fn kind_index(k: usize) -> u16 {
    u16::try_from(k).expect("kinds are at most u16::MAX")
}

/// The profile of users no admin has configured (almost all of them), so
/// they do not pay for an allocated profile.
const DEFAULT_PROFILE: UserProfile = UserProfile {
    plan: None,
    overrides: Vec::new(),
    reset_at: None,
};

fn boxed_profile(p: UserProfile) -> Option<Box<UserProfile>> {
    (p != DEFAULT_PROFILE).then(|| Box::new(p))
}

/// One resident user. Boxed in the shard table ([`UserMap`]): the table's
/// buckets are over-provisioned (load factor), and an 8-byte bucket wastes
/// far less than a 240-byte one.
struct UserEntry {
    id: UserId,
    profile: Option<Box<UserProfile>>,
    /// Plan catalogue version the fields below were resolved against.
    resolved_version: u64,
    plan: Arc<Plan>,
    period_start: Timestamp,
    period_end: Timestamp,
    /// Current-period counters, indexed by kind. Inline for up to two
    /// kinds: one cache miss less per consume than a separate allocation.
    current: SmallVec<[Slot; 2]>,
    /// Counters of earlier periods that still hold units to flush (after a
    /// period rollover or a reset). Usually empty.
    stale: Vec<(u16, Slot)>,
    last_activity: Timestamp,
    last_sync_at: Option<Timestamp>,
    last_sync_trigger: Option<Trigger>,
    /// `Some` iff a valid entry for this user (same `dirty_gen`) is in the
    /// shard's dirty FIFO.
    dirty_since: Option<Timestamp>,
    dirty_gen: u32,
    threshold_queued: bool,
    /// In its shard's `with_units` list.
    listed: bool,
    /// While listed: the segment whose checkpoint last copied this user's
    /// counters, or the shard's cut when it was listed (it had no units
    /// before). See [`UserEntry::cut`].
    taken: Cut,
}

impl UserEntry {
    /// The cut a record of a change to this user carries: which side of
    /// the running checkpoint's copy of it the change is on.
    ///
    /// A listed user not yet copied by the checkpoint of segment `S` has
    /// `taken < S`: its change is in the copy to come, and replay from
    /// `S` skips the record. Once copied, `taken == S` and the record is
    /// applied. A user not listed holds no units: the checkpoint has
    /// nothing of it, and every record of it since the shard's cut is
    /// applied. A checkpoint copies a shard in short runs between which
    /// changes go on; this per-user mark keeps each change on one side.
    fn cut(&self, shard_cut: Cut) -> Cut {
        if self.listed { self.taken } else { shard_cut }
    }

    /// Re-resolves plan, limits and period when the catalogue changed or the
    /// period ended. On a period change, counters with units move to `stale`
    /// so they are flushed into the period they were consumed in.
    fn refresh(&mut self, plans: &RwLock<Arc<Plans>>, version: u64, now: Timestamp) {
        if self.resolved_version == version && now >= self.period_start && now < self.period_end {
            return;
        }
        let plans = plans.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.apply_resolution(&plans, now);
    }

    fn apply_resolution(&mut self, plans: &Plans, now: Timestamp) {
        let r = plans.resolve(self.profile.as_deref().unwrap_or(&DEFAULT_PROFILE), now);
        self.resolved_version = plans.version;
        self.plan = r.plan;
        self.period_end = r.period_end;
        if r.period_start != self.period_start {
            for (k, slot) in self.current.iter_mut().enumerate() {
                // The new period's counter: the one this entry still holds
                // (units not yet flushed when it left that period), else
                // one whose persisted value must be read before any
                // decision. Never a fresh 0: a period can be re-entered
                // (plan switched back, clock stepped back), and starting
                // it at 0 would grant its units again.
                let held = self
                    .stale
                    .iter()
                    .position(|(sk, s)| usize::from(*sk) == k && s.period_start == r.period_start);
                let next = match held {
                    Some(i) => {
                        let mut s = self.stale.swap_remove(i).1;
                        s.limit = r.limits[k].unwrap_or(UNLIMITED);
                        s
                    }
                    None => Slot::unloaded(r.period_start, r.limits[k]),
                };
                let old = std::mem::replace(slot, next);
                if !old.is_clean() {
                    self.stale.push((kind_index(k), old));
                }
            }
            self.period_start = r.period_start;
        } else {
            for (slot, l) in self.current.iter_mut().zip(&r.limits) {
                slot.limit = l.unwrap_or(UNLIMITED);
            }
        }
    }

    fn slot_mut(&mut self, kind: usize, period_start: Timestamp) -> Option<&mut Slot> {
        if self.current[kind].period_start == period_start {
            return Some(&mut self.current[kind]);
        }
        self.stale
            .iter_mut()
            .find(|(k, s)| *k as usize == kind && s.period_start == period_start)
            .map(|(_, s)| s)
    }

    /// Every counter with its kind index: the current period's, then the
    /// earlier periods' that still hold units.
    fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.current
            .iter()
            .enumerate()
            .chain(self.stale.iter().map(|(k, s)| (*k as usize, s)))
    }

    fn has_pending(&self) -> bool {
        self.slots().any(|(_, s)| s.pending != 0)
    }

    /// Holds units not known to be in the store (pending or in flight).
    fn has_units(&self) -> bool {
        self.slots()
            .any(|(_, s)| s.pending != 0 || s.in_flight != 0)
    }

    fn is_clean(&self) -> bool {
        self.slots().all(|(_, s)| s.is_clean())
    }

    /// The quota of one of its counters as this instance sees it.
    fn quota(&self, kind: usize) -> Quota {
        let s = &self.current[kind];
        Quota {
            limit: s.limit(),
            used: shown(s.used()),
            period_start: self.period_start,
            period_end: self.period_end,
        }
    }

    fn decision(&self, kind: usize, allowed: bool) -> Decision {
        let used = shown(self.current[kind].used());
        let limit = self.current[kind].limit();
        Decision {
            allowed,
            used,
            limit,
            remaining: limit.map(|l| l.saturating_sub(used)),
            period_start: self.period_start,
        }
    }
}

/// Keeps a shard on its own cache lines so two cores locking neighbouring
/// shards do not bounce one line between them.
#[repr(align(128))]
struct Padded<T>(T);

/// The in-memory ledger. Cheap to share behind an `Arc`; every method takes
/// `&self`.
pub struct Ledger {
    kinds: Kinds,
    plans: RwLock<Arc<Plans>>,
    /// Mirror of `plans.version`, read on every consume without locking.
    plans_version: AtomicU64,
    threshold: u64,
    near_limit_percent: Option<u8>,
    dedup_window: Window,
    dedup_key: DedupKey,
    /// `max_request_ids` per dedup shard (rounded up).
    max_ids_per_shard: usize,
    shard_hasher: RandomState,
    shard_mask: usize,
    dedup_mask: usize,
    shards: Box<[Padded<Mutex<Shard>>]>,
    dedup: Box<[Padded<Mutex<DedupTable>>]>,
    instance_nonce: u64,
    next_seq: AtomicU64,
    resident: AtomicUsize,
    /// The write-ahead log, once attached (after recovery).
    journal: OnceLock<Arc<dyn Journal>>,
}

/// A recovered counter, handed to [`Ledger::recover_user`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredSlot {
    pub kind: usize,
    pub period_start: Timestamp,
    /// Units not in any batch.
    pub pending: i64,
    /// Units of an outstanding batch that will be re-sent.
    pub in_flight: i64,
}

/// A shard's lock: a panic while holding it cannot leave counters
/// half-updated (each update is a few integer writes after all checks).
/// See [`crate::lock`] for the policy and the choice of mutex.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.locked()
}

impl Ledger {
    pub fn new(kinds: Kinds, plans: Plans, config: LedgerConfig) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        let shard_hasher = RandomState::default();
        let shards = (0..n)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    users: UserMap::new(shard_hasher.clone()),
                    dirty: VecDeque::new(),
                    activity: VecDeque::new(),
                    threshold: Vec::new(),
                    epoch: 0,
                    totals: ShardTotals::default(),
                    owners: HashMap::with_hasher(RandomState::default()),
                    cut: Cut(0),
                    with_units: Vec::new(),
                    stale_listed: 0,
                }))
            })
            .collect();
        // The request-id tables keep their own, smaller count: each holds
        // its entries in 4 096-entry chunks, so a thousand tables would
        // keep up to a thousand part-filled chunks (150 MiB). Their locks
        // are held for one insert or lookup, never for a pass.
        let dn = n.min(DEDUP_SHARDS);
        let dedup = (0..dn)
            .map(|_| Padded(Mutex::new(DedupTable::new())))
            .collect();
        let version = plans.version;
        Ledger {
            kinds,
            plans: RwLock::new(Arc::new(plans)),
            plans_version: AtomicU64::new(version),
            threshold: config.threshold.max(1),
            near_limit_percent: config.near_limit_percent,
            dedup_window: Window::new(config.dedup_window_ms),
            dedup_key: config.dedup_key.unwrap_or_else(DedupKey::random),
            max_ids_per_shard: config.max_request_ids.div_ceil(dn).max(1),
            shard_hasher,
            shard_mask: n - 1,
            dedup_mask: dn - 1,
            shards,
            dedup,
            instance_nonce: config.instance_nonce,
            next_seq: AtomicU64::new(1),
            resident: AtomicUsize::new(0),
            journal: OnceLock::new(),
        }
    }

    /// Starts recording every state change to `journal`. Call once, after
    /// recovery has installed the replayed state.
    pub fn attach_journal(&self, journal: Arc<dyn Journal>) {
        let _ = self.journal.set(journal);
    }

    fn journal(&self) -> Option<&dyn Journal> {
        self.journal.get().map(|j| &**j)
    }

    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    pub fn plans(&self) -> Arc<Plans> {
        self.plans.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Replaces the plan catalogue. Users pick the change up on their next
    /// operation; pending units are untouched.
    pub fn set_plan(&self, plan: Plan) {
        let mut guard = self.plans.write().unwrap_or_else(|e| e.into_inner());
        let next = guard.with_plan(plan);
        let version = next.version;
        *guard = Arc::new(next);
        self.plans_version.store(version, Ordering::Release);
    }

    /// Number of users held in memory.
    pub fn resident_users(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }

    fn index_of(&self, key: &str) -> usize {
        self.index_of_hash(self.shard_hasher.hash_one(key))
    }

    /// High bits pick the shard: the table inside it uses the low bits for
    /// the bucket and the top seven as the tag, so the three stay
    /// independent.
    fn index_of_hash(&self, hash: u64) -> usize {
        (hash >> 40) as usize & self.shard_mask
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.index_of(user)].0)
    }

    /// The user's shard, locked, and the id's hash for
    /// [`UserMap::find_mut`]: the hot paths hash an id once.
    fn shard_hashed(&self, user: &str) -> (MutexGuard<'_, Shard>, u64) {
        let hash = self.shard_hasher.hash_one(user);
        (lock(&self.shards[self.index_of_hash(hash)].0), hash)
    }

    fn next_flush_id(&self) -> FlushId {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        FlushId(((self.instance_nonce as u128) << 64) | seq as u128)
    }

    /// Whether `user` is in memory.
    pub fn is_resident(&self, user: &str) -> bool {
        self.shard(user).users.contains_key(user)
    }

    /// Read this before loading a user from the store, and pass it to
    /// [`Ledger::warm`].
    pub fn load_epoch(&self, user: &str) -> LoadEpoch {
        LoadEpoch(self.shard(user).epoch)
    }
}

/// A counter's units not known to be in the store (pending plus in
/// flight), as a checkpoint records them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitsOutside {
    pub user: UserId,
    pub kind: Kind,
    pub period_start: Timestamp,
    pub units: i64,
}

/// See [`Ledger::totals`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    pub pending: i64,
    pub in_flight: i64,
    pub users_with_pending: usize,
    pub oldest_pending: Option<Timestamp>,
}

mod admit;
mod checkpoint;
mod due;
mod requests;
mod shard;
#[cfg(test)]
mod tests;
