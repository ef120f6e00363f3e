//! Several engines over one PostgreSQL database: their deltas add up, and
//! concurrent flushes of the same counters neither deadlock nor lose or
//! double anything.

use std::sync::Arc;
use std::time::Duration;

use usage_sync::{Engine, SyncConfig, SystemClock};
use usage_sync_core::{PeriodKind, Units, UserId, default_catalogue};
use usage_sync_store::PostgresStore;
use usage_sync_store::testing::TempDatabase;

async fn instance(url: &str) -> Engine {
    let (kinds, plans) = default_catalogue();
    let config = SyncConfig {
        force_sync_threshold: 2,
        check_interval: Duration::from_millis(20),
        max_sync_interval: Duration::from_millis(200),
        threshold_linger: Duration::from_millis(1),
        ..SyncConfig::default()
    };
    let store = Arc::new(PostgresStore::connect(url, 4).unwrap());
    let e = Engine::open(store, kinds, plans, config, Arc::new(SystemClock))
        .await
        .unwrap();
    e.start();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_flush_the_same_counters_exactly_and_without_deadlock() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let first = instance(&db.url).await;
    first
        .set_plan(
            "free",
            PeriodKind::Monthly,
            &[("premium".into(), None), ("fast".into(), None)],
        )
        .await
        .unwrap();
    let engines = vec![first, instance(&db.url).await, instance(&db.url).await];
    let mut tasks = Vec::new();
    for (i, e) in engines.iter().enumerate() {
        for t in 0..2 {
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed((i * 10 + t) as u64);
                let mut sent = 0i64;
                for _ in 0..400 {
                    // The same 10 users on every instance: maximal overlap.
                    let user = UserId::parse(&format!("u{}", rng.u8(0..10))).unwrap();
                    let kind = e.kind(if rng.bool() { "fast" } else { "premium" }).unwrap();
                    let n = rng.u64(1..4);
                    let out = e
                        .consume(&user, &kind, Units::parse(n as i128).unwrap(), None)
                        .await
                        .unwrap();
                    assert!(out.decision.allowed);
                    sent += n.cast_signed();
                    // Pace the load so it spans many flush rounds.
                    if rng.u8(0..8) == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                sent
            }));
        }
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    for e in &engines {
        e.sync_all().await.unwrap();
    }
    let store = PostgresStore::connect(&db.url, 2).unwrap();
    let total = usage_sync_store::testing::total_used(&store).await;
    assert_eq!(
        total,
        sent,
        "every unit exactly once across three writers; {:?}",
        engines.iter().map(|e| e.stats()).collect::<Vec<_>>()
    );
    for e in &engines {
        let s = e.stats();
        assert_eq!(
            s.failures - s.transient_failures,
            0,
            "no permanent failure: {:?}",
            s.last_error
        );
        // Many when idle (tens per instance); a loaded machine coalesces
        // threshold crossings into fewer, larger rounds, by design.
        assert!(
            s.flushes >= 3,
            "the test must exercise concurrent flushes: {} flushes",
            s.flushes
        );
        e.shutdown(Duration::from_secs(5)).await;
    }
}
