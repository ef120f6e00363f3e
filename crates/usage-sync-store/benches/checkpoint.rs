//! What a checkpoint costs the consumes that run beside it.
//!
//! A ledger holding 1 000 000 remembered request ids and up to 1 000 000
//! resident users, some or all of them holding pending units. One thread consumes at a fixed
//! 50 000 a second (with a request id, as the docs tell clients), each
//! timed from when it was due, for 3 s without checkpoints (the
//! baseline), then 3 s with checkpoints on another thread, each 100 ms
//! after the one before ended (so a small checkpoint runs about 30 times
//! and the p99 of the consumes due during them rests on thousands of
//! samples, not a few hundred); the consumes due while a checkpoint ran
//! are compared with the baseline. Also the checkpoint's size and
//! duration. CHECKPOINT_REST_US sets the checkpoint's rest (0: none), for
//! an A/B of it; CHECKPOINT_ROWS picks rows (`34`: the two largest).
//!
//!   cargo bench -p usage-sync-store --bench checkpoint
//!   (CHECKPOINT_USERS=100000 for a smaller run)

// Measurement arithmetic: its numbers are its own, not a client's.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use usage_sync_core::{
    Ledger, LedgerConfig, RequestId, Timestamp, Units, UserId, UserProfile, open_catalogue,
};
use usage_sync_store::{Durability, Wal, WalConfig};

const NOW: Timestamp = Timestamp(1_795_000_000_000);

fn ledger() -> Arc<Ledger> {
    let (kinds, plans) = open_catalogue();
    // Sized as the service sizes it for its default million users.
    let config = LedgerConfig {
        threshold: u64::MAX,
        ..LedgerConfig::sized_for(1_000_000)
    };
    Arc::new(Ledger::new(kinds, plans, config))
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

/// Consumes on `l` at a fixed rate for `run`, one every `every`, each
/// timed from when it was due (not from when the thread got to it), so
/// a consume held up by a checkpoint counts the whole wait, and so do the
/// ones due while it waited. Returns (due time since `start`, latency),
/// in nanoseconds.
fn open_loop(l: &Ledger, start: Instant, run: Duration, every: Duration) -> Vec<(u64, u64)> {
    let fast = *l.kinds().get("fast").unwrap();
    let users: Vec<String> = (0..1000).map(|i| format!("hot-{i:04}")).collect();
    let mut out = Vec::new();
    let mut k = 0u64;
    let tag = start.elapsed().as_nanos();
    loop {
        let due = every * k as u32;
        if due >= run {
            break;
        }
        while start.elapsed() < due {
            std::hint::spin_loop();
        }
        let rid = RequestId::parse(&format!("timed-{tag}-{k:012}")).unwrap();
        let user = &users[k as usize % users.len()];
        let o = l.consume(user, &fast, Units::ONE, Some(&rid), NOW).unwrap();
        let done = start.elapsed();
        assert!(o.decision.allowed);
        out.push((due.as_nanos() as u64, (done - due).as_nanos() as u64));
        k += 1;
    }
    out
}

fn main() {
    let users: usize = std::env::var("CHECKPOINT_USERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "| remembered ids | users resident | holding units | checkpoint | consume p50 / p99 / max without checkpoints | due during a checkpoint | p99 ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    // (users resident beyond the 1 000 consumed on, how many of them hold
    // units)
    // CHECKPOINT_ROWS=4 runs only the fourth row, and so on.
    let rows = std::env::var("CHECKPOINT_ROWS").unwrap_or_else(|_| "1234".into());
    for (row, (resident, dirty)) in [
        (0, 0),
        (users, 1000),
        (users / 10, users / 10),
        (users, users),
    ]
    .into_iter()
    .enumerate()
    {
        if !rows.contains(&(row + 1).to_string()) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = WalConfig::new(dir.path(), Durability::Batched);
        config.max_segment_bytes = u64::MAX / 4;
        if let Some(us) = std::env::var("CHECKPOINT_REST_US")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            config.checkpoint_rest = Duration::from_micros(us);
        }
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
        // The users resident, the first `dirty` of them holding units.
        for i in 0..resident {
            let id = UserId::parse(&format!("user-{i:07}")).unwrap();
            warm(&l, &id);
            if i < dirty {
                l.consume(id.as_str(), &fast, Units::ONE, None, NOW)
                    .unwrap();
            }
        }
        let every = Duration::from_micros(20);
        let run = Duration::from_secs(3);
        let start = Instant::now();
        let mut without: Vec<u64> = open_loop(&l, start, run, every)
            .into_iter()
            .map(|(_, lat)| lat)
            .collect();
        without.sort_unstable();
        // The same rate beside checkpoints.
        let start = Instant::now();
        let (samples, checkpoints) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut spans = Vec::new();
                let mut next = Duration::from_millis(100);
                while next < run - Duration::from_millis(100) {
                    while start.elapsed() < next {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let from = start.elapsed();
                    wal.checkpoint(&l, NOW);
                    spans.push((from, start.elapsed(), wal.segment().1));
                    next = start.elapsed() + Duration::from_millis(100);
                }
                spans
            });
            let samples = open_loop(&l, start, run, every);
            (samples, h.join().unwrap())
        });
        let mut during: Vec<u64> = samples
            .iter()
            .filter(|(due, _)| {
                checkpoints
                    .iter()
                    .any(|(a, b, _)| (a.as_nanos() as u64..=b.as_nanos() as u64).contains(due))
            })
            .map(|(_, lat)| *lat)
            .collect();
        during.sort_unstable();
        if during.is_empty() {
            during.push(0);
        }
        // Its size: the segment's bytes right after it (a consume or two
        // may have followed).
        let bytes = checkpoints.last().map_or(0, |c| c.2);
        let checkpoints: Vec<Duration> = checkpoints.iter().map(|(a, b, _)| *b - *a).collect();
        let mean = checkpoints.iter().sum::<Duration>() / checkpoints.len() as u32;
        println!(
            "| {} | {} | {} | {:.2} MiB, {:.1} ms | {} / {} / {} ns | {} / {} / {} ns | {:.2} |",
            l.dedup_entries(),
            resident + 1000,
            dirty + 1000,
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
