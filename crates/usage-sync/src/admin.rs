//! Admin views over all users: the paginated user list with totals, cache
//! eviction, and the simulation used to try the sync engine by hand.
//!
//! These walk every user (in memory and in the store) and are meant for
//! operators, never for the request path or the triggers.

use std::collections::{BTreeMap, HashMap};

use usage_sync_core::{Kind, PersistedRow, Units, UserId, UserUsage};

use crate::engine::Engine;
use crate::error::Error;

/// What the user list is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    UserId,
    /// Units used in the current period, all kinds together.
    Used,
    /// Units used of one kind.
    UsedOf(Kind),
    /// Units not yet in the store.
    Pending,
    LastActivity,
}

/// A page request for [`Engine::list_users`].
#[derive(Clone, Debug)]
pub struct UserListQuery {
    /// 1-based.
    pub page: usize,
    pub limit: usize,
    /// Substring of the user id.
    pub search: Option<String>,
    pub plan: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
}

/// Totals of one kind over all users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindTotal {
    pub kind: Kind,
    pub used: u64,
    pub pending: i64,
}

/// One page of users and the totals over all of them.
#[derive(Clone, Debug)]
pub struct UserList {
    pub users: Vec<UserUsage>,
    /// Users matching the search and plan filters.
    pub matched: usize,
    /// All users known (in memory or in the store).
    pub total_users: usize,
    pub per_kind: Vec<KindTotal>,
    pub per_plan: BTreeMap<String, usize>,
}

/// Result of [`Engine::evict_idle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictReport {
    pub flushed_units: i64,
    pub evicted: usize,
    /// Idle users kept because units were counted again before they could
    /// be evicted (they are evicted on a later call or heartbeat).
    pub kept: usize,
    pub resident_after: usize,
}

fn total_used(u: &UserUsage) -> u64 {
    u.kinds.iter().map(|k| k.used).sum()
}

fn total_pending(u: &UserUsage) -> i64 {
    u.kinds.iter().map(|k| k.pending).sum()
}

impl Engine {
    /// Every user known to the store or held in memory, with usage
    /// including pending units, filtered, sorted and paginated; plus
    /// totals over all users.
    pub async fn list_users(&self, q: &UserListQuery) -> Result<UserList, Error> {
        let store = self.store();
        let (profiles, rows) = tokio::try_join!(store.all_profiles(), store.all_usage())?;
        let now = self.now();
        let kinds = self.kinds();
        let mut by_user: HashMap<
            String,
            (Option<usage_sync_store::StoredUser>, Vec<PersistedRow>),
        > = HashMap::new();
        for (id, p) in profiles {
            by_user.entry(id).or_default().0 = Some(p);
        }
        for r in rows {
            if let Ok(k) = kinds.get(&r.kind) {
                by_user.entry(r.user_id).or_default().1.push(PersistedRow {
                    kind: k.index(),
                    period_start: r.period_start,
                    used: r.used,
                });
            }
        }
        for id in self.ledger().resident_ids() {
            by_user.entry(id.to_string()).or_default();
        }
        let mut all = Vec::with_capacity(by_user.len());
        for (id, (profile, rows)) in by_user {
            let Ok(user) = UserId::parse(&id) else {
                continue;
            };
            // Memory is the truth for a resident user (it includes pending
            // units); otherwise the store's rows are.
            let usage = match self.ledger().usage(user.as_str(), now) {
                Some(u) => u,
                None => {
                    let profile = profile
                        .map(|p| crate::engine::profile_from_stored(kinds, p))
                        .unwrap_or_default();
                    self.ledger().usage_from_store(&user, &profile, &rows, now)
                }
            };
            all.push(usage);
        }

        let mut per_kind: Vec<KindTotal> = kinds
            .iter()
            .map(|k| KindTotal {
                kind: *k,
                used: 0,
                pending: 0,
            })
            .collect();
        let mut per_plan = BTreeMap::new();
        for u in &all {
            for k in &u.kinds {
                let t = &mut per_kind[k.kind.index()];
                t.used += k.used;
                t.pending += k.pending;
            }
            *per_plan.entry(u.plan.clone()).or_insert(0) += 1;
        }
        let total_users = all.len();

        all.retain(|u| {
            q.search
                .as_deref()
                .is_none_or(|s| u.user.as_str().contains(s))
                && q.plan.as_deref().is_none_or(|p| u.plan == p)
        });
        all.sort_by(|a, b| {
            let ord = match q.sort {
                SortKey::UserId => std::cmp::Ordering::Equal,
                SortKey::Used => total_used(a).cmp(&total_used(b)),
                SortKey::UsedOf(k) => a.kinds[k.index()].used.cmp(&b.kinds[k.index()].used),
                SortKey::Pending => total_pending(a).cmp(&total_pending(b)),
                SortKey::LastActivity => a.last_activity_at.cmp(&b.last_activity_at),
            };
            // Ties (and the user_id sort) by id, so pages are stable.
            let ord = ord.then_with(|| a.user.as_str().cmp(b.user.as_str()));
            if q.descending { ord.reverse() } else { ord }
        });
        let matched = all.len();
        let limit = q.limit.max(1);
        let mut users: Vec<UserUsage> = all
            .into_iter()
            .skip(q.page.max(1).saturating_sub(1).saturating_mul(limit))
            .take(limit)
            .collect();
        // The page shows the shared count, as the usage route does (one
        // Redis read per user and kind of the page); sorting, filtering
        // and the totals use this instance's view.
        if let Some(t) = self.shared() {
            for u in &mut users {
                self.shared_view(t, u).await;
            }
        }
        Ok(UserList {
            users,
            matched,
            total_users,
            per_kind,
            per_plan,
        })
    }

    /// Flushes everything pending, then evicts users idle for at least
    /// `idle_ms` whose counters are clean. A user with units not yet in the
    /// store is never evicted, so nothing pending can be dropped.
    pub async fn evict_idle(&self, idle_ms: i64) -> Result<EvictReport, Error> {
        let flushed = self.sync_all().await?;
        let (evicted, kept) = self.ledger().evict_idle(idle_ms, self.now());
        Ok(EvictReport {
            flushed_units: flushed.flushed_units,
            evicted,
            kept,
            resident_after: self.ledger().resident_users(),
        })
    }

    /// Consumes `count` single units for `user`, as requests would, so an
    /// operator can watch the triggers react. Returns (allowed, denied).
    pub async fn simulate(
        &self,
        user: &UserId,
        kind: &Kind,
        count: u32,
    ) -> Result<(u32, u32), Error> {
        let (mut allowed, mut denied) = (0, 0);
        for _ in 0..count {
            if self
                .consume(user, kind, Units::ONE, None)
                .await?
                .decision
                .allowed
            {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
        Ok((allowed, denied))
    }
}
