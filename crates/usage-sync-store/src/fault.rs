//! Failure injection around a real store.
//!
//! The engine's promises (nothing lost during an outage, nothing counted
//! twice when an acknowledgement is lost) are about how it reacts to store
//! failures. This wrapper produces those failures on demand in front of a
//! real backend, so the tests exercise real SQL, not a mock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use usage_sync_core::{FlushBatch, FlushId, Timestamp};

use crate::{
    FlushOutcome, Store, StoreError, StoreFuture, StoredPlan, StoredUser, UsageRow, UserState,
};

/// Wraps a store and fails operations as instructed.
pub struct FaultyStore<S> {
    inner: S,
    /// While set, every operation fails before reaching the store.
    down: AtomicBool,
    /// The next N flushes commit and then report a failure, as a timed-out
    /// or disconnected commit would.
    lose_acks: AtomicU64,
    /// Milliseconds each flush waits (on tokio's clock) before reaching the
    /// store: makes a flush observably "in flight".
    flush_delay_ms: AtomicU64,
    /// Number of `apply_flush` calls that reached the inner store.
    pub flush_calls: AtomicU64,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            down: AtomicBool::new(false),
            lose_acks: AtomicU64::new(0),
            flush_delay_ms: AtomicU64::new(0),
            flush_calls: AtomicU64::new(0),
        })
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn set_flush_delay(&self, d: std::time::Duration) {
        self.flush_delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    pub fn lose_next_acks(&self, n: u64) {
        self.lose_acks.store(n, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Injected("store is down"))
        } else {
            Ok(())
        }
    }
}

impl<S: Store> Store for Arc<FaultyStore<S>> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn migrate(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.inner.migrate().await
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.inner.ping().await
        })
    }

    fn load_plans(&self) -> StoreFuture<'_, Vec<StoredPlan>> {
        Box::pin(async move {
            self.check()?;
            self.inner.load_plans().await
        })
    }

    fn save_plan(&self, plan: StoredPlan) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.inner.save_plan(plan).await
        })
    }

    fn load_users(&self, ids: Vec<String>, since: Timestamp) -> StoreFuture<'_, Vec<UserState>> {
        Box::pin(async move {
            self.check()?;
            self.inner.load_users(ids, since).await
        })
    }

    fn save_user(&self, user_id: String, user: StoredUser) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.check()?;
            self.inner.save_user(user_id, user).await
        })
    }

    fn apply_flush(&self, batch: Arc<FlushBatch>) -> StoreFuture<'_, FlushOutcome> {
        Box::pin(async move {
            let delay = self.flush_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            self.check()?;
            self.flush_calls.fetch_add(1, Ordering::SeqCst);
            let out = self.inner.apply_flush(batch).await?;
            let lose = self
                .lose_acks
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lose {
                return Err(StoreError::Injected("acknowledgement lost after commit"));
            }
            Ok(out)
        })
    }

    fn flush_applied(&self, id: FlushId) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            self.check()?;
            self.inner.flush_applied(id).await
        })
    }

    fn prune_flushes(&self, before: Timestamp) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.check()?;
            self.inner.prune_flushes(before).await
        })
    }

    fn all_usage(&self) -> StoreFuture<'_, Vec<UsageRow>> {
        // Tests read totals through this even while the store is "down".
        self.inner.all_usage()
    }

    fn all_profiles(&self) -> StoreFuture<'_, Vec<(String, StoredUser)>> {
        Box::pin(async move {
            self.check()?;
            self.inner.all_profiles().await
        })
    }
}
