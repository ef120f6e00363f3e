//! Deciding through the shared tier: a consume, a check and a refund in
//! `redis` and `lease` mode, and the local fallback when Redis is down.

use super::*;
use usage_sync_core::Cover;

impl Engine {
    /// Loads the user if needed and returns its quota for `kind`.
    pub(super) async fn quota(&self, user: &UserId, kind: &Kind) -> Result<Quota, Error> {
        self.resident(user, |l, now| l.quota(user.as_str(), kind, now))
            .await
    }

    /// Counts units the shared tier admitted, loading the user if it was
    /// evicted in between (the admission is never repeated).
    pub(super) async fn count_granted(&self, s: Spend<'_>) -> Result<ConsumeOutcome, Error> {
        self.resident(s.user, |l, now| {
            l.consume_granted(s.user.as_str(), s.kind, s.amount, s.request_id, now)
        })
        .await
    }

    pub(super) fn admission<'a>(&self, t: &SharedTier, s: Spend<'a>, q: &Quota) -> Admission<'a> {
        Admission {
            user: s.user.as_str(),
            kind: s.kind.name(),
            period_start_ms: q.period_start.as_millis(),
            amount: s.amount.get(),
            limit: q.limit,
            seed: q.used,
            expire_at_ms: expire_at(q.period_end),
            version: t.version(s.user),
            request_id: s.request_id.map(RequestId::as_str),
            dedup_ttl_ms: u64::try_from(self.inner.config.dedup_window.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    /// A consume in a shared mode.
    pub(crate) async fn consume_shared(
        &self,
        t: &SharedTier,
        s: Spend<'_>,
    ) -> Result<ConsumeOutcome, Error> {
        let Spend {
            user,
            kind,
            amount,
            request_id,
        } = s;
        if let Some(rid) = request_id {
            // An id this instance remembers for another request is refused
            // before anything reaches Redis.
            self.inner
                .ledger
                .request_conflict(rid, user.as_str(), kind, amount, self.now())?;
        }
        for _ in 0..4 {
            let q = match request_id {
                // One shard lock when this instance can decide alone.
                None => match self.consume_covered(t, s).await? {
                    Ok(out) => return Ok(out),
                    Err(q) => q,
                },
                Some(_) => self.quota(user, kind).await?,
            };
            if !t.is_up() {
                return self.fallback(t, s, &q).await;
            }
            if t.mode() == SharingMode::Lease && request_id.is_none() {
                match self.take_lease(t, s, &q).await? {
                    Some(out) => return Ok(out),
                    None => continue,
                }
            }
            let adm = self.admission(t, s, &q);
            t.ops(1 + u64::from(request_id.is_some()));
            let reply = match t.redis.admit(&adm).await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(err) = t.key_failure(&e) {
                        return Err(err);
                    }
                    return self.fallback(t, s, &q).await;
                }
            };
            return match reply {
                AdmitReply::Stale(v) => {
                    self.reload_user(t, user, v).await?;
                    continue;
                }
                AdmitReply::OtherOwner => Err(CoreError::RequestIdConflict(format!(
                    "request_id '{}' was already used for another user_id; nothing was \
                     counted: send a request_id of your own (a UUID) for each request",
                    request_id.map_or("", RequestId::as_str)
                ))
                .into()),
                AdmitReply::Duplicate {
                    kind: original,
                    amount: first,
                    ..
                } if original != kind.name() || first != amount.get() => {
                    Err(CoreError::RequestIdConflict(format!(
                        "request_id '{}' belongs to an earlier request (kind '{original}', \
                         amount {first}); this one has kind '{}', amount {}. Nothing was \
                         counted: send a new request_id for a new request",
                        request_id.map_or("", RequestId::as_str),
                        kind.name(),
                        amount.get()
                    ))
                    .into())
                }
                AdmitReply::Duplicate {
                    allowed,
                    used,
                    kind: original,
                    amount,
                } => Ok(ConsumeOutcome {
                    user: user.clone(),
                    kind: self.kinds().get(&original).copied().unwrap_or(*kind),
                    amount,
                    decision: decision_at(&q, allowed, used),
                    deduplicated: true,
                    threshold_reached: false,
                    lsn: None,
                }),
                AdmitReply::Decided {
                    allowed: false,
                    used,
                } => Ok(ConsumeOutcome {
                    user: user.clone(),
                    kind: *kind,
                    amount: amount.get(),
                    decision: decision_at(&q, false, used),
                    deduplicated: false,
                    threshold_reached: false,
                    lsn: None,
                }),
                AdmitReply::Decided {
                    allowed: true,
                    used,
                } => {
                    let mut out = self.count_granted(s).await?;
                    out.decision = decision_at(&q, true, used);
                    Ok(out)
                }
            };
        }
        Err(Error::Unavailable(
            "the user kept changing while deciding; retry".into(),
        ))
    }

    /// A consume without a request id that this instance decides alone,
    /// under the one shard lock that counts it: nothing to share (no
    /// limit), or in lease mode a held lease that covers the units.
    /// Otherwise nothing is counted and the counter's quota is returned,
    /// for a decision through Redis (or the fallback while it is down).
    ///
    /// The lease table's lock is taken under the shard lock; it is a leaf
    /// (nothing takes a shard lock while holding it).
    async fn consume_covered(
        &self,
        t: &SharedTier,
        s: Spend<'_>,
    ) -> Result<Result<ConsumeOutcome, Quota>, Error> {
        let Spend {
            user, kind, amount, ..
        } = s;
        let k = u16::try_from(kind.index()).unwrap_or(u16::MAX);
        let leases = t.mode() == SharingMode::Lease && t.is_up();
        // The quota the cover saw, and whether it covered the consume.
        let mut seen: Option<(Quota, bool)> = None;
        let out = self
            .resident(user, |l, now| {
                let mut cover = |q: &Quota| {
                    let held = || {
                        t.leases
                            .spend(user, k, q.period_start, amount.get(), Instant::now())
                    };
                    let cover = if q.limit.is_none() {
                        // Nothing to share: no limit and no id.
                        Cover::Local
                    } else if let Some(spent) = leases.then(held).flatten() {
                        Cover::Decided(decision_at(q, true, spent))
                    } else {
                        Cover::No
                    };
                    seen = Some((*q, cover != Cover::No));
                    cover
                };
                l.consume_covered(user.as_str(), kind, amount, now, &mut cover)
            })
            .await?;
        Ok(match seen {
            Some((q, false)) => Err(q),
            _ => Ok(out),
        })
    }

    /// Lease mode without a request id, when no held lease covers the
    /// consume: takes a lease from Redis. `None` means "retry from the
    /// top" (the user changed).
    pub(super) async fn take_lease(
        &self,
        t: &SharedTier,
        s: Spend<'_>,
        q: &Quota,
    ) -> Result<Option<ConsumeOutcome>, Error> {
        let Spend {
            user, kind, amount, ..
        } = s;
        let k = u16::try_from(kind.index()).unwrap_or(u16::MAX);
        let adm = self.admission(t, s, q);
        t.ops(1);
        let reply = match t.redis.lease(&adm, t.config.lease_size).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(err) = t.key_failure(&e) {
                    return Err(err);
                }
                return self.fallback(t, s, q).await.map(Some);
            }
        };
        match reply {
            LeaseReply::Stale(v) => {
                self.reload_user(t, user, v).await?;
                Ok(None)
            }
            LeaseReply::Granted { units: 0, used } => Ok(Some(ConsumeOutcome {
                user: user.clone(),
                kind: *kind,
                amount: amount.get(),
                decision: decision_at(q, false, used),
                deduplicated: false,
                threshold_reached: false,
                lsn: None,
            })),
            LeaseReply::Granted { units, used } => {
                t.stats.leases_taken.fetch_add(1, Ordering::Relaxed);
                t.stats
                    .lease_units_granted
                    .fetch_add(units, Ordering::Relaxed);
                let left = units.saturating_sub(amount.get());
                let stale = t.leases.add(
                    user,
                    k,
                    q.period_start,
                    left,
                    used,
                    Instant::now() + t.config.lease_ttl,
                );
                t.queue_returns(stale, self.kinds());
                let mut out = self.count_granted(s).await?;
                out.decision = decision_at(q, true, used.saturating_sub(left));
                Ok(Some(out))
            }
        }
    }

    /// A decision while degraded.
    pub(super) async fn fallback(
        &self,
        t: &SharedTier,
        s: Spend<'_>,
        q: &Quota,
    ) -> Result<ConsumeOutcome, Error> {
        let Spend {
            user, kind, amount, ..
        } = s;
        t.stats.fallback_decisions.fetch_add(1, Ordering::Relaxed);
        if t.config.fallback == RedisFallback::Deny {
            return Err(Error::Unavailable(
                "the shared quota store (redis) is unreachable and USAGE_SYNC_REDIS_FALLBACK=deny"
                    .into(),
            ));
        }
        let out = self.consume_local(s).await?;
        if out.decision.allowed && !out.deduplicated {
            let key = t
                .redis
                .counter_key(user.as_str(), kind.name(), q.period_start.as_millis());
            *lock(&t.debts).entry(key).or_default() += amount.get();
        }
        Ok(out)
    }

    /// Replaces this instance's view of `u`'s counts with the shared one,
    /// so every instance answers the same `used` and `remaining`: the Redis
    /// counter holds every instance's admitted units, including those not
    /// yet in the database, where this instance's memory holds only its
    /// own. `persisted` (the database) and `pending` (this instance's
    /// units not yet flushed, which diagnose explains) stay as they are, so
    /// `used` may exceed their sum by other instances' pending units. In
    /// lease mode the
    /// counter also holds units leased to instances and not yet spent (at
    /// most `lease_size` per instance and counter), so `used` may read that
    /// much high, the same everywhere. A counter Redis does not hold (none
    /// admitted this period since Redis started), or Redis unreachable,
    /// leaves the local view.
    pub(crate) async fn shared_view(&self, t: &SharedTier, u: &mut UserUsage) {
        if !t.is_up() {
            return;
        }
        for k in &mut u.kinds {
            let key =
                t.redis
                    .counter_key(u.user.as_str(), k.kind.name(), u.period_start.as_millis());
            t.ops(1);
            let shared = match t.redis.counter(&key).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    t.mark_down(&e);
                    return;
                }
            };
            // Never below this instance's own view: units it admitted
            // while Redis was unreachable reach the counter only when the
            // debts are paid.
            k.used = shared.max(k.used);
            k.remaining = k.limit.map(|l| l.saturating_sub(k.used));
        }
    }

    /// The consume question in a shared mode, without counting.
    pub(crate) async fn check_shared(
        &self,
        t: &SharedTier,
        user: &UserId,
        kind: &Kind,
        amount: Units,
    ) -> Result<Decision, Error> {
        let q = self.quota(user, kind).await?;
        let Some(limit) = q.limit else {
            return Ok(decision_at(&q, true, q.used));
        };
        let mut used = q.used;
        if t.is_up() {
            t.ops(1);
            let key = t
                .redis
                .counter_key(user.as_str(), kind.name(), q.period_start.as_millis());
            match t.redis.counter(&key).await {
                Ok(Some(u)) => used = u,
                Ok(None) => {}
                Err(e) => t.mark_down(&e),
            }
        }
        Ok(decision_at(&q, used + amount.get() <= limit, used))
    }

    /// A refund in a shared mode: Redis decides whether the request id is
    /// refundable (once, across instances); this instance then counts the
    /// negative delta, which adds up in the database with the original
    /// consume wherever that was counted.
    pub(crate) async fn refund_shared(
        &self,
        t: &SharedTier,
        request_id: &str,
        user: Option<&UserId>,
    ) -> Result<Refund, Error> {
        if !t.is_up() {
            if t.config.fallback == RedisFallback::Deny {
                return Err(Error::Unavailable(
                    "the shared quota store (redis) is unreachable and USAGE_SYNC_REDIS_FALLBACK=deny"
                        .into(),
                ));
            }
            return self.refund_local(request_id, user).await;
        }
        let owner = match self.inner.ledger.request_owner(request_id, self.now()) {
            Some(u) => u,
            None => {
                t.ops(1);
                match t.redis.owner(request_id).await {
                    Ok(Some(u)) => UserId::parse(&u).map_err(Error::Core)?,
                    Ok(None) => return Err(CoreError::UnknownRequest.into()),
                    Err(e) => {
                        return Err(t.unavailable(&e, "the shared quota store is unreachable"));
                    }
                }
            }
        };
        if let Some(u) = user
            && *u != owner
        {
            return Err(CoreError::RequestIdConflict(format!(
                "request_id '{request_id}' was not consumed by user_id '{u}'; nothing was refunded"
            ))
            .into());
        }
        // Load the owner before Redis marks the refund done: once it is,
        // the negative delta must be counted here, and a store outage
        // while loading the user afterwards would leave the refund done in
        // Redis but never in the database.
        if !self.ledger().is_resident(owner.as_str()) {
            self.make_resident(&owner).await?;
        }
        t.ops(2);
        let reply = match t.redis.refund(owner.as_str(), request_id).await {
            Ok(r) => r,
            Err(e) => return Err(t.unavailable(&e, "the shared quota store is unreachable")),
        };
        match reply {
            // Admitted locally while degraded: only this instance knows it.
            RefundReply::Unknown => self.refund_local(request_id, user).await,
            RefundReply::AlreadyRefunded => Err(CoreError::AlreadyRefunded.into()),
            RefundReply::Refunded {
                kind,
                period_start_ms,
                units,
            } => {
                let kind = *self.kinds().get(&kind)?;
                let period = Timestamp::from_millis(period_start_ms);
                let r = self
                    .resident(&owner, |l, now| {
                        l.refund_remote(request_id, &owner, &kind, period, units, now)
                    })
                    .await?;
                self.durable(r.lsn).await?;
                let usage = self.usage(&owner).await?;
                Ok(Refund {
                    user: owner,
                    kind,
                    refunded: units,
                    usage,
                })
            }
        }
    }
}
