//! The request path: loading a user's counters, and the atomic
//! check-and-count of a consume (with its request id), a check, and the
//! usage a user sees.

use super::*;

impl Ledger {
    /// Creates the in-memory entry for `user` from its persisted state.
    ///
    /// Warm-up never overwrites: if the user is already resident nothing
    /// changes (it may have pending units the store does not know about).
    /// Returns `Err(())` if the shard was changed since `epoch` was read
    /// (eviction or admin change), in which case the caller must reload.
    #[allow(clippy::result_unit_err)]
    pub fn warm(
        &self,
        user: &UserId,
        profile: UserProfile,
        rows: &[PersistedRow],
        epoch: LoadEpoch,
        now: Timestamp,
    ) -> Result<(), ()> {
        let plans = self.plans();
        let mut guard = self.shard(user.as_str());
        let shard = &mut *guard;
        let stale_read = shard.epoch != epoch.0;
        if let Some(e) = shard.users.get_mut(user.as_str()) {
            return Self::fill_unloaded(e, rows, stale_read);
        }
        if stale_read {
            return Err(());
        }
        let r = plans.resolve(&profile, now);
        let current: SmallVec<[Slot; 2]> = (0..self.kinds.len())
            .map(|k| {
                let persisted = rows
                    .iter()
                    .find(|row| row.kind == k && row.period_start == r.period_start)
                    .map_or(0, |row| row.used);
                Slot::new(r.period_start, persisted, r.limits[k])
            })
            .collect();
        let entry = UserEntry {
            id: user.clone(),
            profile: boxed_profile(profile),
            resolved_version: plans.version,
            plan: r.plan,
            period_start: r.period_start,
            period_end: r.period_end,
            current,
            stale: Vec::new(),
            last_activity: now,
            last_sync_at: None,
            last_sync_trigger: None,
            dirty_since: None,
            dirty_gen: 0,
            threshold_queued: false,
            listed: false,
            taken: Cut(0),
        };
        shard.users.insert(Box::new(entry));
        shard.activity.push_back((now, user.clone()));
        self.resident.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A resident user's warm-up: its counters are never overwritten (they
    /// may hold units the store does not know of); only the current
    /// counters whose persisted value was never read take it from `rows`.
    ///
    /// A counter with a batch outstanding is not filled: the rows may have
    /// been read before or after that batch committed, and either guess
    /// could count its units twice or not at all. That batch's completion
    /// sets the value from the store instead, so the caller retries.
    pub(super) fn fill_unloaded(
        e: &mut UserEntry,
        rows: &[PersistedRow],
        stale_read: bool,
    ) -> Result<(), ()> {
        let mut all = true;
        for (k, slot) in e.current.iter_mut().enumerate() {
            if slot.loaded {
                continue;
            }
            if stale_read || slot.flushing || slot.in_flight != 0 {
                all = false;
                continue;
            }
            slot.persisted = rows
                .iter()
                .find(|row| row.kind == k && row.period_start == slot.period_start)
                .map_or(0, |row| row.used);
            slot.loaded = true;
        }
        if all { Ok(()) } else { Err(()) }
    }

    /// Replaces a user's profile (plan, overrides, reset time) after the
    /// store was updated. A resident user re-resolves at once: a reset moves
    /// its current counters to the old period (still flushed there) and
    /// starts the new period at zero. Pending units are never lost.
    pub fn set_profile(&self, user: &str, profile: UserProfile, now: Timestamp) {
        let plans = self.plans();
        let mut shard = self.shard(user);
        shard.epoch += 1;
        if let Some(e) = shard.users.get_mut(user) {
            e.profile = boxed_profile(profile);
            e.apply_resolution(&plans, now);
        }
    }

    /// The profile of a resident user.
    pub fn profile(&self, user: &str) -> Option<UserProfile> {
        self.shard(user)
            .users
            .get(user)
            .map(|e| e.profile.as_deref().cloned().unwrap_or_default())
    }

    /// Atomically checks `used + amount <= limit` and, if allowed, counts
    /// the units. With a request id, a repeat within the dedup window counts
    /// nothing and returns the original decision.
    ///
    /// Returns [`CoreError::NotResident`] if the user must be loaded first.
    #[inline]
    pub fn consume(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
    ) -> Result<ConsumeOutcome, CoreError> {
        self.consume_with(user, kind, amount, request_id, now, Admit::Limit)
    }

    /// Counts units a shared tier (Redis) has already admitted: no local
    /// limit check, because the decision was made across all instances and
    /// this instance's view of the limit is only partial. Everything else
    /// (request-id record, log record, due-structures) is as in
    /// [`Ledger::consume`].
    #[inline]
    pub fn consume_granted(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
    ) -> Result<ConsumeOutcome, CoreError> {
        self.consume_with(user, kind, amount, request_id, now, Admit::Granted)
    }

    /// A consume that `cover` decides, under the one shard lock that
    /// counts it: `cover` is given the counter's quota and answers with a
    /// decision made elsewhere ([`Cover::Decided`], such as a lease held in
    /// memory), with [`Cover::Local`] to check the local limit as
    /// [`Ledger::consume`] does, or with [`Cover::No`], in which case
    /// nothing is counted or logged and the outcome is a denial the caller
    /// is expected to decide again. `cover` runs under the shard lock: it
    /// must not take a lock that is ever held while a shard lock is taken.
    /// It is called at most once, and only when the units can be counted.
    #[inline]
    pub fn consume_covered(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        now: Timestamp,
        cover: &mut dyn FnMut(&Quota) -> Cover,
    ) -> Result<ConsumeOutcome, CoreError> {
        self.consume_with(user, kind, amount, None, now, Admit::Covered(cover))
    }

    /// The quota of one counter as this instance sees it: the limit and
    /// period from the user's plan, and the units it knows of (persisted
    /// plus its own pending). The shared tier seeds its counter from this.
    pub fn quota(&self, user: &str, kind: &Kind, now: Timestamp) -> Result<Quota, CoreError> {
        let version = self.plans_version.load(Ordering::Acquire);
        let (mut shard, hash) = self.shard_hashed(user);
        let e = shard
            .users
            .find_mut(hash, user)
            .ok_or(CoreError::NotResident)?;
        e.refresh(&self.plans, version, now);
        if !e.current[kind.index()].loaded {
            return Err(CoreError::NotResident);
        }
        Ok(e.quota(kind.index()))
    }

    #[inline]
    pub(super) fn consume_with(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
        admit: Admit<'_>,
    ) -> Result<ConsumeOutcome, CoreError> {
        // Hashed once: the user's shard, its bucket, and the request id's
        // owner all come from this.
        let user_hash = self.shard_hasher.hash_one(user);
        let Some(rid) = request_id else {
            return self.consume_locked(user, user_hash, kind, amount, None, now, admit);
        };
        // Lock order: dedup shard, then user shard (refund uses the same
        // order). Holding the dedup shard across the consume is what makes
        // two concurrent requests with one id count once.
        let fp = self.dedup_key.fingerprint(rid.as_str());
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        if let Some(rec) = dedup.get(fp) {
            // An id names one request: the same id with another user, kind
            // or amount is a client bug (or another tenant's guess), never
            // a retry. Answering it as a duplicate would count nothing for
            // this caller and leak the original's numbers.
            self.conflict(&rec, rid.as_str(), user_hash, kind, amount.get())?;
            // A live entry's owner is in the owner table (it leaves only
            // when the entry expires or is replaced); the caller's id has
            // the same hash anyway, so that is the fallback (never
            // `NotResident`, which would send the engine loading forever).
            let user = match self.owner(rec.user_hash) {
                Some(u) => u,
                None => UserId::parse(user)?,
            };
            return Ok(ConsumeOutcome {
                user,
                kind: *kind,
                amount: rec.amount,
                decision: rec.decision(),
                deduplicated: true,
                threshold_reached: false,
                // The original's record is at or before the log's head:
                // the repeat is acknowledged once that is as durable as
                // the original's own answer had to be.
                lsn: self.journal().map(|j| j.head()),
            });
        }
        // A shared tier (granted) has admitted the units already: they are
        // counted whatever the table holds, and it asked first
        // (`request_conflict`).
        let granted = matches!(admit, Admit::Granted);
        if !granted && !self.room_for_one(&dedup) {
            return Err(CoreError::RequestIdsFull);
        }
        let out = self.consume_locked(user, user_hash, kind, amount, Some(rid), now, admit)?;
        let replaced = dedup.insert(
            fp,
            &Remembered {
                user_hash,
                kind: kind_index(kind.index()),
                amount: amount.get(),
                period_start: out.decision.period_start,
                allowed: out.decision.allowed,
                used: out.decision.used,
                limit: out.decision.limit,
                refunded: false,
            },
            now,
            &self.dedup_window,
        );
        self.release_owners(replaced.as_slice());
        Ok(out)
    }

    /// `hash`: the shard hasher's hash of `user`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn consume_locked(
        &self,
        user: &str,
        hash: u64,
        kind: &Kind,
        amount: Units,
        request_id: Option<&RequestId>,
        now: Timestamp,
        admit: Admit<'_>,
    ) -> Result<ConsumeOutcome, CoreError> {
        let version = self.plans_version.load(Ordering::Acquire);
        let mut guard = lock(&self.shards[self.index_of_hash(hash)].0);
        let shard = &mut *guard;
        let e = shard
            .users
            .find_mut(hash, user)
            .ok_or(CoreError::NotResident)?;
        e.refresh(&self.plans, version, now);
        let k = kind.index();
        if !e.current[k].loaded {
            return Err(CoreError::NotResident);
        }
        e.last_activity = now;
        let amount = amount.signed();
        let used = e.current[k].used();
        let next = used.checked_add(amount).ok_or(CoreError::Overflow)?;
        let within_limit = || match e.current[k].limit() {
            Some(limit) => next <= signed(limit),
            None => true,
        };
        // A decision made elsewhere replaces the local one in the answer.
        let mut decided = None;
        let allowed = match admit {
            Admit::Limit => within_limit(),
            Admit::Granted => true,
            // Called only now that nothing below can fail: what it spends
            // (a lease's units) is counted.
            Admit::Covered(cover) => match cover(&e.quota(k)) {
                Cover::Decided(d) => {
                    decided = Some(d);
                    true
                }
                Cover::Local => within_limit(),
                Cover::No => false,
            },
        };
        let mut threshold_reached = false;
        if allowed {
            let had = e.has_units();
            e.current[k].pending += amount;
            shard.totals.change(had, e.has_units(), amount, 0);
            let slot = &mut e.current[k];
            let near_limit = self.near_limit_percent.is_some_and(|p| {
                slot.limit().is_some_and(|l| {
                    l > 0 && u128::from(shown(slot.used())) * 100 >= u128::from(l) * u128::from(p)
                })
            });
            if (slot.pending >= signed(self.threshold) || near_limit) && !e.threshold_queued {
                e.threshold_queued = true;
                shard.threshold.push(e.id.clone());
                threshold_reached = true;
            }
            Shard::mark_dirty(&mut shard.dirty, &mut shard.with_units, shard.cut, e, now);
        }
        let decision = decided.unwrap_or_else(|| e.decision(k, allowed));
        // Logged under the shard lock: the log's order is this counter's
        // order. Denied consumes are logged only when they carry a request
        // id (their decision must survive a restart for deduplication).
        let lsn = match self.journal() {
            Some(j) if allowed || request_id.is_some() => Some(j.append(Record::Consume {
                user: &e.id,
                kind,
                period_start: e.period_start,
                amount: shown(amount),
                request_id,
                decision: &decision,
                at: now,
                cut: e.cut(shard.cut),
            })),
            _ => None,
        };
        if request_id.is_some() {
            // The caller remembers the id under this user's hash.
            shard
                .owners
                .entry(hash)
                .or_insert_with(|| (e.id.clone(), 0))
                .1 += 1;
        }
        Ok(ConsumeOutcome {
            user: e.id.clone(),
            kind: *kind,
            amount: shown(amount),
            decision,
            deduplicated: false,
            threshold_reached,
            lsn,
        })
    }

    /// Answers the consume question without counting.
    pub fn check(
        &self,
        user: &str,
        kind: &Kind,
        amount: Units,
        now: Timestamp,
    ) -> Result<Decision, CoreError> {
        let version = self.plans_version.load(Ordering::Acquire);
        let (mut shard, hash) = self.shard_hashed(user);
        let e = shard
            .users
            .find_mut(hash, user)
            .ok_or(CoreError::NotResident)?;
        e.refresh(&self.plans, version, now);
        let k = kind.index();
        if !e.current[k].loaded {
            return Err(CoreError::NotResident);
        }
        let allowed = match e.current[k].limit() {
            Some(limit) => e.current[k].used().saturating_add(amount.signed()) <= signed(limit),
            None => true,
        };
        Ok(e.decision(k, allowed))
    }

    /// Current usage of a resident user, or `None`: not resident, or
    /// resident with a current counter whose persisted value was never
    /// read ([`Ledger::is_resident`] tells which; [`Ledger::warm`] fills
    /// it).
    pub fn usage(&self, user: &str, now: Timestamp) -> Option<UserUsage> {
        let version = self.plans_version.load(Ordering::Acquire);
        let mut shard = self.shard(user);
        let e = shard.users.get_mut(user)?;
        e.refresh(&self.plans, version, now);
        if e.current.iter().any(|s| !s.loaded) {
            // Resident, but a counter's persisted value is unknown: the
            // caller loads (see `Ledger::needs_load`) and asks again.
            return None;
        }
        let kinds = self
            .kinds
            .iter()
            .map(|kind| {
                let s = &e.current[kind.index()];
                let d = e.decision(kind.index(), true);
                KindUsage {
                    kind: *kind,
                    persisted: shown(s.persisted),
                    pending: s.pending + s.in_flight,
                    in_flight: s.in_flight,
                    used: d.used,
                    limit: d.limit,
                    remaining: d.remaining,
                }
            })
            .collect();
        Some(UserUsage {
            user: e.id.clone(),
            plan: e.plan.name.clone(),
            period_start: e.period_start,
            kinds,
            last_sync_at: e.last_sync_at,
            last_sync_trigger: e.last_sync_trigger,
            last_activity_at: Some(e.last_activity),
            resident: true,
        })
    }

    /// Usage of a user that is not resident, computed from its persisted
    /// state without making it resident.
    pub fn usage_from_store(
        &self,
        user: &UserId,
        profile: &UserProfile,
        rows: &[PersistedRow],
        now: Timestamp,
    ) -> UserUsage {
        let r = self.plans().resolve(profile, now);
        let kinds = self
            .kinds
            .iter()
            .map(|kind| {
                let used = rows
                    .iter()
                    .find(|row| row.kind == kind.index() && row.period_start == r.period_start)
                    .map_or(0, |row| shown(row.used));
                let limit = r.limits[kind.index()];
                KindUsage {
                    kind: *kind,
                    persisted: used,
                    pending: 0,
                    in_flight: 0,
                    used,
                    limit,
                    remaining: limit.map(|l| l.saturating_sub(used)),
                }
            })
            .collect();
        UserUsage {
            user: user.clone(),
            plan: r.plan.name.clone(),
            period_start: r.period_start,
            kinds,
            last_sync_at: None,
            last_sync_trigger: None,
            last_activity_at: None,
            resident: false,
        }
    }
}
