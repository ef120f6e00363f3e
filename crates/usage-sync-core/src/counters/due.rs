//! The sync engine's side: batches taken by trigger (threshold, oldest
//! first, all, one user), completions, the heartbeat and eviction.

use super::*;

impl Ledger {
    /// Moves every pending, non-flushing counter of `e` into the builder.
    /// Leaves the user dirty (re-queued) if some pending units had to stay
    /// because their counter is already in an outstanding batch, and then
    /// returns true (the re-queued entry is the last of `dirty`).
    pub(super) fn take_entry(
        dirty: &mut VecDeque<(Timestamp, u32, UserId)>,
        totals: &mut ShardTotals,
        e: &mut UserEntry,
        kinds: &Kinds,
        b: &mut BatchBuilder<'_>,
    ) -> bool {
        let mut left_behind = false;
        let mut moved = 0;
        let all = e
            .current
            .iter_mut()
            .enumerate()
            .chain(e.stale.iter_mut().map(|(k, s)| (*k as usize, s)));
        for (k, s) in all {
            if s.pending == 0 {
                continue;
            }
            if s.flushing {
                left_behind = true;
                continue;
            }
            b.push(Delta {
                user: e.id.clone(),
                kind: *kinds.by_index(k),
                period_start: s.period_start,
                delta: s.pending,
            });
            moved += s.pending;
            s.in_flight += s.pending;
            s.pending = 0;
            s.flushing = true;
        }
        // Units move from pending to in flight; the entry holds as many.
        totals.change(true, true, -moved, moved);
        e.threshold_queued = false;
        // Invalidate the old dirty entry; re-queue (keeping the original
        // time) if units had to stay behind.
        e.dirty_gen = e.dirty_gen.wrapping_add(1);
        if left_behind {
            let since = e.dirty_since.unwrap_or(e.last_activity);
            e.dirty_since = Some(since);
            dirty.push_back((since, e.dirty_gen, e.id.clone()));
            totals
                .requeued
                .push(Reverse((since, e.dirty_gen, e.id.clone())));
        } else {
            e.dirty_since = None;
        }
        left_behind
    }

    /// Records each batch's exact deltas before it can be sent. A
    /// checkpoint that takes a shard in between counts the batch's units
    /// as outside the store (pending and in flight are one figure there),
    /// so a crash before the intent is logged re-flushes them: the batch
    /// itself is only sent once its intent is in the log.
    pub(super) fn log_intents(&self, batches: Vec<FlushBatch>) -> Vec<FlushBatch> {
        if let Some(j) = self.journal() {
            for b in &batches {
                j.append(Record::Intent { batch: b });
            }
        }
        batches
    }

    /// Takes every user queued by the threshold trigger.
    pub fn take_threshold(&self, max_rows: usize) -> Vec<FlushBatch> {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, Trigger::Threshold, max_rows);
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            if shard.threshold.is_empty() {
                continue;
            }
            for id in std::mem::take(&mut shard.threshold) {
                if let Some(e) = shard.users.get_mut(id.as_str()) {
                    Self::take_entry(&mut shard.dirty, &mut shard.totals, e, &self.kinds, &mut b);
                }
            }
        }
        self.log_intents(b.finish())
    }

    /// Pops the next valid dirty entry's time from a shard, discarding
    /// invalidated entries.
    pub(super) fn dirty_front(shard: &mut Shard) -> Option<Timestamp> {
        while let Some((since, gen_, id)) = shard.dirty.front() {
            match shard.users.get(id.as_str()) {
                Some(e) if e.dirty_gen == *gen_ && e.dirty_since.is_some() => return Some(*since),
                _ => {
                    shard.dirty.pop_front();
                }
            }
        }
        None
    }

    /// Drops invalidated re-queued entries once they outnumber the shard's
    /// users, so the heap stays bounded without metrics scrapes (which pop
    /// only from its top). Amortised: runs after that many re-queues.
    pub(super) fn prune_requeued(shard: &mut Shard) {
        if shard.totals.requeued.len() <= 2 * shard.users.len() + 64 {
            return;
        }
        let users = &shard.users;
        shard.totals.requeued.retain(|Reverse((_, gen_, id))| {
            users
                .get(id.as_str())
                .is_some_and(|e| e.dirty_gen == *gen_ && e.dirty_since.is_some())
        });
    }

    /// The oldest still-valid re-queued entry (see `ShardTotals::requeued`).
    pub(super) fn requeued_front(shard: &mut Shard) -> Option<Timestamp> {
        while let Some(Reverse((since, gen_, id))) = shard.totals.requeued.peek() {
            match shard.users.get(id.as_str()) {
                Some(e) if e.dirty_gen == *gen_ && e.dirty_since.is_some() => return Some(*since),
                _ => {
                    shard.totals.requeued.pop();
                }
            }
        }
        None
    }

    /// Takes up to `max_users` users with pending units, oldest pending
    /// first (the main check). Cost: one lock per shard to read its oldest
    /// entry, plus one per user taken.
    pub fn take_oldest(
        &self,
        max_users: usize,
        max_rows: usize,
        trigger: Trigger,
    ) -> (Vec<FlushBatch>, usize) {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, trigger, max_rows);
        let mut heap = BinaryHeap::new();
        for (i, s) in self.shards.iter().enumerate() {
            if let Some(t) = Self::dirty_front(&mut lock(&s.0)) {
                heap.push(Reverse((t, i)));
            }
        }
        let mut users = 0;
        let mut deferred: Vec<(usize, (Timestamp, u32, UserId))> = Vec::new();
        while users < max_users {
            let Some(Reverse((_, i))) = heap.pop() else {
                break;
            };
            let mut guard = lock(&self.shards[i].0);
            let shard = &mut *guard;
            if Self::dirty_front(shard).is_some() {
                let (_, _, id) = shard.dirty.pop_front().expect("front is valid");
                let e = shard
                    .users
                    .get_mut(id.as_str())
                    .expect("valid entries are resident");
                if Self::take_entry(&mut shard.dirty, &mut shard.totals, e, &self.kinds, &mut b) {
                    // Some counters were already flushing and the user was
                    // re-queued: put it aside so this pass does not pick it
                    // again, and re-queue it after.
                    let entry = shard.dirty.pop_back().expect("just pushed");
                    deferred.push((i, entry));
                } else {
                    users += 1;
                }
            }
            if let Some(t) = Self::dirty_front(shard) {
                heap.push(Reverse((t, i)));
            }
        }
        for (i, entry) in deferred {
            lock(&self.shards[i].0).dirty.push_back(entry);
        }
        (self.log_intents(b.finish()), users)
    }

    /// Takes everything pending (the guarantee and shutdown passes). Cost is
    /// proportional to the dirty users, not to the users tracked.
    pub fn take_all(&self, max_rows: usize, trigger: Trigger) -> (Vec<FlushBatch>, usize) {
        let (batches, users, _) = self.take_all_reporting_blocked(max_rows, trigger);
        (batches, users)
    }

    /// [`Ledger::take_all`], also returning how many users had to be left
    /// dirty because a counter of theirs is in an outstanding batch.
    pub fn take_all_reporting_blocked(
        &self,
        max_rows: usize,
        trigger: Trigger,
    ) -> (Vec<FlushBatch>, usize, usize) {
        let mut blocked = 0;
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, trigger, max_rows);
        let mut users = 0;
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            let mut left = VecDeque::new();
            for (_, g, id) in std::mem::take(&mut shard.dirty) {
                let Some(e) = shard.users.get_mut(id.as_str()) else {
                    continue;
                };
                if e.dirty_gen != g || e.dirty_since.is_none() {
                    continue;
                }
                if !Self::take_entry(&mut left, &mut shard.totals, e, &self.kinds, &mut b) {
                    users += 1;
                }
            }
            blocked += left.len();
            shard.dirty = left;
        }
        (self.log_intents(b.finish()), users, blocked)
    }

    /// Takes one user's pending counters (manual sync).
    pub fn take_user(&self, user: &str, max_rows: usize) -> Vec<FlushBatch> {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, Trigger::Manual, max_rows);
        let mut guard = self.shard(user);
        let shard = &mut *guard;
        if let Some(e) = shard.users.get_mut(user)
            && e.dirty_since.is_some()
        {
            Self::take_entry(&mut shard.dirty, &mut shard.totals, e, &self.kinds, &mut b);
        }
        self.log_intents(b.finish())
    }

    /// Records a successful flush. `used_after[i]` is the store's value of
    /// `batch.deltas[i]`'s counter after the transaction. Returns true if a
    /// counter is already due again by threshold (units were counted while
    /// the batch was in flight).
    pub fn complete(&self, batch: &FlushBatch, used_after: &[i64], now: Timestamp) -> bool {
        debug_assert_eq!(batch.deltas.len(), used_after.len());
        let mut due = false;
        // Each counter takes its completion under its shard's lock, with
        // its user's cut; the `Done` record carries them all, so replay
        // knows, delta by delta, whether a checkpoint already saw it.
        let mut cuts = Vec::with_capacity(batch.deltas.len());
        for (d, &after) in batch.deltas.iter().zip(used_after) {
            let mut guard = self.shard(d.user.as_str());
            let shard = &mut *guard;
            // Users with in-flight units are never evicted.
            let Some(e) = shard.users.get_mut(d.user.as_str()) else {
                debug_assert!(false, "user with in-flight units was evicted");
                cuts.push(shard.cut);
                continue;
            };
            cuts.push(e.cut(shard.cut));
            let k = d.kind.index();
            let had = e.has_units();
            let mut landed = 0;
            if let Some(s) = e.slot_mut(k, d.period_start) {
                s.in_flight -= d.delta;
                landed = d.delta;
                s.persisted = after;
                s.loaded = true;
                s.flushing = false;
                if s.pending >= signed(self.threshold) && !e.threshold_queued {
                    e.threshold_queued = true;
                    shard.threshold.push(e.id.clone());
                    due = true;
                }
            }
            shard.totals.change(had, e.has_units(), 0, -landed);
            e.stale.retain(|(_, s)| !s.is_clean());
            e.last_sync_at = Some(now);
            e.last_sync_trigger = Some(batch.trigger);
        }
        if let Some(j) = self.journal() {
            j.append(Record::Done {
                id: batch.id,
                cuts: &cuts,
            });
        }
        due
    }

    /// The heartbeat's scan of the activity queue: users idle longer than
    /// `session_timeout_ms` are flushed if they hold pending units (session
    /// end) or evicted if clean. While more than `max_users` are resident,
    /// clean users are evicted in least-recently-active order regardless of
    /// the timeout. Also expires old request ids.
    pub fn heartbeat(
        &self,
        now: Timestamp,
        session_timeout_ms: i64,
        max_users: usize,
        max_rows: usize,
    ) -> HeartbeatOutcome {
        let next = || self.next_flush_id();
        let mut b = BatchBuilder::new(&next, Trigger::SessionEnd, max_rows);
        let mut out = HeartbeatOutcome::default();
        let cutoff = now.saturating_sub_ms(session_timeout_ms);
        let per_shard_cap = max_users.div_ceil(self.shards.len());
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            Self::prune_requeued(shard);
            // Bounded by the queue length at the start, so re-queued entries
            // are not visited twice in one pass.
            let mut budget = shard.activity.len();
            while budget > 0 {
                let over = shard.users.len() > per_shard_cap;
                let Some((at, _)) = shard.activity.front() else {
                    break;
                };
                if *at > cutoff && !over {
                    break;
                }
                budget -= 1;
                let (at, id) = shard.activity.pop_front().expect("front exists");
                let Some(e) = shard.users.get_mut(id.as_str()) else {
                    continue;
                };
                if e.last_activity > at && e.last_activity > cutoff {
                    // Active since it was queued: look again later.
                    shard.activity.push_back((e.last_activity, id));
                    continue;
                }
                let idle = e.last_activity <= cutoff;
                if e.is_clean() {
                    if shard.users.remove(id.as_str()).is_some_and(|e| e.listed) {
                        shard.forget_listed();
                    }
                    shard.epoch += 1;
                    self.resident.fetch_sub(1, Ordering::Relaxed);
                    out.evicted += 1;
                } else {
                    if idle && e.dirty_since.is_some() {
                        Self::take_entry(
                            &mut shard.dirty,
                            &mut shard.totals,
                            e,
                            &self.kinds,
                            &mut b,
                        );
                        out.session_end_users += 1;
                    }
                    // Evicted on a later pass, once the flush has landed.
                    shard.activity.push_back((now, id));
                }
            }
        }
        for d in self.dedup.iter() {
            out.dedup_expired += self.expire(&mut lock(&d.0), now);
        }
        out.session_end = self.log_intents(b.finish());
        out
    }

    /// Ids of every resident user. Walks every shard: for the admin user
    /// list, never for triggers.
    pub fn resident_ids(&self) -> Vec<UserId> {
        let mut out = Vec::with_capacity(self.resident_users());
        for s in self.shards.iter() {
            out.extend(lock(&s.0).users.values().map(|e| e.id.clone()));
        }
        out
    }

    /// Evicts every resident user idle for at least `idle_ms` whose
    /// counters hold nothing pending or in flight; a user with units not
    /// yet in the store is never evicted. Returns (evicted, kept because
    /// they still hold units). The user is reloaded from the store on its
    /// next request.
    pub fn evict_idle(&self, idle_ms: i64, now: Timestamp) -> (usize, usize) {
        let cutoff = now.saturating_sub_ms(idle_ms);
        let (mut evicted, mut kept) = (0, 0);
        for s in self.shards.iter() {
            let mut guard = lock(&s.0);
            let shard = &mut *guard;
            let before = shard.users.len();
            let mut listed = 0;
            shard.users.retain(|e| {
                if e.last_activity > cutoff {
                    return true;
                }
                if !e.is_clean() {
                    kept += 1;
                    return true;
                }
                listed += usize::from(e.listed);
                false
            });
            for _ in 0..listed {
                shard.forget_listed();
            }
            let n = before - shard.users.len();
            if n > 0 {
                // Stale queue entries for removed users are skipped when
                // met; the epoch bump refuses cold loads that raced us.
                shard.epoch += 1;
                self.resident.fetch_sub(n, Ordering::Relaxed);
                evicted += n;
            }
        }
        (evicted, kept)
    }
}
