//! Flush of 10 000 dirty counters into PostgreSQL in one batch, against one
//! `UPDATE ... SET used = used + 1` per counter, same server, same run.
//! Needs PostgreSQL (`USAGE_SYNC_TEST_POSTGRES_URL`, default the local
//! server). `cargo bench -p usage-sync-store --bench pg_flush`

use std::sync::Arc;
use std::time::Instant;

use usage_sync_core::{FlushBatch, Kinds};
use usage_sync_store::testing::{TempDatabase, counters_batch, total_used};
use usage_sync_store::{PostgresStore, Store};

const COUNTERS: usize = 10_000;

fn batch(id: u128, kinds: &Kinds) -> Arc<FlushBatch> {
    counters_batch(id, *kinds.get("fast").unwrap(), COUNTERS, 3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let store = PostgresStore::connect(&db.url, 2).unwrap();
    store.migrate().await.unwrap();
    let kinds = Kinds::new(&["premium", "fast"]).unwrap();
    // First flush inserts the rows; later ones update them (the usual case).
    let t = Instant::now();
    store.apply_flush(batch(1, &kinds)).await.unwrap();
    let insert = t.elapsed();
    let mut updates = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        store.apply_flush(batch(10 + i, &kinds)).await.unwrap();
        updates.push(t.elapsed());
    }
    updates.sort();
    let median = updates[2];

    // Baseline: one autocommitted UPDATE per counter on one connection.
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let stmt = client
        .prepare("UPDATE usage SET used = used + 1 WHERE user_id = $1 AND kind = 'fast'")
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..COUNTERS {
        client
            .execute(&stmt, &[&format!("user-{i:06}")])
            .await
            .unwrap();
    }
    let baseline = t.elapsed();
    let total = total_used(&store).await;
    assert_eq!(total, i64::try_from(COUNTERS * (3 * 6 + 1)).unwrap());
    println!(
        "pg flush of {COUNTERS} counters: first (insert) {:.1} ms, then (update) median {:.1} ms of 5; \
         baseline {COUNTERS} single UPDATEs {:.0} ms; ratio {:.0}x",
        insert.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        baseline.as_secs_f64() * 1e3,
        baseline.as_secs_f64() / median.as_secs_f64()
    );
}
