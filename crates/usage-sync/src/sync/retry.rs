//! Failed batches: the retry queue with its backoff, and the guard that
//! puts a batch back in it whenever its flush does not finish.

use super::*;
use usage_sync_core::{Backoff, Locked};

impl SyncEngine {
    pub(super) fn retries(&self) -> std::sync::MutexGuard<'_, Vec<Retry>> {
        self.retries.locked()
    }

    pub(super) fn next_retry_at(&self) -> Option<Instant> {
        self.retries().iter().map(|r| r.next_at).min()
    }

    /// Removes and returns the retries due at `now` (all of them if `now`
    /// is `None`).
    pub(super) fn take_retries(&self, now: Option<Instant>) -> Vec<Retry> {
        let mut list = self.retries();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|r| now.is_none_or(|n| r.next_at <= n));
        *list = keep;
        due
    }

    /// Units held by batches waiting for a retry.
    pub(crate) fn retry_units(&self) -> i64 {
        self.retries().iter().map(|r| r.batch.units()).sum()
    }

    pub(crate) fn retry_batches(&self) -> usize {
        self.retries().len()
    }
}

impl Inner {
    /// Capped exponential backoff with equal jitter (see [`Backoff`]).
    pub(super) fn backoff(&self, attempts: u32) -> Duration {
        let b = Backoff {
            base: self.config.retry_base,
            cap: self.config.retry_max,
        };
        b.delay(attempts, fastrand::f64())
    }

    /// Guards batches the moment they leave the ledger (no await may come
    /// between a `take_*` call and this).
    pub(super) fn guard_new(self: &Arc<Self>, batches: Vec<FlushBatch>) -> Vec<InFlight> {
        batches
            .into_iter()
            .map(|b| InFlight {
                inner: self.clone(),
                batch: Some(Arc::new(b)),
                attempts: 0,
            })
            .collect()
    }

    /// Guards batches taken from the retry list.
    pub(super) fn guard_retries(self: &Arc<Self>, retries: Vec<Retry>) -> Vec<InFlight> {
        retries
            .into_iter()
            .map(|r| InFlight {
                inner: self.clone(),
                batch: Some(r.batch),
                attempts: r.attempts,
            })
            .collect()
    }

    /// Puts a batch in the retry list, due now (recovery re-sends).
    pub(crate) fn requeue(&self, batch: FlushBatch) {
        self.sync.retries().push(Retry {
            batch: Arc::new(batch),
            attempts: 0,
            next_at: Instant::now(),
        });
        self.sync.retry_wake.notify_one();
    }
}

impl Engine {
    /// Batches waiting for a retry, and the units they hold.
    pub fn retry_backlog(&self) -> (usize, i64) {
        (
            self.inner.sync.retry_batches(),
            self.inner.sync.retry_units(),
        )
    }
}
