//! Remembered request ids: the dedup table's shards, the owner tables,
//! conflicts, refunds by request id, and what recovery restores.

use super::*;

impl Ledger {
    /// The dedup shard of a fingerprint, locked.
    pub(super) fn dedup_of(&self, fp: Fingerprint) -> MutexGuard<'_, DedupTable> {
        lock(&self.dedup[fp.shard_bits() & self.dedup_mask].0)
    }

    /// The fingerprint of a request id under this ledger's key.
    pub fn fingerprint(&self, request_id: &str) -> Fingerprint {
        self.dedup_key.fingerprint(request_id)
    }

    /// Whether a dedup shard (expired already) can take one more id.
    pub(super) fn room_for_one(&self, dedup: &DedupTable) -> bool {
        dedup.len() < self.max_ids_per_shard
    }

    /// Drops a dedup shard's ids that left the window, and their owners'
    /// counts. Every operation on a shard starts with this.
    pub(super) fn expire(&self, dedup: &mut DedupTable, now: Timestamp) -> usize {
        let mut gone = Vec::new();
        let n = dedup.expire(now, &self.dedup_window, &mut gone);
        self.release_owners(&gone);
        n
    }

    /// The user id behind a remembered request's user hash.
    pub(super) fn owner(&self, user_hash: u64) -> Option<UserId> {
        lock(&self.shards[self.index_of_hash(user_hash)].0)
            .owners
            .get(&user_hash)
            .map(|(u, _)| u.clone())
    }

    /// One remembered id less for each user hash (swept or replaced
    /// entries); a user owning none leaves the owner table.
    pub(super) fn release_owners(&self, hashes: &[u64]) {
        for &h in hashes {
            let mut shard = lock(&self.shards[self.index_of_hash(h)].0);
            if let Some((_, n)) = shard.owners.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    shard.owners.remove(&h);
                }
            }
        }
    }

    /// `Err(RequestIdConflict)` naming what differs when (user, kind,
    /// amount) is not the request `rec` was first used for.
    pub(super) fn conflict(
        &self,
        rec: &Remembered,
        rid: &str,
        user_hash: u64,
        kind: &Kind,
        amount: u64,
    ) -> Result<(), CoreError> {
        if rec.user_hash != user_hash {
            // Nothing about the other user's request is told.
            return Err(CoreError::RequestIdConflict(format!(
                "request_id '{rid}' was already used for another user_id; nothing was \
                 counted: send a request_id of your own (a UUID) for each request"
            )));
        }
        let mut differs = Vec::new();
        if usize::from(rec.kind) != kind.index() {
            differs.push(format!(
                "kind '{}' (first used for '{}')",
                kind.name(),
                self.kinds.by_index(usize::from(rec.kind)).name()
            ));
        }
        if rec.amount != amount {
            differs.push(format!("amount {amount} (first used for {})", rec.amount));
        }
        if differs.is_empty() {
            return Ok(());
        }
        Err(CoreError::RequestIdConflict(format!(
            "request_id '{rid}' belongs to an earlier request; this one differs in {}. \
             Nothing was counted: send a new request_id for a new request",
            differs.join(", ")
        )))
    }

    /// `Err(RequestIdConflict)` if `request_id` is remembered for another
    /// (user, kind, amount), `Err(RequestIdsFull)` if it is new and the
    /// table is full: a shared tier asks before it admits anything, so such
    /// an id never reaches Redis.
    pub fn request_conflict(
        &self,
        request_id: &RequestId,
        user: &str,
        kind: &Kind,
        amount: Units,
        now: Timestamp,
    ) -> Result<(), CoreError> {
        let fp = self.dedup_key.fingerprint(request_id.as_str());
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        match dedup.get(fp) {
            Some(rec) => self.conflict(
                &rec,
                request_id.as_str(),
                self.shard_hasher.hash_one(user),
                kind,
                amount.get(),
            ),
            None if self.room_for_one(&dedup) => Ok(()),
            None => Err(CoreError::RequestIdsFull),
        }
    }

    /// The user a request id was counted for, so the caller can make it
    /// resident before [`Ledger::refund`].
    pub fn request_owner(&self, request_id: &str, now: Timestamp) -> Option<UserId> {
        let fp = self.dedup_key.fingerprint(request_id);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        let rec = dedup.get(fp)?;
        self.owner(rec.user_hash)
    }

    /// Reverses the consume recorded under `request_id`, once. The units
    /// come off the period they were counted in, even if that period has
    /// ended or was already flushed (then as a negative delta).
    ///
    /// With `owner`, the refund is refused with
    /// [`CoreError::RequestIdConflict`] unless the request was that user's:
    /// a client can then never give back another user's units by naming
    /// their request id.
    pub fn refund(
        &self,
        request_id: &str,
        owner: Option<&str>,
        now: Timestamp,
    ) -> Result<RefundOutcome, CoreError> {
        let fp = self.dedup_key.fingerprint(request_id);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        let rec = dedup.get(fp).ok_or(CoreError::UnknownRequest)?;
        let user = self.owner(rec.user_hash).ok_or(CoreError::UnknownRequest)?;
        if let Some(u) = owner
            && u != user.as_str()
        {
            return Err(CoreError::RequestIdConflict(format!(
                "request_id '{request_id}' was not consumed by user_id '{u}'; nothing was refunded"
            )));
        }
        if rec.refunded {
            return Err(CoreError::AlreadyRefunded);
        }
        let refunded = if rec.allowed { rec.amount } else { 0 };
        let kind = *self.kinds.by_index(usize::from(rec.kind));
        let lsn = self.give_back(request_id, &user, &kind, rec.period_start, refunded, now)?;
        dedup.set_refunded(fp);
        Ok(RefundOutcome {
            user,
            kind,
            refunded,
            lsn,
        })
    }

    /// Takes `amount` units off `user`'s counter of `period_start` (as a
    /// negative delta on a recreated counter if that period's counters
    /// were flushed and dropped) and logs the refund under `request_id`.
    /// With 0 units only the log record is written: "already refunded"
    /// must survive a restart too. The caller holds the request id's
    /// dedup shard (lock order: dedup, then user shard).
    pub(super) fn give_back(
        &self,
        request_id: &str,
        user: &UserId,
        kind: &Kind,
        period_start: Timestamp,
        amount: u64,
        now: Timestamp,
    ) -> Result<Option<Lsn>, CoreError> {
        let mut cut = Cut::NONE;
        if amount > 0 {
            let version = self.plans_version.load(Ordering::Acquire);
            let mut guard = self.shard(user.as_str());
            let shard = &mut *guard;
            let e = shard
                .users
                .get_mut(user.as_str())
                .ok_or(CoreError::NotResident)?;
            e.refresh(&self.plans, version, now);
            let k = kind.index();
            let had = e.has_units();
            match e.slot_mut(k, period_start) {
                Some(slot) => slot.pending -= signed(amount),
                None => {
                    let mut slot = Slot::unloaded(period_start, None);
                    slot.pending = -signed(amount);
                    e.stale.push((kind_index(k), slot));
                }
            }
            shard.totals.change(had, e.has_units(), -signed(amount), 0);
            e.last_activity = now;
            Shard::mark_dirty(&mut shard.dirty, &mut shard.with_units, shard.cut, e, now);
            cut = e.cut(shard.cut);
        }
        // Appended after the shard's lock is released: the cut read under
        // it says which side of a checkpoint the change is on.
        Ok(self.journal().map(|j| {
            j.append(Record::Refund {
                request_id,
                user,
                kind,
                period_start,
                amount,
                at: now,
                cut,
            })
        }))
    }

    /// Gives back units that a shared tier (Redis) has refunded for a
    /// request this instance may never have seen: the consume was counted
    /// (and is flushed) by whichever instance admitted it, so the refund is
    /// a negative delta on the same counter, which adds up in the store.
    /// Marks the local request record refunded if there is one.
    pub fn refund_remote(
        &self,
        request_id: &str,
        user: &UserId,
        kind: &Kind,
        period_start: Timestamp,
        amount: u64,
        now: Timestamp,
    ) -> Result<RefundOutcome, CoreError> {
        let fp = self.dedup_key.fingerprint(request_id);
        let mut dedup = self.dedup_of(fp);
        self.expire(&mut dedup, now);
        let lsn = self.give_back(request_id, user, kind, period_start, amount, now)?;
        dedup.set_refunded(fp);
        Ok(RefundOutcome {
            user: user.clone(),
            kind: *kind,
            refunded: amount,
            lsn,
        })
    }

    /// Request ids remembered for one user. Walks every remembered id: for
    /// diagnostics only.
    pub fn dedup_entries_of(&self, user: &str) -> usize {
        let hash = self.shard_hasher.hash_one(user);
        let shard = lock(&self.shards[self.index_of_hash(hash)].0);
        shard
            .owners
            .get(&hash)
            .map_or(0, |(_, n)| usize::try_from(*n).unwrap_or(usize::MAX))
    }

    /// Number of remembered request ids.
    pub fn dedup_entries(&self) -> usize {
        self.dedup.iter().map(|d| lock(&d.0).len()).sum()
    }

    /// Heap bytes of the idempotency table (its shards' tables, not the
    /// owner tables): for the memory figures in the benches.
    pub fn dedup_heap_bytes(&self) -> usize {
        self.dedup.iter().map(|d| lock(&d.0).heap_bytes()).sum()
    }

    /// Restores a remembered request id from the log.
    #[allow(clippy::too_many_arguments)]
    /// `false` (and nothing is kept) if it is already out of the window.
    #[allow(clippy::too_many_arguments)]
    pub fn recover_request(
        &self,
        fingerprint: Fingerprint,
        user: &UserId,
        kind: Kind,
        amount: u64,
        decision: &Decision,
        refunded: bool,
        at: Timestamp,
        now: Timestamp,
    ) -> bool {
        if !self.dedup_window.alive(at, now) {
            return false;
        }
        let user_hash = self.shard_hasher.hash_one(user.as_str());
        let mut d = self.dedup_of(fingerprint);
        self.expire(&mut d, now);
        let replaced = d.insert(
            fingerprint,
            &Remembered {
                user_hash,
                kind: kind_index(kind.index()),
                amount,
                period_start: decision.period_start,
                allowed: decision.allowed,
                used: decision.used,
                limit: decision.limit,
                refunded,
            },
            at,
            &self.dedup_window,
        );
        lock(&self.shards[self.index_of_hash(user_hash)].0)
            .owners
            .entry(user_hash)
            .or_insert_with(|| (user.clone(), 0))
            .1 += 1;
        self.release_owners(replaced.as_slice());
        true
    }
}
