//! Helpers for this workspace's tests and benches: a real PostgreSQL
//! database per test, store totals, a flush batch of many counters (small
//! enough to ship rather than duplicate).

use std::sync::Arc;

use usage_sync_core::{Delta, FlushBatch, FlushId, Kind, Ledger, Timestamp, Trigger, UserId};

use crate::Store;
use crate::wal::Wal;

/// Sum of `used` over every row of the store: what a test compares with
/// the units it had acknowledged.
pub async fn total_used(store: &dyn Store) -> i64 {
    store
        .all_usage()
        .await
        .expect("all_usage")
        .iter()
        .map(|r| r.used)
        .sum()
}

/// Sum of `used` for one user and kind, over all periods.
pub async fn used_by(store: &dyn Store, user: &str, kind: &str) -> i64 {
    store
        .all_usage()
        .await
        .expect("all_usage")
        .iter()
        .filter(|r| r.user_id == user && r.kind == kind)
        .map(|r| r.used)
        .sum()
}

/// `users` users (`user-00000`, `user-00001`, ...) resident in `ledger`
/// with nothing counted, a first checkpoint of them in `wal` at `now`, and
/// the log attached: the start every log test and bench takes.
pub fn journaled_users(
    ledger: &Ledger,
    wal: &Arc<Wal>,
    users: usize,
    now: Timestamp,
) -> Vec<UserId> {
    let ids: Vec<UserId> = (0..users)
        .map(|i| UserId::parse(&format!("user-{i:05}")).expect("a valid id"))
        .collect();
    for u in &ids {
        ledger
            .warm(
                u,
                Default::default(),
                &[],
                ledger.load_epoch(u.as_str()),
                now,
            )
            .expect("a fresh user warms");
    }
    wal.checkpoint(ledger, now);
    ledger.attach_journal(wal.clone());
    ids
}

/// A batch adding `delta` to `users` counters of `kind` (users
/// `user-000000`, `user-000001`, ..., in key order) in one period: the
/// shape the flush benches write.
pub fn counters_batch(id: u128, kind: Kind, users: usize, delta: i64) -> Arc<FlushBatch> {
    let deltas = (0..users)
        .map(|i| Delta {
            user: UserId::parse(&format!("user-{i:06}")).expect("valid id"),
            kind,
            period_start: Timestamp(1_793_491_200_000),
            delta,
        })
        .collect();
    Arc::new(FlushBatch {
        id: FlushId(id),
        trigger: Trigger::Manual,
        deltas,
    })
}

/// The server tests use: `USAGE_SYNC_TEST_POSTGRES_URL`, default the local
/// server with trust auth.
pub fn postgres_admin_url() -> String {
    std::env::var("USAGE_SYNC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped (with its connections)
/// when this value is dropped.
pub struct TempDatabase {
    admin_url: String,
    name: String,
    /// Connection URL of the new database.
    pub url: String,
}

impl TempDatabase {
    /// Creates a fresh database. Returns `None` (after printing a notice)
    /// when no server is reachable, unless `CI` is set: in CI a missing
    /// server is a failure, never a silent skip.
    pub async fn create() -> Option<TempDatabase> {
        let admin_url = postgres_admin_url();
        let (client, conn) = match tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
        {
            Ok(c) => c,
            Err(e) => {
                skip(&format!(
                    "PostgreSQL not reachable at {admin_url} ({e}); run .ci/run or start it"
                ));
                return None;
            }
        };
        tokio::spawn(conn);
        let name = format!("usage_sync_test_{}_{:016x}", std::process::id(), rand_u64());
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("CREATE DATABASE");
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("USAGE_SYNC_TEST_POSTGRES_URL must end in /database");
        Some(TempDatabase {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Reports a test that cannot run on this machine (a service or tool is
/// missing): a failure in CI (`CI` set), where `.ci/run` provides
/// everything; elsewhere a `SKIPPED:` line written straight to the
/// process's stderr. The test harness captures only `print!`/`eprint!`
/// (and shows captured output only for failures), so a skip reported with
/// them read as a pass; this line shows in the run's output.
pub fn skip(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run here, and CI must: {what}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}
