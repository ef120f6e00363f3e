//! Latency percentiles of consume under two-thread contention on one user,
//! memory per tracked (user, kind) at one million users, and memory per
//! remembered request id at 1 M and 10 M ids (`REQUEST_IDS_MAX=1000000`
//! to stop at 1 M).
//!
//! `cargo bench -p usage-sync-core --bench hot_path` prints a small table;
//! docs/benchmarks.md records it.

// Measurement arithmetic: its numbers are its own, not a client's.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use usage_sync_core::{
    Ledger, LedgerConfig, Timestamp, Units, UserId, UserProfile, default_catalogue, open_catalogue,
};

/// Counts live heap bytes so memory per user is measured, not guessed.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const NOW: Timestamp = Timestamp(1_795_000_000_000);

fn ledger() -> Arc<Ledger> {
    let (kinds, plans) = open_catalogue();
    // Sized as the service sizes it for its default million users.
    let config = LedgerConfig {
        threshold: 10,
        ..LedgerConfig::sized_for(1_000_000)
    };
    Arc::new(Ledger::new(kinds, plans, config))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn contention() {
    let l = ledger();
    let id = UserId::parse("hot").unwrap();
    l.warm(&id, UserProfile::default(), &[], l.load_epoch("hot"), NOW)
        .unwrap();
    let fast = *l.kinds().get("fast").unwrap();
    const PER_THREAD: usize = 2_000_000;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (l, fast, barrier) = (l.clone(), fast, barrier.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(PER_THREAD);
                barrier.wait();
                for _ in 0..PER_THREAD {
                    let t = Instant::now();
                    black_box(l.consume("hot", &fast, Units::ONE, None, NOW).unwrap());
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    // Calibrate: what does timing an empty body cost on this machine?
    let mut empty: Vec<u64> = (0..1_000_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    empty.sort_unstable();
    println!("two threads, one hot user, {} consumes:", all.len());
    println!(
        "  p50 {} ns  p99 {} ns  p99.9 {} ns  max {} ns   (timer overhead p50 {} ns)",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all[all.len() - 1],
        percentile(&empty, 0.50)
    );
}

fn memory() {
    const USERS: usize = 1_000_000;
    let names: Vec<String> = (0..USERS).map(|i| format!("user-{i:07}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let l = ledger();
    let kinds: Vec<_> = l.kinds().iter().cloned().collect();
    for n in &names {
        let id = UserId::parse(n).unwrap();
        l.warm(&id, UserProfile::default(), &[], l.load_epoch(n), NOW)
            .unwrap();
        for k in &kinds {
            l.consume(n, k, Units::ONE, None, NOW).unwrap();
        }
    }
    let after = LIVE.load(Ordering::Relaxed);
    let bytes = (after - before) as f64;
    let counters = (USERS * kinds.len()) as f64;
    println!(
        "memory: {} users x {} kinds, all with pending units: {:.1} MiB live heap, {:.0} bytes per user, {:.0} bytes per (user, kind)",
        USERS,
        kinds.len(),
        bytes / 1048576.0,
        bytes / USERS as f64,
        bytes / counters
    );
    black_box(l);
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    contention();
    memory();
    request_ids();
}

/// A UUID-shaped request id (36 bytes), as the docs tell clients to send.
fn uuid_like(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i, i as u64 * 7919)
}

/// The layout before fingerprints: the whole id, the user's id and the
/// whole decision per remembered request, plus an expiry queue entry.
#[allow(dead_code)]
struct WholeRecord {
    lsn: Option<u64>,
    user: UserId,
    kind: usize,
    amount: u64,
    period_start: Timestamp,
    decision: (bool, u64, Option<u64>, Option<u64>, Timestamp),
    refunded: bool,
    at: Timestamp,
}

/// Memory per remembered request id, allocator-counted: the ledger's
/// table against whole ids and decisions in one map (the layout before
/// fingerprints), same run; and the expiry of all of them.
fn request_ids() {
    use std::collections::{HashMap, VecDeque};
    use usage_sync_core::RequestId;
    let max: usize = std::env::var("REQUEST_IDS_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    println!();
    println!(
        "| request ids remembered | ledger: live heap per id | whole ids and decisions (baseline): live heap per id | ratio | expiry of all of them, one heartbeat |"
    );
    println!("|---|---|---|---|---|");
    let users: Vec<UserId> = (0..1000)
        .map(|i| UserId::parse(&format!("user-{i:07}")).unwrap())
        .collect();
    for n in [1_000_000usize, 10_000_000] {
        if n > max {
            break;
        }
        let before = LIVE.load(Ordering::Relaxed);
        let mut whole: HashMap<RequestId, WholeRecord> = HashMap::new();
        let mut expiry: VecDeque<(Timestamp, RequestId)> = VecDeque::new();
        for i in 0..n {
            let rid = RequestId::parse(&uuid_like(i)).unwrap();
            whole.insert(
                rid.clone(),
                WholeRecord {
                    lsn: Some(i as u64),
                    user: users[i % users.len()].clone(),
                    kind: 1,
                    amount: 1,
                    period_start: NOW,
                    decision: (true, 1, None, None, NOW),
                    refunded: false,
                    at: NOW,
                },
            );
            expiry.push_back((NOW, rid));
        }
        let baseline = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        drop(whole);
        drop(expiry);

        let (kinds, plans) = default_catalogue();
        let fast = *kinds.get("fast").unwrap();
        let window = 24 * 3600 * 1000;
        let l = Ledger::new(
            kinds,
            plans,
            LedgerConfig {
                dedup_window_ms: window,
                ..LedgerConfig::default()
            },
        );
        for id in &users {
            let e = l.load_epoch(id.as_str());
            l.warm(id, UserProfile::default(), &[], e, NOW).unwrap();
        }
        let before = LIVE.load(Ordering::Relaxed);
        for i in 0..n {
            let rid = RequestId::parse(&uuid_like(i)).unwrap();
            let user = &users[i % users.len()];
            let o = l.consume(user.as_str(), &fast, Units::ONE, Some(&rid), NOW);
            assert!(!o.unwrap().deduplicated);
        }
        let heap = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        assert_eq!(l.dedup_entries(), n);
        // Past the window: the heartbeat expires every shard.
        let later = NOW.saturating_add_ms(window + window / 256);
        let t = Instant::now();
        let hb = l.heartbeat(later, i64::MAX, usize::MAX, 500);
        let sweep = t.elapsed();
        assert_eq!(hb.dedup_expired, n);
        println!(
            "| {n} | {heap:.1} bytes | {baseline:.1} bytes | {:.2} | {:.1} ms over 64 shards |",
            heap / baseline,
            sweep.as_secs_f64() * 1e3,
        );
    }
}
