use std::sync::Arc;
use std::thread;

use proptest::prelude::*;

use super::*;
use crate::quota::{PeriodKind, default_catalogue};

const T0: Timestamp = Timestamp(1_795_000_000_000); // 2026-11-18

fn ledger(threshold: u64) -> Ledger {
    let (kinds, plans) = default_catalogue();
    Ledger::new(
        kinds,
        plans,
        LedgerConfig {
            shards: 8,
            threshold,
            ..LedgerConfig::default()
        },
    )
}

/// A ledger over the default catalogue with `config`.
fn ledger_with(config: LedgerConfig) -> Ledger {
    let (kinds, plans) = default_catalogue();
    Ledger::new(kinds, plans, config)
}

fn warm(l: &Ledger, user: &str, profile: UserProfile, rows: &[PersistedRow], now: Timestamp) {
    let id = UserId::parse(user).unwrap();
    let epoch = l.load_epoch(user);
    l.warm(&id, profile, rows, epoch, now).unwrap();
}

fn kind(l: &Ledger, name: &str) -> Kind {
    *l.kinds().get(name).unwrap()
}

fn consume(l: &Ledger, user: &str, k: &str, n: u64, now: Timestamp) -> ConsumeOutcome {
    l.consume(
        user,
        &kind(l, k),
        Units::parse(n as i128).unwrap(),
        None,
        now,
    )
    .unwrap()
}

fn pending(l: &Ledger, user: &str, k: &str) -> i64 {
    let u = l.usage(user, T0).unwrap();
    u.kinds[kind(l, k).index()].pending
}

#[test]
fn per_kind_accounting() {
    let l = ledger(100);
    warm(&l, "u", UserProfile::default(), &[], T0);
    for k in ["fast", "fast", "premium", "fast"] {
        assert!(consume(&l, "u", k, 1, T0).decision.allowed);
    }
    assert_eq!(pending(&l, "u", "fast"), 3);
    assert_eq!(pending(&l, "u", "premium"), 1);
}

#[test]
fn not_resident_until_warmed_and_warm_never_overwrites() {
    let l = ledger(100);
    let fast = kind(&l, "fast");
    assert_eq!(
        l.consume("u", &fast, Units::ONE, None, T0),
        Err(CoreError::NotResident)
    );
    let rows = [PersistedRow {
        kind: fast.index(),
        period_start: T0.start_of_month(),
        used: 7,
    }];
    warm(&l, "u", UserProfile::default(), &rows, T0);
    consume(&l, "u", "fast", 2, T0);
    // A second warm-up (a concurrent cold load) with older data is a no-op.
    warm(&l, "u", UserProfile::default(), &[], T0);
    let u = l.usage("u", T0).unwrap();
    assert_eq!(u.kinds[fast.index()].persisted, 7);
    assert_eq!(u.kinds[fast.index()].pending, 2);
    assert_eq!(u.kinds[fast.index()].used, 9);
}

#[test]
fn warm_refuses_after_an_eviction_in_between() {
    let l = ledger(100);
    let epoch = l.load_epoch("u");
    warm(&l, "u", UserProfile::default(), &[], T0);
    // Evict it (idle and clean).
    let hb = l.heartbeat(T0.saturating_add_ms(10), 1, 1_000, 100);
    assert_eq!(hb.evicted, 1);
    let id = UserId::parse("u").unwrap();
    assert_eq!(l.warm(&id, UserProfile::default(), &[], epoch, T0), Err(()));
}

#[test]
fn limit_is_enforced_exactly_and_denials_count_nothing() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    let mut allowed = 0;
    for _ in 0..60 {
        if consume(&l, "u", "fast", 1, T0).decision.allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 50);
    let d = consume(&l, "u", "fast", 1, T0).decision;
    assert_eq!(
        (d.allowed, d.used, d.limit, d.remaining),
        (false, 50, Some(50), Some(0))
    );
    // A big amount that does not fit is denied whole.
    let l = ledger(1000);
    warm(&l, "v", UserProfile::default(), &[], T0);
    consume(&l, "v", "premium", 8, T0);
    assert!(!consume(&l, "v", "premium", 3, T0).decision.allowed);
    assert!(consume(&l, "v", "premium", 2, T0).decision.allowed);
}

#[test]
fn exactly_k_admitted_under_contention() {
    // Unlimited users first to reach limit - k, then many threads race.
    let l = Arc::new(ledger(1_000_000));
    warm(&l, "u", UserProfile::default(), &[], T0);
    for _ in 0..(50 - 7) {
        consume(&l, "u", "fast", 1, T0);
    }
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let l = l.clone();
            thread::spawn(move || {
                (0..100)
                    .filter(|_| consume(&l, "u", "fast", 1, T0).decision.allowed)
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 7);
    assert_eq!(l.usage("u", T0).unwrap().kinds[1].used, 50);
}

#[test]
fn flush_moves_pending_and_keeps_units_counted_in_flight() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    consume(&l, "u", "fast", 4, T0);
    let (batches, users) = l.take_all(500, Trigger::Guarantee);
    assert_eq!((batches.len(), users), (1, 1));
    assert_eq!(batches[0].units(), 4);
    // Consumed while the batch is in flight.
    consume(&l, "u", "fast", 2, T0);
    let u = l.usage("u", T0).unwrap();
    assert_eq!(
        (u.kinds[1].pending, u.kinds[1].in_flight, u.kinds[1].used),
        (6, 4, 6)
    );
    // The slot is flushing: nothing more can be taken for it.
    assert!(l.take_all(500, Trigger::Guarantee).0.is_empty());
    l.complete(&batches[0], &[4], T0);
    let u = l.usage("u", T0).unwrap();
    assert_eq!(
        (u.kinds[1].persisted, u.kinds[1].pending, u.kinds[1].used),
        (4, 2, 6)
    );
    let (b2, _) = l.take_all(500, Trigger::Guarantee);
    assert_eq!(b2[0].units(), 2);
    assert_ne!(b2[0].id, batches[0].id);
}

#[test]
fn failed_batch_keeps_units_in_flight_until_completed() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    consume(&l, "u", "premium", 5, T0);
    let (b, _) = l.take_all(500, Trigger::Check);
    // The store failed: the engine keeps `b` and does not call complete.
    // Usage still counts the units; the limit still applies.
    assert_eq!(l.usage("u", T0).unwrap().kinds[0].used, 5);
    assert!(!consume(&l, "u", "premium", 6, T0).decision.allowed);
    // Retry succeeds (same batch value).
    l.complete(&b[0], &[5], T0);
    assert_eq!(l.totals().in_flight, 0);
    assert_eq!(l.usage("u", T0).unwrap().kinds[0].persisted, 5);
}

#[test]
fn threshold_queues_once_and_take_threshold_drains() {
    let l = ledger(3);
    warm(&l, "u", UserProfile::default(), &[], T0);
    assert!(!consume(&l, "u", "fast", 1, T0).threshold_reached);
    assert!(!consume(&l, "u", "fast", 1, T0).threshold_reached);
    assert!(consume(&l, "u", "fast", 1, T0).threshold_reached);
    assert!(!consume(&l, "u", "fast", 1, T0).threshold_reached);
    let b = l.take_threshold(500);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].units(), 4);
    assert_eq!(b[0].trigger, Trigger::Threshold);
    assert!(l.take_threshold(500).is_empty());
}

#[test]
fn oldest_first_and_bounded_check() {
    let l = ledger(1000);
    for i in 0..10 {
        let now = T0.saturating_add_ms(i);
        warm(&l, &format!("u{i}"), UserProfile::default(), &[], now);
        consume(&l, &format!("u{i}"), "fast", 1, now);
    }
    let (b, users) = l.take_oldest(3, 500, Trigger::Check);
    assert_eq!(users, 3);
    let mut names: Vec<_> = b[0].deltas.iter().map(|d| d.user.to_string()).collect();
    names.sort();
    assert_eq!(names, vec!["u0", "u1", "u2"]);
    let (_, users) = l.take_oldest(100, 500, Trigger::Check);
    assert_eq!(users, 7);
    assert_eq!(l.take_oldest(100, 500, Trigger::Check).1, 0);
}

#[test]
fn batches_are_cut_at_max_rows_and_sorted() {
    let l = ledger(1000);
    for i in 0..7 {
        warm(&l, &format!("u{i}"), UserProfile::default(), &[], T0);
        consume(&l, &format!("u{i}"), "fast", 1, T0);
        consume(&l, &format!("u{i}"), "premium", 1, T0);
    }
    let (b, users) = l.take_all(5, Trigger::Guarantee);
    assert_eq!(users, 7);
    assert_eq!(
        b.iter().map(|b| b.rows()).collect::<Vec<_>>(),
        vec![5, 5, 4]
    );
    for batch in &b {
        let keys: Vec<_> = batch
            .deltas
            .iter()
            .map(|d| (d.user.clone(), d.kind.index()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}

#[test]
fn period_rollover_flushes_old_units_into_the_old_period() {
    let l = ledger(1000);
    let nov = Timestamp::parse_rfc3339("2026-11-30T23:59:00Z").unwrap();
    let dec = Timestamp::parse_rfc3339("2026-12-01T00:01:00Z").unwrap();
    warm(&l, "u", UserProfile::default(), &[], nov);
    for _ in 0..50 {
        consume(&l, "u", "fast", 1, nov);
    }
    assert!(!consume(&l, "u", "fast", 1, nov).decision.allowed);
    // New month: its persisted value is read first (the engine loads on
    // NotResident), then it starts from the store's zero.
    let fast = kind(&l, "fast");
    assert_eq!(
        l.consume("u", &fast, Units::ONE, None, dec),
        Err(CoreError::NotResident)
    );
    warm(&l, "u", UserProfile::default(), &[], dec);
    let d = consume(&l, "u", "fast", 1, dec).decision;
    assert!(d.allowed);
    assert_eq!((d.used, d.period_start), (1, dec.start_of_month()));
    let (b, _) = l.take_all(500, Trigger::Guarantee);
    let mut got: Vec<_> = b[0]
        .deltas
        .iter()
        .map(|d| (d.period_start, d.delta))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(nov.start_of_month(), 50), (dec.start_of_month(), 1)]
    );
    l.complete(&b[0], &[50, 1], dec);
    assert_eq!(l.totals().pending + l.totals().in_flight, 0);
}

#[test]
fn reset_starts_new_period_and_keeps_old_pending() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    for _ in 0..10 {
        consume(&l, "u", "premium", 1, T0);
    }
    let later = T0.saturating_add_ms(1000);
    l.set_profile(
        "u",
        UserProfile {
            reset_at: Some(later),
            ..Default::default()
        },
        later,
    );
    warm(&l, "u", UserProfile::default(), &[], later);
    let d = consume(&l, "u", "premium", 1, later).decision;
    assert_eq!((d.allowed, d.used, d.period_start), (true, 1, later));
    let (b, _) = l.take_all(500, Trigger::Guarantee);
    let total: i64 = b.iter().map(|b| b.units()).sum();
    assert_eq!(total, 11);
}

#[test]
fn refund_after_flush_is_a_negative_delta() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    let fast = kind(&l, "fast");
    let rid = RequestId::parse("r").unwrap();
    l.consume("u", &fast, Units::parse(5).unwrap(), Some(&rid), T0)
        .unwrap();
    let (b, _) = l.take_all(500, Trigger::Guarantee);
    l.complete(&b[0], &[5], T0);
    l.refund("r", None, T0).unwrap();
    let u = l.usage("u", T0).unwrap();
    assert_eq!(
        (u.kinds[1].persisted, u.kinds[1].pending, u.kinds[1].used),
        (5, -5, 0)
    );
    let (b, _) = l.take_all(500, Trigger::Guarantee);
    assert_eq!(b[0].units(), -5);
}

#[test]
fn heartbeat_flushes_idle_dirty_users_and_evicts_idle_clean_ones() {
    let l = ledger(1000);
    warm(&l, "idle-dirty", UserProfile::default(), &[], T0);
    consume(&l, "idle-dirty", "fast", 1, T0);
    warm(&l, "idle-clean", UserProfile::default(), &[], T0);
    warm(&l, "active", UserProfile::default(), &[], T0);
    let timeout = 60_000;
    let t1 = T0.saturating_add_ms(50_000);
    consume(&l, "active", "fast", 1, t1);
    let t2 = T0.saturating_add_ms(61_000);
    let hb = l.heartbeat(t2, timeout, 1_000_000, 500);
    assert_eq!(hb.evicted, 1);
    assert_eq!(hb.session_end_users, 1);
    let batch = hb.session_end.into_iter().next().unwrap();
    assert_eq!(batch.deltas[0].user.as_str(), "idle-dirty");
    assert_eq!(batch.trigger, Trigger::SessionEnd);
    assert!(!l.is_resident("idle-clean"));
    assert!(l.is_resident("active") && l.is_resident("idle-dirty"));
    // Nothing due: nothing happens.
    let hb = l.heartbeat(t2, timeout, 1_000_000, 500);
    assert_eq!((hb.evicted, hb.session_end_users), (0, 0));
    // Once flushed, the idle user is evicted on a later pass.
    l.complete(&batch, &[1], t2);
    let t3 = t2.saturating_add_ms(timeout + 1);
    let hb = l.heartbeat(t3, timeout, 1_000_000, 500);
    // "active" went idle too, but still holds a pending unit: session end.
    assert_eq!((hb.evicted, hb.session_end_users), (1, 1));
    assert_eq!(hb.session_end[0].deltas[0].user.as_str(), "active");
    assert_eq!(l.resident_users(), 1);
}

#[test]
fn over_capacity_evicts_clean_users_in_lru_order() {
    let l = ledger(1000);
    for i in 0..100 {
        warm(
            &l,
            &format!("u{i}"),
            UserProfile::default(),
            &[],
            T0.saturating_add_ms(i),
        );
    }
    consume(&l, "u0", "fast", 1, T0); // dirty: must survive
    let hb = l.heartbeat(T0.saturating_add_ms(200), 3_600_000, 16, 500);
    assert!(l.resident_users() <= 24, "resident {}", l.resident_users());
    assert!(hb.evicted >= 76);
    assert!(l.is_resident("u0"));
}

#[test]
fn plan_change_applies_to_next_consume_without_losing_pending() {
    let l = ledger(1000);
    warm(&l, "u", UserProfile::default(), &[], T0);
    for _ in 0..50 {
        consume(&l, "u", "fast", 1, T0);
    }
    assert!(!consume(&l, "u", "fast", 1, T0).decision.allowed);
    let kinds = l.kinds().clone();
    l.set_plan(
        Plan::from_named_limits(
            "free",
            PeriodKind::Monthly,
            &kinds,
            [("premium", Some(10)), ("fast", Some(60))],
        )
        .unwrap(),
    );
    let d = consume(&l, "u", "fast", 1, T0).decision;
    assert_eq!((d.allowed, d.used, d.limit), (true, 51, Some(60)));
    assert_eq!(pending(&l, "u", "fast"), 51);
}

proptest! {
    /// Whatever the interleaving of consumes, refunds, takes, successes and
    /// failures, every allowed unit is accounted exactly once:
    /// admitted - refunded == persisted + pending + in flight, and after
    /// completing everything the store (the sum of completed deltas) holds
    /// exactly that.
    #[test]
    fn units_are_conserved(ops in proptest::collection::vec((0u8..6, 0usize..3, 1u64..4), 1..200)) {
        let l = ledger(4);
        let mut store: std::collections::HashMap<(String, usize, Timestamp), i64> = Default::default();
        let mut outstanding: Vec<FlushBatch> = Vec::new();
        let mut admitted = 0i64;
        let mut refunded = 0i64;
        let mut next_rid = 0;
        let mut rids: Vec<String> = Vec::new();
        for u in 0..3 {
            warm(&l, &format!("u{u}"), UserProfile { plan: Some("premium".into()), ..Default::default() }, &[], T0);
        }
        for (op, u, n) in ops {
            let user = format!("u{u}");
            match op {
                0 | 1 => {
                    next_rid += 1;
                    let rid = RequestId::parse(&format!("r{next_rid}")).unwrap();
                    let k = kind(&l, if op == 0 { "fast" } else { "premium" });
                    let o = l.consume(&user, &k, Units::parse(n as i128).unwrap(), Some(&rid), T0).unwrap();
                    if o.decision.allowed { admitted += n.cast_signed(); rids.push(rid.to_string()); }
                }
                2 => {
                    if let Some(r) = rids.pop() {
                        refunded += l.refund(&r, None, T0).unwrap().refunded.cast_signed();
                    }
                }
                3 => outstanding.extend(l.take_oldest(2, 3, Trigger::Check).0),
                4 => outstanding.extend(l.take_threshold(3)),
                _ => {
                    // Complete the oldest outstanding batch ("store" applies it).
                    if !outstanding.is_empty() {
                        let b = outstanding.remove(0);
                        let after: Vec<i64> = b.deltas.iter().map(|d| {
                            let e = store.entry((d.user.to_string(), d.kind.index(), d.period_start)).or_default();
                            *e += d.delta;
                            *e
                        }).collect();
                        l.complete(&b, &after, T0);
                    }
                }
            }
            let t = l.totals();
            prop_assert_eq!(&t, &l.totals_walked());
            prop_assert_eq!(listed_units(&l), walked_units(&l));
            let stored: i64 = store.values().sum();
            prop_assert_eq!(admitted - refunded, stored + t.pending + t.in_flight);
        }
        // Drain everything.
        loop {
            outstanding.extend(l.take_all(3, Trigger::Guarantee).0);
            if outstanding.is_empty() { break; }
            for b in std::mem::take(&mut outstanding) {
                let after: Vec<i64> = b.deltas.iter().map(|d| {
                    let e = store.entry((d.user.to_string(), d.kind.index(), d.period_start)).or_default();
                    *e += d.delta;
                    *e
                }).collect();
                l.complete(&b, &after, T0);
            }
        }
        let stored: i64 = store.values().sum();
        prop_assert_eq!(admitted - refunded, stored);
        prop_assert_eq!(l.totals().pending + l.totals().in_flight, 0);
    }
}

#[test]
fn near_limit_counters_are_due_at_once_when_enabled() {
    let l = ledger_with(LedgerConfig {
        shards: 8,
        threshold: 1000,
        near_limit_percent: Some(90),
        ..LedgerConfig::default()
    });
    // free plan: fast = 50. 45 is 90 %.
    let rows = [PersistedRow {
        kind: kind(&l, "fast").index(),
        period_start: T0.start_of_month(),
        used: 40,
    }];
    warm(&l, "u", UserProfile::default(), &rows, T0);
    for _ in 0..4 {
        assert!(!consume(&l, "u", "fast", 1, T0).threshold_reached);
    }
    assert!(
        consume(&l, "u", "fast", 1, T0).threshold_reached,
        "45 of 50"
    );
    assert_eq!(
        l.take_threshold(100).iter().map(|b| b.units()).sum::<i64>(),
        5
    );
    // Without the setting, the same consumes wait for the threshold.
    let plain = ledger(1000);
    warm(&plain, "u", UserProfile::default(), &rows, T0);
    for _ in 0..5 {
        assert!(!consume(&plain, "u", "fast", 1, T0).threshold_reached);
    }
}

#[test]
fn evict_idle_never_drops_pending_units() {
    let l = ledger(1000);
    for u in ["clean", "dirty", "recent"] {
        warm(&l, u, UserProfile::default(), &[], T0);
    }
    consume(&l, "dirty", "fast", 2, T0);
    let later = T0.saturating_add_ms(60_000);
    consume(&l, "recent", "fast", 1, later);
    // "dirty" goes in flight (taken, not completed); "recent" is flushed.
    let in_flight = l.take_user("dirty", 100);
    assert_eq!(in_flight.len(), 1);
    for b in l.take_user("recent", 100) {
        l.complete(&b, &vec![1; b.deltas.len()], later);
    }
    // "dirty" still holds units not in the store: it must stay.
    assert_eq!(l.evict_idle(30_000, later), (1, 1));
    assert!(!l.is_resident("clean"));
    assert!(l.is_resident("dirty"));
    assert!(l.is_resident("recent"), "active within the idle window");
    assert_eq!(
        l.usage("dirty", later).unwrap().kinds[kind(&l, "fast").index()].pending,
        2
    );
    assert_eq!(l.resident_ids().len(), 2);
}

/// The shard table hashes an id once for the shard and the bucket, and
/// rehashes entries by the id inside them when it grows: every user must
/// stay findable by both lookup paths through growth, removal and retain,
/// for short (inline) and long (heap) ids alike.
#[test]
fn user_map_finds_every_user_through_growth_remove_and_retain() {
    let l = ledger(u64::MAX / 4);
    let ids: Vec<String> = (0..5_000)
        .map(|i| {
            if i % 2 == 0 {
                format!("u{i}")
            } else {
                format!("a-long-user-id-kept-on-the-heap-{i:08}")
            }
        })
        .collect();
    for id in &ids {
        warm(&l, id, UserProfile::default(), &[], T0);
    }
    assert_eq!(l.resident_users(), 5_000);
    for id in &ids {
        // `consume` looks up by the precomputed hash, `profile` by the map's own.
        assert_eq!(consume(&l, id, "fast", 1, T0).decision.used, 1);
        assert!(l.profile(id).is_some());
        assert!(l.is_resident(id));
    }
    assert!(!l.is_resident("u1"), "odd ids are long");
    assert_eq!(
        l.consume("nobody", &kind(&l, "fast"), Units::ONE, None, T0)
            .err(),
        Some(CoreError::NotResident)
    );

    let mut resident = l.resident_ids();
    resident.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        resident.iter().map(UserId::as_str).collect::<Vec<_>>(),
        expected
    );

    // Remove through the map directly, then retain over what is left.
    for id in ids.iter().take(100) {
        let mut shard = l.shard(id);
        assert!(shard.users.remove(id).is_some());
        assert!(shard.users.remove(id).is_none());
    }
    for s in l.shards.iter() {
        lock(&s.0)
            .users
            .retain(|e| !e.id.as_str().starts_with("a-long"));
    }
    let left: usize = l.shards.iter().map(|s| lock(&s.0).users.len()).sum();
    assert_eq!(left, 2_500 - 50);
    for (i, id) in ids.iter().enumerate() {
        let want = i >= 100 && i % 2 == 0;
        assert_eq!(l.shard(id).users.get(id).is_some(), want, "{id}");
    }
}

type UnitsKey = (String, usize, Timestamp, i64);

fn sorted(v: Vec<crate::UnitsOutside>) -> Vec<UnitsKey> {
    let mut v: Vec<UnitsKey> = v
        .into_iter()
        .map(|u| {
            (
                u.user.as_str().to_owned(),
                u.kind.index(),
                u.period_start,
                u.units,
            )
        })
        .collect();
    v.sort();
    v
}

/// What a checkpoint copies, from the shards' lists of users holding
/// units.
fn listed_units(l: &Ledger) -> Vec<UnitsKey> {
    // Each checkpoint is of a newer segment than the last (a user copied
    // at a segment's checkpoint is not copied again at the same one).
    static SEGMENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let segment = SEGMENT.fetch_add(1, Ordering::Relaxed);
    let mut all = Vec::new();
    l.cut_shards(crate::Cut(segment), &mut |units| all.extend(units));
    sorted(all)
}

fn walked_units(l: &Ledger) -> Vec<UnitsKey> {
    sorted(l.units_outside_walked())
}

mod listing;
mod periods;
mod request_ids;

#[test]
fn shards_grow_with_resident_users_between_64_and_1024() {
    assert_eq!(LedgerConfig::shards_for(0), 64);
    assert_eq!(LedgerConfig::shards_for(10_000), 64);
    assert_eq!(LedgerConfig::shards_for(100_000), 128);
    assert_eq!(LedgerConfig::shards_for(1_000_000), 1024);
    assert_eq!(LedgerConfig::shards_for(usize::MAX), 1024);
    // Request-id tables stay at 64 whatever the user shards (each keeps
    // its entries in 4 096-entry chunks, so a thousand tables would hold a
    // thousand part-filled chunks): a bound of 1 is 1 id in each of 64.
    let l = ledger_with(LedgerConfig {
        shards: 1024,
        max_request_ids: 1,
        ..LedgerConfig::default()
    });
    warm(&l, "u", UserProfile::default(), &[], T0);
    let fast = kind(&l, "fast");
    let mut remembered = 0;
    for i in 0..10_000 {
        let rid = RequestId::parse(&format!("r{i}")).unwrap();
        match l.consume("u", &fast, Units::ONE, Some(&rid), T0) {
            Ok(_) => remembered += 1,
            Err(e) => assert_eq!(e, CoreError::RequestIdsFull),
        }
    }
    assert_eq!(remembered, 64);
    assert_eq!(l.dedup_entries(), 64);
}

/// `consume_covered` counts with the decision its cover makes, checks the
/// local limit when told to, and counts nothing when nothing covers it.
#[test]
fn a_covered_consume_counts_as_its_cover_decides() {
    let l = ledger(100);
    let fast = kind(&l, "fast");
    let two = Units::parse(2).unwrap();
    let mut seen = Vec::new();
    // Not resident: the cover is never asked.
    let e = l.consume_covered("u", &fast, two, T0, &mut |q| {
        seen.push(*q);
        Cover::Local
    });
    assert_eq!(e.unwrap_err(), CoreError::NotResident);
    assert!(seen.is_empty());
    warm(&l, "u", UserProfile::default(), &[], T0);
    let elsewhere = Decision {
        allowed: true,
        used: 40,
        limit: Some(50),
        remaining: Some(10),
        period_start: T0,
    };
    let out = l
        .consume_covered("u", &fast, two, T0, &mut |q| {
            seen.push(*q);
            Cover::Decided(elsewhere.clone())
        })
        .unwrap();
    assert_eq!(out.decision, elsewhere);
    assert_eq!(pending(&l, "u", "fast"), 2);
    assert_eq!((seen.len(), seen[0].used, seen[0].limit), (1, 0, Some(50)));
    let out = l
        .consume_covered("u", &fast, two, T0, &mut |_| Cover::No)
        .unwrap();
    assert!(!out.decision.allowed);
    assert_eq!(pending(&l, "u", "fast"), 2, "nothing counted");
    let out = l
        .consume_covered("u", &fast, two, T0, &mut |_| Cover::Local)
        .unwrap();
    assert_eq!((out.decision.allowed, out.decision.used), (true, 4));
    let big = Units::parse(47).unwrap();
    let out = l
        .consume_covered("u", &fast, big, T0, &mut |_| Cover::Local)
        .unwrap();
    assert!(!out.decision.allowed, "the local limit of 50 decides");
    assert_eq!(pending(&l, "u", "fast"), 4);
}
