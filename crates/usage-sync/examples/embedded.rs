//! Embedding usage-sync in an application, without the HTTP layer.
//!
//! Run with: `cargo run -p usage-sync --example embedded`
//!
//! It opens a SQLite database in a temporary directory, meters a few
//! requests of one user against the default plans, refunds one, flushes,
//! and shows what reached the database.

use std::sync::Arc;
use std::time::Duration;

use usage_sync::{Engine, SyncConfig, SystemClock};
use usage_sync_core::{RequestId, Units, UserId, default_catalogue};
use usage_sync_store::{SqliteStore, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("usage-sync-example-{}", std::process::id()));
    let store = Arc::new(SqliteStore::open(&dir.join("usage-sync.db"))?);

    // Kinds `premium` and `fast`; plans `free` (10 / 50 a month) and
    // `premium` (100 / 1000). Build your own with `Kinds::new` and `Plan`.
    let (kinds, plans) = default_catalogue();
    let engine = Engine::open(
        store.clone(),
        kinds,
        plans,
        SyncConfig::default(),
        Arc::new(SystemClock),
    )
    .await?;
    engine.start(); // the sync engine's triggers run in the background

    let user = UserId::parse("alice")?;
    let premium = engine.kind("premium")?;

    // The hot path: decide and count in one atomic step, in memory.
    for i in 0..12 {
        let rid = RequestId::parse(&format!("req-{i}"))?;
        let out = engine
            .consume(&user, &premium, Units::ONE, Some(&rid))
            .await?;
        println!(
            "request {i:2}: allowed={} used={} remaining={:?}",
            out.decision.allowed, out.decision.used, out.decision.remaining
        );
    }

    // The upstream model call for req-3 failed: give the unit back.
    let refund = engine.refund("req-3", None).await?;
    println!("refunded {} unit(s) of req-3", refund.refunded);

    // Flush now (normally the triggers do this) and read the database.
    let report = engine.sync_all().await?;
    // The threshold trigger may already have flushed most units in the
    // background; this writes the rest (here the net effect of the refund).
    println!(
        "sync wrote a net {:+} unit(s) for {} user(s)",
        report.flushed_units, report.flushed_users
    );
    for row in store.all_usage().await? {
        println!(
            "db: {} {} {} = {}",
            row.user_id, row.kind, row.period_start, row.used
        );
    }

    // Graceful stop: flushes whatever is still pending.
    engine.shutdown(Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
