//! The timed passes: the scheduler (heartbeat, check, guarantee, retries
//! and checkpoints), the threshold loop, and the cadence and concurrency
//! the alerts adjust.

use super::*;
use usage_sync_core::Locked;

impl Inner {
    pub(super) async fn heartbeat(self: &Arc<Self>, last_prune: &mut Option<Instant>) {
        let retried = self.spawn_retries_due().await;
        if retried > 0 {
            info!(target: "heartbeat", batches = retried, "retrying failed flushes");
        }
        let mut figures = None;
        self.spawn_taken(Trigger::SessionEnd, || {
            let hb = self.ledger.heartbeat(
                self.clock.now(),
                i64::try_from(self.config.session_timeout.as_millis()).unwrap_or(i64::MAX),
                self.config.max_cached_users,
                self.config.batch_size,
            );
            figures = Some((hb.session_end_users, hb.evicted, hb.dedup_expired));
            self.guard_new(hb.session_end)
        })
        .await;
        if let Some((session_end_users, evicted, dedup_expired)) = figures
            && (session_end_users > 0 || evicted > 0)
        {
            debug!(
                target: "heartbeat",
                session_end_users,
                evicted,
                dedup_expired,
                "heartbeat"
            );
        }
        // Forget old flush ids about once an hour.
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            *last_prune = Some(Instant::now());
            let before = self.clock.now().saturating_sub_ms(
                i64::try_from(self.config.flush_id_retention.as_millis()).unwrap_or(i64::MAX),
            );
            if let Err(e) = self.store.prune_flushes(before).await {
                warn!(target: "heartbeat", error = %e, "could not prune old flush ids");
            }
        }
    }

    /// The timed triggers and retries, in one task.
    pub(super) async fn scheduler(self: Arc<Self>, mut stop: oneshot::Receiver<()>) {
        let c = &self.config;
        let start = Instant::now();
        let mut cadence = self.sync.cadence.subscribe();
        let stretched = |d: Duration, m: u32| d.saturating_mul(m.max(1));
        // A cadence set before this task subscribed counts from the start.
        let m0 = cadence.borrow_and_update().0;
        let (ci, hi) = (
            stretched(c.check_interval, m0),
            stretched(c.heartbeat_interval, m0),
        );
        let mut check = interval_at(start + ci, ci);
        let mut heartbeat = interval_at(start + hi, hi);
        let mut guarantee = interval_at(start + c.max_sync_interval, c.max_sync_interval);
        for i in [&mut check, &mut heartbeat, &mut guarantee] {
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let mut last_prune = None;
        // With MissedTickBehavior::Delay each tick is one period after the
        // previous one fired, which is what these track.
        let mut next = [start + ci, start + hi, start + c.max_sync_interval];
        let mut periods = [ci, hi, c.max_sync_interval];
        loop {
            *self.sync.next_runs.locked() = Some(next);
            let next_retry = self.sync.next_retry_at();
            let retry_due = async move {
                match next_retry {
                    Some(t) => sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = guarantee.tick() => {
                    next[2] = Instant::now() + periods[2];
                    self.flush_pass(Trigger::Guarantee, || self.ledger.take_all(c.batch_size, Trigger::Guarantee)).await;
                }
                _ = check.tick() => {
                    next[0] = Instant::now() + periods[0];
                    self.flush_pass(Trigger::Check, || self.ledger.take_oldest(c.max_active_users_check, c.batch_size, Trigger::Check)).await;
                }
                _ = heartbeat.tick() => {
                    next[1] = Instant::now() + periods[1];
                    self.heartbeat(&mut last_prune).await
                }
                _ = wal_full(&self.wal) => self.checkpoint(true).await,
                _ = retry_due => {
                    self.spawn_retries_due().await;
                }
                _ = self.sync.retry_wake.notified() => {}
                Ok(()) = cadence.changed() => {
                    // Stretch (or restore) check and heartbeat; the
                    // guarantee keeps its interval whatever happens.
                    let m = cadence.borrow_and_update().0;
                    let now = Instant::now();
                    check = interval_at(now + stretched(c.check_interval, m), stretched(c.check_interval, m));
                    heartbeat = interval_at(now + stretched(c.heartbeat_interval, m), stretched(c.heartbeat_interval, m));
                    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    periods[0] = stretched(c.check_interval, m);
                    periods[1] = stretched(c.heartbeat_interval, m);
                    next[0] = now + periods[0];
                    next[1] = now + periods[1];
                }
            }
            // Reap finished flush tasks so the set does not grow.
            let mut tasks = self.sync.tasks.lock().await;
            while tasks.try_join_next().is_some() {}
        }
    }

    /// A timed pass (check or guarantee): `take` takes its batches from
    /// the ledger (and says how many users they hold), and each is flushed
    /// in a task of its own.
    async fn flush_pass(
        self: &Arc<Self>,
        trigger: Trigger,
        take: impl FnOnce() -> (Vec<FlushBatch>, usize),
    ) {
        let mut users = 0;
        let batches = self
            .spawn_taken(trigger, || {
                let (batches, n) = take();
                users = n;
                self.guard_new(batches)
            })
            .await;
        if users > 0 {
            // Log targets are static: one per pass, as the log filters name them.
            match trigger {
                Trigger::Check => debug!(target: "check", users, batches, "check pass"),
                _ => debug!(target: "guarantee", users, batches, "guarantee pass"),
            }
        }
    }

    /// Retries the failed batches whose backoff has passed, each in a task
    /// of its own; returns how many.
    async fn spawn_retries_due(self: &Arc<Self>) -> usize {
        self.spawn_taken(Trigger::Heartbeat, || {
            self.guard_retries(self.sync.take_retries(Some(Instant::now())))
        })
        .await
    }

    /// The threshold trigger, in its own task so its batching adapts to
    /// load: at most one round of threshold flushes is in progress, and the
    /// next round takes every counter that crossed the threshold meanwhile.
    /// Idle, a crossing is flushed at once; under heavy load batches grow
    /// instead of the number of transactions (like a group commit).
    pub(super) async fn threshold_loop(self: Arc<Self>, mut stop: oneshot::Receiver<()>) {
        // Rounds start at least `threshold_linger` apart. After a quiet
        // spell a crossing is flushed at once; under load every crossing
        // in the interval shares the next round's transaction, so the
        // database sees a bounded number of transactions per second
        // whatever the request rate (SQLite then writes each leaf page
        // once per round instead of once per tiny batch).
        let mut next_round = Instant::now();
        loop {
            // Only the waits are cancelled by a stop; a round in progress
            // finishes (each batch is bounded by sync_timeout).
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = self.sync.threshold_wake.notified() => {}
            }
            if Instant::now() < next_round {
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    _ = sleep_until(next_round) => {}
                }
            }
            next_round = Instant::now() + self.config.threshold_linger;
            let _round = self.sync.round.lock().await;
            let flights = self.guard_new(self.ledger.take_threshold(self.config.batch_size));
            if flights.is_empty() {
                continue;
            }
            let work = flights
                .into_iter()
                .map(|f| (f, Trigger::Threshold))
                .collect();
            self.run_now(work, None).await;
        }
    }

    /// Writes a checkpoint so the log can drop old segments. It runs on a
    /// blocking thread: with a million users holding units it takes about
    /// half a second of CPU, which on a runtime worker would hold up every
    /// request queued behind it there. The scheduler waits for it (its
    /// triggers resume after), consumes do not: the ledger is never
    /// stopped (`Wal::checkpoint`). `beside_requests` false (at shutdown)
    /// skips the rests that leave requests their cores.
    pub(super) async fn checkpoint(self: &Arc<Self>, beside_requests: bool) {
        if self.wal.is_none() {
            return;
        }
        let inner = self.clone();
        let run = tokio::task::spawn_blocking(move || {
            let Some(wal) = &inner.wal else { return };
            let started = Instant::now();
            let now = inner.clock.now();
            if beside_requests {
                wal.checkpoint(&inner.ledger, now);
            } else {
                wal.checkpoint_at_once(&inner.ledger, now);
            }
            debug!(target: "flush", ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "write-ahead log checkpoint");
        });
        if let Err(e) = run.await {
            // Only a panic gets here; the log keeps its older checkpoint,
            // which stays complete, so nothing is lost.
            error!(target: "flush", error = %e, "write-ahead log checkpoint failed");
        }
    }
}

impl Engine {
    /// When each timed trigger fires next; `None` before [`Engine::start`]
    /// (or with sync disabled).
    pub fn next_runs(&self) -> Option<NextRuns> {
        let now = Instant::now();
        let runs = (*self.inner.sync.next_runs.locked())?;
        Some(NextRuns {
            check: runs[0].saturating_duration_since(now),
            heartbeat: runs[1].saturating_duration_since(now),
            guarantee: runs[2].saturating_duration_since(now),
            retry: self
                .inner
                .sync
                .next_retry_at()
                .map(|t| t.saturating_duration_since(now)),
        })
    }

    /// Flushes allowed to run at once right now.
    pub fn flush_concurrency(&self) -> usize {
        self.inner
            .sync
            .concurrency
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Raises the flush concurrency to `n` (never lowers it: flushes in
    /// progress hold permits). Returns the new value.
    pub fn raise_flush_concurrency(&self, n: usize) -> usize {
        let f = &self.inner.sync;
        let cur = f.concurrency.load(std::sync::atomic::Ordering::Relaxed);
        if n > cur {
            f.permits.add_permits(n - cur);
            f.concurrency.store(n, std::sync::atomic::Ordering::Relaxed);
            info!(target: "flush", from = cur, to = n, "flush concurrency raised");
            return n;
        }
        cur
    }

    /// Stretches the check and heartbeat intervals by `multiplier` (1
    /// restores them), with the reason shown in the status. The guarantee
    /// interval is never stretched.
    pub fn set_cadence(&self, multiplier: u32, reason: &str) {
        let m = multiplier.max(1);
        self.inner.sync.cadence.send_if_modified(|cur| {
            if cur.0 == m {
                return false;
            }
            info!(target: "check", multiplier = m, reason, "check and heartbeat cadence changed");
            *cur = (m, reason.to_owned());
            true
        });
    }

    /// The current cadence multiplier and its reason.
    pub fn cadence(&self) -> (u32, String) {
        self.inner.sync.cadence.borrow().clone()
    }
}
