//! The vocabulary of the sync engine that the core owns: flush ids, the
//! deltas of one batch, the triggers that cause a flush, and the builder
//! that cuts selected counters into batches of bounded size.
//!
//! A batch is immutable once sealed. A failed batch is retried as the very
//! same value (same id, same deltas): the store records the id in the same
//! transaction as the deltas, so a retry of a batch that did commit changes
//! nothing. That is the whole exactly-once argument on the database side.

use std::fmt;

use crate::ids::{Kind, UserId};
use crate::time::Timestamp;

/// Globally unique id of one flush batch: 64 random bits chosen when the
/// ledger is created (distinct per process start and per instance) and a
/// 64-bit sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlushId(pub u128);

impl fmt::Display for FlushId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for FlushId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlushId({self})")
    }
}

impl FlushId {
    pub fn parse(s: &str) -> Option<FlushId> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(FlushId)
    }
}

/// One counter's change: add `delta` to the persisted usage of
/// (user, kind, period). Negative after refunds of already-flushed units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub user: UserId,
    pub kind: Kind,
    pub period_start: Timestamp,
    pub delta: i64,
}

/// A set of deltas written to the store in one transaction.
///
/// Invariants: at most one delta per (user, kind, period); deltas sorted by
/// (user, kind index, period) so that concurrent writers lock rows in the
/// same order and cannot deadlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushBatch {
    pub id: FlushId,
    pub trigger: Trigger,
    pub deltas: Vec<Delta>,
}

impl FlushBatch {
    /// Net units this batch adds to the store.
    pub fn units(&self) -> i64 {
        self.deltas.iter().map(|d| d.delta).sum()
    }

    pub fn rows(&self) -> usize {
        self.deltas.len()
    }

    /// Number of distinct users (deltas are sorted by user).
    pub fn users(&self) -> usize {
        let mut n = 0;
        let mut last: Option<&UserId> = None;
        for d in &self.deltas {
            if last != Some(&d.user) {
                n += 1;
                last = Some(&d.user);
            }
        }
        n
    }
}

/// Why a flush happened. Each trigger is counted separately in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Trigger {
    /// A counter's pending units reached `force_sync_threshold`.
    Threshold,
    /// The periodic check of the users with the oldest pending units.
    Check,
    /// The heartbeat's retry of failed flushes.
    Heartbeat,
    /// A user idle for longer than `session_timeout` with pending units.
    SessionEnd,
    /// The `max_sync_interval` pass that flushes everything.
    Guarantee,
    /// Process shutdown.
    Shutdown,
    /// An admin sync endpoint or library call.
    Manual,
    /// Re-sending unfinished flushes found while recovering the log.
    Recovery,
}

impl Trigger {
    pub const ALL: [Trigger; 8] = [
        Trigger::Threshold,
        Trigger::Check,
        Trigger::Heartbeat,
        Trigger::SessionEnd,
        Trigger::Guarantee,
        Trigger::Shutdown,
        Trigger::Manual,
        Trigger::Recovery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Threshold => "threshold",
            Trigger::Check => "check",
            Trigger::Heartbeat => "heartbeat",
            Trigger::SessionEnd => "session_end",
            Trigger::Guarantee => "guarantee",
            Trigger::Shutdown => "shutdown",
            Trigger::Manual => "manual",
            Trigger::Recovery => "recovery",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Cuts deltas into batches of at most `max_rows`, assigning ids.
pub(crate) struct BatchBuilder<'a> {
    next_id: &'a dyn Fn() -> FlushId,
    trigger: Trigger,
    max_rows: usize,
    current: Vec<Delta>,
    pub(crate) sealed: Vec<FlushBatch>,
}

impl<'a> BatchBuilder<'a> {
    pub(crate) fn new(next_id: &'a dyn Fn() -> FlushId, trigger: Trigger, max_rows: usize) -> Self {
        BatchBuilder {
            next_id,
            trigger,
            max_rows: max_rows.max(1),
            current: Vec::new(),
            sealed: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, d: Delta) {
        self.current.push(d);
        if self.current.len() >= self.max_rows {
            self.seal();
        }
    }

    fn seal(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let mut deltas = std::mem::take(&mut self.current);
        deltas.sort_by(|a, b| {
            (&a.user, a.kind.index(), a.period_start).cmp(&(
                &b.user,
                b.kind.index(),
                b.period_start,
            ))
        });
        self.sealed.push(FlushBatch {
            id: (self.next_id)(),
            trigger: self.trigger,
            deltas,
        });
    }

    pub(crate) fn finish(mut self) -> Vec<FlushBatch> {
        self.seal();
        self.sealed
    }
}
