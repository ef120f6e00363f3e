//! Cold loads, batched: a user missing from memory is read from the store
//! before its first decision. After a restart, or in a burst of new users,
//! thousands miss at once; loading each with its own queries made the
//! first seconds on PostgreSQL run at a sixth of the warm rate. Misses are
//! queued here instead and loaded by at most [`MAX_ROUNDS`] tasks, each
//! taking up to [`BATCH`] queued users per [`Store::load_users`] call, so a
//! stampede costs a few multi-user queries. Concurrent misses on one queued
//! user share its load. An idle miss is loaded at once (a batch of one).
//!
//! Correctness does not depend on the batching: each user is warmed with
//! the load epoch read just before its batch is queried, exactly as a
//! single load would be, so an eviction or admin change meanwhile makes
//! the warm fail and the waiter retry. If a batch fails, or its task dies,
//! every waiter loads its user alone and gets the store's own error.
//!
//! [`Store::load_users`]: usage_sync_store::Store::load_users

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use usage_sync_core::Locked;

use tokio::sync::oneshot;
use usage_sync_core::UserId;

use crate::engine::Engine;

/// Load tasks running at once (each holds one store connection while it
/// queries).
pub(crate) const MAX_ROUNDS: usize = 2;
/// Users per store call.
pub(crate) const BATCH: usize = 256;

/// What a waiter learns about its user.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loaded {
    /// Resident now.
    Warmed,
    /// Its state changed while loading (eviction, admin change): queue again.
    Retry,
    /// The batch failed: load alone.
    Failed,
}

#[derive(Default)]
pub(crate) struct Loads {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Users waiting for a load task, with everyone waiting on each. A
    /// user being loaded is no longer here (its waiters moved to the task).
    queued: HashMap<UserId, Vec<oneshot::Sender<Loaded>>>,
    /// Load tasks running.
    running: usize,
}

impl Loads {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Queues `user` (or joins its queued load). Returns the receiver, and
    /// whether the caller must start a load task.
    pub(crate) fn enqueue(&self, user: &UserId) -> (oneshot::Receiver<Loaded>, bool) {
        let (tx, rx) = oneshot::channel();
        let mut s = self.state();
        if let Some(waiters) = s.queued.get_mut(user) {
            waiters.push(tx);
            return (rx, false);
        }
        s.queued.insert(user.clone(), vec![tx]);
        // Checked under the same lock as a task's "queue empty, exit", so
        // a queued user always has a task that will see it.
        let start = s.running < MAX_ROUNDS;
        if start {
            s.running += 1;
        }
        (rx, start)
    }

    /// The next batch for a load task, or `None` (and the task counted out)
    /// when nothing is queued.
    fn next_batch(&self) -> Option<Vec<(UserId, Vec<oneshot::Sender<Loaded>>)>> {
        let mut s = self.state();
        if s.queued.is_empty() {
            s.running -= 1;
            return None;
        }
        let ids: Vec<UserId> = s.queued.keys().take(BATCH).cloned().collect();
        Some(
            ids.into_iter()
                .map(|id| {
                    let waiters = s.queued.remove(&id).unwrap_or_default();
                    (id, waiters)
                })
                .collect(),
        )
    }
}

/// Counts a load task out if it ends abnormally (a panic unwinding through
/// it): its in-flight waiters see their senders dropped and load alone, and
/// the queued ones are released the same way, so nobody waits forever.
struct RoundGuard<'a> {
    loads: &'a Loads,
    done: bool,
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.loads.state();
            s.running -= 1;
            if s.running == 0 {
                s.queued.clear();
            }
        }
    }
}

impl Engine {
    /// A load task: loads queued users batch by batch until none are left.
    pub(crate) async fn load_rounds(self) {
        let loads = &self.inner.loads;
        let mut guard = RoundGuard { loads, done: false };
        while let Some(batch) = loads.next_batch() {
            let ledger = &self.inner.ledger;
            // Epochs first, then the read: the order a single load uses.
            let epochs: Vec<_> = batch
                .iter()
                .map(|(u, _)| ledger.load_epoch(u.as_str()))
                .collect();
            let ids = batch.iter().map(|(u, _)| u.to_string()).collect();
            let started = std::time::Instant::now();
            let states = self.inner.store.load_users(ids, self.load_since()).await;
            match states {
                Ok(states) if states.len() == batch.len() => {
                    self.inner.requests.store_load.observe(started.elapsed());
                    let now = self.now();
                    for (((user, waiters), state), epoch) in
                        batch.into_iter().zip(states).zip(epochs)
                    {
                        let (profile, rows) = self.user_from_state(state);
                        let outcome = match ledger.warm(&user, profile, &rows, epoch, now) {
                            Ok(()) => Loaded::Warmed,
                            Err(()) => Loaded::Retry,
                        };
                        for w in waiters {
                            let _ = w.send(outcome);
                        }
                    }
                }
                _ => {
                    for (_, waiters) in batch {
                        for w in waiters {
                            let _ = w.send(Loaded::Failed);
                        }
                    }
                }
            }
        }
        guard.done = true;
    }
}
