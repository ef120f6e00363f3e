//! The ledger's side of the write-ahead log: what it records, and the
//! trait it records through.
//!
//! The core does no I/O. It hands each state change to a [`Journal`] while
//! still holding the locks under which the change was made, so the order
//! of records in the log is the order in which changes were applied to
//! each counter. The store crate's write-ahead log implements the trait by
//! encoding the record into a buffer; a writer thread does the I/O, and
//! the engine waits for the returned [`Lsn`] to be durable before
//! acknowledging.
//!
//! What makes replay exact:
//! - every mutation of unpersisted units is one record: a counted consume
//!   (+amount), a refund (-amount), and a flush completion (`Done`, which
//!   removes the batch's deltas);
//! - a batch's exact deltas are recorded (`Intent`) before it is sent, so
//!   after a crash the same batch can be re-sent under the same id;
//! - a checkpoint copies the ledger a few users at a time while consumes
//!   go on; every record of a change carries its user's cut ([`Cut`]), so
//!   replay can tell the changes a checkpoint's figures already hold from
//!   those that come after them.

use crate::batches::{FlushBatch, FlushId};
use crate::counters::Decision;
use crate::ids::{Kind, RequestId, UserId};
use crate::time::Timestamp;

/// Log sequence number: the position of a record in the log, increasing.
pub type Lsn = u64;

/// One state change (or one piece of a checkpoint), borrowed from the
/// ledger for as long as it takes to encode it.
#[derive(Debug)]
pub enum Record<'a> {
    /// A consume that counted units, or that carried a request id (denied
    /// ones too, so a repeat after a restart gets the original answer).
    Consume {
        user: &'a UserId,
        kind: &'a Kind,
        period_start: Timestamp,
        amount: u64,
        request_id: Option<&'a RequestId>,
        decision: &'a Decision,
        at: Timestamp,
        /// The user's cut when the units were counted (see
        /// [`Cut`]).
        cut: Cut,
    },
    /// A refund: `amount` comes off (user, kind, period).
    Refund {
        request_id: &'a str,
        user: &'a UserId,
        kind: &'a Kind,
        period_start: Timestamp,
        amount: u64,
        at: Timestamp,
        cut: Cut,
    },
    /// A batch about to be sent, with its id and exact deltas.
    Intent { batch: &'a FlushBatch },
    /// The batch with this id is in the store: its deltas are persisted.
    /// `cuts[i]`: the cut of delta `i`'s shard when its counter took the
    /// completion.
    Done { id: FlushId, cuts: &'a [Cut] },
    /// Checkpoint: units of (user, kind, period) not yet known to be in the
    /// store (pending plus in flight).
    Unpersisted {
        user: &'a UserId,
        kind: &'a Kind,
        period_start: Timestamp,
        units: i64,
    },
}

/// The segment whose checkpoint had copied a user's counters when a
/// change to them was made (see [`crate::Ledger::cut_shards`]). The
/// change's record carries it: in the segment being checkpointed, a change
/// from before the user was copied is already in the checkpoint's figure
/// for its counter, and replay must not apply it twice. `Cut::NONE` marks
/// a record with no units to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cut(pub u64);

impl Cut {
    pub const NONE: Cut = Cut(u64::MAX);
}

/// Where the ledger records its state changes.
pub trait Journal: Send + Sync {
    /// Appends a record and returns its sequence number. Called with ledger
    /// locks held: must not block on I/O.
    fn append(&self, record: Record<'_>) -> Lsn;
    /// The sequence number of the last record appended.
    fn head(&self) -> Lsn;
}
