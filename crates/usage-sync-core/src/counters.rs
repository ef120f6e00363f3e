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
use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::dedup::{DedupKey, DedupTable, Fingerprint, Remembered, Window};
use crate::error::CoreError;
use crate::ids::{Kind, Kinds, RequestId, Units, UserId};
use crate::journal::{Cut, Journal, Lsn, Record};
use crate::quota::{Limit, Plan, Plans, UserProfile};
use crate::sync::{BatchBuilder, Delta, FlushBatch, FlushId, Trigger};
use crate::time::Timestamp;

/// Tuning of the ledger.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Number of shards, rounded up to a power of two.
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
}

impl UserEntry {
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

/// A shard's resident users, keyed by the id inside each entry.
///
/// Why not `HashMap<UserId, Box<UserEntry>>`: its 32-byte buckets (the id
/// inline, then the pointer) made the table four times larger than this
/// one's 8-byte buckets, and the map hashed the id a second time after the
/// shard choice had hashed it already. Over 100 000 users a consume's cost
/// is its cache misses (see docs/benchmarks.md); here the hot path hashes
/// once ([`UserMap::find_mut`]) and the bucket is usually in cache.
struct UserMap {
    table: HashTable<Box<UserEntry>>,
    /// The ledger's shard hasher: an id's hash is the same everywhere.
    hasher: RandomState,
}

impl UserMap {
    fn new(hasher: RandomState) -> Self {
        UserMap {
            table: HashTable::new(),
            hasher,
        }
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn find(&self, hash: u64, id: &str) -> Option<&UserEntry> {
        self.table.find(hash, |e| e.id.as_str() == id).map(|e| &**e)
    }

    /// The lookup with a hash the caller already computed for the shard.
    fn find_mut(&mut self, hash: u64, id: &str) -> Option<&mut UserEntry> {
        self.table
            .find_mut(hash, |e| e.id.as_str() == id)
            .map(|e| &mut **e)
    }

    fn get(&self, id: &str) -> Option<&UserEntry> {
        self.find(self.hash(id), id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut UserEntry> {
        self.find_mut(self.hash(id), id)
    }

    fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Inserts an entry whose id is not resident (the caller checked under
    /// the same lock).
    fn insert(&mut self, e: Box<UserEntry>) {
        debug_assert!(!self.contains_key(e.id.as_str()));
        let hash = self.hash(e.id.as_str());
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, e, |e| hasher.hash_one(e.id.as_str()));
    }

    fn remove(&mut self, id: &str) -> Option<Box<UserEntry>> {
        let hash = self.hash(id);
        match self.table.find_entry(hash, |e| e.id.as_str() == id) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn retain(&mut self, mut keep: impl FnMut(&mut UserEntry) -> bool) {
        self.table.retain(|e| keep(e));
    }

    fn values(&self) -> impl Iterator<Item = &UserEntry> {
        self.table.iter().map(|e| &**e)
    }
}

struct Shard {
    users: UserMap,
    dirty: VecDeque<(Timestamp, u32, UserId)>,
    activity: VecDeque<(Timestamp, UserId)>,
    threshold: Vec<UserId>,
    /// Bumped on every eviction and external profile change in this shard.
    epoch: u64,
    /// This shard's part of [`Ledger::totals`], kept up to date by every
    /// change of a counter's units, under the shard's lock: a metrics
    /// scrape then costs one lock per shard, not a walk over every
    /// resident user (150 000 users made a scrape take 25 ms and raised the
    /// consume p99 twentyfold under four scrapers).
    totals: ShardTotals,
    /// The users of this shard that own remembered request ids, by the
    /// hash the dedup table keeps, each with how many it owns: the id of a
    /// user is kept once here rather than once per request (see
    /// [`crate::dedup`]), and survives the user's eviction while it owns
    /// any.
    owners: HashMap<u64, (UserId, u32), RandomState>,
    /// The segment whose checkpoint last took this shard's counters.
    cut: Cut,
    /// Every user of this shard holding units (and some that no longer
    /// do, or were evicted, until the next checkpoint prunes them): a
    /// checkpoint copies these instead of walking every resident user
    /// under the shard's lock.
    with_units: Vec<UserId>,
}

/// Units outside the store in one shard, and how many of its users hold
/// any. Invariant: equal to the sums over the shard's entries' slots.
#[derive(Default)]
struct ShardTotals {
    pending: i64,
    in_flight: i64,
    users_with_units: usize,
    /// Users put back at the end of the dirty FIFO with their *original*
    /// time (units left behind a counter already in flight): the FIFO's
    /// front is then not always the oldest, so these are kept apart,
    /// oldest first, for the oldest-pending figure. Invalidated lazily by
    /// the entry's generation, like the FIFO.
    requeued: BinaryHeap<Reverse<(Timestamp, u32, UserId)>>,
}

impl ShardTotals {
    /// Records a change of one entry: its units moved by the deltas, and
    /// it held units before (`had`) and holds units now (`has`).
    fn change(&mut self, had: bool, has: bool, pending: i64, in_flight: i64) {
        self.pending += pending;
        self.in_flight += in_flight;
        match (had, has) {
            (false, true) => self.users_with_units += 1,
            (true, false) => self.users_with_units -= 1,
            _ => {}
        }
    }
}

impl Shard {
    /// Marks `e` dirty if it has pending units and is not already queued.
    /// Called wherever a user's units may have grown (a consume, a
    /// refund, a recovery): queues it in the dirty FIFO and lists it among
    /// the users holding units.
    fn mark_dirty(
        dirty: &mut VecDeque<(Timestamp, u32, UserId)>,
        with_units: &mut Vec<UserId>,
        e: &mut UserEntry,
        now: Timestamp,
    ) {
        if e.dirty_since.is_none() && e.has_pending() {
            e.dirty_since = Some(now);
            dirty.push_back((now, e.dirty_gen, e.id.clone()));
        }
        if !e.listed && e.has_units() {
            e.listed = true;
            with_units.push(e.id.clone());
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave counters half-updated
    // (each update is a few integer writes after all checks), so keep
    // serving rather than poisoning every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
                }))
            })
            .collect();
        let dedup = (0..n)
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
            max_ids_per_shard: config.max_request_ids.div_ceil(n).max(1),
            shard_hasher,
            shard_mask: n - 1,
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

    /// Creates the in-memory entry for `user` from its persisted state.
    ///
    /// Warm-up never overwrites: if the user is already resident nothing
    /// changes (it may have pending units the store does not know about).
    /// Returns `Err(())` if the shard was changed since `epoch` was read
    /// (eviction or admin change), in which case the caller must reload.
    #[allow(clippy::result_unit_err)]
    pub fn warm(
        &self,
        user: &UserId,
        profile: UserProfile,
        rows: &[PersistedRow],
        epoch: LoadEpoch,
        now: Timestamp,
    ) -> Result<(), ()> {
        let plans = self.plans();
        let mut guard = self.shard(user.as_str());
        let shard = &mut *guard;
        let stale_read = shard.epoch != epoch.0;
        if let Some(e) = shard.users.get_mut(user.as_str()) {
            return Self::fill_unloaded(e, rows, stale_read);
        }
        if stale_read {
            return Err(());
        }
        let r = plans.resolve(&profile, now);
        let current: SmallVec<[Slot; 2]> = (0..self.kinds.len())
            .map(|k| {
                let persisted = rows
                    .iter()
                    .find(|row| row.kind == k && row.period_start == r.period_start)
                    .map_or(0, |row| row.used);
                Slot::new(r.period_start, persisted, r.limits[k])
            })
            .collect();
        let entry = UserEntry {
            id: user.clone(),
            profile: boxed_profile(profile),
            resolved_version: plans.version,
            plan: r.plan,
            period_start: r.period_start,
            period_end: r.period_end,
            current,
            stale: Vec::new(),
            last_activity: now,
            last_sync_at: None,
            last_sync_trigger: None,
            dirty_since: None,
            dirty_gen: 0,
            threshold_queued: false,
            listed: false,
        };
        shard.users.insert(Box::new(entry));
        shard.activity.push_back((now, user.clone()));
        self.resident.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A resident user's warm-up: its counters are never overwritten (they
    /// may hold units the store does not know of); only the current
    /// counters whose persisted value was never read take it from `rows`.
    ///
    /// A counter with a batch outstanding is not filled: the rows may have
    /// been read before or after that batch committed, and either guess
    /// could count its units twice or not at all. That batch's completion
    /// sets the value from the store instead, so the caller retries.
    fn fill_unloaded(e: &mut UserEntry, rows: &[PersistedRow], stale_read: bool) -> Result<(), ()> {
        let mut all = true;
        for (k, slot) in e.current.iter_mut().enumerate() {
            if slot.loaded {
                continue;
            }
            if stale_read || slot.flushing || slot.in_flight != 0 {
                all = false;
                continue;
            }
            slot.persisted = rows
                .iter()
                .find(|row| row.kind == k && row.period_start == slot.period_start)
                .map_or(0, |row| row.used);
            slot.loaded = true;
        }
        if all { Ok(()) } else { Err(()) }
    }

    /// Replaces a user's profile (plan, overrides, reset time) after the
    /// store was updated. A resident user re-resolves at once: a reset moves
    /// its current counters to the old period (still flushed there) and
    /// starts the new period at zero. Pending units are never lost.
    pub fn set_profile(&self, user: &str, profile: UserProfile, now: Timestamp) {
        let plans = self.plans();
        let mut shard = self.shard(user);
        shard.epoch += 1;
        if let Some(e) = shard.users.get_mut(user) {
            e.profile = boxed_profile(profile);
            e.apply_resolution(&plans, now);
        }
    }

    /// The profile of a resident user.
    pub fn profile(&self, user: &str) -> Option<UserProfile> {
        self.shard(user)
            .users
            .get(user)
            .map(|e| e.profile.as_deref().cloned().unwrap_or_default())
    }

    /// Atomically checks `used + amount <= limit` and, if allowed, counts
    /// the units. With a request id, a repeat within the dedup window counts
    /// nothing and returns the original decision.
    ///
    /// Returns [`CoreError::NotResident`] if the user must be loaded first.
    #[inline]
    pub fn consume(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
    ) -> Result<ConsumeOutcome, CoreError> {
        self.consume_with(user, kind, amount, request_id, now, false)
    }

    /// Counts units a shared tier (Redis) has already admitted: no local
    /// limit check, because the decision was made across all instances and
    /// this instance's view of the limit is only partial. Everything else
    /// (request-id record, log record, due-structures) is as in
    /// [`Ledger::consume`].
    #[inline]
    pub fn consume_granted(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
    ) -> Result<ConsumeOutcome, CoreError> {
        self.consume_with(user, kind, amount, request_id, now, true)
    }

    /// The quota of one counter as this instance sees it: the limit and
    /// period from the user's plan, and the units it knows of (persisted
    /// plus its own pending). The shared tier seeds its counter from this.
    pub fn quota(&self, user: &str, kind: &Kind, now: Timestamp) -> Result<Quota, CoreError> {
        let version = self.plans_version.load(Ordering::Acquire);
        let (mut shard, hash) = self.shard_hashed(user);
        let e = shard
            .users
            .find_mut(hash, user)
            .ok_or(CoreError::NotResident)?;
        e.refresh(&self.plans, version, now);
        let s = &e.current[kind.index()];
        if !s.loaded {
            return Err(CoreError::NotResident);
        }
        Ok(Quota {
            limit: s.limit(),
            used: shown(s.used()),
            period_start: e.period_start,
            period_end: e.period_end,
        })
    }

    #[inline]
    fn consume_with(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
        granted: bool,
    ) -> Result<ConsumeOutcome, CoreError> {
        let Some(rid) = request_id else {
            return self.consume_locked(user, kind, amount, None, now, granted);
        };
        // Lock order: dedup shard, then user shard (refund uses the same
        // order). Holding the dedup shard across the consume is what makes
        // two concurrent requests with one id count once.
        let fp = self.dedup_key.fingerprint(rid.as_str());
        let user_hash = self.shard_hasher.hash_one(user);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        if let Some(rec) = dedup.get(fp) {
            // An id names one request: the same id with another user, kind
            // or amount is a client bug (or another tenant's guess), never
            // a retry. Answering it as a duplicate would count nothing for
            // this caller and leak the original's numbers.
            self.conflict(&rec, rid.as_str(), user_hash, kind, amount.get())?;
            // A live entry's owner is in the owner table (it leaves only
            // when the entry expires or is replaced); the caller's id has
            // the same hash anyway, so that is the fallback (never
            // `NotResident`, which would send the engine loading forever).
            let user = match self.owner(rec.user_hash) {
                Some(u) => u,
                None => UserId::parse(user)?,
            };
            return Ok(ConsumeOutcome {
                user,
                kind: *kind,
                amount: rec.amount,
                decision: rec.decision(),
                deduplicated: true,
                threshold_reached: false,
                // The original's record is at or before the log's head:
                // the repeat is acknowledged once that is as durable as
                // the original's own answer had to be.
                lsn: self.journal().map(|j| j.head()),
            });
        }
        // A shared tier (granted) has admitted the units already: they are
        // counted whatever the table holds, and it asked first
        // (`request_conflict`).
        if !granted && !self.room_for_one(&dedup) {
            return Err(CoreError::RequestIdsFull);
        }
        let out = self.consume_locked(user, kind, amount, Some(rid), now, granted)?;
        let replaced = dedup.insert(
            fp,
            &Remembered {
                user_hash,
                kind: kind_index(kind.index()),
                amount: amount.get(),
                period_start: out.decision.period_start,
                allowed: out.decision.allowed,
                used: out.decision.used,
                limit: out.decision.limit,
                refunded: false,
            },
            now,
            &self.dedup_window,
        );
        self.release_owners(replaced.as_slice());
        Ok(out)
    }

    /// The dedup shard of a fingerprint, locked.
    fn dedup_of(&self, fp: Fingerprint) -> MutexGuard<'_, DedupTable> {
        lock(&self.dedup[fp.shard_bits() & self.shard_mask].0)
    }

    /// The fingerprint of a request id under this ledger's key.
    pub fn fingerprint(&self, request_id: &str) -> Fingerprint {
        self.dedup_key.fingerprint(request_id)
    }

    /// Whether a dedup shard (expired already) can take one more id.
    fn room_for_one(&self, dedup: &DedupTable) -> bool {
        dedup.len() < self.max_ids_per_shard
    }

    /// Drops a dedup shard's ids that left the window, and their owners'
    /// counts. Every operation on a shard starts with this.
    fn expire(&self, dedup: &mut DedupTable, now: Timestamp) -> usize {
        let mut gone = Vec::new();
        let n = dedup.expire(now, &self.dedup_window, &mut gone);
        self.release_owners(&gone);
        n
    }

    /// The user id behind a remembered request's user hash.
    fn owner(&self, user_hash: u64) -> Option<UserId> {
        lock(&self.shards[self.index_of_hash(user_hash)].0)
            .owners
            .get(&user_hash)
            .map(|(u, _)| u.clone())
    }

    /// One remembered id less for each user hash (swept or replaced
    /// entries); a user owning none leaves the owner table.
    fn release_owners(&self, hashes: &[u64]) {
        for &h in hashes {
            let mut shard = lock(&self.shards[self.index_of_hash(h)].0);
            if let Some((_, n)) = shard.owners.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    shard.owners.remove(&h);
                }
            }
        }
    }

    /// `Err(RequestIdConflict)` naming what differs when (user, kind,
    /// amount) is not the request `rec` was first used for.
    fn conflict(
        &self,
        rec: &Remembered,
        rid: &str,
        user_hash: u64,
        kind: &Kind,
        amount: u64,
    ) -> Result<(), CoreError> {
        if rec.user_hash != user_hash {
            // Nothing about the other user's request is told.
            return Err(CoreError::RequestIdConflict(format!(
                "request_id '{rid}' was already used for another user_id; nothing was \
                 counted: send a request_id of your own (a UUID) for each request"
            )));
        }
        let mut differs = Vec::new();
        if usize::from(rec.kind) != kind.index() {
            differs.push(format!(
                "kind '{}' (first used for '{}')",
                kind.name(),
                self.kinds.by_index(usize::from(rec.kind)).name()
            ));
        }
        if rec.amount != amount {
            differs.push(format!("amount {amount} (first used for {})", rec.amount));
        }
        if differs.is_empty() {
            return Ok(());
        }
        Err(CoreError::RequestIdConflict(format!(
            "request_id '{rid}' belongs to an earlier request; this one differs in {}. \
             Nothing was counted: send a new request_id for a new request",
            differs.join(", ")
        )))
    }

    fn consume_locked(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
        granted: bool,
    ) -> Result<ConsumeOutcome, CoreError> {
        let version = self.plans_version.load(Ordering::Acquire);
        let (mut guard, hash) = self.shard_hashed(user);
        let shard = &mut *guard;
        let e = shard
            .users
            .find_mut(hash, user)
            .ok_or(CoreError::NotResident)?;
        e.refresh(&self.plans, version, now);
        let k = kind.index();
        if !e.current[k].loaded {
            return Err(CoreError::NotResident);
        }
        e.last_activity = now;
        let amount = amount.signed();
        let used = e.current[k].used();
        let next = used.checked_add(amount).ok_or(CoreError::Overflow)?;
        let allowed = granted
            || match e.current[k].limit() {
                Some(limit) => next <= signed(limit),
                None => true,
            };
        let mut threshold_reached = false;
        if allowed {
            let had = e.has_units();
            e.current[k].pending += amount;
            shard.totals.change(had, e.has_units(), amount, 0);
            let slot = &mut e.current[k];
            let near_limit = self.near_limit_percent.is_some_and(|p| {
                slot.limit().is_some_and(|l| {
                    l > 0 && u128::from(shown(slot.used())) * 100 >= u128::from(l) * u128::from(p)
                })
            });
            if (slot.pending >= signed(self.threshold) || near_limit) && !e.threshold_queued {
                e.threshold_queued = true;
                shard.threshold.push(e.id.clone());
                threshold_reached = true;
            }
            Shard::mark_dirty(&mut shard.dirty, &mut shard.with_units, e, now);
        }
        let decision = e.decision(k, allowed);
        // Logged under the shard lock: the log's order is this counter's
        // order. Denied consumes are logged only when they carry a request
        // id (their decision must survive a restart for deduplication).
        let lsn = match self.journal() {
            Some(j) if allowed || request_id.is_some() => Some(j.append(Record::Consume {
                user: &e.id,
                kind,
                period_start: e.period_start,
                amount: shown(amount),
                request_id,
                decision: &decision,
                at: now,
                cut: shard.cut,
            })),
            _ => None,
        };
        if request_id.is_some() {
            // The caller remembers the id under this user's hash.
            shard
                .owners
                .entry(hash)
                .or_insert_with(|| (e.id.clone(), 0))
                .1 += 1;
        }
        Ok(ConsumeOutcome {
            user: e.id.clone(),
            kind: *kind,
            amount: shown(amount),
            decision,
            deduplicated: false,
            threshold_reached,
            lsn,
        })
    }

    /// Answers the consume question without counting.
    pub fn check(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        now: Timestamp,
    ) -> Result<Decision, CoreError> {
        let version = self.plans_version.load(Ordering::Acquire);
        let (mut shard, hash) = self.shard_hashed(user);
        let e = shard
            .users
            .find_mut(hash, user)
            .ok_or(CoreError::NotResident)?;
        e.refresh(&self.plans, version, now);
        let k = kind.index();
        if !e.current[k].loaded {
            return Err(CoreError::NotResident);
        }
        let allowed = match e.current[k].limit() {
            Some(limit) => e.current[k].used().saturating_add(amount.signed()) <= signed(limit),
            None => true,
        };
        Ok(e.decision(k, allowed))
    }

    /// `Err(RequestIdConflict)` if `request_id` is remembered for another
    /// (user, kind, amount), `Err(RequestIdsFull)` if it is new and the
    /// table is full: a shared tier asks before it admits anything, so such
    /// an id never reaches Redis.
    pub fn request_conflict(
        &self,
        request_id: &RequestId,
        user: &str,
        kind: &Kind,
        amount: Units,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        let fp = self.dedup_key.fingerprint(request_id.as_str());
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        match dedup.get(fp) {
            Some(rec) => self.conflict(
                &rec,
                request_id.as_str(),
                self.shard_hasher.hash_one(user),
                kind,
                amount.get(),
            ),
            None if self.room_for_one(&dedup) => Ok(()),
            None => Err(CoreError::RequestIdsFull),
        }
    }

    /// The user a request id was counted for, so the caller can make it
    /// resident before [`Ledger::refund`].
    pub fn request_owner(&self, request_id: &str, now: Timestamp) -> Option<UserId> {
        let fp = self.dedup_key.fingerprint(request_id);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        let rec = dedup.get(fp)?;
        self.owner(rec.user_hash)
    }

    /// Reverses the consume recorded under `request_id`, once. The units
    /// come off the period they were counted in, even if that period has
    /// ended or was already flushed (then as a negative delta).
    ///
    /// With `owner`, the refund is refused with
    /// [`CoreError::RequestIdConflict`] unless the request was that user's:
    /// a client can then never give back another user's units by naming
    /// their request id.
    pub fn refund(
        &self,
        request_id: &str,
        owner: Option<&str>,
        now: Timestamp,
    ) -> Result<RefundOutcome, CoreError> {
        let fp = self.dedup_key.fingerprint(request_id);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        let rec = dedup.get(fp).ok_or(CoreError::UnknownRequest)?;
        let user = self.owner(rec.user_hash).ok_or(CoreError::UnknownRequest)?;
        if let Some(u) = owner
            && u != user.as_str()
        {
            return Err(CoreError::RequestIdConflict(format!(
                "request_id '{request_id}' was not consumed by user_id '{u}'; nothing was refunded"
            )));
        }
        if rec.refunded {
            return Err(CoreError::AlreadyRefunded);
        }
        let refunded = if rec.allowed { rec.amount } else { 0 };
        let kind = *self.kinds.by_index(usize::from(rec.kind));
        let lsn = self.give_back(request_id, &user, &kind, rec.period_start, refunded, now)?;
        dedup.set_refunded(fp);
        Ok(RefundOutcome {
            user,
            kind,
            refunded,
            lsn,
        })
    }

    /// Takes `amount` units off `user`'s counter of `period_start` (as a
    /// negative delta on a recreated counter if that period's counters
    /// were flushed and dropped) and logs the refund under `request_id`.
    /// With 0 units only the log record is written: "already refunded"
    /// must survive a restart too. The caller holds the request id's
    /// dedup shard (lock order: dedup, then user shard).
    fn give_back(
        &self,
        request_id: &str,
        user: &UserId,
        kind: &Kind,
        period_start: Timestamp,
        amount: u64,
        now: Timestamp,
    ) -> Result<Option<Lsn>, CoreError> {
        let mut cut = Cut::NONE;
        if amount > 0 {
            let version = self.plans_version.load(Ordering::Acquire);
            let mut guard = self.shard(user.as_str());
            let shard = &mut *guard;
            let e = shard
                .users
                .get_mut(user.as_str())
                .ok_or(CoreError::NotResident)?;
            e.refresh(&self.plans, version, now);
            let k = kind.index();
            let had = e.has_units();
            match e.slot_mut(k, period_start) {
                Some(slot) => slot.pending -= signed(amount),
                None => {
                    let mut slot = Slot::unloaded(period_start, None);
                    slot.pending = -signed(amount);
                    e.stale.push((kind_index(k), slot));
                }
            }
            shard.totals.change(had, e.has_units(), -signed(amount), 0);
            e.last_activity = now;
            Shard::mark_dirty(&mut shard.dirty, &mut shard.with_units, e, now);
            cut = shard.cut;
        }
        // Appended after the shard's lock is released: the cut read under
        // it says which side of a checkpoint the change is on.
        Ok(self.journal().map(|j| {
            j.append(Record::Refund {
                request_id,
                user,
                kind,
                period_start,
                amount,
                at: now,
                cut,
            })
        }))
    }

    /// Gives back units that a shared tier (Redis) has refunded for a
    /// request this instance may never have seen: the consume was counted
    /// (and is flushed) by whichever instance admitted it, so the refund is
    /// a negative delta on the same counter, which adds up in the store.
    /// Marks the local request record refunded if there is one.
    pub fn refund_remote(
        &self,
        request_id: &str,
        user: &UserId,
        kind: &Kind,
        period_start: Timestamp,
        amount: u64,
        now: Timestamp,
    ) -> Result<RefundOutcome, CoreError> {
        let fp = self.dedup_key.fingerprint(request_id);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        let lsn = self.give_back(request_id, user, kind, period_start, amount, now)?;
        dedup.set_refunded(fp);
        Ok(RefundOutcome {
            user: user.clone(),
            kind: *kind,
            refunded: amount,
            lsn,
        })
    }

    /// Current usage of a resident user, or `None`: not resident, or
    /// resident with a current counter whose persisted value was never
    /// read ([`Ledger::is_resident`] tells which; [`Ledger::warm`] fills
    /// it).
    pub fn usage(&self, user: &str, now: Timestamp) -> Option<UserUsage> {
        let version = self.plans_version.load(Ordering::Acquire);
        let mut shard = self.shard(user);
        let e = shard.users.get_mut(user)?;
        e.refresh(&self.plans, version, now);
        if e.current.iter().any(|s| !s.loaded) {
            // Resident, but a counter's persisted value is unknown: the
            // caller loads (see `Ledger::needs_load`) and asks again.
            return None;
        }
        let kinds = self
            .kinds
            .iter()
            .map(|kind| {
                let s = &e.current[kind.index()];
                let d = e.decision(kind.index(), true);
                KindUsage {
                    kind: *kind,
                    persisted: shown(s.persisted),
                    pending: s.pending + s.in_flight,
                    in_flight: s.in_flight,
                    used: d.used,
                    limit: d.limit,
                    remaining: d.remaining,
                }
            })
            .collect();
        Some(UserUsage {
            user: e.id.clone(),
            plan: e.plan.name.clone(),
            period_start: e.period_start,
            kinds,
            last_sync_at: e.last_sync_at,
            last_sync_trigger: e.last_sync_trigger,
            last_activity_at: Some(e.last_activity),
            resident: true,
        })
    }

    /// Usage of a user that is not resident, computed from its persisted
    /// state without making it resident.
    pub fn usage_from_store(
        &self,
        user: &UserId,
        profile: &UserProfile,
        rows: &[PersistedRow],
        now: Timestamp,
    ) -> UserUsage {
        let r = self.plans().resolve(profile, now);
        let kinds = self
            .kinds
            .iter()
            .map(|kind| {
                let used = rows
                    .iter()
                    .find(|row| row.kind == kind.index() && row.period_start == r.period_start)
                    .map_or(0, |row| shown(row.used));
                let limit = r.limits[kind.index()];
                KindUsage {
                    kind: *kind,
                    persisted: used,
                    pending: 0,
                    in_flight: 0,
                    used,
                    limit,
                    remaining: limit.map(|l| l.saturating_sub(used)),
                }
            })
            .collect();
        UserUsage {
            user: user.clone(),
            plan: r.plan.name.clone(),
            period_start: r.period_start,
            kinds,
            last_sync_at: None,
            last_sync_trigger: None,
            last_activity_at: None,
            resident: false,
        }
    }

    /// Moves every pending, non-flushing counter of `e` into the builder.
    /// Leaves the user dirty (re-queued) if some pending units had to stay
    /// because their counter is already in an outstanding batch, and then
    /// returns true (the re-queued entry is the last of `dirty`).
    fn take_entry(
        dirty: &mut VecDeque<(Timestamp, u32, UserId)>,
        totals: &mut ShardTotals,
        e: &mut UserEntry,
        kinds: &Kinds,
        b: &mut BatchBuilder<'_>,
    ) -> bool {
        let mut left_behind = false;
        let mut moved = 0;
        let all = e
            .current
            .iter_mut()
            .enumerate()
            .chain(e.stale.iter_mut().map(|(k, s)| (*k as usize, s)));
        for (k, s) in all {
            if s.pending == 0 {
                continue;
            }
            if s.flushing {
                left_behind = true;
                continue;
            }
            b.push(Delta {
                user: e.id.clone(),
                kind: *kinds.by_index(k),
                period_start: s.period_start,
                delta: s.pending,
            });
            moved += s.pending;
            s.in_flight += s.pending;
            s.pending = 0;
            s.flushing = true;
        }
        // Units move from pending to in flight; the entry holds as many.
        totals.change(true, true, -moved, moved);
        e.threshold_queued = false;
        // Invalidate the old dirty entry; re-queue (keeping the original
        // time) if units had to stay behind.
        e.dirty_gen = e.dirty_gen.wrapping_add(1);
        if left_behind {
            let since = e.dirty_since.unwrap_or(e.last_activity);
            e.dirty_since = Some(since);
            dirty.push_back((since, e.dirty_gen, e.id.clone()));
            totals
                .requeued
                .push(Reverse((since, e.dirty_gen, e.id.clone())));
        } else {
            e.dirty_since = None;
        }
        left_behind
    }

    /// Records each batch's exact deltas before it can be sent. A
    /// checkpoint that takes a shard in between counts the batch's units
    /// as outside the store (pending and in flight are one figure there),
    /// so a crash before the intent is logged re-flushes them: the batch
    /// itself is only sent once its intent is in the log.
    fn log_intents(&self, batches: Vec<FlushBatch>) -> Vec<FlushBatch> {
        if let Some(j) = self.journal() {
            for b in &batches {
                j.append(Record::Intent { batch: b });
            }
        }
        batches
    }

    /// Takes every user queued by the threshold trigger.
    pub fn take_threshold(&self, max_rows: usize) -> Vec<FlushBatch> {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, Trigger::Threshold, max_rows);
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            if shard.threshold.is_empty() {
                continue;
            }
            for id in std::mem::take(&mut shard.threshold) {
                if let Some(e) = shard.users.get_mut(id.as_str()) {
                    Self::take_entry(&mut shard.dirty, &mut shard.totals, e, &self.kinds, &mut b);
                }
            }
        }
        self.log_intents(b.finish())
    }

    /// Pops the next valid dirty entry's time from a shard, discarding
    /// invalidated entries.
    fn dirty_front(shard: &mut Shard) -> Option<Timestamp> {
        while let Some((since, gen_, id)) = shard.dirty.front() {
            match shard.users.get(id.as_str()) {
                Some(e) if e.dirty_gen == *gen_ && e.dirty_since.is_some() => return Some(*since),
                _ => {
                    shard.dirty.pop_front();
                }
            }
        }
        None
    }

    /// Drops invalidated re-queued entries once they outnumber the shard's
    /// users, so the heap stays bounded without metrics scrapes (which pop
    /// only from its top). Amortised: runs after that many re-queues.
    fn prune_requeued(shard: &mut Shard) {
        if shard.totals.requeued.len() <= 2 * shard.users.len() + 64 {
            return;
        }
        let users = &shard.users;
        shard.totals.requeued.retain(|Reverse((_, gen_, id))| {
            users
                .get(id.as_str())
                .is_some_and(|e| e.dirty_gen == *gen_ && e.dirty_since.is_some())
        });
    }

    /// The oldest still-valid re-queued entry (see `ShardTotals::requeued`).
    fn requeued_front(shard: &mut Shard) -> Option<Timestamp> {
        while let Some(Reverse((since, gen_, id))) = shard.totals.requeued.peek() {
            match shard.users.get(id.as_str()) {
                Some(e) if e.dirty_gen == *gen_ && e.dirty_since.is_some() => return Some(*since),
                _ => {
                    shard.totals.requeued.pop();
                }
            }
        }
        None
    }

    /// Takes up to `max_users` users with pending units, oldest pending
    /// first (the main check). Cost: one lock per shard to read its oldest
    /// entry, plus one per user taken.
    pub fn take_oldest(
        &self,
        max_users: usize,
        max_rows: usize,
        trigger: Trigger,
    ) -> (Vec<FlushBatch>, usize) {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, trigger, max_rows);
        let mut heap = BinaryHeap::new();
        for (i, s) in self.shards.iter().enumerate() {
            if let Some(t) = Self::dirty_front(&mut lock(&s.0)) {
                heap.push(Reverse((t, i)));
            }
        }
        let mut users = 0;
        let mut deferred: Vec<(usize, (Timestamp, u32, UserId))> = Vec::new();
        while users < max_users {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let mut guard = lock(&self.shards[i].0);
            let shard = &mut *guard;
            if Self::dirty_front(shard).is_some() {
                let (_, _, id) = shard.dirty.pop_front().expect("front is valid");
                let e = shard
                    .users
                    .get_mut(id.as_str())
                    .expect("valid entries are resident");
                if Self::take_entry(&mut shard.dirty, &mut shard.totals, e, &self.kinds, &mut b) {
                    // Some counters were already flushing and the user was
                    // re-queued: put it aside so this pass does not pick it
                    // again, and re-queue it after.
                    let entry = shard.dirty.pop_back().expect("just pushed");
                    deferred.push((i, entry));
                } else {
                    users += 1;
                }
            }
            if let Some(t) = Self::dirty_front(shard) {
                heap.push(Reverse((t, i)));
            }
        }
        for (i, entry) in deferred {
            lock(&self.shards[i].0).dirty.push_back(entry);
        }
        (self.log_intents(b.finish()), users)
    }

    /// Takes everything pending (the guarantee and shutdown passes). Cost is
    /// proportional to the dirty users, not to the users tracked.
    pub fn take_all(&self, max_rows: usize, trigger: Trigger) -> (Vec<FlushBatch>, usize) {
        let (batches, users, _) = self.take_all_reporting_blocked(max_rows, trigger);
        (batches, users)
    }

    /// [`Ledger::take_all`], also returning how many users had to be left
    /// dirty because a counter of theirs is in an outstanding batch.
    pub fn take_all_reporting_blocked(
        &self,
        max_rows: usize,
        trigger: Trigger,
    ) -> (Vec<FlushBatch>, usize, usize) {
        let mut blocked = 0;
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, trigger, max_rows);
        let mut users = 0;
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            let mut left = VecDeque::new();
            for (_, g, id) in std::mem::take(&mut shard.dirty) {
                let Some(e) = shard.users.get_mut(id.as_str()) else {
                    continue;
                };
                if e.dirty_gen != g || e.dirty_since.is_none() {
                    continue;
                }
                if !Self::take_entry(&mut left, &mut shard.totals, e, &self.kinds, &mut b) {
                    users += 1;
                }
            }
            blocked += left.len();
            shard.dirty = left;
        }
        (self.log_intents(b.finish()), users, blocked)
    }

    /// Takes one user's pending counters (manual sync).
    pub fn take_user(&self, user: &str, max_rows: usize) -> Vec<FlushBatch> {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, Trigger::Manual, max_rows);
        let mut guard = self.shard(user);
        let shard = &mut *guard;
        if let Some(e) = shard.users.get_mut(user)
            && e.dirty_since.is_some()
        {
            Self::take_entry(&mut shard.dirty, &mut shard.totals, e, &self.kinds, &mut b);
        }
        self.log_intents(b.finish())
    }

    /// Records a successful flush. `used_after[i]` is the store's value of
    /// `batch.deltas[i]`'s counter after the transaction. Returns true if a
    /// counter is already due again by threshold (units were counted while
    /// the batch was in flight).
    pub fn complete(&self, batch: &FlushBatch, used_after: &[i64], now: Timestamp) -> bool {
        debug_assert_eq!(batch.deltas.len(), used_after.len());
        let mut due = false;
        // Each counter takes its completion under its shard's lock, with
        // that shard's cut; the `Done` record carries them all, so replay
        // knows, delta by delta, whether a checkpoint already saw it.
        let mut cuts = Vec::with_capacity(batch.deltas.len());
        for (d, &after) in batch.deltas.iter().zip(used_after) {
            let mut guard = self.shard(d.user.as_str());
            let shard = &mut *guard;
            cuts.push(shard.cut);
            // Users with in-flight units are never evicted.
            let Some(e) = shard.users.get_mut(d.user.as_str()) else {
                debug_assert!(false, "user with in-flight units was evicted");
                continue;
            };
            let k = d.kind.index();
            let had = e.has_units();
            let mut landed = 0;
            if let Some(s) = e.slot_mut(k, d.period_start) {
                s.in_flight -= d.delta;
                landed = d.delta;
                s.persisted = after;
                s.loaded = true;
                s.flushing = false;
                if s.pending >= signed(self.threshold) && !e.threshold_queued {
                    e.threshold_queued = true;
                    shard.threshold.push(e.id.clone());
                    due = true;
                }
            }
            shard.totals.change(had, e.has_units(), 0, -landed);
            e.stale.retain(|(_, s)| !s.is_clean());
            e.last_sync_at = Some(now);
            e.last_sync_trigger = Some(batch.trigger);
        }
        if let Some(j) = self.journal() {
            j.append(Record::Done {
                id: batch.id,
                cuts: &cuts,
            });
        }
        due
    }

    /// The heartbeat's scan of the activity queue: users idle longer than
    /// `session_timeout_ms` are flushed if they hold pending units (session
    /// end) or evicted if clean. While more than `max_users` are resident,
    /// clean users are evicted in least-recently-active order regardless of
    /// the timeout. Also expires old request ids.
    pub fn heartbeat(
        &self,
        now: Timestamp,
        session_timeout_ms: i64,
        max_users: usize,
        max_rows: usize,
    ) -> HeartbeatOutcome {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, Trigger::SessionEnd, max_rows);
        let mut out = HeartbeatOutcome::default();
        let cutoff = now.saturating_sub_ms(session_timeout_ms);
        let per_shard_cap = max_users.div_ceil(self.shards.len());
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            Self::prune_requeued(shard);
            // Bounded by the queue length at the start, so re-queued entries
            // are not visited twice in one pass.
            let mut budget = shard.activity.len();
            while budget > 0 {
                let over = shard.users.len() > per_shard_cap;
                let Some((at, _)) = shard.activity.front() else {
                    break;
                };
                if *at > cutoff && !over {
                    break;
                }
                budget -= 1;
                let (at, id) = shard.activity.pop_front().expect("front exists");
                let Some(e) = shard.users.get_mut(id.as_str()) else {
                    continue;
                };
                if e.last_activity > at && e.last_activity > cutoff {
                    // Active since it was queued: look again later.
                    shard.activity.push_back((e.last_activity, id));
                    continue;
                }
                let idle = e.last_activity <= cutoff;
                if e.is_clean() {
                    shard.users.remove(id.as_str());
                    shard.epoch += 1;
                    self.resident.fetch_sub(1, Ordering::Relaxed);
                    out.evicted += 1;
                } else {
                    if idle && e.dirty_since.is_some() {
                        Self::take_entry(
                            &mut shard.dirty,
                            &mut shard.totals,
                            e,
                            &self.kinds,
                            &mut b,
                        );
                        out.session_end_users += 1;
                    }
                    // Evicted on a later pass, once the flush has landed.
                    shard.activity.push_back((now, id));
                }
            }
        }
        for d in self.dedup.iter() {
            out.dedup_expired += self.expire(&mut lock(&d.0), now);
        }
        out.session_end = self.log_intents(b.finish());
        out
    }

    /// Request ids remembered for one user. Walks every remembered id: for
    /// diagnostics only.
    pub fn dedup_entries_of(&self, user: &str) -> usize {
        let hash = self.shard_hasher.hash_one(user);
        let shard = lock(&self.shards[self.index_of_hash(hash)].0);
        shard
            .owners
            .get(&hash)
            .map_or(0, |(_, n)| usize::try_from(*n).unwrap_or(usize::MAX))
    }

    /// Ids of every resident user. Walks every shard: for the admin user
    /// list, never for triggers.
    pub fn resident_ids(&self) -> Vec<UserId> {
        let mut out = Vec::with_capacity(self.resident_users());
        for s in self.shards.iter() {
            out.extend(lock(&s.0).users.values().map(|e| e.id.clone()));
        }
        out
    }

    /// Evicts every resident user idle for at least `idle_ms` whose
    /// counters hold nothing pending or in flight; a user with units not
    /// yet in the store is never evicted. Returns (evicted, kept because
    /// they still hold units). The user is reloaded from the store on its
    /// next request.
    pub fn evict_idle(&self, idle_ms: i64, now: Timestamp) -> (usize, usize) {
        let cutoff = now.saturating_sub_ms(idle_ms);
        let (mut evicted, mut kept) = (0, 0);
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            let before = shard.users.len();
            shard.users.retain(|e| {
                if e.last_activity > cutoff {
                    return true;
                }
                if !e.is_clean() {
                    kept += 1;
                    return true;
                }
                false
            });
            let n = before - shard.users.len();
            if n > 0 {
                // Stale queue entries for removed users are skipped when
                // met; the epoch bump refuses cold loads that raced us.
                shard.epoch += 1;
                self.resident.fetch_sub(n, Ordering::Relaxed);
                evicted += n;
            }
        }
        (evicted, kept)
    }

    /// Totals over all resident users: (pending units, in-flight units,
    /// users with pending units, time the oldest pending unit was counted).
    /// One lock per shard, whatever the number of users: the shards keep
    /// these figures up to date as units change (`ShardTotals`).
    pub fn totals(&self) -> LedgerTotals {
        let mut t = LedgerTotals::default();
        for s in self.shards.iter() {
            let mut shard = lock(&s.0);
            t.pending += shard.totals.pending;
            t.in_flight += shard.totals.in_flight;
            t.users_with_pending += shard.totals.users_with_units;
            let fronts = [
                Self::dirty_front(&mut shard),
                Self::requeued_front(&mut shard),
            ];
            for since in fronts.into_iter().flatten() {
                t.oldest_pending =
                    Some(t.oldest_pending.map_or(since, |o: Timestamp| o.min(since)));
            }
        }
        t
    }

    /// [`Ledger::totals`] by walking every resident user: what the kept
    /// totals must always equal (the tests compare the two).
    #[cfg(test)]
    pub(crate) fn totals_walked(&self) -> LedgerTotals {
        let mut t = LedgerTotals::default();
        for s in self.shards.iter() {
            let shard = lock(&s.0);
            for e in shard.users.values() {
                for (_, s) in e.slots() {
                    t.pending += s.pending;
                    t.in_flight += s.in_flight;
                }
                if e.has_units() {
                    t.users_with_pending += 1;
                }
                if let Some(since) = e.dirty_since {
                    t.oldest_pending =
                        Some(t.oldest_pending.map_or(since, |o: Timestamp| o.min(since)));
                }
            }
        }
        t
    }

    /// What [`Ledger::cut_shards`] copies, by walking every resident user
    /// (the tests compare the two).
    #[cfg(test)]
    pub(crate) fn units_outside_walked(&self) -> Vec<UnitsOutside> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            for e in lock(&s.0).users.values() {
                for (k, slot) in e.slots() {
                    let units = slot.pending + slot.in_flight;
                    if units != 0 {
                        out.push(UnitsOutside {
                            user: e.id.clone(),
                            kind: *self.kinds.by_index(k),
                            period_start: slot.period_start,
                            units,
                        });
                    }
                }
            }
        }
        out
    }

    /// The `n` resident users with the most units not yet known to be in
    /// the store (pending plus in flight), most first. Walks every user:
    /// for status pages, not for triggers.
    pub fn top_pending(&self, n: usize) -> Vec<(UserId, i64)> {
        let mut all: Vec<(UserId, i64)> = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(&s.0);
            for e in shard.users.values() {
                let units: i64 = e
                    .slots()
                    .map(|(_, s)| (s.pending + s.in_flight).abs())
                    .sum();
                if units > 0 {
                    all.push((e.id.clone(), units));
                }
            }
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Number of remembered request ids.
    pub fn dedup_entries(&self) -> usize {
        self.dedup.iter().map(|d| lock(&d.0).len()).sum()
    }

    /// Heap bytes of the idempotency table (its shards' tables, not the
    /// owner tables): for the memory figures in the benches.
    pub fn dedup_heap_bytes(&self) -> usize {
        self.dedup.iter().map(|d| lock(&d.0).heap_bytes()).sum()
    }

    /// The checkpoint's pass over the counters, one shard at a time: each
    /// shard is locked only while its counters holding units are copied
    /// and its cut is set to `segment`, then `sink` gets the copies (to
    /// write outside the lock). Nothing else is stopped: a change in a
    /// shard not yet taken is in the copy *and* in the segment's records,
    /// marked with the older cut, so replay applies it once (see
    /// [`Cut`]).
    pub fn cut_shards(&self, segment: Cut, sink: &mut dyn FnMut(Vec<UnitsOutside>)) {
        for s in self.shards.iter() {
            let copies = {
                let mut guard = lock(&s.0);
                let shard = &mut *guard;
                shard.cut = segment;
                let mut out = Vec::new();
                // Only the listed users: a user only gains units through
                // `mark_dirty`, which lists it (a take moves them, a
                // completion only removes them). Those without units any
                // more (or evicted) leave the list; an id listed twice (a
                // user evicted and loaded again) is taken once.
                let listed = std::mem::take(&mut shard.with_units);
                let mut keep = Vec::with_capacity(listed.len());
                for id in listed {
                    let Some(e) = shard.users.get_mut(id.as_str()) else {
                        continue;
                    };
                    if !e.listed {
                        continue;
                    }
                    e.listed = false;
                    for (k, slot) in e.slots() {
                        let units = slot.pending + slot.in_flight;
                        if units != 0 {
                            out.push(UnitsOutside {
                                user: e.id.clone(),
                                kind: *self.kinds.by_index(k),
                                period_start: slot.period_start,
                                units,
                            });
                        }
                    }
                    // Kept while it has any: pending -1 with 1 in flight
                    // is 0 outside the store now, but -1 once the flight
                    // lands (and completions do not list).
                    if e.has_units() {
                        keep.push(id);
                    }
                }
                for id in &keep {
                    if let Some(e) = shard.users.get_mut(id.as_str()) {
                        e.listed = true;
                    }
                }
                shard.with_units = keep;
                out
            };
            sink(copies);
        }
    }

    /// Installs a user recovered from the log: makes it resident from its
    /// persisted state (as a warm-up would), then adds the recovered
    /// pending and in-flight units to the counters of their periods.
    /// Counters with in-flight units are marked flushing: their batch is
    /// re-sent by the engine under its original id.
    pub fn recover_user(
        &self,
        user: &UserId,
        profile: UserProfile,
        rows: &[PersistedRow],
        slots: &[RecoveredSlot],
        now: Timestamp,
    ) {
        let epoch = self.load_epoch(user.as_str());
        let _ = self.warm(user, profile, rows, epoch, now);
        let version = self.plans_version.load(Ordering::Acquire);
        let mut guard = self.shard(user.as_str());
        let shard = &mut *guard;
        let Some(e) = shard.users.get_mut(user.as_str()) else {
            return;
        };
        e.refresh(&self.plans, version, now);
        let had = e.has_units();
        let (mut pending, mut in_flight) = (0, 0);
        for r in slots {
            pending += r.pending;
            in_flight += r.in_flight;
            if e.slot_mut(r.kind, r.period_start).is_none() {
                e.stale
                    .push((kind_index(r.kind), Slot::unloaded(r.period_start, None)));
            }
            let slot = e.slot_mut(r.kind, r.period_start).expect("just ensured");
            slot.pending += r.pending;
            slot.in_flight += r.in_flight;
            slot.flushing |= r.in_flight != 0;
        }
        e.stale.retain(|(_, s)| !s.is_clean());
        shard.totals.change(had, e.has_units(), pending, in_flight);
        Shard::mark_dirty(&mut shard.dirty, &mut shard.with_units, e, now);
    }

    /// Restores a remembered request id from the log.
    #[allow(clippy::too_many_arguments)]
    /// `false` (and nothing is kept) if it is already out of the window.
    #[allow(clippy::too_many_arguments)]
    pub fn recover_request(
        &self,
        fingerprint: Fingerprint,
        user: &UserId,
        kind: Kind,
        amount: u64,
        decision: &Decision,
        refunded: bool,
        at: Timestamp,
        now: Timestamp,
    ) -> bool {
        if !self.dedup_window.alive(at, now) {
            return false;
        }
        let user_hash = self.shard_hasher.hash_one(user.as_str());
        let mut d = self.dedup_of(fingerprint);
        self.expire(&mut d, now);
        let replaced = d.insert(
            fingerprint,
            &Remembered {
                user_hash,
                kind: kind_index(kind.index()),
                amount,
                period_start: decision.period_start,
                allowed: decision.allowed,
                used: decision.used,
                limit: decision.limit,
                refunded,
            },
            at,
            &self.dedup_window,
        );
        lock(&self.shards[self.index_of_hash(user_hash)].0)
            .owners
            .entry(user_hash)
            .or_insert_with(|| (user.clone(), 0))
            .1 += 1;
        self.release_owners(replaced.as_slice());
        true
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

#[cfg(test)]
#[path = "counters_tests.rs"]
mod tests;
