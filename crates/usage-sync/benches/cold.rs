//! The first consume of a user the store has never seen, against the
//! same user's next consume, through the engine over SQLite (the log in
//! `batched` mode), in the same run: one at a time (latency), and 64 at
//! once (throughput).
//!
//!   cargo bench -p usage-sync --bench cold   (COLD_USERS=20000)

// Measurement arithmetic: its numbers are its own, not a client's.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use usage_sync::{Engine, SyncConfig, SystemClock};
use usage_sync_core::{Units, UserId, default_catalogue};
use usage_sync_store::{Durability, SqliteStore, Store, WalConfig};

fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
}

async fn one_at_a_time(e: &Engine, users: &[UserId]) -> Vec<Duration> {
    let fast = e.kind("fast").unwrap();
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let t = Instant::now();
        e.consume(u, &fast, Units::ONE, None).await.unwrap();
        out.push(t.elapsed());
    }
    out
}

async fn sixty_four_at_once(e: &Engine, users: &[UserId]) -> f64 {
    let fast = e.kind("fast").unwrap();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in users.chunks(users.len().div_ceil(64)) {
        let (e, chunk) = (e.clone(), chunk.to_vec());
        set.spawn(async move {
            for u in &chunk {
                e.consume(u, &fast, Units::ONE, None).await.unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    users.len() as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("COLD_USERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("usage-sync.db")).unwrap();
    let (kinds, plans) = default_catalogue();
    let config = SyncConfig {
        wal: Some(WalConfig::new(dir.path().join("wal"), Durability::Batched)),
        ..SyncConfig::default()
    };
    let e = Engine::open(
        Arc::new(store) as Arc<dyn Store>,
        kinds,
        plans,
        config,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    e.start();
    let users = |tag: &str| -> Vec<UserId> {
        (0..n)
            .map(|i| UserId::parse(&format!("{tag}-{i:07}")).unwrap())
            .collect()
    };
    let seq = users("seq");
    let mut cold = one_at_a_time(&e, &seq).await;
    let mut warm = one_at_a_time(&e, &seq).await;
    let par = users("par");
    let cold_rate = sixty_four_at_once(&e, &par).await;
    let warm_rate = sixty_four_at_once(&e, &par).await;
    println!("| {n} users | p50 | p99 | 64 at once |");
    println!("|---|---|---|---|");
    println!(
        "| first consume (the store is read) | {:.1} µs | {:.1} µs | {:.0}/s |",
        pct(&mut cold, 0.5),
        pct(&mut cold, 0.99),
        cold_rate
    );
    println!(
        "| next consume (in memory) | {:.1} µs | {:.1} µs | {:.0}/s |",
        pct(&mut warm, 0.5),
        pct(&mut warm, 0.99),
        warm_rate
    );
    println!(
        "\ncold / warm: p50 {:.1}x, throughput {:.2}x",
        pct(&mut cold, 0.5) / pct(&mut warm, 0.5),
        cold_rate / warm_rate
    );
    e.shutdown(Duration::from_secs(10)).await;
}
