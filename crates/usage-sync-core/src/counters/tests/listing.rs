//! The per-shard list of users holding units that checkpoints copy.

use super::*;

/// A user evicted and loaded again, over and over between checkpoints,
/// does not grow its shard's list of users holding units without bound,
/// and the list still gives exactly what a walk gives.
#[test]
fn the_list_of_users_holding_units_stays_bounded_through_evictions() {
    let l = ledger_with(LedgerConfig {
        shards: 1,
        ..LedgerConfig::default()
    });
    for round in 0..1_000 {
        let now = T0.saturating_add_ms(round);
        warm(&l, "u", UserProfile::default(), &[], now);
        warm(
            &l,
            &format!("other-{round}"),
            UserProfile::default(),
            &[],
            now,
        );
        consume(&l, "u", "fast", 1, now);
        let (batches, _) = l.take_all(100, Trigger::Guarantee);
        for b in &batches {
            l.complete(b, &vec![1; b.deltas.len()], now);
        }
        l.evict_idle(-1, now);
    }
    let listed = lock(&l.shards[0].0).with_units.len();
    assert!(
        listed <= 130,
        "{listed} ids listed for 0 users holding units"
    );
    let now = T0.saturating_add_ms(5_000);
    warm(&l, "u", UserProfile::default(), &[], now);
    consume(&l, "u", "fast", 2, now);
    assert_eq!(listed_units(&l), walked_units(&l));
}

/// Records the cut of every consume it is given.
#[derive(Default)]
struct Cuts(Mutex<Vec<(String, Cut)>>);

impl Journal for Cuts {
    fn append(&self, record: Record<'_>) -> Lsn {
        let mut v = lock(&self.0);
        if let Record::Consume { user, cut, .. } = record {
            v.push((user.as_str().to_owned(), cut));
        }
        Lsn::try_from(v.len()).unwrap()
    }
    fn head(&self) -> Lsn {
        Lsn::try_from(lock(&self.0).len()).unwrap()
    }
}

/// A checkpoint copies a shard in runs, releasing its lock between them.
/// A change made between two runs is on exactly one side of the copy: to
/// a user not yet copied it is in the copy and its record carries the
/// older cut (replay skips it); to a user already copied, or one that
/// held no units when the shard was taken, it is not in the copy and its
/// record carries the new cut (replay applies it).
#[test]
fn a_change_between_two_runs_of_a_checkpoint_is_on_one_side_of_it() {
    let l = ledger_with(LedgerConfig {
        shards: 1,
        threshold: u64::MAX,
        ..LedgerConfig::default()
    });
    let cuts = Arc::new(Cuts::default());
    // 200 users holding one unit each, listed in this order; one user
    // holding none.
    let users: Vec<String> = (0..200).map(|i| format!("u{i:03}")).collect();
    for u in &users {
        warm(&l, u, UserProfile::default(), &[], T0);
        consume(&l, u, "fast", 1, T0);
    }
    warm(&l, "idle", UserProfile::default(), &[], T0);
    l.attach_journal(cuts.clone());
    let (first, last) = (users[0].as_str(), users[199].as_str());
    let segment = Cut(7);
    let mut copied: HashMap<String, i64> = HashMap::new();
    let mut runs = 0;
    l.cut_shards(segment, &mut |units| {
        runs += 1;
        for u in units {
            *copied.entry(u.user.as_str().to_owned()).or_default() += u.units;
        }
        if runs == 1 {
            // Between the first run and the second: `first` is copied,
            // `last` is not, `idle` had nothing.
            for u in [first, last, "idle"] {
                consume(&l, u, "fast", 1, T0);
            }
        }
    });
    assert!(runs >= 3, "200 users are copied in several runs: {runs}");
    let cut_of = |u: &str| {
        let v = lock(&cuts.0);
        v.iter().rev().find(|(x, _)| x == u).expect("logged").1
    };
    // Not yet copied: in the copy (2 units), the record before the cut.
    assert_eq!(copied[last], 2);
    assert!(cut_of(last) < segment, "{:?}", cut_of(last));
    // Copied already: not in the copy (1 unit), the record after it.
    assert_eq!(copied[first], 1);
    assert_eq!(cut_of(first), segment);
    // No units when the shard was taken: not copied, the record after.
    assert_eq!(copied.get("idle"), None);
    assert_eq!(cut_of("idle"), segment);
    assert_eq!(copied.len(), 200);
}
