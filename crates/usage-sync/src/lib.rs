//! usage-sync as a library: meter per-user usage and enforce quotas in
//! memory, and write the counts to a database in batches.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use usage_sync::{Engine, SyncConfig, SystemClock};
//! use usage_sync_core::{default_catalogue, Units, UserId};
//! use usage_sync_store::SqliteStore;
//!
//! let store = Arc::new(SqliteStore::open("data/usage-sync.db".as_ref())?);
//! let (kinds, plans) = default_catalogue();
//! let engine = Engine::open(store, kinds, plans, SyncConfig::default(), Arc::new(SystemClock)).await?;
//! engine.start();
//! let user = UserId::parse("u1")?;
//! let fast = engine.kind("fast")?;
//! let out = engine.consume(&user, &fast, Units::ONE, None).await?;
//! assert!(out.decision.allowed);
//! engine.shutdown(std::time::Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`admin`]: admin views over all users (list with totals, eviction,
//!   simulation).
//! - [`engine`]: the [`Engine`] handle: consume, check, refund, usage and
//!   admin changes; loads users from the store on first touch.
//! - `loading` (private): those first-touch loads, queued and batched so that a
//!   stampede of misses costs a few multi-user queries.
//! - [`sync`]: the sync engine's triggers, flush pool and retries; start,
//!   manual sync and shutdown.
//! - [`config`]: the settings of the sync engine ([`SyncConfig`]).
//! - [`de`]: reading settings written by people (durations, words,
//!   booleans): the serde readers `SyncConfig` uses.
//! - [`clock`]: where "now" comes from ([`SystemClock`], [`TokioClock`]).
//! - [`recovery`]: start-up recovery from the write-ahead log.
//! - [`sharing`]: the shared tier (Redis) that makes one quota decision
//!   across several instances: strict and lease modes, fallback.
//! - [`metrics`]: request-path counters and latency (striped per thread).
//! - [`stats`]: flush statistics per trigger.
//! - [`error`]: the crate's [`Error`].

#![forbid(unsafe_code)]
// Casts that can wrap are denied in the whole workspace (Cargo.toml).

pub mod admin;
pub mod clock;
pub mod config;
pub mod de;
pub mod engine;
pub mod error;
mod loading;
pub mod metrics;
pub mod queries;
pub mod recovery;
pub mod sharing;
pub mod stats;
pub mod sync;

pub use admin::{EvictReport, KindTotal, SortKey, UserList, UserListQuery};
pub use clock::{Clock, SharedClock, SystemClock, TokioClock};
pub use config::SyncConfig;
pub use engine::{Engine, Refund, SyncAllReport};
pub use error::Error;
pub use queries::{LedgerFigures, LogStatus, StoreReachability};
pub use recovery::RecoveryReport;
pub use sharing::{RedisFallback, SharingConfig, SharingMode, SharingStatus};
pub use stats::{SyncStatsSnapshot, TriggerStats};
pub use sync::{NextRuns, ShutdownReport};
pub use usage_sync_core as core;
pub use usage_sync_store as store;
