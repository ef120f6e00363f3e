//! Latency percentiles of consume under two-thread contention on one user,
//! and memory per tracked (user, kind) at one million users.
//!
//! `cargo bench -p usage-sync-core --bench hot_path` prints a small table;
//! docs/benchmarks.md records it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use usage_sync_core::{
    Ledger, LedgerConfig, PeriodKind, Plan, Plans, Timestamp, Units, UserId, UserProfile,
    default_catalogue,
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
            threshold: 10,
            ..LedgerConfig::default()
        },
    ))
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
}
