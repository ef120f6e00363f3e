//! The storage layer of usage-sync.
//!
//! Modules:
//! - this file: the [`Store`] trait every backend implements, and the
//!   records it exchanges with the engine;
//! - `sqlite`: the embedded default backend (feature `sqlite`, on by
//!   default);
//! - `postgres`: the production backend, several instances on one
//!   database (feature `postgres`);
//! - [`migrations`]: the schema, per SQL dialect, applied at start;
//! - [`wal`]: the write-ahead log (framing, group commit, checkpoints,
//!   recovery);
//! - `testing`: throwaway PostgreSQL databases for test suites, and
//!   `fault`: a wrapper that injects failures into a real store, for the
//!   engine's outage and lost-acknowledgement tests. Both are behind the
//!   `test-util` feature, which only test suites enable;
//! - [`error`]: the crate's error type, which knows what is transient.
//!
//! # The contract a backend must honour
//!
//! `apply_flush` applies all deltas of a batch and records the batch's flush
//! id in one transaction. If the id is already recorded, it applies nothing
//! and reports the current values. Therefore a batch whose outcome is
//! unknown (timeout, lost connection) can be re-sent with the same id and is
//! applied exactly once. The conformance suite in `tests/` checks this for
//! every backend.

#![forbid(unsafe_code)]
// Casts that can wrap are denied in the whole workspace (Cargo.toml).

pub mod error;
#[cfg(feature = "test-util")]
pub mod fault;
pub mod migrations;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod wal;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use error::StoreError;
#[cfg(feature = "test-util")]
pub use fault::FaultyStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
use usage_sync_core::{FlushBatch, FlushId, Limit, PeriodKind, Timestamp};
pub use wal::{Durability, Wal, WalConfig};

/// What a store operation returns: a boxed future, so `Store` can be used
/// as `Arc<dyn Store>` (the backend is chosen at run time from
/// `DATABASE_URL`). Flushes are batched, so the allocation is not on any
/// hot path.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A plan as stored (kinds by name, so a stored plan survives a change in
/// the configured kinds' order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPlan {
    pub name: String,
    pub period: PeriodKind,
    pub limits: Vec<(String, Limit)>,
}

/// A user's admin-set profile as stored.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoredUser {
    pub plan: Option<String>,
    pub overrides: Vec<(String, Limit)>,
    pub reset_at: Option<Timestamp>,
}

/// One persisted counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub user_id: String,
    pub kind: String,
    pub period_start: Timestamp,
    pub used: i64,
}

/// What the engine needs to make a user resident.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    /// `None` if no admin ever configured this user.
    pub profile: Option<StoredUser>,
    /// Counters with `period_start >= since`.
    pub usage: Vec<UsageRow>,
}

/// Result of [`Store::apply_flush`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Value of each delta's counter after the transaction, in batch order.
    pub used_after: Vec<i64>,
    /// The flush id was already recorded: nothing was applied this time.
    pub already_applied: bool,
}

/// A storage backend. All methods are cancel-safe in the sense the engine
/// needs: dropping a future (e.g. on `sync_timeout`) may leave the
/// transaction committed or not, and re-sending the same batch is correct
/// either way.
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs and status ("sqlite", "postgres").
    fn backend(&self) -> &'static str;

    /// Creates or upgrades the schema. Idempotent.
    fn migrate(&self) -> StoreFuture<'_, ()>;

    /// Cheap round trip proving the store answers.
    fn ping(&self) -> StoreFuture<'_, ()>;

    fn load_plans(&self) -> StoreFuture<'_, Vec<StoredPlan>>;

    fn save_plan(&self, plan: StoredPlan) -> StoreFuture<'_, ()>;

    /// Loads several distinct users at once: one state per id, in the
    /// order given. The engine batches cold loads through this (a restart
    /// or a burst of new users makes thousands at once), so a backend
    /// answers a batch in as few round trips as it can.
    fn load_users(&self, ids: Vec<String>, since: Timestamp) -> StoreFuture<'_, Vec<UserState>>;

    /// One user: a batch of one.
    fn load_user(&self, user_id: String, since: Timestamp) -> StoreFuture<'_, UserState> {
        Box::pin(async move {
            let mut states = self.load_users(vec![user_id], since).await?;
            states
                .pop()
                .ok_or_else(|| StoreError::Task("load_users returned no state".into()))
        })
    }

    fn save_user(&self, user_id: String, user: StoredUser) -> StoreFuture<'_, ()>;

    /// Applies a batch exactly once (see the module docs).
    fn apply_flush(&self, batch: Arc<FlushBatch>) -> StoreFuture<'_, FlushOutcome>;

    /// Whether a flush id is recorded (used by log recovery).
    fn flush_applied(&self, id: FlushId) -> StoreFuture<'_, bool>;

    /// Forgets flush ids recorded before `before`. Ids only need to be kept
    /// for as long as a batch with that id may still be re-sent.
    fn prune_flushes(&self, before: Timestamp) -> StoreFuture<'_, u64>;

    /// Every counter, for tests, exports and the load-test totals.
    fn all_usage(&self) -> StoreFuture<'_, Vec<UsageRow>>;

    /// Every user with a saved profile (plan, overrides, reset), by id.
    /// For the admin user list; reads the whole table.
    fn all_profiles(&self) -> StoreFuture<'_, Vec<(String, StoredUser)>>;

    /// Connection pool (size, in use), for backends that have one.
    fn pool_status(&self) -> Option<(usize, usize)> {
        None
    }
}

/// Serialises `(kind, limit)` pairs as a JSON object, `null` for unlimited.
pub fn limits_to_json(limits: &[(String, Limit)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = limits
        .iter()
        .map(|(k, l)| (k.clone(), l.map_or(serde_json::Value::Null, Into::into)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Inverse of [`limits_to_json`].
pub fn limits_from_json(s: &str) -> Result<Vec<(String, Limit)>, StoreError> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("limits JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| StoreError::Corrupt("limits JSON is not an object".into()))?;
    obj.iter()
        .map(|(k, v)| match v {
            serde_json::Value::Null => Ok((k.clone(), None)),
            v => v
                .as_u64()
                .map(|n| (k.clone(), Some(n)))
                .ok_or_else(|| StoreError::Corrupt(format!("limit for '{k}' is not an integer"))),
        })
        .collect()
}
