//! The per-shard list of users holding units that checkpoints copy.

use super::*;

/// A user evicted and loaded again, over and over between checkpoints,
/// does not grow its shard's list of users holding units without bound,
/// and the list still gives exactly what a walk gives.
#[test]
fn the_list_of_users_holding_units_stays_bounded_through_evictions() {
    let (kinds, plans) = default_catalogue();
    let l = Ledger::new(
        kinds,
        plans,
        LedgerConfig {
            shards: 1,
            ..LedgerConfig::default()
        },
    );
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
