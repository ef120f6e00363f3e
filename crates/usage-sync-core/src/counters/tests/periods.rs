//! Periods never reset: the plan flip at the limit, the clock stepped
//! back over a boundary, and random sequences of both.

use super::*;

// ---- periods never reset -------------------------------------------------
//
// A counter's period can be entered again: a plan switched away and back,
// or the wall clock stepped back over a day or month boundary. The ledger
// must then decide from that period's persisted units, never from a fresh
// zero. `Db` stands in for the store's usage table in these tests: the
// ledger is the thing under test, and flushes move deltas into it exactly
// as a store transaction would.

/// The store's usage rows: (kind, period start) → used.
#[derive(Default)]
struct Db(HashMap<(usize, Timestamp), i64>);

impl Db {
    fn rows(&self) -> Vec<PersistedRow> {
        self.0
            .iter()
            .map(|(&(kind, period_start), &used)| PersistedRow {
                kind,
                period_start,
                used,
            })
            .collect()
    }

    /// Applies a batch as one transaction and tells the ledger.
    fn apply(&mut self, l: &Ledger, b: &FlushBatch, now: Timestamp) {
        let after: Vec<i64> = b
            .deltas
            .iter()
            .map(|d| {
                let v = self.0.entry((d.kind.index(), d.period_start)).or_default();
                *v += d.delta;
                *v
            })
            .collect();
        l.complete(b, &after, now);
    }

    fn flush(&mut self, l: &Ledger, now: Timestamp) {
        let (batches, _) = l.take_all(10_000, Trigger::Guarantee);
        for b in &batches {
            self.apply(l, b, now);
        }
    }
}

/// Plans `monthly` and `daily`, both allowing 10 `fast` per period.
fn flip_ledger() -> Ledger {
    let kinds = Kinds::new(&["fast"]).unwrap();
    let plan =
        |name, period| Plan::from_named_limits(name, period, &kinds, [("fast", Some(10))]).unwrap();
    let plans = Plans::new(
        "monthly",
        vec![
            plan("monthly", PeriodKind::Monthly),
            plan("daily", PeriodKind::Daily),
        ],
    )
    .unwrap();
    Ledger::new(kinds, plans, LedgerConfig::default())
}

fn on_plan(name: &str) -> UserProfile {
    UserProfile {
        plan: Some(name.to_owned()),
        ..Default::default()
    }
}

/// A consume as the engine makes it: on `NotResident`, load from `db`
/// and ask again.
fn consume_loading(
    l: &Ledger,
    db: &Db,
    profile: &UserProfile,
    n: u64,
    rid: Option<&RequestId>,
    now: Timestamp,
) -> Result<ConsumeOutcome, CoreError> {
    let fast = *l.kinds().get("fast").unwrap();
    for _ in 0..2 {
        match l.consume("u", &fast, Units::parse(n as i128).unwrap(), rid, now) {
            Err(CoreError::NotResident) => {
                let epoch = l.load_epoch("u");
                let _ = l.warm(
                    &UserId::parse("u").unwrap(),
                    profile.clone(),
                    &db.rows(),
                    epoch,
                    now,
                );
            }
            other => return other,
        }
    }
    Err(CoreError::NotResident)
}

#[test]
fn a_plan_switched_back_at_the_limit_keeps_the_period_count() {
    let l = flip_ledger();
    let mut db = Db::default();
    let monthly = on_plan("monthly");
    warm(&l, "u", monthly.clone(), &[], T0);
    for _ in 0..10 {
        assert!(
            consume_loading(&l, &db, &monthly, 1, None, T0)
                .unwrap()
                .decision
                .allowed
        );
    }
    // Flushed or still pending: either way the month must stay spent.
    for flush_first in [true, false] {
        if flush_first {
            db.flush(&l, T0);
        }
        l.set_profile("u", on_plan("daily"), T0);
        l.set_profile("u", monthly.clone(), T0);
        let d = consume_loading(&l, &db, &monthly, 1, None, T0)
            .unwrap()
            .decision;
        assert_eq!(
            (d.allowed, d.used),
            (false, 10),
            "flushed first: {flush_first}"
        );
        assert_eq!(l.usage("u", T0).unwrap().kinds[0].used, 10);
    }
    db.flush(&l, T0);
    assert_eq!(db.0.values().sum::<i64>(), 10);
}

#[test]
fn the_clock_stepped_back_over_a_day_or_month_boundary_keeps_the_count() {
    for (plan, before, after) in [
        ("daily", "2026-11-18T23:59:00Z", "2026-11-19T00:01:00Z"),
        ("monthly", "2026-11-30T23:59:00Z", "2026-12-01T00:01:00Z"),
    ] {
        let l = flip_ledger();
        let mut db = Db::default();
        let p = on_plan(plan);
        let (before, after) = (
            Timestamp::parse_rfc3339(before).unwrap(),
            Timestamp::parse_rfc3339(after).unwrap(),
        );
        warm(&l, "u", p.clone(), &[], before);
        assert!(
            consume_loading(&l, &db, &p, 10, None, before)
                .unwrap()
                .decision
                .allowed
        );
        db.flush(&l, before);
        // Over the boundary: a new period, 10 more.
        let d = consume_loading(&l, &db, &p, 10, None, after)
            .unwrap()
            .decision;
        assert_eq!((d.allowed, d.used), (true, 10), "{plan}");
        // The clock steps back: the earlier period is spent, whether or
        // not the later one was flushed.
        let d = consume_loading(&l, &db, &p, 1, None, before)
            .unwrap()
            .decision;
        assert_eq!((d.allowed, d.used), (false, 10), "{plan}");
        db.flush(&l, before);
        let d = consume_loading(&l, &db, &p, 1, None, after)
            .unwrap()
            .decision;
        assert_eq!((d.allowed, d.used), (false, 10), "{plan}");
        db.flush(&l, after);
        assert_eq!(db.0.values().copied().collect::<Vec<_>>(), vec![10, 10]);
    }
}

#[derive(Clone, Debug)]
enum FlipOp {
    Consume(u64),
    Refund,
    Flush,
    /// Take a batch and hold it (a flush in flight), or land a held one.
    Hold,
    Land,
    Plan(bool),
    Hours(i64),
    Evict,
}

fn flip_op() -> impl Strategy<Value = FlipOp> {
    prop_oneof![
        6 => (1u64..4).prop_map(FlipOp::Consume),
        2 => Just(FlipOp::Refund),
        2 => Just(FlipOp::Flush),
        1 => Just(FlipOp::Hold),
        1 => Just(FlipOp::Land),
        2 => any::<bool>().prop_map(FlipOp::Plan),
        2 => (-40i64..40).prop_map(FlipOp::Hours),
        1 => Just(FlipOp::Evict),
    ]
}

proptest! {
    /// Any sequence of plan switches, clock moves (both ways), consumes,
    /// refunds, flushes (some held in flight) and evictions: the units
    /// admitted into any (kind, period) never pass its limit, and the
    /// store ends with exactly what was admitted minus what was refunded.
    #[test]
    fn the_store_never_exceeds_a_limit_whatever_the_plan_and_clock_do(
        ops in proptest::collection::vec(flip_op(), 1..120)
    ) {
        let l = flip_ledger();
        let mut db = Db::default();
        let mut now = Timestamp::parse_rfc3339("2026-11-30T20:00:00Z").unwrap();
        let mut profile = on_plan("monthly");
        warm(&l, "u", profile.clone(), &[], now);
        // What was admitted per period, net of refunds.
        let mut admitted: HashMap<Timestamp, i64> = HashMap::new();
        let mut rids: Vec<(RequestId, Timestamp, u64, bool)> = Vec::new();
        let mut held: Vec<FlushBatch> = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                FlipOp::Consume(n) => {
                    let rid = RequestId::parse(&format!("r{i}")).unwrap();
                    match consume_loading(&l, &db, &profile, n, Some(&rid), now) {
                        Ok(o) => {
                            if o.decision.allowed {
                                let p = o.decision.period_start;
                                *admitted.entry(p).or_default() += n.cast_signed();
                                prop_assert!(admitted[&p] <= 10, "period {p:?} admitted {}", admitted[&p]);
                                rids.push((rid, p, n, false));
                            }
                        }
                        // A counter still in a held batch cannot be read
                        // yet: the engine retries later, nothing counted.
                        Err(CoreError::NotResident) => {}
                        Err(e) => prop_assert!(false, "consume failed: {e}"),
                    }
                }
                FlipOp::Refund => {
                    if let Some(r) = rids.iter_mut().rev().find(|r| !r.3) {
                        let out = match l.refund(r.0.as_str(), None, now) {
                            Err(CoreError::NotResident) => {
                                let epoch = l.load_epoch("u");
                                let _ = l.warm(&UserId::parse("u").unwrap(), profile.clone(), &db.rows(), epoch, now);
                                l.refund(r.0.as_str(), None, now)
                            }
                            other => other,
                        };
                        if let Ok(o) = out {
                            prop_assert_eq!(o.refunded, r.2);
                            *admitted.get_mut(&r.1).unwrap() -= r.2.cast_signed();
                            r.3 = true;
                        }
                    }
                }
                FlipOp::Flush => db.flush(&l, now),
                FlipOp::Hold => held.extend(l.take_all(10_000, Trigger::Guarantee).0),
                FlipOp::Land => {
                    for b in held.drain(..) {
                        db.apply(&l, &b, now);
                    }
                }
                FlipOp::Plan(daily) => {
                    profile = on_plan(if daily { "daily" } else { "monthly" });
                    l.set_profile("u", profile.clone(), now);
                }
                FlipOp::Hours(h) => now = now.saturating_add_ms(h * 3_600_000),
                FlipOp::Evict => {
                    l.evict_idle(0, now);
                }
            }
            for (&(_, p), &used) in &db.0 {
                prop_assert!(used <= 10, "the store holds {used} for period {p:?}");
            }
            // The totals kept per shard always equal a walk over the users,
            // and so do the counters a checkpoint copies.
            prop_assert_eq!(l.totals(), l.totals_walked());
            prop_assert_eq!(listed_units(&l), walked_units(&l));
        }
        for b in held.drain(..) {
            db.apply(&l, &b, now);
        }
        db.flush(&l, now);
        for (p, units) in admitted {
            prop_assert_eq!(db.0.get(&(0, p)).copied().unwrap_or(0), units);
        }
    }
}
