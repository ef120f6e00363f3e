//! Plans, limits and periods: the rules that turn "user U, kind K, now" into
//! "limit L for the period starting at S".

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::CoreError;
use crate::ids::{Kind, Kinds, truncate_for_message};
use crate::time::Timestamp;

/// How long a usage period lasts. Periods are calendar-aligned in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PeriodKind {
    #[default]
    Monthly,
    Daily,
    /// One period that never rolls over (only an admin reset starts a new one).
    None,
}

impl PeriodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Monthly => "monthly",
            PeriodKind::Daily => "daily",
            PeriodKind::None => "none",
        }
    }

    /// The calendar period containing `now`: `[start, end)`.
    pub fn calendar_bounds(self, now: Timestamp) -> (Timestamp, Timestamp) {
        match self {
            PeriodKind::Monthly => (now.start_of_month(), now.start_of_next_month()),
            PeriodKind::Daily => {
                let s = now.start_of_day();
                (s, s.saturating_add_ms(crate::time::MS_PER_DAY))
            }
            PeriodKind::None => (Timestamp::EPOCH, Timestamp::FAR_FUTURE),
        }
    }

    /// The user's effective period: the calendar period, started later if an
    /// admin reset happened inside it. A reset therefore "starts a new
    /// period now" that ends at the next calendar boundary.
    pub fn bounds(self, now: Timestamp, reset_at: Option<Timestamp>) -> (Timestamp, Timestamp) {
        let (start, end) = self.calendar_bounds(now);
        match reset_at {
            Some(r) if r > start && r <= now => (r, end),
            _ => (start, end),
        }
    }
}

impl FromStr for PeriodKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "monthly" => Ok(PeriodKind::Monthly),
            "daily" => Ok(PeriodKind::Daily),
            "none" => Ok(PeriodKind::None),
            other => Err(CoreError::InvalidPeriod(truncate_for_message(other))),
        }
    }
}

/// A limit per period: `None` means unlimited (counted, never denied).
pub type Limit = Option<u64>;

/// The largest limit: counters are `i64` in every store, so a limit above
/// `i64::MAX` could never be reached and would only wrap where it is
/// stored. (`u64::MAX` is also the ledger's "unlimited" sentinel.)
pub const MAX_LIMIT: u64 = i64::MAX.unsigned_abs();

/// Refuses a limit no counter can represent (see [`MAX_LIMIT`]).
pub fn validate_limit(kind: &str, limit: Limit) -> Result<Limit, CoreError> {
    match limit {
        Some(l) if l > MAX_LIMIT => Err(CoreError::InvalidLimit(truncate_for_message(kind))),
        other => Ok(other),
    }
}

/// A named plan: a limit per kind and a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub period: PeriodKind,
    /// Indexed by [`Kind::index`]. A kind a plan does not mention gets limit
    /// 0 (denied): for a product that sells quotas, forgetting a kind must
    /// not make it free. Write `null` to make it unlimited.
    pub limits: Vec<Limit>,
}

impl Plan {
    /// Builds a plan from `(kind name, limit)` pairs, rejecting unknown kinds.
    pub fn from_named_limits<'a, I>(
        name: &str,
        period: PeriodKind,
        kinds: &Kinds,
        limits: I,
    ) -> Result<Plan, CoreError>
    where
        I: IntoIterator<Item = (&'a str, Limit)>,
    {
        let mut out = vec![Some(0); kinds.len()];
        for (k, l) in limits {
            out[kinds.get(k)?.index()] = validate_limit(k, l)?;
        }
        Ok(Plan {
            name: name.to_owned(),
            period,
            limits: out,
        })
    }
}

/// Per-user settings kept in the store: plan, per-kind overrides and the time
/// of the last admin reset.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UserProfile {
    /// `None` means the default plan, so changing the default moves every
    /// user who never had a plan assigned.
    pub plan: Option<String>,
    /// `(kind index, limit)`: overrides the plan's limit for that kind.
    pub overrides: Vec<(usize, Limit)>,
    pub reset_at: Option<Timestamp>,
}

/// The plan catalogue. Immutable once built: an admin change builds a new
/// catalogue and swaps it in, and users re-resolve lazily by comparing the
/// catalogue version with the one they resolved against.
#[derive(Clone, Debug)]
pub struct Plans {
    pub(crate) version: u64,
    default_plan: String,
    plans: HashMap<String, Arc<Plan>>,
}

/// What a user's limits resolve to right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub plan: Arc<Plan>,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub limits: Vec<Limit>,
}

impl Plans {
    pub fn new(default_plan: &str, plans: Vec<Plan>) -> Result<Self, CoreError> {
        let plans: HashMap<_, _> = plans
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        if !plans.contains_key(default_plan) {
            return Err(CoreError::UnknownPlan(default_plan.to_owned()));
        }
        Ok(Plans {
            version: 1,
            default_plan: default_plan.to_owned(),
            plans,
        })
    }

    pub fn default_plan(&self) -> &str {
        &self.default_plan
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.plans.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.plans.values()
    }

    /// A copy with `plan` added or replaced and a higher version.
    pub fn with_plan(&self, plan: Plan) -> Plans {
        let mut next = self.clone();
        next.version += 1;
        next.plans.insert(plan.name.clone(), Arc::new(plan));
        next
    }

    /// Resolves a user's plan, limits and current period. A profile naming
    /// a plan that no longer exists falls back to the default plan rather
    /// than failing every request of that user.
    pub fn resolve(&self, profile: &UserProfile, now: Timestamp) -> Resolved {
        let plan = profile
            .plan
            .as_deref()
            .and_then(|p| self.plans.get(p))
            .or_else(|| self.plans.get(&self.default_plan))
            .expect("default plan exists by construction")
            .clone();
        let mut limits = plan.limits.clone();
        for &(k, l) in &profile.overrides {
            if k < limits.len() {
                limits[k] = l;
            }
        }
        let (period_start, period_end) = plan.period.bounds(now, profile.reset_at);
        Resolved {
            plan,
            period_start,
            period_end,
            limits,
        }
    }
}

/// The default catalogue of the product this replaces: kinds `premium` and
/// `fast`; `free` 10 / 50 and `premium` 100 / 1000 per month.
pub fn default_catalogue() -> (Kinds, Plans) {
    let kinds = Kinds::new(&["premium", "fast"]).expect("valid kinds");
    let free = Plan::from_named_limits(
        "free",
        PeriodKind::Monthly,
        &kinds,
        [("premium", Some(10)), ("fast", Some(50))],
    )
    .expect("valid plan");
    let premium = Plan::from_named_limits(
        "premium",
        PeriodKind::Monthly,
        &kinds,
        [("premium", Some(100)), ("fast", Some(1000))],
    )
    .expect("valid plan");
    let plans = Plans::new("free", vec![free, premium]).expect("default plan exists");
    (kinds, plans)
}

/// The default kinds with one plan, "open", that limits nothing: every
/// consume is admitted, so benchmarks measure the counting path.
pub fn open_catalogue() -> (Kinds, Plans) {
    let (kinds, _) = default_catalogue();
    let open = Plan::from_named_limits(
        "open",
        PeriodKind::Monthly,
        &kinds,
        [("premium", None), ("fast", None)],
    )
    .expect("valid plan");
    let plans = Plans::new("open", vec![open]).expect("default plan exists");
    (kinds, plans)
}

/// Convenience for callers that hold a `Kind`.
pub fn limit_of(resolved: &Resolved, kind: &Kind) -> Limit {
    resolved.limits[kind.index()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn reset_starts_a_period_that_ends_at_the_calendar_boundary() {
        let now = ts("2026-11-20T10:00:00Z");
        let reset = ts("2026-11-15T00:00:00Z");
        let (s, e) = PeriodKind::Monthly.bounds(now, Some(reset));
        assert_eq!(s, reset);
        assert_eq!(e, ts("2026-12-01T00:00:00Z"));
        // A reset in an earlier month no longer matters.
        let (s, _) = PeriodKind::Monthly.bounds(ts("2026-12-02T00:00:00Z"), Some(reset));
        assert_eq!(s, ts("2026-12-01T00:00:00Z"));
        // `none` periods only change on reset.
        let (s, e) = PeriodKind::None.bounds(now, Some(reset));
        assert_eq!((s, e), (reset, Timestamp::FAR_FUTURE));
    }

    #[test]
    fn overrides_and_missing_plans_resolve() {
        let (kinds, plans) = default_catalogue();
        let fast = kinds.get("fast").unwrap().index();
        let p = UserProfile {
            plan: Some("premium".into()),
            overrides: vec![(fast, Some(5000))],
            reset_at: None,
        };
        let r = plans.resolve(&p, ts("2026-11-20T10:00:00Z"));
        assert_eq!(r.limits, vec![Some(100), Some(5000)]);
        let gone = UserProfile {
            plan: Some("deleted".into()),
            ..Default::default()
        };
        assert_eq!(plans.resolve(&gone, Timestamp(0)).plan.name, "free");
    }

    #[test]
    fn unmentioned_kind_gets_zero() {
        let (kinds, _) = default_catalogue();
        let p = Plan::from_named_limits("x", PeriodKind::Daily, &kinds, [("fast", None)]).unwrap();
        assert_eq!(p.limits, vec![Some(0), None]);
        assert!(Plan::from_named_limits("x", PeriodKind::Daily, &kinds, [("slow", None)]).is_err());
    }
}
