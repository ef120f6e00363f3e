//! The idempotency table: what the ledger remembers of every request id
//! inside the dedup window, in about 44 bytes per id.
//!
//! # Why fingerprints
//!
//! A day of request ids is millions of entries (10 million a day is 116 a
//! second). Kept as strings with the user's id and the full decision, an
//! entry cost about 335 bytes of heap (a 36-byte UUID and its copy in the
//! expiry queue, the user id, the decision, the map's overhead), so 10
//! million ids needed 3.1 GiB. Here an entry is a fixed 36 bytes:
//!
//! - the id's **fingerprint**: 96 bits of SipHash-1-3 keyed with a random
//!   secret, so a client cannot craft two ids that collide (recovery
//!   fingerprints the ids it reads from the log under the key it then
//!   hands the ledger);
//! - the **user's hash** (the ledger's 64-bit keyed hash, which also picks
//!   the user's shard): a reused id is compared against it, and the user's
//!   id itself is kept once per user, not once per request, in that
//!   shard's owner table ([`crate::counters`]);
//! - the original **answer** in narrow fields (kind, amount, used, limit,
//!   the period's start in seconds).
//!
//! A request whose numbers do not fit (an amount past 65 535, a count
//! past 2^32, a period not on a whole second, a kind index past 255)
//! keeps them in a side table, so nothing is ever rounded. The entries
//! sit in first-seen order in fixed chunks, and a hash table maps a
//! fingerprint to an entry's number: 5 more bytes an id, 8 on average
//! with the table's spare room.
//!
//! # How exact
//!
//! Two different ids share a fingerprint with probability about
//! n² / 2^97 for n ids in the window: 6·10^-16 at 10 million. A reused id
//! is a conflict unless user hash, kind and amount all match; two users
//! share a 64-bit hash with probability 2^-64 per pair. Neither can be
//! forced by a client, because both hashes are keyed.
//!
//! # Expiry without a per-id timestamp
//!
//! First sightings are kept per run of entries seen within one unit of
//! 1/1024 of the window. An id is remembered for at least the window and
//! forgotten at most two units (1/512 of the window) later: 24 h, within
//! 3 minutes. Every operation on a shard first pops the runs that have
//! left the window from its front, so nothing expired is ever answered
//! and nothing walks the table.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use siphasher::sip128::SipHasher13;

use crate::time::Timestamp;

/// The secret the fingerprints are keyed with: drawn by recovery, which
/// fingerprints the ids the log holds, and then used by the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupKey {
    pub k0: u64,
    pub k1: u64,
}

impl DedupKey {
    /// A fresh key from the operating system's randomness (through std's
    /// `RandomState`, which seeds from it).
    pub fn random() -> Self {
        let r = || std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        DedupKey { k0: r(), k1: r() }
    }

    pub fn fingerprint(&self, request_id: &str) -> Fingerprint {
        let h = SipHasher13::new_with_keys(self.k0, self.k1)
            .hash(request_id.as_bytes())
            .as_u128();
        let b = h.to_le_bytes();
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Fingerprint([w(0), w(4), w(8)])
    }
}

/// 96 bits of a keyed hash of a request id (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u32; 3]);

impl Fingerprint {
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        for (i, w) in self.0.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    pub fn from_bytes(b: [u8; 12]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Fingerprint([w(0), w(4), w(8)])
    }

    /// Bits for the table's bucket and tag (uniform: the fingerprint is a
    /// keyed hash already).
    fn hash(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }

    /// Bits that pick the shard, independent of [`Fingerprint::hash`].
    pub(crate) fn shard_bits(self) -> usize {
        usize::try_from(self.0[2]).unwrap_or(0)
    }
}

/// A remembered request, in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub user_hash: u64,
    pub kind: u16,
    pub amount: u64,
    pub period_start: Timestamp,
    pub allowed: bool,
    pub used: u64,
    pub limit: Option<u64>,
    pub refunded: bool,
}

impl Remembered {
    /// The original answer.
    pub fn decision(&self) -> crate::counters::Decision {
        crate::counters::Decision {
            allowed: self.allowed,
            used: self.used,
            limit: self.limit,
            remaining: self.limit.map(|l| l.saturating_sub(self.used)),
            period_start: self.period_start,
        }
    }
}

const ALLOWED: u8 = 1;
const REFUNDED: u8 = 2;
/// The numbers live in the side table (`DedupTable::wide`).
const WIDE: u8 = 4;

/// One remembered id: 36 bytes, no pointer. Its first sighting is kept
/// per run of entries (see `DedupTable::runs`), not per entry.
#[derive(Clone, Copy)]
struct Entry {
    fp: Fingerprint,
    user: [u32; 2],
    period_s: u32,
    used: u32,
    /// `u32::MAX`: unlimited.
    limit: u32,
    amount: u16,
    kind: u8,
    flags: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 36);

const EMPTY: Entry = Entry {
    fp: Fingerprint([0; 3]),
    user: [0; 2],
    period_s: 0,
    used: 0,
    limit: 0,
    amount: 0,
    kind: 0,
    flags: 0,
};

impl Entry {
    fn user_hash(&self) -> u64 {
        u64::from(self.user[0]) | (u64::from(self.user[1]) << 32)
    }
}

/// The numbers of a request that do not fit an [`Entry`].
#[derive(Clone, Copy)]
struct Wide {
    kind: u16,
    amount: u64,
    period_start: Timestamp,
    used: u64,
    limit: Option<u64>,
}

/// The dedup window and the unit first sightings are kept in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub window_ms: i64,
    unit_ms: i64,
}

impl Window {
    pub fn new(window_ms: i64) -> Self {
        let window_ms = window_ms.max(1);
        Window {
            window_ms,
            unit_ms: (window_ms.saturating_add(1023) / 1024).max(1),
        }
    }

    fn unit(&self, t: Timestamp) -> i64 {
        t.as_millis().div_euclid(self.unit_ms)
    }

    /// Whether a request first seen in `unit` is inside the window at
    /// `now`. It was first seen at some time in its unit, so this keeps it
    /// while `now - at < window` may still hold: at least the window, at
    /// most two units (1/512 of the window) more. A unit after `now` (the
    /// clock stepped back) is inside.
    fn live(&self, unit: i64, now: Timestamp) -> bool {
        let age = self.unit(now).saturating_sub(unit);
        age.saturating_mul(self.unit_ms) < self.window_ms + self.unit_ms - 1
    }

    /// Whether a request first seen at `at` is inside the window at `now`.
    pub fn alive(&self, at: Timestamp, now: Timestamp) -> bool {
        self.live(self.unit(at), now)
    }
}

fn narrow(v: u64) -> Option<u32> {
    u32::try_from(v).ok()
}

/// Entries per storage chunk (144 KiB): memory follows the ids held, with
/// at most one part-filled chunk, and expiry frees whole chunks.
const CHUNK: usize = 4096;

/// One shard of the idempotency table.
///
/// Entries sit in first-seen order in a queue of fixed chunks, numbered by
/// a wrapping sequence number; a hash table maps a fingerprint to its
/// entry's number (4 bytes and a control byte per id, instead of the
/// entry itself, so the table's growth by doubling wastes 5 bytes an id,
/// not 41). Expiry pops the oldest entries from the front: every
/// operation first drops what has left the window, so nothing expired is
/// ever answered, and no sweep walks the table.
pub(crate) struct DedupTable {
    index: HashTable<u32>,
    chunks: VecDeque<Box<[Entry]>>,
    /// Number of `chunks[0][0]`.
    base: u32,
    /// Number of the oldest entry held, and of the next one.
    head: u32,
    next: u32,
    /// `(number of its first entry, unit)` for each run of entries first
    /// seen in one unit, oldest first.
    runs: VecDeque<(u32, i64)>,
    /// Numbers of the entries whose numbers live here instead.
    wide: HashMap<u32, Wide>,
}

impl DedupTable {
    pub fn new() -> Self {
        DedupTable {
            index: HashTable::new(),
            chunks: VecDeque::new(),
            base: 0,
            head: 0,
            next: 0,
            runs: VecDeque::new(),
            wide: HashMap::new(),
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&self, seq: u32) -> (usize, usize) {
        let off = usize::try_from(seq.wrapping_sub(self.base)).unwrap_or(usize::MAX);
        (off / CHUNK, off % CHUNK)
    }

    fn entry(&self, seq: u32) -> &Entry {
        let (c, i) = self.slot(seq);
        &self.chunks[c][i]
    }

    fn entry_mut(&mut self, seq: u32) -> &mut Entry {
        let (c, i) = self.slot(seq);
        &mut self.chunks[c][i]
    }

    fn find(&self, fp: Fingerprint) -> Option<u32> {
        self.index
            .find(fp.hash(), |&seq| self.entry(seq).fp == fp)
            .copied()
    }

    fn expand(&self, seq: u32) -> Remembered {
        let e = self.entry(seq);
        let (allowed, refunded) = (e.flags & ALLOWED != 0, e.flags & REFUNDED != 0);
        if e.flags & WIDE != 0
            && let Some(w) = self.wide.get(&seq)
        {
            return Remembered {
                user_hash: e.user_hash(),
                kind: w.kind,
                amount: w.amount,
                period_start: w.period_start,
                allowed,
                used: w.used,
                limit: w.limit,
                refunded,
            };
        }
        Remembered {
            user_hash: e.user_hash(),
            kind: u16::from(e.kind),
            amount: u64::from(e.amount),
            period_start: Timestamp::from_millis(i64::from(e.period_s) * 1000),
            allowed,
            used: u64::from(e.used),
            limit: (e.limit != u32::MAX).then_some(u64::from(e.limit)),
            refunded,
        }
    }

    /// Drops the entries that have left the window, oldest first, pushing
    /// each one's user hash to `owners`. Returns how many. A run first
    /// seen after a younger one (the clock stepped back) waits behind it:
    /// late, never early.
    pub fn expire(&mut self, now: Timestamp, w: &Window, owners: &mut Vec<u64>) -> usize {
        let mut n = 0;
        while let Some(&(start, unit)) = self.runs.front() {
            if w.live(unit, now) {
                break;
            }
            let end = self.runs.get(1).map_or(self.next, |r| r.0);
            let mut seq = start;
            while seq != end {
                let e = *self.entry(seq);
                // An entry replaced by a later one of the same id is no
                // longer indexed: its owner was released then.
                if let Ok(found) = self.index.find_entry(e.fp.hash(), |&s| s == seq) {
                    found.remove();
                    owners.push(e.user_hash());
                    n += 1;
                }
                if e.flags & WIDE != 0 {
                    self.wide.remove(&seq);
                }
                seq = seq.wrapping_add(1);
            }
            self.head = end;
            self.runs.pop_front();
        }
        // Free the chunks wholly before the oldest entry held.
        while !self.chunks.is_empty() && self.slot(self.head).0 > 0 {
            self.chunks.pop_front();
            self.base = self
                .base
                .wrapping_add(u32::try_from(CHUNK).unwrap_or(u32::MAX));
        }
        n
    }

    /// The request remembered under `fp`. The caller expired the table
    /// first (`expire`), so whatever is found is inside the window.
    pub fn get(&self, fp: Fingerprint) -> Option<Remembered> {
        self.find(fp).map(|seq| self.expand(seq))
    }

    /// Remembers `r` under `fp`, first seen at `at`. Returns the user hash
    /// of an entry of the same fingerprint it replaced (its owner count
    /// goes down).
    pub fn insert(
        &mut self,
        fp: Fingerprint,
        r: &Remembered,
        at: Timestamp,
        w: &Window,
    ) -> Option<u64> {
        let seq = self.next;
        let mut flags = 0;
        if r.allowed {
            flags |= ALLOWED;
        }
        if r.refunded {
            flags |= REFUNDED;
        }
        let period_ms = r.period_start.as_millis();
        let compact = (|| {
            if period_ms.rem_euclid(1000) != 0 {
                return None;
            }
            Some((
                u8::try_from(r.kind).ok()?,
                u16::try_from(r.amount).ok()?,
                u32::try_from(period_ms / 1000).ok()?,
                narrow(r.used)?,
                match r.limit {
                    None => u32::MAX,
                    Some(l) => narrow(l).filter(|&l| l != u32::MAX)?,
                },
            ))
        })();
        let (kind, amount, period_s, used, limit) = compact.unwrap_or_else(|| {
            flags |= WIDE;
            self.wide.insert(
                seq,
                Wide {
                    kind: r.kind,
                    amount: r.amount,
                    period_start: r.period_start,
                    used: r.used,
                    limit: r.limit,
                },
            );
            (0, 0, 0, 0, 0)
        });
        let unit = w.unit(at);
        if self.runs.back().is_none_or(|&(_, u)| u != unit) {
            self.runs.push_back((seq, unit));
        }
        let (c, i) = self.slot(seq);
        if c == self.chunks.len() {
            self.chunks.push_back(vec![EMPTY; CHUNK].into_boxed_slice());
        }
        self.chunks[c][i] = Entry {
            fp,
            user: [
                u32::try_from(r.user_hash & 0xffff_ffff).unwrap_or(0),
                u32::try_from(r.user_hash >> 32).unwrap_or(0),
            ],
            period_s,
            used,
            limit,
            amount,
            kind,
            flags,
        };
        self.next = seq.wrapping_add(1);
        let replaced = self.find(fp).map(|old| self.entry(old).user_hash());
        let chunks = &self.chunks;
        let base = self.base;
        let at_seq = |s: u32| {
            let off = usize::try_from(s.wrapping_sub(base)).unwrap_or(usize::MAX);
            chunks[off / CHUNK][off % CHUNK].fp
        };
        match self.index.find_mut(fp.hash(), |&s| at_seq(s) == fp) {
            Some(old) => *old = seq,
            None => {
                self.index
                    .insert_unique(fp.hash(), seq, |&s| at_seq(s).hash());
            }
        }
        replaced
    }

    /// Marks the request under `fp` refunded.
    pub fn set_refunded(&mut self, fp: Fingerprint) {
        if let Some(seq) = self.find(fp) {
            self.entry_mut(seq).flags |= REFUNDED;
        }
    }

    /// Heap bytes this shard holds: its index, its chunks, its runs and
    /// its side table (for the memory figures in the benches).
    pub fn heap_bytes(&self) -> usize {
        self.index.allocation_size()
            + self.chunks.len() * CHUNK * std::mem::size_of::<Entry>()
            + self.runs.capacity() * std::mem::size_of::<(u32, i64)>()
            + self.wide.capacity() * (std::mem::size_of::<(u32, Wide)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rem(user_hash: u64, amount: u64, period_ms: i64, limit: Option<u64>) -> Remembered {
        Remembered {
            user_hash,
            kind: 1,
            amount,
            period_start: Timestamp::from_millis(period_ms),
            allowed: true,
            used: 7,
            limit,
            refunded: false,
        }
    }

    #[test]
    fn compact_and_wide_entries_round_trip_exactly() {
        let w = Window::new(1000);
        let key = DedupKey { k0: 1, k1: 2 };
        let now = Timestamp::from_millis(1_700_000_000_000);
        let mut t = DedupTable::new();
        let cases = [
            rem(u64::MAX - 3, 1, 1_700_000_000_000, Some(10)),
            rem(5, 65_536, 1_700_000_000_000, None),
            rem(6, 2, 1_700_000_000_123, Some(u64::from(u32::MAX))),
            rem(7, 2, -86_400_000, Some(i64::MAX as u64)),
        ];
        for (i, r) in cases.iter().enumerate() {
            let fp = key.fingerprint(&format!("r{i}"));
            assert_eq!(t.insert(fp, r, now, &w), None);
            assert_eq!(t.get(fp).as_ref(), Some(r), "case {i}");
        }
        assert_eq!(t.wide.len(), 3, "only the first fits 36 bytes");
        let fp = key.fingerprint("r0");
        t.set_refunded(fp);
        assert!(t.get(fp).unwrap().refunded);
        // Forgotten after the window, side table included.
        let mut owners = Vec::new();
        assert_eq!(t.expire(now.saturating_add_ms(1000), &w, &mut owners), 4);
        assert_eq!((t.len(), t.wide.len()), (0, 0));
        assert_eq!(owners, vec![u64::MAX - 3, 5, 6, 7]);
    }

    #[test]
    fn an_entry_lives_at_least_the_window_and_at_most_1_512_more() {
        // 24 h: a unit is 84 375 ms.
        let w = Window::new(86_400_000);
        let key = DedupKey::random();
        let fp = key.fingerprint("id");
        for first in [0i64, 1, 84_374, 84_375, 1_764_633_600_000 + 4_321] {
            let at = Timestamp::from_millis(first);
            let last_live = at.saturating_add_ms(86_400_000 - 1);
            let gone = at.saturating_add_ms(86_400_000 + 86_400_000 / 512);
            let mut t = DedupTable::new();
            t.insert(fp, &rem(1, 1, 0, None), at, &w);
            let mut owners = Vec::new();
            assert_eq!(
                t.expire(last_live, &w, &mut owners),
                0,
                "first seen {first}"
            );
            assert!(t.get(fp).is_some());
            assert_eq!(t.expire(gone, &w, &mut owners), 1, "first seen {first}");
            assert_eq!((t.get(fp), owners), (None, vec![1]));
            // A clock stepped back keeps it.
            let mut t = DedupTable::new();
            t.insert(fp, &rem(1, 1, 0, None), at, &w);
            t.expire(at.saturating_sub_ms(3_600_000), &w, &mut Vec::new());
            assert!(t.get(fp).is_some());
        }
        // A window under 1 024 ms is exact to the millisecond.
        let w = Window::new(1000);
        let at = Timestamp::from_millis(5_000);
        let mut t = DedupTable::new();
        t.insert(fp, &rem(1, 1, 0, None), at, &w);
        t.expire(at.saturating_add_ms(999), &w, &mut Vec::new());
        assert!(t.get(fp).is_some());
        t.expire(at.saturating_add_ms(1000), &w, &mut Vec::new());
        assert!(t.get(fp).is_none());
    }

    /// Many entries over many units, some ids repeated after expiry: the
    /// table holds exactly the ids of the window, frees whole chunks, and
    /// a replaced entry's owner is released once.
    #[test]
    fn expiry_frees_chunks_and_keeps_exactly_the_window() {
        let w = Window::new(10_240); // a unit of 10 ms
        let key = DedupKey { k0: 9, k1: 9 };
        let mut t = DedupTable::new();
        let mut owners = Vec::new();
        let mut released = 0;
        let per_ms = 7;
        for ms in 0..30_000i64 {
            let now = Timestamp::from_millis(ms);
            released += t.expire(now, &w, &mut owners);
            for k in 0..per_ms {
                let id = (ms * per_ms + k) % 150_000;
                let fp = key.fingerprint(&id.to_string());
                if t.get(fp).is_none() {
                    released += usize::from(t.insert(fp, &rem(1, 1, 0, None), now, &w).is_some());
                }
            }
        }
        // 10 240 ms of 7 ids a millisecond, give or take a unit at each end.
        assert!((71_680..=71_680 + 2 * 70).contains(&t.len()), "{}", t.len());
        assert_eq!(owners.len(), released);
        assert!(t.chunks.len() <= t.len() / CHUNK + 2, "{}", t.chunks.len());
    }

    #[test]
    fn fingerprints_depend_on_the_key() {
        let a = DedupKey { k0: 1, k1: 2 };
        let b = DedupKey { k0: 1, k1: 3 };
        assert_eq!(a.fingerprint("x"), a.fingerprint("x"));
        assert_ne!(a.fingerprint("x"), b.fingerprint("x"));
        assert_ne!(a.fingerprint("x"), a.fingerprint("y"));
        let fp = a.fingerprint("x");
        assert_eq!(Fingerprint::from_bytes(fp.to_bytes()), fp);
    }
}
