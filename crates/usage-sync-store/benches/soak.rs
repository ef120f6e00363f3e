//! Soak in compressed time: 10 000 000 request ids through the ledger
//! and the write-ahead log, on an injected clock that moves 3.6 ms per
//! consume against a dedup window of one hour, so the run covers ten
//! windows. Checkpoints are taken whenever the log asks for one, as the
//! engine does. Every million ids it prints the ids remembered, the
//! process's resident memory and the log's size on disk: once the first
//! window is full, all three must stay flat.
//!
//!   cargo bench -p usage-sync-store --bench soak
//!   (SOAK_IDS=2000000 for a shorter run)

// Measurement arithmetic: its numbers are its own, not a client's.
#![allow(clippy::cast_possible_truncation)]

use std::time::{Duration, Instant};

use usage_sync_core::{Ledger, LedgerConfig, RequestId, Timestamp, Units, open_catalogue};
use usage_sync_store::wal::list_segments;
use usage_sync_store::{Durability, Wal, WalConfig};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |pages| (pages * 4096) as f64 / (1 << 20) as f64)
}

fn log_mib(dir: &std::path::Path) -> (f64, usize) {
    let segs = list_segments(dir).unwrap();
    let bytes: u64 = segs
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    (bytes as f64 / (1 << 20) as f64, segs.len())
}

fn main() {
    let total: u64 = std::env::var("SOAK_IDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let window = Duration::from_secs(3600);
    let step_ms = 3.6;
    let t0 = Timestamp(1_795_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = WalConfig::new(dir.path(), Durability::None);
    config.dedup_window = window;
    let (wal, _) = Wal::open(config).unwrap();
    let (kinds, plans) = open_catalogue();
    let l = Ledger::new(
        kinds,
        plans,
        LedgerConfig {
            dedup_window_ms: window.as_millis() as i64,
            threshold: u64::MAX,
            ..LedgerConfig::default()
        },
    );
    let fast = *l.kinds().get("fast").unwrap();
    let users = usage_sync_store::testing::journaled_users(&l, &wal, 10_000, t0);
    println!(
        "| ids consumed | windows of time | ids remembered | resident memory | log on disk (segments) | checkpoints |"
    );
    println!("|---|---|---|---|---|---|");
    let started = Instant::now();
    let mut checkpoints = 0;
    for i in 0..total {
        let now = t0.saturating_add_ms((i as f64 * step_ms) as i64);
        let rid = RequestId::parse(&format!(
            "{:08x}-0000-4000-8000-{:012x}",
            i,
            i.wrapping_mul(7919)
        ))
        .unwrap();
        let user = &users[(i % users.len() as u64) as usize];
        let o = l
            .consume(user.as_str(), &fast, Units::ONE, Some(&rid), now)
            .unwrap();
        assert!(!o.deduplicated);
        if wal.checkpoint_due() {
            // What the engine does: units land in the store, then the
            // checkpoint (here the units are simply taken and completed).
            let (batches, _) = l.take_all(10_000, usage_sync_core::Trigger::Guarantee);
            for b in &batches {
                l.complete(b, &vec![0; b.deltas.len()], now);
            }
            wal.checkpoint(&l, now);
            checkpoints += 1;
        }
        if (i + 1) % 1_000_000 == 0 {
            let (mib, segs) = log_mib(dir.path());
            println!(
                "| {} | {:.1} | {} | {:.0} MiB | {:.0} MiB ({segs}) | {checkpoints} |",
                i + 1,
                (i as f64 * step_ms) / window.as_millis() as f64,
                l.dedup_entries(),
                rss_mib(),
                mib,
            );
        }
    }
    eprintln!(
        "soak: {total} ids in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    wal.close();
}
