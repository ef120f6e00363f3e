//! What the engine shows of itself: typed figures for status pages,
//! metrics, readiness and diagnostics. Callers get these instead of the
//! ledger, the log or the store, so the engine keeps its parts private
//! and can change them without its callers noticing.

use std::time::Duration;

use usage_sync_core::{LedgerTotals, UserId};

use crate::engine::Engine;

/// The ledger's figures, each read under its own shard locks (one pass
/// per figure, never a walk over users).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerFigures {
    /// Units not yet known to be in the store, and users holding them.
    pub totals: LedgerTotals,
    /// Users held in memory.
    pub users_resident: usize,
    /// Request ids inside the dedup window.
    pub request_ids_remembered: usize,
}

/// The write-ahead log's state, when the engine has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStatus {
    /// Sequence number of the current segment.
    pub segment: u64,
    /// Bytes in the current segment.
    pub segment_bytes: u64,
    /// False while the log cannot write (a full disk): consumes answer
    /// 503 until it heals.
    pub writable: bool,
}

/// Whether the store answered a ping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReachability {
    Reachable,
    /// The store's own error.
    Failed(String),
    /// No answer within the time given.
    TimedOut(Duration),
}

impl Engine {
    /// The ledger's figures.
    pub fn ledger_figures(&self) -> LedgerFigures {
        let ledger = self.ledger();
        LedgerFigures {
            totals: ledger.totals(),
            users_resident: ledger.resident_users(),
            request_ids_remembered: ledger.dedup_entries(),
        }
    }

    /// The `n` resident users with the most units not yet known to be in
    /// the store, most first. Walks every user: for status pages.
    pub fn top_pending(&self, n: usize) -> Vec<(UserId, i64)> {
        self.ledger().top_pending(n)
    }

    /// Request ids remembered for one user.
    pub fn request_ids_of(&self, user: &UserId) -> usize {
        self.ledger().dedup_entries_of(user.as_str())
    }

    /// The log's state; `None` without a log.
    pub fn log_status(&self) -> Option<LogStatus> {
        self.wal().map(|wal| {
            let (segment, segment_bytes) = wal.segment();
            LogStatus {
                segment,
                segment_bytes,
                writable: !wal.failed(),
            }
        })
    }

    /// The store's backend name (`sqlite`, `postgres`).
    pub fn store_backend(&self) -> &'static str {
        self.store().backend()
    }

    /// The store's connection pool: (size, connections in use); `None`
    /// without a pool (SQLite).
    pub fn store_pool(&self) -> Option<(usize, usize)> {
        self.store().pool_status()
    }

    /// Pings the store, waiting at most `within`.
    pub async fn ping_store(&self, within: Duration) -> StoreReachability {
        match tokio::time::timeout(within, self.store().ping()).await {
            Ok(Ok(())) => StoreReachability::Reachable,
            Ok(Err(e)) => StoreReachability::Failed(e.to_string()),
            Err(_) => StoreReachability::TimedOut(within),
        }
    }
}
