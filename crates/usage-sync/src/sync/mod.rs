//! The sync engine: the triggers that decide when pending units are written
//! to the store, the bounded pool of flushes, and retries.
//!
//! One scheduler task waits on all triggers at once (threshold wake-ups,
//! the check, heartbeat and guarantee intervals, the next retry). Each
//! trigger asks the ledger for what is due (never a scan of all users),
//! receives sealed batches, and spawns one flush task per batch. Flush tasks
//! take a permit from a semaphore (`max_concurrent_syncs`) and run under
//! `sync_timeout`.
//!
//! # Failure handling, and why it cannot double-count
//!
//! A batch that fails or times out is kept, unchanged, in the retry list
//! and re-sent with capped exponential backoff and jitter. Its units stay
//! `in_flight` in the ledger, so they keep counting against the limit and
//! are never re-batched under another id. The store applies a flush id at
//! most once, so a re-sent batch whose first attempt did commit (timeout
//! after commit, lost connection) is acknowledged without being applied
//! again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use usage_sync_core::Locked;

use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};
use tracing::{debug, error, info, warn};
use usage_sync_core::{FlushBatch, Timestamp, Trigger, UserId};

use crate::engine::{Engine, Inner, SyncAllReport};
use crate::error::Error;
use crate::stats::{SyncStats, SyncStatsSnapshot};

mod retry;
mod scheduler;

/// A failed batch waiting to be re-sent.
struct Retry {
    batch: Arc<FlushBatch>,
    attempts: u32,
    next_at: Instant,
}

/// A background task and the signal that stops it.
type Worker = (oneshot::Sender<()>, JoinHandle<()>);

/// The sync engine's own state: the flush pool and its concurrency, the
/// cadence, the retry list, the scheduler's tasks and next runs, the
/// threshold wake-up and the statistics. The flushes themselves run with
/// the engine's ledger, store and log (`impl Inner` below).
pub(crate) struct SyncEngine {
    /// Woken by a consume that made a counter due by threshold.
    pub(crate) threshold_wake: Notify,
    stats: SyncStats,
    permits: Semaphore,
    /// Current flush concurrency (the semaphore's total permits).
    concurrency: std::sync::atomic::AtomicUsize,
    /// Multiplier of the check and heartbeat intervals, and why (1 = as
    /// configured). The guarantee interval is never stretched.
    cadence: tokio::sync::watch::Sender<(u32, String)>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    retries: Mutex<Vec<Retry>>,
    retry_wake: Notify,
    /// Held by a threshold round for its whole duration, and by manual
    /// syncs: a manual sync waits for the round in progress (whose batches
    /// it could not otherwise see) and no new round starts during it.
    round: tokio::sync::Mutex<()>,
    /// Stop signals and handles of the scheduler and the threshold loop.
    scheduler: Mutex<Option<[Worker; 2]>>,
    /// When the timed triggers fire next (check, heartbeat, guarantee), as
    /// the scheduler last set them; `None` until it starts.
    next_runs: Mutex<Option<[Instant; 3]>>,
}

/// Time until each timed trigger fires next (see [`Engine::next_runs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextRuns {
    pub check: Duration,
    pub heartbeat: Duration,
    pub guarantee: Duration,
    /// The earliest retry of a failed batch, if any.
    pub retry: Option<Duration>,
}

impl SyncEngine {
    pub(crate) fn new(max_concurrent: usize, started_at: Timestamp) -> Self {
        SyncEngine {
            threshold_wake: Notify::new(),
            stats: SyncStats::new(started_at),
            permits: Semaphore::new(max_concurrent.max(1)),
            concurrency: std::sync::atomic::AtomicUsize::new(max_concurrent.max(1)),
            cadence: tokio::sync::watch::channel((1, "as configured".to_owned())).0,
            tasks: tokio::sync::Mutex::new(JoinSet::new()),
            next_runs: Mutex::new(None),
            retries: Mutex::new(Vec::new()),
            retry_wake: Notify::new(),
            round: tokio::sync::Mutex::new(()),
            scheduler: Mutex::new(None),
        }
    }
}

/// What a shutdown achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    pub flushed_units: i64,
    /// Units still pending or in flight when the deadline passed (0 when
    /// everything reached the store).
    pub remaining_units: i64,
    /// Every acknowledged unit among the remaining ones is in the
    /// write-ahead log and will be recovered by the next start (false
    /// without a log, or after a failed `fdatasync`: they may be lost).
    pub remaining_logged: bool,
    /// Why the log could not write at shutdown (a full disk), if it could
    /// not. Acknowledged units are still in the log; what it could not
    /// write was never acknowledged (those requests answered 503), so it
    /// is not recovered.
    pub log_stalled: Option<String>,
}

/// Makes a flush cancel-safe. Between the moment a batch leaves the ledger
/// (its units are `in_flight`) and the moment it is either completed or in
/// the retry list, the batch exists only in the flush future. If that
/// future is dropped (an aborted task, a shutdown deadline, a dropped
/// `JoinSet`), this guard puts the batch back in the retry list, so no
/// unit can be stranded in flight. Re-sending is safe: same flush id.
struct InFlight {
    inner: Arc<Inner>,
    batch: Option<Arc<FlushBatch>>,
    attempts: u32,
}

impl InFlight {
    /// The flush reached a definite outcome that the caller handles.
    fn disarm(mut self) -> Arc<FlushBatch> {
        self.batch.take().expect("armed")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.inner.sync.retries().push(Retry {
                batch,
                attempts: self.attempts,
                next_at: Instant::now(),
            });
            self.inner.sync.retry_wake.notify_one();
        }
    }
}

impl Inner {
    /// Writes one batch. On success the ledger learns the store's values;
    /// on failure the batch is queued for retry, unchanged. If this future
    /// is dropped midway, the guard queues it for retry.
    async fn run_batch(self: &Arc<Self>, guard: InFlight, trigger: Trigger) -> Result<i64, Error> {
        let attempts = guard.attempts;
        let batch = guard.batch.clone().expect("an armed guard holds its batch");
        let _permit = self
            .sync
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("sync engine closed".into()))?;
        let started = Instant::now();
        // The batch's intent must be on disk before the batch can reach the
        // database: if the process died after the commit with the intent
        // lost, replay would count these units as pending and flush them a
        // second time under a new id. One fdatasync per flush (the writer
        // coalesces concurrent requests), whatever the durability mode.
        let intent_durable = match &self.wal {
            Some(wal) => timeout(self.config.sync_timeout, wal.sync()).await,
            None => Ok(Ok(())),
        };
        let result = match intent_durable {
            Ok(Ok(())) => {
                timeout(
                    self.config.sync_timeout,
                    self.store.apply_flush(batch.clone()),
                )
                .await
            }
            Ok(Err(e)) => Ok(Err(e)),
            Err(elapsed) => Err(elapsed),
        };
        let took = started.elapsed();
        // No await from here on: the outcome is recorded atomically with
        // respect to cancellation.
        let batch = guard.disarm();
        if let (Ok(Ok(_)), Some(n)) = (&result, self.config.crash_after_commit)
            && self
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
                >= n
        {
            // Fault injection (tests only): die after the commit, before
            // the log learns of it.
            eprintln!(
                "usage-sync: fault injection: aborting after database commit of {}",
                batch.id
            );
            std::process::abort();
        }
        match result {
            Ok(Ok(out)) if out.used_after.len() == batch.deltas.len() => {
                let now = self.clock.now();
                let due = self.ledger.complete(&batch, &out.used_after, now);
                self.sync.stats.success(
                    trigger,
                    took,
                    batch.units(),
                    batch.rows() as u64,
                    batch.users() as u64,
                    out.already_applied,
                    now,
                );
                debug!(
                    target: "flush",
                    flush_id = %batch.id,
                    trigger = trigger.as_str(),
                    rows = batch.rows(),
                    units = batch.units(),
                    ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    already_applied = out.already_applied,
                    "flushed"
                );
                if out.already_applied {
                    info!(target: "flush", flush_id = %batch.id, "batch was already applied by an earlier attempt; not applied again");
                }
                if due {
                    self.sync.threshold_wake.notify_one();
                }
                Ok(batch.units())
            }
            other => {
                let (transient, message) = match other {
                    Ok(Ok(_)) => (false, "store returned a malformed flush result".to_owned()),
                    Ok(Err(e)) => (e.is_transient(), e.to_string()),
                    Err(_) => (
                        true,
                        format!("flush timed out after {:?}", self.config.sync_timeout),
                    ),
                };
                self.sync
                    .stats
                    .failure(trigger, took, transient, message.clone());
                // Log the first failure and then at 2, 4, 8, ... attempts so
                // an outage does not flood the log.
                if attempts == 0 || attempts.is_power_of_two() {
                    warn!(
                        target: "flush",
                        flush_id = %batch.id,
                        trigger = trigger.as_str(),
                        attempts = attempts + 1,
                        units = batch.units(),
                        transient,
                        error = %message,
                        "flush failed; units stay pending and the same batch will be retried"
                    );
                }
                if !transient && attempts >= 10 {
                    error!(target: "flush", flush_id = %batch.id, error = %message, "flush keeps failing with a permanent error; an operator must look at the store");
                }
                let next_at = Instant::now() + self.backoff(attempts);
                self.sync.retries().push(Retry {
                    batch,
                    attempts: attempts + 1,
                    next_at,
                });
                self.sync.retry_wake.notify_one();
                Err(Error::Unavailable(format!(
                    "flush failed ({message}); the units stay pending and will be retried"
                )))
            }
        }
    }

    /// Takes work with `take` and spawns a task per batch, holding the task
    /// set's lock from the take to the spawn. `sync_all` relies on it: a
    /// drain of the set after its own take waits for every flush that took
    /// units before that take, so it never answers while such a flush is
    /// still writing. Returns how many batches were spawned.
    async fn spawn_taken(
        self: &Arc<Self>,
        trigger: Trigger,
        take: impl FnOnce() -> Vec<InFlight>,
    ) -> usize {
        let mut tasks = self.sync.tasks.lock().await;
        let flights = take();
        let n = flights.len();
        for f in flights {
            let me = self.clone();
            tasks.spawn(async move {
                let _ = me.run_batch(f, trigger).await;
            });
        }
        n
    }

    /// Waits for every spawned flush to finish (successfully or into the
    /// retry list), up to `until`. Flushes still running at `until` are
    /// cancelled; their guards put the batches in the retry list.
    async fn drain_tasks(&self, until: Option<Instant>) {
        let mut set = std::mem::take(&mut *self.sync.tasks.lock().await);
        join_until(&mut set, until).await;
    }

    /// Runs batches now and waits for them (until `until`, if given: the
    /// rest are cancelled and their guards queue them for retry); returns
    /// (units flushed, users flushed, batches not flushed).
    async fn run_now(
        self: &Arc<Self>,
        work: Vec<(InFlight, Trigger)>,
        until: Option<Instant>,
    ) -> (i64, usize, usize) {
        let mut set = JoinSet::new();
        for (f, trigger) in work {
            let me = self.clone();
            let users: Vec<UserId> = f
                .batch
                .iter()
                .flat_map(|b| b.deltas.iter().map(|d| d.user.clone()))
                .collect();
            set.spawn(async move { (me.run_batch(f, trigger).await, users) });
        }
        let total = set.len();
        let (mut units, mut done) = (0, 0);
        let mut users = HashSet::new();
        let collect = async {
            while let Some(r) = set.join_next().await {
                if let Ok((Ok(u), us)) = r {
                    units += u;
                    users.extend(us);
                    done += 1;
                }
            }
        };
        match until {
            Some(t) => {
                let _ = tokio::time::timeout_at(t, collect).await;
            }
            None => collect.await,
        }
        // Abort what is left and wait until the aborted tasks are dropped,
        // so their guards have re-queued the batches before we return.
        set.shutdown().await;
        (units, users.len(), total - done)
    }

    /// Everything due for a "flush all": failed batches (retried now,
    /// whatever their backoff) and every pending counter.
    fn take_everything(
        self: &Arc<Self>,
        trigger: Trigger,
    ) -> (Vec<(InFlight, Trigger)>, usize, usize) {
        let mut work: Vec<_> = self
            .guard_retries(self.sync.take_retries(None))
            .into_iter()
            .map(|f| (f, trigger))
            .collect();
        let (batches, users, blocked) = self
            .ledger
            .take_all_reporting_blocked(self.config.batch_size, trigger);
        work.extend(self.guard_new(batches).into_iter().map(|f| (f, trigger)));
        (work, users, blocked)
    }
}

impl Engine {
    /// Starts the sync engine's triggers. Idempotent. When sync is disabled
    /// (`enabled = false`) nothing is started and a warning is logged.
    pub fn start(&self) {
        self.start_shared();
        if !self.inner.config.enabled {
            warn!(target: "flush", "usage sync is DISABLED (ENABLE_USAGE_SYNC=false): counts stay in memory and are never written to the store");
            return;
        }
        let mut slot = self.inner.sync.scheduler.locked();
        if slot.is_none() {
            let (tx, rx) = oneshot::channel();
            let scheduler = (tx, tokio::spawn(self.inner.clone().scheduler(rx)));
            let (tx, rx) = oneshot::channel();
            let threshold = (tx, tokio::spawn(self.inner.clone().threshold_loop(rx)));
            *slot = Some([scheduler, threshold]);
        }
    }

    fn ensure_sync_enabled(&self) -> Result<(), Error> {
        if self.inner.config.enabled {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "usage sync is disabled (ENABLE_USAGE_SYNC=false)".into(),
            ))
        }
    }

    /// Flushes everything pending now and waits for it: in-flight flushes,
    /// failed batches (retried at once) and all pending counters. After an
    /// `Ok`, every unit acknowledged before the call is in the store.
    pub async fn sync_all(&self) -> Result<SyncAllReport, Error> {
        self.ensure_sync_enabled()?;
        let inner = &self.inner;
        let _round = inner.sync.round.lock().await;
        // A counter held by a flush that started after our drain (a timed
        // trigger racing us) cannot be taken; its units are left dirty.
        // Repeat until a take leaves nothing behind: units counted after
        // the call started may be included, but the loop never chases new
        // load, and each round's drain releases what blocked the last one.
        let deadline = Instant::now() + inner.config.sync_timeout * 4 + Duration::from_secs(1);
        let mut report = SyncAllReport::default();
        let mut first = true;
        loop {
            inner.drain_tasks(None).await;
            let (work, checked, blocked) = inner.take_everything(Trigger::Manual);
            if first {
                report.checked = checked + blocked;
                first = false;
            }
            let (units, users, failures) = inner.run_now(work, None).await;
            report.flushed_units += units;
            report.flushed_users += users;
            if failures > 0 {
                return Err(Error::Unavailable(format!(
                    "{failures} batch(es) could not be written; their units stay pending and will be retried"
                )));
            }
            if blocked == 0 {
                // A timed pass or a retry may have taken units before our
                // take, as a task of its own: it took them under the task
                // set's lock (`spawn_taken`), so this drain waits for it.
                // Had it failed, its batch is in the retry queue: go round
                // again to take it.
                inner.drain_tasks(None).await;
                if inner.sync.retry_batches() == 0 {
                    return Ok(report);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(
                    "some counters stayed in flight; retry the sync".into(),
                ));
            }
        }
    }

    /// Flushes one user's pending units now; returns the units written.
    pub async fn sync_user(&self, user: &UserId) -> Result<i64, Error> {
        self.ensure_sync_enabled()?;
        let inner = &self.inner;
        let _round = inner.sync.round.lock().await;
        // Let in-flight flushes (which may hold this user's counters) land
        // first, so the user's next batch can include everything.
        inner.drain_tasks(None).await;
        let mut work: Vec<_> = inner
            .guard_retries(inner.sync.take_retries(None))
            .into_iter()
            .map(|f| (f, Trigger::Manual))
            .collect();
        let own = inner
            .ledger
            .take_user(user.as_str(), inner.config.batch_size);
        let own_units: i64 = own.iter().map(FlushBatch::units).sum();
        work.extend(
            inner
                .guard_new(own)
                .into_iter()
                .map(|f| (f, Trigger::Manual)),
        );
        let (_, _, failures) = inner.run_now(work, None).await;
        if failures > 0 {
            return Err(Error::Unavailable(
                "the flush failed; the units stay pending and will be retried".into(),
            ));
        }
        Ok(own_units)
    }

    /// Stops the triggers, refuses new requests, and flushes everything
    /// until done or until `deadline` passes. Whatever could not be written
    /// is reported (and, with the write-ahead log, kept for the next start).
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let inner = &self.inner;
        for (stop, handle) in self.stop_accepting() {
            let _ = stop.send(());
            let _ = handle.await;
        }
        // Unspent lease units go back to Redis so other instances can use
        // them at once instead of after the lease expires.
        self.stop_shared().await;
        let end = Instant::now() + deadline;
        let mut flushed = 0;
        if inner.config.enabled {
            loop {
                inner.drain_tasks(Some(end)).await;
                if Instant::now() >= end {
                    break;
                }
                let (work, _, _) = inner.take_everything(Trigger::Shutdown);
                if work.is_empty() {
                    break;
                }
                let (units, _, failures) = inner.run_now(work, Some(end)).await;
                flushed += units;
                if failures > 0 {
                    let pause = Duration::from_millis(200)
                        .min(end.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
            }
        }
        // Leave a compact log: whatever is still unpersisted (a store that
        // stayed down past the deadline) is in the checkpoint and recovered
        // by the next start.
        if let Some(wal) = &inner.wal {
            inner.checkpoint(false).await;
            if let Err(e) = wal.sync().await {
                error!(target: "flush", error = %e, "could not sync the write-ahead log at shutdown");
            }
            let w = wal.clone();
            let _ = tokio::task::spawn_blocking(move || w.close()).await;
        }
        let t = inner.ledger.totals();
        let remaining = t.pending + t.in_flight;
        if remaining != 0 && inner.wal.is_some() {
            warn!(
                target: "flush",
                remaining_units = remaining,
                "shutdown deadline passed; the units not yet in the database are kept in the write-ahead log for the next start"
            );
        } else if remaining != 0 {
            error!(
                target: "flush",
                remaining_units = remaining,
                "shutdown deadline passed with units not written to the store"
            );
        } else {
            info!(target: "flush", flushed_units = flushed, "shutdown flush complete");
        }
        ShutdownReport {
            flushed_units: flushed,
            remaining_units: remaining,
            remaining_logged: inner.wal.as_ref().is_some_and(|w| !w.failed_permanently()),
            log_stalled: inner.wal.as_ref().and_then(|w| w.failure()),
        }
    }

    /// Stops all background work at once, without flushing and without a
    /// final checkpoint, as if the process had died (the log keeps what was
    /// written). For crash tests of embedding applications; the engine is
    /// unusable afterwards.
    pub fn halt(&self) {
        let inner = &self.inner;
        for (_, handle) in self.stop_accepting() {
            handle.abort();
        }
        if let Ok(mut tasks) = inner.sync.tasks.try_lock() {
            tasks.abort_all();
        }
        if let Some(wal) = &inner.wal {
            wal.close();
        }
    }

    /// Refuses new requests from now on and hands over the background
    /// workers (scheduler, threshold loop) for the caller to stop.
    fn stop_accepting(&self) -> Vec<Worker> {
        self.inner
            .accepting
            .store(false, std::sync::atomic::Ordering::Release);
        self.inner
            .sync
            .scheduler
            .locked()
            .take()
            .into_iter()
            .flatten()
            .collect()
    }

    /// Statistics of the sync engine since start (or the last reset).
    pub fn stats(&self) -> SyncStatsSnapshot {
        self.inner.sync.stats.snapshot()
    }

    pub fn reset_stats(&self) {
        self.inner.sync.stats.reset(self.inner.clock.now());
    }
}

/// Joins the tasks of `set` until `until` (or all of them); then aborts the
/// rest and waits for them to be dropped.
async fn join_until(set: &mut JoinSet<()>, until: Option<Instant>) {
    let wait = async { while set.join_next().await.is_some() {} };
    match until {
        Some(t) => {
            let _ = tokio::time::timeout_at(t, wait).await;
        }
        None => wait.await,
    }
    set.shutdown().await;
}

/// Resolves when the log asks for a checkpoint (never without a log).
async fn wal_full(wal: &Option<Arc<usage_sync_store::Wal>>) {
    match wal {
        Some(w) => w.checkpoint_wanted.notified().await,
        None => std::future::pending().await,
    }
}
