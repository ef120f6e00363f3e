//! Leases held by this instance: units of a user's quota taken from Redis
//! in one step and spent from memory.
//!
//! A lease is per (user, kind, period). Spending is a map lookup under one
//! of a few sharded mutexes; taking and giving back go to Redis. Every
//! unit granted is already counted in the Redis counter, so admission from
//! a lease can never make the instances together exceed the limit; the
//! price of a crash is the unspent part of its leases (at most the lease
//! size per counter), which stays counted until the period ends.

use std::collections::HashMap;
use std::sync::Mutex;
use usage_sync_core::Locked;

use tokio::time::Instant;
use usage_sync_core::{Timestamp, UserId};

const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Lease {
    period_start: Timestamp,
    left: u64,
    /// The Redis counter after the last grant: `redis_used - left` is how
    /// much of the limit is spent as far as this instance knows.
    redis_used: u64,
    expires_at: Instant,
}

/// Units to give back to one Redis counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Return {
    pub user: UserId,
    pub kind: u16,
    pub period_start: Timestamp,
    pub units: u64,
}

/// A user's leases, one per kind that has one (usually a single entry).
type UserLeases = Vec<(u16, Lease)>;

/// The unspent part of a lease, to give back.
fn unspent(user: &UserId, kind: u16, l: &Lease) -> Option<Return> {
    (l.left > 0).then(|| Return {
        user: user.clone(),
        kind,
        period_start: l.period_start,
        units: l.left,
    })
}

pub(crate) struct Leases {
    /// Keyed by user and looked up by `&str`, so spending from a lease
    /// clones nothing.
    shards: Vec<Mutex<HashMap<UserId, UserLeases>>>,
}

impl Leases {
    pub(crate) fn new() -> Self {
        Leases {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, user: &str) -> std::sync::MutexGuard<'_, HashMap<UserId, UserLeases>> {
        let h = foldhash::fast::FixedState::with_seed(7);
        let i = usize::try_from(std::hash::BuildHasher::hash_one(&h, user) % SHARDS as u64)
            .unwrap_or(0);
        self.shards[i].locked()
    }

    /// Spends `amount` from a live lease of this period. Returns the units
    /// of the limit spent so far as far as this instance knows, or `None`
    /// if a new lease is needed.
    pub(crate) fn spend(
        &self,
        user: &UserId,
        kind: u16,
        period_start: Timestamp,
        amount: u64,
        now: Instant,
    ) -> Option<u64> {
        let mut shard = self.shard(user.as_str());
        let (_, lease) = shard
            .get_mut(user.as_str())?
            .iter_mut()
            .find(|(k, _)| *k == kind)?;
        if lease.period_start != period_start || lease.expires_at <= now || lease.left < amount {
            return None;
        }
        lease.left -= amount;
        Some(lease.redis_used.saturating_sub(lease.left))
    }

    /// Adds a fresh grant (minus what the triggering consume spends). A
    /// lease of another period is handed back for return.
    pub(crate) fn add(
        &self,
        user: &UserId,
        kind: u16,
        period_start: Timestamp,
        left: u64,
        redis_used: u64,
        expires_at: Instant,
    ) -> Option<Return> {
        let fresh = Lease {
            period_start,
            left,
            redis_used,
            expires_at,
        };
        let mut shard = self.shard(user.as_str());
        let leases = shard.entry(user.clone()).or_default();
        let Some((_, l)) = leases.iter_mut().find(|(k, _)| *k == kind) else {
            leases.push((kind, fresh));
            return None;
        };
        if l.period_start == period_start {
            l.left += left;
            l.redis_used = l.redis_used.max(redis_used);
            l.expires_at = expires_at;
            return None;
        }
        let stale = unspent(user, kind, l);
        *l = fresh;
        stale
    }

    /// Removes the leases that expired by `now` (all of them with `None`)
    /// and returns their unspent units. Only leases taken in the last TTL
    /// are held, so this walks active users, never all users.
    pub(crate) fn expire(&self, now: Option<Instant>) -> Vec<Return> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.locked();
            shard.retain(|user, leases| {
                leases.retain(|(kind, l)| {
                    if now.is_some_and(|now| l.expires_at > now) {
                        return true;
                    }
                    out.extend(unspent(user, *kind, l));
                    false
                });
                !leases.is_empty()
            });
        }
        out
    }

    /// Drops one user's leases (an admin change), returning their units.
    pub(crate) fn drop_user(&self, user: &UserId) -> Vec<Return> {
        self.shard(user.as_str())
            .remove(user.as_str())
            .into_iter()
            .flatten()
            .filter_map(|(kind, l)| unspent(user, kind, &l))
            .collect()
    }

    /// (leases held, units unspent in them), for status and diagnostics.
    pub(crate) fn held(&self) -> (usize, u64) {
        self.shards.iter().fold((0, 0), |(n, u), s| {
            let s = s.locked();
            s.values()
                .flatten()
                .fold((n, u), |(n, u), (_, l)| (n + 1, u + l.left))
        })
    }

    /// This user's lease of one kind: (period start, unspent, expires in).
    pub(crate) fn of(&self, user: &UserId, kind: u16) -> Option<(Timestamp, u64, Instant)> {
        self.shard(user.as_str())
            .get(user.as_str())?
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, l)| (l.period_start, l.left, l.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn spend_add_and_expire() {
        let l = Leases::new();
        let u = UserId::parse("u").unwrap();
        let p = Timestamp::from_millis(1000);
        let now = Instant::now();
        assert_eq!(l.spend(&u, 0, p, 1, now), None);
        assert_eq!(l.add(&u, 0, p, 4, 10, now + Duration::from_secs(2)), None);
        assert_eq!(l.spend(&u, 0, p, 3, now), Some(9));
        assert_eq!(l.spend(&u, 0, p, 2, now), None, "only 1 unit left");
        assert_eq!(l.held(), (1, 1));
        assert!(l.expire(Some(now)).is_empty());
        let back = l.expire(Some(now + Duration::from_secs(3)));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].units, 1);
        assert_eq!(l.held(), (0, 0));
        // A lease of an older period is handed back when a new one arrives.
        l.add(&u, 0, p, 2, 5, now + Duration::from_secs(2));
        let stale = l.add(
            &u,
            0,
            Timestamp::from_millis(2000),
            1,
            1,
            now + Duration::from_secs(2),
        );
        assert_eq!(stale.map(|r| (r.period_start, r.units)), Some((p, 2)));
        // An admin change drops all of a user's leases, returning what is
        // unspent; other users keep theirs.
        let v = UserId::parse("v").unwrap();
        l.add(&u, 1, p, 3, 3, now + Duration::from_secs(2));
        l.add(&v, 0, p, 4, 4, now + Duration::from_secs(2));
        let mut back: Vec<_> = l
            .drop_user(&u)
            .into_iter()
            .map(|r| (r.kind, r.units))
            .collect();
        back.sort();
        assert_eq!(back, [(0, 1), (1, 3)]);
        assert_eq!(l.held(), (1, 4));
        assert_eq!(l.of(&v, 0).map(|(_, left, _)| left), Some(4));
    }
}
