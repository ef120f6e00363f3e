//! Throughput of the in-process consume: one and two threads, one hot user
//! and 100 000 users. Numbers and their interpretation: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use usage_sync_core::{
    Kind, Ledger, LedgerConfig, Timestamp, Units, UserId, UserProfile, open_catalogue,
};

const NOW: Timestamp = Timestamp(1_795_000_000_000);

/// A ledger where every consume is admitted (unlimited plan), so the bench
/// measures the counting path, with `users` users resident.
fn ledger(users: usize) -> (Arc<Ledger>, Kind, Vec<String>) {
    let (kinds, plans) = open_catalogue();
    let fast = *kinds.get("fast").unwrap();
    let l = Arc::new(Ledger::new(
        kinds,
        plans,
        LedgerConfig {
            threshold: 10,
            ..LedgerConfig::default()
        },
    ));
    let names: Vec<String> = (0..users).map(|i| format!("user-{i:06}")).collect();
    for n in &names {
        let id = UserId::parse(n).unwrap();
        l.warm(&id, UserProfile::default(), &[], l.load_epoch(n), NOW)
            .unwrap();
    }
    (l, fast, names)
}

/// Runs `iters` consumes split over `threads` threads; returns wall time.
fn run_threads(
    l: &Arc<Ledger>,
    kind: &Kind,
    names: &Arc<Vec<String>>,
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (l, kind, names, barrier) = (l.clone(), *kind, names.clone(), barrier.clone());
            std::thread::spawn(move || {
                let n = names.len();
                let mut i = t * 7919;
                barrier.wait();
                for _ in 0..iters / threads as u64 {
                    i = (i + 104_729) % n;
                    black_box(l.consume(&names[i], &kind, Units::ONE, None, NOW).unwrap());
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

/// The floor: a plain sharded map increment with the same keys and access
/// pattern (what a hand-rolled in-memory counter costs on this machine).
struct PlainMap {
    hasher: std::hash::RandomState,
    shards: Vec<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl PlainMap {
    fn new(names: &[String]) -> Self {
        let m = PlainMap {
            hasher: std::hash::RandomState::new(),
            shards: (0..64).map(|_| Default::default()).collect(),
        };
        for n in names {
            m.incr(n);
        }
        m
    }

    fn incr(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(key) >> 58) as usize;
        let mut g = self.shards[i].lock().unwrap();
        match g.get_mut(key) {
            Some(v) => {
                *v += 1;
                *v
            }
            None => {
                g.insert(key.to_owned(), 1);
                1
            }
        }
    }
}

fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Elements(1));
    let counter = std::sync::atomic::AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| {
        b.iter(|| black_box(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
    });
    for (label, users) in [("hot_user", 1usize), ("100k_users", 100_000)] {
        let names: Vec<String> = (0..users).map(|i| format!("user-{i:06}")).collect();
        let map = PlainMap::new(&names);
        let n = names.len();
        let mut i = 0usize;
        g.bench_function(format!("sharded_hashmap_incr/{label}"), |b| {
            b.iter(|| {
                i = (i + 104_729) % n;
                black_box(map.incr(&names[i]))
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("consume");
    g.throughput(Throughput::Elements(1));
    for (label, users) in [("hot_user", 1usize), ("100k_users", 100_000)] {
        let (l, fast, names) = ledger(users);
        let n = names.len();
        let mut i = 0usize;
        g.bench_function(format!("1_thread/{label}"), |b| {
            b.iter(|| {
                i = (i + 104_729) % n;
                black_box(l.consume(&names[i], &fast, Units::ONE, None, NOW).unwrap())
            })
        });
        let names = Arc::new(names);
        g.bench_function(format!("2_threads/{label}"), |b| {
            b.iter_custom(|iters| run_threads(&l, &fast, &names, 2, iters.max(2)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench, floors
}
criterion_main!(benches);
