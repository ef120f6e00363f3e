//! What a checkpoint costs the consumes that run beside it.
//!
//! A ledger holding 1 000 000 remembered request ids, with 0 or
//! 1 000 000 users holding pending units, writes checkpoints back to
//! back on one thread while another thread times single consumes (with a
//! request id, as the docs tell clients). The baseline is the same
//! thread's consumes in the same run with no checkpoint running. Also the
//! checkpoint's size and duration.
//!
//!   cargo bench -p usage-sync-store --bench checkpoint
//!   (CHECKPOINT_USERS=100000 for a smaller run)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use usage_sync_core::{
    Ledger, LedgerConfig, PeriodKind, Plan, Plans, RequestId, Timestamp, Units, UserId,
    UserProfile, default_catalogue,
};
use usage_sync_store::{Durability, Wal, WalConfig};

const NOW: Timestamp = Timestamp(1_795_000_000_000);

fn ledger() -> Arc<Ledger> {
    let (kinds, _) = default_catalogue();
    let plan = Plan::from_named_limits(
        "open",
        PeriodKind::Monthly,
        &kinds,
        [("premium", None), ("fast", None)],
    )
    .unwrap();
    Arc::new(Ledger::new(
        kinds,
        Plans::new("open", vec![plan]).unwrap(),
        LedgerConfig {
            threshold: u64::MAX,
            ..LedgerConfig::default()
        },
    ))
}

fn warm(l: &Ledger, id: &UserId) {
    l.warm(
        id,
        UserProfile::default(),
        &[],
        l.load_epoch(id.as_str()),
        NOW,
    )
    .unwrap();
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Times consumes on `l` for `run` (or while `busy` is set, when given),
/// returning their latencies in nanoseconds, sorted.
fn time_consumes(l: &Ledger, run: Duration, busy: Option<&AtomicBool>, from: &mut u64) -> Vec<u64> {
    let fast = *l.kinds().get("fast").unwrap();
    let users: Vec<String> = (0..1000).map(|i| format!("hot-{i:04}")).collect();
    let mut out = Vec::new();
    let start = Instant::now();
    loop {
        match busy {
            Some(b) if !b.load(Ordering::Acquire) => break,
            None if start.elapsed() >= run => break,
            _ => {}
        }
        *from += 1;
        let rid = RequestId::parse(&format!("timed-{from:012}")).unwrap();
        let user = &users[*from as usize % users.len()];
        let t = Instant::now();
        let o = l.consume(user, &fast, Units::ONE, Some(&rid), NOW).unwrap();
        out.push(t.elapsed().as_nanos() as u64);
        assert!(o.decision.allowed);
    }
    out.sort_unstable();
    out
}

fn main() {
    let users: usize = std::env::var("CHECKPOINT_USERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "| remembered ids | users with pending units | checkpoint | consume p50 / p99 / max without | during checkpoints | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for dirty in [0, users] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = WalConfig::new(dir.path(), Durability::None);
        config.max_segment_bytes = u64::MAX / 4;
        let (wal, _) = Wal::open(config).unwrap();
        let l = ledger();
        let fast = *l.kinds().get("fast").unwrap();
        for i in 0..1000 {
            warm(&l, &UserId::parse(&format!("hot-{i:04}")).unwrap());
        }
        wal.checkpoint(&l, NOW);
        l.attach_journal(wal.clone());
        // The remembered ids.
        for i in 0..users {
            let rid = RequestId::parse(&format!(
                "{:08x}-0000-4000-8000-{:012x}",
                i,
                i as u64 * 7919
            ))
            .unwrap();
            l.consume(
                &format!("hot-{:04}", i % 1000),
                &fast,
                Units::ONE,
                Some(&rid),
                NOW,
            )
            .unwrap();
        }
        // The users holding units.
        for i in 0..dirty {
            let id = UserId::parse(&format!("user-{i:07}")).unwrap();
            warm(&l, &id);
            l.consume(id.as_str(), &fast, Units::ONE, None, NOW)
                .unwrap();
        }
        let mut from = 0;
        let without = time_consumes(&l, Duration::from_secs(3), None, &mut from);
        let busy = AtomicBool::new(true);
        let (during, checkpoints) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut took = Vec::new();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(3) || took.len() < 3 {
                    let t = Instant::now();
                    wal.checkpoint(&l, NOW);
                    took.push(t.elapsed());
                }
                busy.store(false, Ordering::Release);
                took
            });
            let during = time_consumes(&l, Duration::ZERO, Some(&busy), &mut from);
            (during, h.join().unwrap())
        });
        let (_, bytes) = wal.segment();
        let mean = checkpoints.iter().sum::<Duration>() / checkpoints.len() as u32;
        println!(
            "| {} | {dirty} | {:.1} MiB, {:.0} ms | {} / {} / {} ns | {} / {} / {} ns | {:.2} |",
            l.dedup_entries(),
            bytes as f64 / (1 << 20) as f64,
            mean.as_secs_f64() * 1e3,
            pct(&without, 0.5),
            pct(&without, 0.99),
            without.last().unwrap(),
            pct(&during, 0.5),
            pct(&during, 0.99),
            during.last().unwrap(),
            pct(&during, 0.99) as f64 / pct(&without, 0.99) as f64,
        );
        wal.close();
    }
}
