//! Flush of 10 000 dirty counters into the embedded SQLite store in one
//! batch (the shape a threshold or guarantee round writes under load),
//! against one autocommitted `UPDATE ... SET used = used + 1` per counter
//! with the same `synchronous = FULL`, same file system, same run.
//! `cargo bench -p usage-sync-store --bench sqlite_flush`

// Measurement arithmetic: its numbers are its own, not a client's.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use usage_sync_core::{FlushBatch, Kinds};
use usage_sync_store::testing::{counters_batch, total_used};
use usage_sync_store::{SqliteStore, Store};

const COUNTERS: usize = 10_000;
const ROUNDS: u128 = 21;

fn batch(id: u128, kinds: &Kinds) -> Arc<FlushBatch> {
    counters_batch(id, *kinds.get("fast").unwrap(), COUNTERS, 3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    let kinds = Kinds::new(&["premium", "fast"]).unwrap();
    // First flush inserts the rows; later ones update them (the usual case).
    let t = Instant::now();
    store.apply_flush(batch(1, &kinds)).await.unwrap();
    let insert = t.elapsed();
    let mut updates: Vec<Duration> = Vec::new();
    for i in 1..ROUNDS {
        let b = batch(10 + i, &kinds);
        let t = Instant::now();
        store.apply_flush(b).await.unwrap();
        updates.push(t.elapsed());
    }
    updates.sort();
    let median = updates[updates.len() / 2];

    // Baseline: one autocommitted UPDATE per counter, durable like ours.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    let mut stmt = conn
        .prepare("UPDATE usage SET used = used + 1 WHERE user_id = ?1 AND kind = 'fast'")
        .unwrap();
    let t = Instant::now();
    for i in 0..COUNTERS {
        stmt.execute([format!("user-{i:06}")]).unwrap();
    }
    let baseline = t.elapsed();
    drop(stmt);
    let total = total_used(&store).await;
    assert_eq!(total, (COUNTERS as i64) * (3 * ROUNDS as i64 + 1));
    println!(
        "sqlite flush of {COUNTERS} counters: first (insert) {:.1} ms, then (update) median {:.1} ms of {}; \
         baseline {COUNTERS} single UPDATEs {:.0} ms; ratio {:.0}x; {:.2} us per counter flushed",
        insert.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        updates.len(),
        baseline.as_secs_f64() * 1e3,
        baseline.as_secs_f64() / median.as_secs_f64(),
        median.as_secs_f64() * 1e6 / COUNTERS as f64
    );
}
