//! The pure core of usage-sync: no I/O, no async runtime, no clock.
//!
//! Modules:
//! - [`ids`]: domain newtypes (`UserId`, `RequestId`, `Units`, `Kind`) that
//!   are valid by construction.
//! - [`time`]: `Timestamp` and the calendar arithmetic for periods.
//! - [`quota`]: plans, limits, periods and their resolution for a user.
//! - [`counters`]: the sharded in-memory ledger with the atomic
//!   check-and-count, idempotency, refunds and the due-structures.
//! - [`dedup`]: the idempotency table, 40 bytes per remembered request id.
//! - [`batches`]: flush ids, batches, triggers.
//! - [`journal`]: what the ledger records in the write-ahead log, and the
//!   trait it records through.
//! - [`error`]: the crate's error enum.
//!
//! Everything that depends on time takes `now` as an argument, so the engine
//! decides what "now" is (the real clock, or paused tokio time in tests).

#![forbid(unsafe_code)]
// Casts that can wrap are denied in the whole workspace (Cargo.toml).

pub mod backoff;
pub mod batches;
pub mod counters;
pub mod dedup;
pub mod error;
pub mod ids;
pub mod journal;
pub mod lock;
pub mod quota;
pub mod time;

pub use backoff::Backoff;
pub use batches::{Delta, FlushBatch, FlushId, Trigger};
pub use counters::{
    ConsumeOutcome, Cover, Decision, HeartbeatOutcome, KindUsage, Ledger, LedgerConfig,
    LedgerTotals, LoadEpoch, PersistedRow, Quota, RecoveredSlot, RefundOutcome, UnitsOutside,
    UserUsage,
};
pub use dedup::{DedupKey, Fingerprint};
pub use error::CoreError;
pub use ids::{Kind, Kinds, RequestId, Units, UserId};
pub use journal::{Cut, Journal, Lsn, Record};
pub use lock::Locked;
pub use quota::{Limit, PeriodKind, Plan, Plans, UserProfile, default_catalogue, open_catalogue};
pub use time::Timestamp;
