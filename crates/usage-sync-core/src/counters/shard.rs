//! A shard of the ledger: its resident users (`UserMap`), the queues the
//! sync engine drains, and its running totals.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::UserEntry;
use crate::ids::UserId;
use crate::journal::Cut;
use crate::time::Timestamp;

/// A shard's resident users, keyed by the id inside each entry.
///
/// Why not `HashMap<UserId, Box<UserEntry>>`: its 32-byte buckets (the id
/// inline, then the pointer) made the table four times larger than this
/// one's 8-byte buckets, and the map hashed the id a second time after the
/// shard choice had hashed it already. Over 100 000 users a consume's cost
/// is its cache misses (see docs/benchmarks.md); here the hot path hashes
/// once ([`UserMap::find_mut`]) and the bucket is usually in cache.
pub(super) struct UserMap {
    pub(super) table: HashTable<Box<UserEntry>>,
    /// The ledger's shard hasher: an id's hash is the same everywhere.
    pub(super) hasher: RandomState,
}

impl UserMap {
    pub(super) fn new(hasher: RandomState) -> Self {
        UserMap {
            table: HashTable::new(),
            hasher,
        }
    }

    pub(super) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub(super) fn find(&self, hash: u64, id: &str) -> Option<&UserEntry> {
        self.table.find(hash, |e| e.id.as_str() == id).map(|e| &**e)
    }

    /// The lookup with a hash the caller already computed for the shard.
    pub(super) fn find_mut(&mut self, hash: u64, id: &str) -> Option<&mut UserEntry> {
        self.table
            .find_mut(hash, |e| e.id.as_str() == id)
            .map(|e| &mut **e)
    }

    pub(super) fn get(&self, id: &str) -> Option<&UserEntry> {
        self.find(self.hash(id), id)
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut UserEntry> {
        self.find_mut(self.hash(id), id)
    }

    pub(super) fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Inserts an entry whose id is not resident (the caller checked under
    /// the same lock).
    pub(super) fn insert(&mut self, e: Box<UserEntry>) {
        debug_assert!(!self.contains_key(e.id.as_str()));
        let hash = self.hash(e.id.as_str());
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, e, |e| hasher.hash_one(e.id.as_str()));
    }

    pub(super) fn remove(&mut self, id: &str) -> Option<Box<UserEntry>> {
        let hash = self.hash(id);
        match self.table.find_entry(hash, |e| e.id.as_str() == id) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut UserEntry) -> bool) {
        self.table.retain(|e| keep(e));
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &UserEntry> {
        self.table.iter().map(|e| &**e)
    }
}

pub(super) struct Shard {
    pub(super) users: UserMap,
    pub(super) dirty: VecDeque<(Timestamp, u32, UserId)>,
    pub(super) activity: VecDeque<(Timestamp, UserId)>,
    pub(super) threshold: Vec<UserId>,
    /// Bumped on every eviction and external profile change in this shard.
    pub(super) epoch: u64,
    /// This shard's part of [`Ledger::totals`], kept up to date by every
    /// change of a counter's units, under the shard's lock: a metrics
    /// scrape then costs one lock per shard, not a walk over every
    /// resident user (150 000 users made a scrape take 25 ms and raised the
    /// consume p99 twentyfold under four scrapers).
    pub(super) totals: ShardTotals,
    /// The users of this shard that own remembered request ids, by the
    /// hash the dedup table keeps, each with how many it owns: the id of a
    /// user is kept once here rather than once per request (see
    /// [`crate::dedup`]), and survives the user's eviction while it owns
    /// any.
    pub(super) owners: HashMap<u64, (UserId, u32), RandomState>,
    /// The segment whose checkpoint last took this shard's counters.
    pub(super) cut: Cut,
    /// Every user of this shard holding units (and some that no longer
    /// do, or were evicted, until the next checkpoint prunes them): a
    /// checkpoint copies these instead of walking every resident user
    /// under the shard's lock.
    pub(super) with_units: Vec<UserId>,
    /// Listed users evicted since the list was last pruned: their ids
    /// stay in it (and a user loaded again is listed a second time) until
    /// a checkpoint or `forget_listed` prunes it.
    pub(super) stale_listed: usize,
}

/// Units outside the store in one shard, and how many of its users hold
/// any. Invariant: equal to the sums over the shard's entries' slots.
#[derive(Default)]
pub(super) struct ShardTotals {
    pub(super) pending: i64,
    pub(super) in_flight: i64,
    pub(super) users_with_units: usize,
    /// Users put back at the end of the dirty FIFO with their *original*
    /// time (units left behind a counter already in flight): the FIFO's
    /// front is then not always the oldest, so these are kept apart,
    /// oldest first, for the oldest-pending figure. Invalidated lazily by
    /// the entry's generation, like the FIFO.
    pub(super) requeued: BinaryHeap<Reverse<(Timestamp, u32, UserId)>>,
}

impl ShardTotals {
    /// Records a change of one entry: its units moved by the deltas, and
    /// it held units before (`had`) and holds units now (`has`).
    pub(super) fn change(&mut self, had: bool, has: bool, pending: i64, in_flight: i64) {
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
    pub(super) fn mark_dirty(
        dirty: &mut VecDeque<(Timestamp, u32, UserId)>,
        with_units: &mut Vec<UserId>,
        cut: Cut,
        e: &mut UserEntry,
        now: Timestamp,
    ) {
        if e.dirty_since.is_none() && e.has_pending() {
            e.dirty_since = Some(now);
            dirty.push_back((now, e.dirty_gen, e.id.clone()));
        }
        if !e.listed && e.has_units() {
            // It had no units: whatever it gets from now on is after the
            // shard's cut (see `UserEntry::cut`).
            e.listed = true;
            e.taken = cut;
            with_units.push(e.id.clone());
        }
    }
}
