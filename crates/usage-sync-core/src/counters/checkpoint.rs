//! Figures over the whole ledger: the totals a scrape reads, the status
//! page's top users, a checkpoint's copy of the counters holding units,
//! and the users recovery installs.

use super::*;

/// Listed users a checkpoint copies per hold of a shard's lock: about
/// 20 µs, so a consume of that shard waits no longer than that.
const CUT_RUN: usize = 64;

impl Ledger {
    /// Totals over all resident users: (pending units, in-flight units,
    /// users with pending units, time the oldest pending unit was counted).
    /// One lock per shard, whatever the number of users: the shards keep
    /// these figures up to date as units change (`ShardTotals`).
    pub fn totals(&self) -> LedgerTotals {
        let mut t = LedgerTotals::default();
        for s in self.shards.iter() {
            let mut shard = lock(&s.0);
            t.pending += shard.totals.pending;
            t.in_flight += shard.totals.in_flight;
            t.users_with_pending += shard.totals.users_with_units;
            let fronts = [
                Self::dirty_front(&mut shard),
                Self::requeued_front(&mut shard),
            ];
            for since in fronts.into_iter().flatten() {
                t.oldest_pending =
                    Some(t.oldest_pending.map_or(since, |o: Timestamp| o.min(since)));
            }
        }
        t
    }

    /// [`Ledger::totals`] by walking every resident user: what the kept
    /// totals must always equal (the tests compare the two).
    #[cfg(test)]
    pub(crate) fn totals_walked(&self) -> LedgerTotals {
        let mut t = LedgerTotals::default();
        for s in self.shards.iter() {
            let shard = lock(&s.0);
            for e in shard.users.values() {
                for (_, s) in e.slots() {
                    t.pending += s.pending;
                    t.in_flight += s.in_flight;
                }
                if e.has_units() {
                    t.users_with_pending += 1;
                }
                if let Some(since) = e.dirty_since {
                    t.oldest_pending =
                        Some(t.oldest_pending.map_or(since, |o: Timestamp| o.min(since)));
                }
            }
        }
        t
    }

    /// What [`Ledger::cut_shards`] copies, by walking every resident user
    /// (the tests compare the two).
    #[cfg(test)]
    pub(crate) fn units_outside_walked(&self) -> Vec<UnitsOutside> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            for e in lock(&s.0).users.values() {
                self.units_outside(e, &mut out);
            }
        }
        out
    }

    /// The `n` resident users with the most units not yet known to be in
    /// the store (pending plus in flight), most first. Walks every user:
    /// for status pages, not for triggers.
    pub fn top_pending(&self, n: usize) -> Vec<(UserId, i64)> {
        let mut all: Vec<(UserId, i64)> = Vec::new();
        for s in self.shards.iter() {
            let shard = lock(&s.0);
            for e in shard.users.values() {
                let units: i64 = e
                    .slots()
                    .map(|(_, s)| (s.pending + s.in_flight).abs())
                    .sum();
                if units > 0 {
                    all.push((e.id.clone(), units));
                }
            }
        }
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The checkpoint's pass over the counters, one shard at a time, and
    /// within a shard [`CUT_RUN`] listed users at a time: the shard is
    /// locked only while a run is copied, then `sink` gets the copies (to
    /// write outside the lock). Nothing else is stopped.
    ///
    /// Taking a shard sets its cut to `segment` and takes its list of
    /// users holding units. Each user is marked as it is copied
    /// (`UserEntry::taken`), so a change between two runs is on one side
    /// of the copy: to a user not yet copied, it is in the copy *and* in
    /// the segment's records, marked with the older cut, and replay
    /// applies it once (see [`Cut`]); to a user copied, or one that had
    /// no units when the shard was taken, it is only in the records.
    pub fn cut_shards(&self, segment: Cut, sink: &mut dyn FnMut(Vec<UnitsOutside>)) {
        for s in self.shards.iter() {
            let listed = {
                let mut shard = lock(&s.0);
                shard.cut = segment;
                shard.stale_listed = 0;
                // Users listed from now on (by `mark_dirty`) go to a new
                // list, already marked as taken.
                std::mem::take(&mut shard.with_units)
            };
            for run in listed.chunks(CUT_RUN) {
                let copies = {
                    let mut guard = lock(&s.0);
                    let shard = &mut *guard;
                    let mut out = Vec::new();
                    for id in run {
                        // Evicted since (it had no units), no longer
                        // listed, or taken already (listed afresh, or an
                        // id listed twice: a user evicted and loaded again).
                        let Some(e) = shard.users.get_mut(id.as_str()) else {
                            continue;
                        };
                        if !e.listed || e.taken >= segment {
                            continue;
                        }
                        e.taken = segment;
                        self.units_outside(e, &mut out);
                        // Kept while it has any: pending -1 with 1 in
                        // flight is 0 outside the store now, but -1 once
                        // the flight lands (and completions do not list).
                        if e.has_units() {
                            shard.with_units.push(id.clone());
                        } else {
                            e.listed = false;
                        }
                    }
                    out
                };
                sink(copies);
            }
        }
    }

    /// Installs a user recovered from the log: makes it resident from its
    /// persisted state (as a warm-up would), then adds the recovered
    /// pending and in-flight units to the counters of their periods.
    /// Counters with in-flight units are marked flushing: their batch is
    /// re-sent by the engine under its original id.
    pub fn recover_user(
        &self,
        user: &UserId,
        profile: UserProfile,
        rows: &[PersistedRow],
        slots: &[RecoveredSlot],
        now: Timestamp,
    ) {
        let epoch = self.load_epoch(user.as_str());
        let _ = self.warm(user, profile, rows, epoch, now);
        let version = self.plans_version.load(Ordering::Acquire);
        let mut guard = self.shard(user.as_str());
        let shard = &mut *guard;
        let Some(e) = shard.users.get_mut(user.as_str()) else {
            return;
        };
        e.refresh(&self.plans, version, now);
        let had = e.has_units();
        let (mut pending, mut in_flight) = (0, 0);
        for r in slots {
            pending += r.pending;
            in_flight += r.in_flight;
            if e.slot_mut(r.kind, r.period_start).is_none() {
                e.stale
                    .push((kind_index(r.kind), Slot::unloaded(r.period_start, None)));
            }
            let slot = e.slot_mut(r.kind, r.period_start).expect("just ensured");
            slot.pending += r.pending;
            slot.in_flight += r.in_flight;
            slot.flushing |= r.in_flight != 0;
        }
        e.stale.retain(|(_, s)| !s.is_clean());
        shard.totals.change(had, e.has_units(), pending, in_flight);
        Shard::mark_dirty(&mut shard.dirty, &mut shard.with_units, shard.cut, e, now);
    }

    /// Pushes one copy per counter of `e` holding units outside the store
    /// (pending plus in flight).
    fn units_outside(&self, e: &UserEntry, out: &mut Vec<UnitsOutside>) {
        for (k, slot) in e.slots() {
            let units = slot.pending + slot.in_flight;
            if units != 0 {
                out.push(UnitsOutside {
                    user: e.id.clone(),
                    kind: *self.kinds.by_index(k),
                    period_start: slot.period_start,
                    units,
                });
            }
        }
    }
}

impl Shard {
    /// A listed user was evicted. Once such ids are more than half the
    /// list (and over 64), the list is pruned, so it never grows past
    /// about twice the users it should hold, however many times users
    /// are evicted and loaded again between checkpoints.
    pub(super) fn forget_listed(&mut self) {
        self.stale_listed += 1;
        if self.stale_listed <= 64 || self.stale_listed * 2 <= self.with_units.len() {
            return;
        }
        let listed = std::mem::take(&mut self.with_units);
        let mut keep = Vec::with_capacity(listed.len());
        for id in listed {
            // The first copy of a resident, listed user is kept; a second
            // copy finds its flag cleared by the first.
            if let Some(e) = self.users.get_mut(id.as_str())
                && e.listed
            {
                e.listed = false;
                keep.push(id);
            }
        }
        for id in &keep {
            if let Some(e) = self.users.get_mut(id.as_str()) {
                e.listed = true;
            }
        }
        self.with_units = keep;
        self.stale_listed = 0;
    }
}
