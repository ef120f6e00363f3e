//! The store conformance suite: one set of checks, run against every
//! backend (`store_suite!` instantiates it per backend). A new backend is
//! done when it passes this file unchanged.

use std::sync::Arc;

use usage_sync_core::{Delta, FlushBatch, FlushId, Kinds, PeriodKind, Timestamp, Trigger, UserId};
use usage_sync_store::testing::TempDatabase;
use usage_sync_store::{PostgresStore, SqliteStore, Store, StoredPlan, StoredUser};

const NOV: Timestamp = Timestamp(1_793_491_200_000); // 2026-11-01
const DEC: Timestamp = Timestamp(1_796_083_200_000); // 2026-12-01

fn kinds() -> Kinds {
    Kinds::new(&["premium", "fast"]).unwrap()
}

fn batch(id: u128, deltas: &[(&str, &str, Timestamp, i64)]) -> Arc<FlushBatch> {
    let k = kinds();
    Arc::new(FlushBatch {
        id: FlushId(id),
        trigger: Trigger::Manual,
        deltas: deltas
            .iter()
            .map(|(u, kind, p, d)| Delta {
                user: UserId::parse(u).unwrap(),
                kind: *k.get(kind).unwrap(),
                period_start: *p,
                delta: *d,
            })
            .collect(),
    })
}

async fn used(store: &dyn Store, user: &str, kind: &str, period: Timestamp) -> Option<i64> {
    store
        .all_usage()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.user_id == user && r.kind == kind && r.period_start == period)
        .map(|r| r.used)
}

pub async fn migrate_is_idempotent(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

pub async fn flush_applies_deltas_and_returns_values(store: &dyn Store) {
    let out = store
        .apply_flush(batch(1, &[("a", "fast", NOV, 3), ("b", "premium", NOV, 2)]))
        .await
        .unwrap();
    assert_eq!(out.used_after, vec![3, 2]);
    assert!(!out.already_applied);
    let out = store
        .apply_flush(batch(2, &[("a", "fast", NOV, 4)]))
        .await
        .unwrap();
    assert_eq!(out.used_after, vec![7]);
    assert_eq!(used(store, "a", "fast", NOV).await, Some(7));
}

pub async fn same_flush_id_is_applied_once(store: &dyn Store) {
    let b = batch(10, &[("c", "fast", NOV, 5)]);
    store.apply_flush(b.clone()).await.unwrap();
    let again = store.apply_flush(b.clone()).await.unwrap();
    assert!(again.already_applied);
    assert_eq!(again.used_after, vec![5]);
    assert_eq!(used(store, "c", "fast", NOV).await, Some(5));
    assert!(store.flush_applied(FlushId(10)).await.unwrap());
    assert!(!store.flush_applied(FlushId(11)).await.unwrap());
}

pub async fn periods_are_separate_and_negative_deltas_apply(store: &dyn Store) {
    store
        .apply_flush(batch(20, &[("d", "fast", NOV, 10), ("d", "fast", DEC, 1)]))
        .await
        .unwrap();
    store
        .apply_flush(batch(21, &[("d", "fast", NOV, -4)]))
        .await
        .unwrap();
    assert_eq!(used(store, "d", "fast", NOV).await, Some(6));
    assert_eq!(used(store, "d", "fast", DEC).await, Some(1));
    let state = store.load_user("d".into(), DEC).await.unwrap();
    assert_eq!(state.usage.len(), 1);
    assert_eq!(state.usage[0].period_start, DEC);
    assert_eq!(state.profile, None);
}

pub async fn large_batches_use_one_transaction(store: &dyn Store) {
    let users: Vec<String> = (0..2500).map(|i| format!("bulk-{i:05}")).collect();
    let deltas: Vec<_> = users.iter().map(|u| (u.as_str(), "fast", NOV, 1)).collect();
    let out = store.apply_flush(batch(30, &deltas)).await.unwrap();
    assert_eq!(out.used_after.len(), 2500);
    assert!(out.used_after.iter().all(|&v| v == 1));
    let total: i64 = store
        .all_usage()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.user_id.starts_with("bulk-"))
        .map(|r| r.used)
        .sum();
    assert_eq!(total, 2500);
}

pub async fn plans_and_users_round_trip(store: &dyn Store) {
    let plan = StoredPlan {
        name: "team".into(),
        period: PeriodKind::Daily,
        limits: vec![("fast".into(), Some(7)), ("premium".into(), None)],
    };
    store.save_plan(plan.clone()).await.unwrap();
    let mut changed = plan.clone();
    changed.limits[0].1 = Some(8);
    store.save_plan(changed.clone()).await.unwrap();
    let plans = store.load_plans().await.unwrap();
    let got = plans.iter().find(|p| p.name == "team").unwrap();
    assert_eq!(got.period, PeriodKind::Daily);
    let mut l = got.limits.clone();
    l.sort();
    assert_eq!(l, vec![("fast".into(), Some(8)), ("premium".into(), None)]);

    let user = StoredUser {
        plan: Some("team".into()),
        overrides: vec![("fast".into(), Some(5000))],
        reset_at: Some(Timestamp(1_795_000_000_123)),
    };
    store.save_user("e".into(), user.clone()).await.unwrap();
    let state = store.load_user("e".into(), NOV).await.unwrap();
    assert_eq!(state.profile, Some(user.clone()));
    let plain = StoredUser {
        plan: None,
        overrides: vec![],
        reset_at: None,
    };
    store.save_user("d".into(), plain.clone()).await.unwrap();
    assert_eq!(
        store.all_profiles().await.unwrap(),
        vec![("d".to_owned(), plain), ("e".to_owned(), user)]
    );
}

pub async fn prune_forgets_old_flush_ids(store: &dyn Store) {
    store
        .apply_flush(batch(40, &[("f", "fast", NOV, 1)]))
        .await
        .unwrap();
    // Year 3000: far in the future, still a real date for every backend.
    let far = Timestamp(32_503_680_000_000);
    assert!(store.prune_flushes(far).await.unwrap() >= 1);
    assert!(!store.flush_applied(FlushId(40)).await.unwrap());
}

pub async fn load_users_matches_load_user_in_order(store: &dyn Store) {
    store
        .apply_flush(batch(
            60,
            &[
                ("h", "fast", NOV, 3),
                ("h", "premium", NOV, 2),
                ("j", "fast", NOV, 9),
            ],
        ))
        .await
        .unwrap();
    let profile = StoredUser {
        plan: Some("pro".into()),
        overrides: vec![("fast".into(), Some(12))],
        reset_at: None,
    };
    store.save_user("i".into(), profile.clone()).await.unwrap();
    let ids = ["h", "missing", "i", "j"].map(String::from).to_vec();
    let sorted = |mut s: usage_sync_store::UserState| {
        s.usage
            .sort_by(|a, b| (&a.kind, a.period_start).cmp(&(&b.kind, b.period_start)));
        s
    };
    let batch: Vec<_> = store
        .load_users(ids.clone(), NOV)
        .await
        .unwrap()
        .into_iter()
        .map(sorted)
        .collect();
    let mut one_by_one = Vec::new();
    for id in ids {
        one_by_one.push(sorted(store.load_user(id, NOV).await.unwrap()));
    }
    assert_eq!(batch, one_by_one);
    assert_eq!(batch[0].usage.len(), 2);
    assert_eq!(batch[1], usage_sync_store::UserState::default());
    assert_eq!(batch[2].profile, Some(profile));
    assert_eq!(batch[3].usage[0].used, 9);
    // Counters of earlier periods are not loaded.
    assert!(
        store.load_users(vec!["h".into()], DEC).await.unwrap()[0]
            .usage
            .is_empty()
    );
}

/// Instantiates the suite for one backend. `$make` is an async block that
/// returns a fresh, migrated store (and whatever guard keeps it alive).
macro_rules! store_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        let Some((store, _guard)) = $make.await else {
                            return;
                        };
                        super::migrate_is_idempotent(&*store).await;
                        super::$name(&*store).await;
                    }
                };
            }

            case!(flush_applies_deltas_and_returns_values);
            case!(same_flush_id_is_applied_once);
            case!(periods_are_separate_and_negative_deltas_apply);
            case!(large_batches_use_one_transaction);
            case!(plans_and_users_round_trip);
            case!(prune_forgets_old_flush_ids);
            case!(load_users_matches_load_user_in_order);
        }
    };
}

async fn sqlite_store() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("usage-sync.db")).unwrap();
    Some((Arc::new(store), dir))
}

store_suite!(sqlite, sqlite_store());

async fn postgres_store() -> Option<(Arc<dyn Store>, TempDatabase)> {
    let db = TempDatabase::create().await?;
    let store = PostgresStore::connect(&db.url, 4).unwrap();
    Some((Arc::new(store), db))
}

store_suite!(postgres, postgres_store());

/// SQLite only (PostgreSQL refuses one key twice in a statement): a batch
/// holding one counter twice, which the ledger never sends, adds both
/// deltas and reports the counter's final value for each, as before the
/// upsert's returned rows were matched by borrowed keys.
#[tokio::test]
async fn sqlite_flush_of_one_key_twice_reports_the_final_value() {
    let (store, _dir) = sqlite_store().await.unwrap();
    store.migrate().await.unwrap();
    let out = store
        .apply_flush(batch(
            60,
            &[
                ("d", "fast", NOV, 1),
                ("e", "fast", NOV, 5),
                ("d", "fast", NOV, 2),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(out.used_after, vec![3, 5, 3]);
    assert_eq!(used(&*store, "d", "fast", NOV).await, Some(3));
}

#[test]
fn sqlite_urls_parse() {
    use std::path::PathBuf;
    assert_eq!(
        SqliteStore::path_from_url("sqlite://data/x.db").unwrap(),
        PathBuf::from("data/x.db")
    );
    assert_eq!(
        SqliteStore::path_from_url("sqlite:///var/lib/x.db").unwrap(),
        PathBuf::from("/var/lib/x.db")
    );
    assert!(SqliteStore::path_from_url("postgres://x").is_err());
    assert!(SqliteStore::path_from_url("sqlite://").is_err());
}

/// PostgreSQL only: a flush blocked by a row lock gives up after the
/// connection's `lock_timeout` (set on every pooled connection, since a
/// flush is one autocommitted statement with no room for `SET LOCAL`),
/// applies nothing, and is applied once when re-sent under its id.
#[tokio::test]
async fn postgres_flush_gives_up_on_a_held_row_lock() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    // A 1 s statement timeout: lock_timeout is then 500 ms.
    let store =
        PostgresStore::connect_with_timeout(&db.url, 2, std::time::Duration::from_secs(1)).unwrap();
    store.migrate().await.unwrap();
    store
        .apply_flush(batch(50, &[("g", "fast", NOV, 1)]))
        .await
        .unwrap();
    let (mut client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM usage WHERE user_id = 'g' FOR UPDATE", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let blocked = store.apply_flush(batch(51, &[("g", "fast", NOV, 2)])).await;
    let waited = started.elapsed();
    assert!(blocked.is_err(), "a flush behind a held lock must fail");
    // lock_timeout is 500 ms; the 1 s statement_timeout would be later.
    assert!(
        waited >= std::time::Duration::from_millis(450)
            && waited < std::time::Duration::from_millis(950),
        "gave up after {waited:?}"
    );
    assert!(!store.flush_applied(FlushId(51)).await.unwrap());
    tx.rollback().await.unwrap();
    let out = store
        .apply_flush(batch(51, &[("g", "fast", NOV, 2)]))
        .await
        .unwrap();
    assert!(!out.already_applied);
    assert_eq!(out.used_after, vec![3]);
    drop(client);
}
