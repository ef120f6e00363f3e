//! usage-sync's in-process consume against the `limitador` crate (in-memory
//! storage, a limit with a 30-day window standing in for a monthly quota)
//! and the floor (a bare `AtomicU64::fetch_add`, a `DashMap` increment), on
//! the same workloads, same machine, same run: one hot user and 100 000
//! users, one and two threads. Each cell is the median of three
//! interleaved 1 s rounds. Prints a Markdown table and one JSON line.
//!
//!   cargo run --release --manifest-path bench/compare/Cargo.toml

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use limitador::RateLimiter;
use limitador::limit::{Context, Expression, Limit, Namespace};
use usage_sync_core::{Ledger, LedgerConfig, Timestamp, Units, UserId, UserProfile, open_catalogue};

const NOW: Timestamp = Timestamp(1_795_000_000_000);
const ROUND: Duration = Duration::from_secs(1);

/// One system under test: `op(thread, i)` does one check-and-count.
trait Subject: Send + Sync {
    fn op(&self, user: usize);
}

struct UsageSync {
    ledger: Ledger,
    kind: usage_sync_core::Kind,
    names: Vec<String>,
}

impl Subject for UsageSync {
    fn op(&self, user: usize) {
        let out = self
            .ledger
            .consume(&self.names[user], &self.kind, Units::ONE, None, NOW)
            .unwrap();
        black_box(out.decision.allowed);
    }
}

struct Limitador {
    limiter: RateLimiter,
    ns: Namespace,
    ctxs: Vec<HashMap<String, String>>,
}

impl Subject for Limitador {
    fn op(&self, user: usize) {
        // The context is built per call, as a request handler would.
        let ctx = Context::from(self.ctxs[user].clone());
        let r = self
            .limiter
            .check_rate_limited_and_update(&self.ns, &ctx, 1)
            .unwrap();
        black_box(r.limited);
    }
}

struct Atomic(AtomicU64);

impl Subject for Atomic {
    fn op(&self, _: usize) {
        black_box(self.0.fetch_add(1, Ordering::Relaxed));
    }
}

struct Map {
    map: DashMap<String, u64, foldhash::fast::RandomState>,
    names: Vec<String>,
}

impl Subject for Map {
    fn op(&self, user: usize) {
        // Look up by &str as the HTTP path would, then increment.
        if let Some(mut v) = self.map.get_mut(self.names[user].as_str()) {
            *v += 1;
        }
    }
}

fn names(users: usize) -> Vec<String> {
    (0..users).map(|i| format!("user-{i:06}")).collect()
}

fn usage_sync(users: usize) -> UsageSync {
    let (kinds, plans) = open_catalogue();
    let kind = *kinds.get("fast").unwrap();
    let ledger = Ledger::new(
        kinds,
        plans,
        LedgerConfig {
            threshold: u64::MAX / 4,
            ..LedgerConfig::default()
        },
    );
    let names = names(users);
    for n in &names {
        let id = UserId::parse(n).unwrap();
        ledger
            .warm(&id, UserProfile::default(), &[], ledger.load_epoch(n), NOW)
            .unwrap();
    }
    UsageSync {
        ledger,
        kind,
        names,
    }
}

fn limitador(users: usize) -> Limitador {
    let limiter = RateLimiter::new(users as u64 * 2 + 1000);
    let ns = Namespace::from("app");
    // A monthly-like quota per user: 30-day window, a limit never reached.
    let limit = Limit::new(
        "app",
        u64::MAX / 4,
        30 * 86_400,
        vec![],
        vec![Expression::parse("user").unwrap()],
    );
    limiter.add_limit(limit);
    let ctxs = names(users)
        .into_iter()
        .map(|n| HashMap::from([("user".to_owned(), n)]))
        .collect();
    Limitador { limiter, ns, ctxs }
}

fn map(users: usize) -> Map {
    let map = DashMap::with_hasher(foldhash::fast::RandomState::default());
    let names = names(users);
    for n in &names {
        map.insert(n.clone(), 0);
    }
    Map { map, names }
}

/// Operations per second over one round with `threads` threads.
fn round(s: &Arc<dyn Subject>, users: usize, threads: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, stop, barrier) = (s.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut n = 0u64;
                // A stride that visits every user in a scattered order.
                let mut i = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        s.op(i % users);
                        i = i.wrapping_add(104_729);
                    }
                    n += 256;
                }
                n
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    std::thread::sleep(ROUND);
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let workloads = [(1usize, 1usize), (100_000, 1), (1, 2), (100_000, 2)];
    let mut rows = Vec::new();
    for (users, threads) in workloads {
        let subjects: Vec<(&str, Arc<dyn Subject>)> = vec![
            ("usage-sync", Arc::new(usage_sync(users))),
            ("limitador", Arc::new(limitador(users))),
            ("AtomicU64::fetch_add", Arc::new(Atomic(AtomicU64::new(0)))),
            ("DashMap increment", Arc::new(map(users))),
        ];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
        for _ in 0..3 {
            for (i, (_, s)) in subjects.iter().enumerate() {
                results[i].push(round(s, users, threads));
            }
        }
        let med: Vec<f64> = results
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.sort_by(f64::total_cmp);
                r[1]
            })
            .collect();
        rows.push((users, threads, med));
    }
    println!("| workload | usage-sync | limitador | × limitador | AtomicU64::fetch_add | usage-sync / atomic | DashMap increment | usage-sync / DashMap |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for (users, threads, m) in &rows {
        let name = format!(
            "{}, {} thread{}",
            if *users == 1 { "one hot user" } else { "100 000 users" },
            threads,
            if *threads == 1 { "" } else { "s" }
        );
        let ns = |ops: f64| 1e9 / ops * *threads as f64;
        println!(
            "| {name} | {:.2} M/s ({:.0} ns) | {:.2} M/s ({:.0} ns) | **{:.1}×** | {:.1} M/s ({:.1} ns) | {:.1}× slower | {:.2} M/s ({:.0} ns) | {:.2}× |",
            m[0] / 1e6, ns(m[0]), m[1] / 1e6, ns(m[1]), m[0] / m[1],
            m[2] / 1e6, ns(m[2]), m[2] / m[0], m[3] / 1e6, ns(m[3]), m[0] / m[3],
        );
        json.push(format!(
            "{{\"users\":{users},\"threads\":{threads},\"usage_sync\":{:.0},\"limitador\":{:.0},\"atomic\":{:.0},\"dashmap\":{:.0}}}",
            m[0], m[1], m[2], m[3]
        ));
    }
    println!("\nJSON [{}]", json.join(","));
}
