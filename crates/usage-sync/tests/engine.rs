//! Engine integration tests: the library API over a real SQLite store.
//! Time-based triggers run under paused tokio time with a `TokioClock`, so
//! they are exact and take milliseconds.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use usage_sync::{Engine, SyncConfig, TokioClock};
use usage_sync_core::{
    Delta, FlushBatch, FlushId, PeriodKind, RequestId, Timestamp, Trigger, Units, UserId,
    default_catalogue,
};
use usage_sync_store::{FaultyStore, SqliteStore, Store};

type Faulty = Arc<FaultyStore<SqliteStore>>;

struct Harness {
    engine: Engine,
    store: Faulty,
    _dir: TempDir,
}

/// A config where no timer fires during a test unless the test says so.
fn quiet() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_secs(3600),
        check_interval: Duration::from_secs(3600),
        max_sync_interval: Duration::from_secs(7200),
        session_timeout: Duration::from_secs(36_000),
        force_sync_threshold: 1_000_000,
        ..SyncConfig::default()
    }
}

/// Opens an engine over a `FaultyStore` wrapping the SQLite file in `dir`
/// (not started).
async fn try_open_engine(
    dir: &std::path::Path,
    config: SyncConfig,
    clock: usage_sync::SharedClock,
) -> Result<(Engine, Faulty), usage_sync::Error> {
    let store = FaultyStore::new(SqliteStore::open(&dir.join("usage-sync.db")).unwrap());
    let (kinds, plans) = default_catalogue();
    let engine = Engine::open(
        Arc::new(store.clone()) as Arc<dyn Store>,
        kinds,
        plans,
        config,
        clock,
    )
    .await?;
    Ok((engine, store))
}

/// Opens and starts an engine over the SQLite file in `dir`.
async fn open_engine(
    dir: &std::path::Path,
    config: SyncConfig,
    clock: usage_sync::SharedClock,
) -> (Engine, Faulty) {
    let (engine, store) = try_open_engine(dir, config, clock).await.unwrap();
    engine.start();
    (engine, store)
}

async fn harness_at(config: SyncConfig, clock: TokioClock) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open_engine(dir.path(), config, Arc::new(clock)).await;
    Harness {
        engine,
        store,
        _dir: dir,
    }
}

async fn harness(config: SyncConfig) -> Harness {
    harness_at(config, TokioClock::new()).await
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

impl Harness {
    async fn consume(&self, user: &str, kind: &str, n: u64) -> bool {
        let k = self.engine.kind(kind).unwrap();
        self.engine
            .consume(&uid(user), &k, Units::parse(n as i128).unwrap(), None)
            .await
            .unwrap()
            .decision
            .allowed
    }

    /// Sum of the store's counters for (user, kind) over all periods.
    async fn db(&self, user: &str, kind: &str) -> i64 {
        usage_sync_store::testing::used_by(&self.store, user, kind).await
    }

    async fn unlimited(&self, user: &str) {
        self.engine
            .set_plan(
                "unlimited",
                PeriodKind::Monthly,
                &[("premium".into(), None), ("fast".into(), None)],
            )
            .await
            .unwrap();
        self.engine
            .set_user(&uid(user), Some("unlimited"), None)
            .await
            .unwrap();
    }

    /// Polls (in paused time, each step advances the clock by 10 ms) until
    /// the store holds `want` for (user, kind), for at most `max`.
    async fn wait_db(&self, user: &str, kind: &str, want: i64, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            if self.db(user, kind).await == want {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn concurrent_consumes(n: usize) {
    let h = Arc::new(harness(quiet()).await);
    h.unlimited("u").await;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.consume("u", "fast", 1).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    let usage = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!(usage.kinds[1].used, n as u64);
    assert_eq!(h.db("u", "fast").await, 0, "nothing flushed yet");
    let report = h.engine.sync_all().await.unwrap();
    assert_eq!(report.flushed_units, i64::try_from(n).unwrap());
    assert_eq!(h.db("u", "fast").await, i64::try_from(n).unwrap());
}

/// A stampede of misses (a restart under load): 300 users with persisted
/// usage, 4 concurrent consumes each, all cold. The batched loads must warm
/// every user exactly once from its persisted value, and a store that is
/// down makes the cold consumes fail cleanly, then succeed once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_of_cold_users_loads_each_from_the_store_once() {
    let h = Arc::new(harness(quiet()).await);
    let fast = h.engine.kind("fast").unwrap();
    let users: Vec<String> = (0..300).map(|i| format!("cold-{i:03}")).collect();
    let period = h.engine.usage(&uid("probe")).await.unwrap().period_start;
    h.store
        .apply_flush(Arc::new(FlushBatch {
            id: FlushId(77),
            trigger: Trigger::Manual,
            deltas: users
                .iter()
                .map(|u| Delta {
                    user: uid(u),
                    kind: fast,
                    period_start: period,
                    delta: 7,
                })
                .collect(),
        }))
        .await
        .unwrap();
    // Down: every cold consume fails with the store's error, none counts.
    h.store.set_down(true);
    let k = h.engine.kind("fast").unwrap();
    let r = h
        .engine
        .consume(&uid("cold-000"), &k, Units::ONE, None)
        .await;
    assert!(matches!(r, Err(usage_sync::Error::Store(_))), "{r:?}");
    h.store.set_down(false);
    let calls = || h.engine.request_metrics().store_load.snapshot().count;
    let calls_before = calls();
    let tasks: Vec<_> = (0..4)
        .flat_map(|_| users.clone())
        .map(|u| {
            let h = h.clone();
            tokio::spawn(async move { h.consume(&u, "fast", 1).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    // 1 200 cold consumes of 300 users: concurrent misses on one user share
    // its load, so at most one successful store call per user (batching
    // makes it far fewer; how many depends on timing).
    let loads = calls() - calls_before;
    assert!((1..=300).contains(&loads), "{loads} store loads");
    for u in &users {
        let usage = h.engine.usage(&uid(u)).await.unwrap();
        assert_eq!(usage.kinds[fast.index()].persisted, 7, "{u}");
        assert_eq!(usage.kinds[fast.index()].used, 11, "{u}");
    }
    h.engine.sync_all().await.unwrap();
    for u in &users {
        assert_eq!(h.db(u, "fast").await, 11, "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_consumes_count_exactly_eight() {
    concurrent_consumes(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_consumes_count_exactly_thousand() {
    concurrent_consumes(1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_k_admitted_at_limit_minus_k() {
    let h = Arc::new(harness(quiet()).await);
    // free plan: fast limit 50. Bring the user to 50 - 7, half of it flushed.
    for _ in 0..20 {
        assert!(h.consume("u", "fast", 1).await);
    }
    h.engine.sync_all().await.unwrap();
    for _ in 0..23 {
        assert!(h.consume("u", "fast", 1).await);
    }
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.consume("u", "fast", 1).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap() as u32;
    }
    assert_eq!(admitted, 7);
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 50);
}

#[tokio::test(start_paused = true)]
async fn per_kind_accounting() {
    let h = harness(quiet()).await;
    for k in ["fast", "fast", "premium", "fast"] {
        assert!(h.consume("u", k, 1).await);
    }
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!((u.kinds[1].kind.name(), u.kinds[1].pending), ("fast", 3));
    assert_eq!((u.kinds[0].kind.name(), u.kinds[0].pending), ("premium", 1));
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 3);
    assert_eq!(h.db("u", "premium").await, 1);
}

#[tokio::test(start_paused = true)]
async fn threshold_flushes_without_an_explicit_sync() {
    let h = harness(SyncConfig {
        force_sync_threshold: 5,
        ..quiet()
    })
    .await;
    for _ in 0..4 {
        h.consume("u", "fast", 1).await;
    }
    // Below the threshold: nothing is written, however long we wait (short
    // of the quiet intervals).
    assert!(!h.wait_db("u", "fast", 4, Duration::from_secs(5)).await);
    h.consume("u", "fast", 1).await;
    assert!(h.wait_db("u", "fast", 5, Duration::from_secs(1)).await);
    let s = h.engine.stats();
    assert_eq!(s.trigger(Trigger::Threshold).flushes, 1);
    assert_eq!(s.trigger(Trigger::Threshold).units, 5);
    assert_eq!(s.trigger(Trigger::Check).flushes, 0);
}

#[tokio::test(start_paused = true)]
async fn check_flushes_oldest_users_up_to_the_cap() {
    let h = harness(SyncConfig {
        check_interval: Duration::from_secs(60),
        max_active_users_check: 2,
        ..quiet()
    })
    .await;
    for u in ["a", "b", "c"] {
        h.consume(u, "fast", 1).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(60_050)).await;
    assert!(h.wait_db("b", "fast", 1, Duration::from_secs(1)).await);
    assert_eq!(h.db("a", "fast").await, 1);
    assert_eq!(
        h.db("c", "fast").await,
        0,
        "third user waits for the next check"
    );
    assert!(h.wait_db("c", "fast", 1, Duration::from_secs(61)).await);
    assert_eq!(h.engine.stats().trigger(Trigger::Check).flushes, 2);
}

#[tokio::test(start_paused = true)]
async fn guarantee_flushes_everything_within_max_sync_interval() {
    let h = harness(SyncConfig {
        max_sync_interval: Duration::from_secs(600),
        max_active_users_check: 0,
        check_interval: Duration::from_secs(60),
        ..quiet()
    })
    .await;
    for i in 0..50 {
        h.consume(&format!("u{i}"), "premium", 1).await;
    }
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert_eq!(h.db("u0", "premium").await, 0);
    assert!(h.wait_db("u49", "premium", 1, Duration::from_secs(2)).await);
    let s = h.engine.stats();
    assert_eq!(s.trigger(Trigger::Guarantee).units, 50);
    assert_eq!(h.engine.ledger_figures().totals.pending, 0);
}

#[tokio::test(start_paused = true)]
async fn session_timeout_flushes_idle_users_then_evicts_them() {
    let h = harness(SyncConfig {
        heartbeat_interval: Duration::from_secs(30),
        session_timeout: Duration::from_secs(120),
        ..quiet()
    })
    .await;
    h.consume("idle", "fast", 2).await;
    assert!(!h.wait_db("idle", "fast", 2, Duration::from_secs(100)).await);
    assert!(h.wait_db("idle", "fast", 2, Duration::from_secs(60)).await);
    assert_eq!(h.engine.stats().trigger(Trigger::SessionEnd).units, 2);
    // Clean and still idle: evicted by a later heartbeat, memory bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(400);
    while h.engine.ledger_figures().users_resident > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(h.engine.ledger_figures().users_resident, 0);
    // Evicted users come back from the store with their usage.
    let u = h.engine.usage(&uid("idle")).await.unwrap();
    assert_eq!(
        (u.kinds[1].used, u.kinds[1].persisted, u.resident),
        (2, 2, false)
    );
    assert!(h.consume("idle", "fast", 48).await);
    assert!(
        !h.consume("idle", "fast", 1).await,
        "limit counts the persisted units"
    );
}

#[tokio::test(start_paused = true)]
async fn warm_up_never_overwrites_and_flush_adopts_the_database_value() {
    let h = harness(quiet()).await;
    h.consume("u", "fast", 2).await;
    // Another writer (another instance) adds 5 to the same counter.
    let fast = h.engine.kind("fast").unwrap();
    let period = h.engine.usage(&uid("u")).await.unwrap().period_start;
    h.store
        .inner()
        .apply_flush(Arc::new(FlushBatch {
            id: FlushId(7),
            trigger: Trigger::Manual,
            deltas: vec![Delta {
                user: uid("u"),
                kind: fast,
                period_start: period,
                delta: 5,
            }],
        }))
        .await
        .unwrap();
    // Memory still holds our pending units, untouched.
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!((u.kinds[1].persisted, u.kinds[1].pending), (0, 2));
    h.engine.sync_all().await.unwrap();
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!(
        (u.kinds[1].persisted, u.kinds[1].pending, u.kinds[1].used),
        (7, 0, 7)
    );
    assert_eq!(h.db("u", "fast").await, 7);
}

#[tokio::test(start_paused = true)]
async fn units_consumed_during_an_in_flight_flush_are_kept() {
    let h = Arc::new(harness(quiet()).await);
    h.consume("u", "fast", 3).await;
    h.store.set_flush_delay(Duration::from_secs(2));
    let h2 = h.clone();
    let flush = tokio::spawn(async move { h2.engine.sync_all().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.consume("u", "fast", 2).await;
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!(
        (u.kinds[1].in_flight, u.kinds[1].pending, u.kinds[1].used),
        (3, 5, 5)
    );
    assert_eq!(flush.await.unwrap().flushed_units, 3);
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!((u.kinds[1].persisted, u.kinds[1].pending), (3, 2));
    h.store.set_flush_delay(Duration::ZERO);
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 5);
}

#[tokio::test(start_paused = true)]
async fn failing_store_keeps_units_and_retry_lands_them_once() {
    let h = harness(quiet()).await;
    h.consume("u", "fast", 4).await;
    h.store.set_down(true);
    assert!(h.engine.sync_all().await.is_err());
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!((u.kinds[1].used, u.kinds[1].pending), (4, 4));
    assert_eq!(h.engine.retry_backlog(), (1, 4));
    // Resident users keep being served while the store is down.
    assert!(h.consume("u", "fast", 1).await);
    h.store.set_down(false);
    // The scheduler retries with backoff by itself.
    assert!(h.wait_db("u", "fast", 4, Duration::from_secs(5)).await);
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 5);
    let s = h.engine.stats();
    assert!(s.failures >= 1);
    assert_eq!(s.units_flushed, 5);
}

#[tokio::test(start_paused = true)]
async fn lost_acknowledgement_is_not_applied_twice() {
    let h = harness(quiet()).await;
    h.consume("u", "premium", 3).await;
    // The commit lands, but the engine is told it failed.
    h.store.lose_next_acks(1);
    assert!(h.engine.sync_all().await.is_err());
    assert_eq!(h.db("u", "premium").await, 3);
    // Units still count, and are neither lost nor re-batched.
    assert_eq!(h.engine.usage(&uid("u")).await.unwrap().kinds[0].used, 3);
    h.engine.sync_all().await.unwrap();
    assert_eq!(
        h.db("u", "premium").await,
        3,
        "retry of a committed batch changes nothing"
    );
    let u = h.engine.usage(&uid("u")).await.unwrap();
    assert_eq!(
        (u.kinds[0].persisted, u.kinds[0].pending, u.kinds[0].used),
        (3, 0, 3)
    );
    assert_eq!(h.engine.stats().already_applied, 1);
}

#[tokio::test(start_paused = true)]
async fn flush_timeout_retries_under_the_same_id() {
    let h = harness(SyncConfig {
        sync_timeout: Duration::from_millis(500),
        ..quiet()
    })
    .await;
    h.consume("u", "fast", 2).await;
    h.store.set_flush_delay(Duration::from_secs(1));
    assert!(h.engine.sync_all().await.is_err());
    h.store.set_flush_delay(Duration::ZERO);
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 2);
    assert!(h.engine.stats().failures >= 1);
}

#[tokio::test(start_paused = true)]
async fn dedup_and_refund() {
    let h = harness(quiet()).await;
    let fast = h.engine.kind("fast").unwrap();
    let rid = RequestId::parse("r-1").unwrap();
    let u = uid("u");
    let a = h
        .engine
        .consume(&u, &fast, Units::parse(2).unwrap(), Some(&rid))
        .await
        .unwrap();
    let b = h
        .engine
        .consume(&u, &fast, Units::parse(2).unwrap(), Some(&rid))
        .await
        .unwrap();
    assert!(!a.deduplicated && b.deduplicated);
    assert_eq!(b.decision.used, 2);
    h.engine.sync_all().await.unwrap();
    let r = h.engine.refund("r-1", None).await.unwrap();
    assert_eq!((r.refunded, r.usage.kinds[1].used), (2, 0));
    assert!(h.engine.refund("r-1", None).await.is_err());
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 0);
}

#[tokio::test(start_paused = true)]
async fn period_rollover_persists_old_units_in_the_old_period() {
    let start = Timestamp::parse_rfc3339("2026-11-30T23:59:00Z").unwrap();
    let h = harness_at(quiet(), TokioClock::starting_at(start)).await;
    for _ in 0..50 {
        assert!(h.consume("u", "fast", 1).await);
    }
    assert!(!h.consume("u", "fast", 1).await);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(h.consume("u", "fast", 1).await, "new month starts at zero");
    h.engine.sync_all().await.unwrap();
    let rows = h.store.all_usage().await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.period_start.to_rfc3339(), r.used))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-11-01T00:00:00.000Z".to_owned(), 50),
            ("2026-12-01T00:00:00.000Z".to_owned(), 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn admin_reset_and_limit_changes_apply_to_next_consume() {
    let h = harness(quiet()).await;
    for _ in 0..10 {
        assert!(h.consume("u", "premium", 1).await);
    }
    assert!(!h.consume("u", "premium", 1).await);
    h.engine
        .set_user(&uid("u"), None, Some(&[("premium".into(), Some(12))]))
        .await
        .unwrap();
    assert!(h.consume("u", "premium", 2).await);
    assert!(!h.consume("u", "premium", 1).await);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let u = h.engine.reset_user(&uid("u")).await.unwrap();
    assert_eq!(u.kinds[0].used, 0);
    assert!(h.consume("u", "premium", 1).await);
    h.engine.sync_all().await.unwrap();
    assert_eq!(
        h.db("u", "premium").await,
        13,
        "old period keeps its 12 units"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_everything() {
    let h = harness(quiet()).await;
    for i in 0..20 {
        h.consume(&format!("u{i}"), "fast", 2).await;
    }
    let report = h.engine.shutdown(Duration::from_secs(30)).await;
    assert_eq!((report.flushed_units, report.remaining_units), (40, 0));
    assert_eq!(h.db("u7", "fast").await, 2);
    assert_eq!(h.engine.stats().trigger(Trigger::Shutdown).units, 40);
    let fast = h.engine.kind("fast").unwrap();
    assert!(
        h.engine
            .consume(&uid("u1"), &fast, Units::ONE, None)
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn disabled_sync_never_flushes() {
    let h = harness(SyncConfig {
        enabled: false,
        force_sync_threshold: 1,
        ..quiet()
    })
    .await;
    h.consume("u", "fast", 3).await;
    tokio::time::sleep(Duration::from_secs(10_000)).await;
    assert_eq!(h.db("u", "fast").await, 0);
    assert!(h.engine.sync_all().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_flush_cancelled_by_the_shutdown_deadline_is_kept_for_retry() {
    let h = harness(quiet()).await;
    h.consume("u", "fast", 3).await;
    // The flush takes longer than the shutdown deadline: its future is
    // dropped mid-flight. The batch must not be stranded.
    h.store.set_flush_delay(Duration::from_secs(10));
    let report = h.engine.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.remaining_units, 3);
    assert_eq!(
        h.engine.retry_backlog(),
        (1, 3),
        "the cancelled batch is back in the retry list"
    );
    h.store.set_flush_delay(Duration::ZERO);
    h.engine.sync_all().await.unwrap();
    assert_eq!(h.db("u", "fast").await, 3);
    assert_eq!(h.engine.ledger_figures().totals.in_flight, 0);
}

#[path = "engine/wal.rs"]
mod wal;

#[path = "engine/postgres.rs"]
mod postgres;

#[tokio::test(start_paused = true)]
async fn a_stretched_cadence_delays_the_check_but_never_the_guarantee() {
    let h = harness(SyncConfig {
        check_interval: Duration::from_secs(60),
        max_sync_interval: Duration::from_secs(300),
        ..quiet()
    })
    .await;
    h.engine.set_cadence(2, "test");
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.consume("a", "fast", 1).await;
    // Not at the configured 60 s...
    assert!(!h.wait_db("a", "fast", 1, Duration::from_secs(70)).await);
    // ...but at 2 × 60 s.
    assert!(h.wait_db("a", "fast", 1, Duration::from_secs(60)).await);
    assert_eq!(h.engine.stats().trigger(Trigger::Check).flushes, 1);
    assert_eq!(h.engine.cadence(), (2, "test".to_owned()));
    // The guarantee (300 s) is not stretched: with the check stretched far
    // beyond it, units still land within 300 s.
    h.engine.set_cadence(8, "test");
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.consume("b", "fast", 1).await;
    assert!(h.wait_db("b", "fast", 1, Duration::from_secs(300)).await);
    assert_eq!(h.engine.stats().trigger(Trigger::Guarantee).units, 1);
}

#[tokio::test(start_paused = true)]
async fn flush_concurrency_can_be_raised_not_lowered() {
    let h = harness(SyncConfig {
        max_concurrent_syncs: 3,
        ..quiet()
    })
    .await;
    assert_eq!(h.engine.flush_concurrency(), 3);
    assert_eq!(h.engine.raise_flush_concurrency(5), 5);
    assert_eq!(h.engine.raise_flush_concurrency(2), 5);
    assert_eq!(h.engine.flush_concurrency(), 5);
}
