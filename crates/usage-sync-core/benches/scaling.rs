//! How the sync engine's timed passes scale with the users held in memory:
//! one heartbeat, one check and one guarantee pass with 1 000, 100 000 and
//! 1 000 000 users tracked, 0 % and 10 % of them with pending units; and
//! resident memory per tracked user. None of the passes may walk every
//! user: the heartbeat reads the front of the activity queue, the check
//! the front of the dirty FIFO, the guarantee only the dirty users. Also
//! the totals a metrics scrape reads (kept per shard), against a walk over
//! every user in the same run (`top_pending`, which the status page does).
//!
//!   cargo bench -p usage-sync-core --bench scaling
//!   (SCALING_MAX=100000 to stop at 100 000 users)

use std::time::{Duration, Instant};

use usage_sync_core::{
    Ledger, LedgerConfig, Timestamp, Trigger, Units, UserId, UserProfile, default_catalogue,
};

const T0: Timestamp = Timestamp(1_795_000_000_000);

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Makes every tenth user dirty again (one unit each), untimed.
fn dirty(l: &Ledger, ids: &[UserId], kind: &usage_sync_core::Kind, percent: usize, now: Timestamp) {
    if percent == 0 {
        return;
    }
    for id in ids.iter().step_by(100 / percent) {
        l.consume(id.as_str(), kind, Units::ONE, None, now).unwrap();
    }
}

/// Completes taken batches so their counters are clean again.
fn land(l: &Ledger, batches: &[usage_sync_core::FlushBatch], now: Timestamp) {
    for b in batches {
        l.complete(b, &vec![1; b.deltas.len()], now);
    }
}

fn main() {
    let max: usize = std::env::var("SCALING_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "| users tracked | pending | heartbeat pass | check pass (≤ 100 users) | guarantee pass | users flushed by the guarantee | metrics totals | walk over every user (baseline) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut memory = Vec::new();
    for n in [1_000usize, 100_000, 1_000_000] {
        if n > max {
            break;
        }
        let (kinds, plans) = default_catalogue();
        let fast = *kinds.get("fast").unwrap();
        let rss0 = rss_bytes();
        let l = Ledger::new(
            kinds,
            plans,
            LedgerConfig {
                threshold: 1_000_000,
                ..LedgerConfig::default()
            },
        );
        let ids: Vec<UserId> = (0..n)
            .map(|i| UserId::parse(&format!("user-{i:07}")).unwrap())
            .collect();
        for id in &ids {
            let e = l.load_epoch(id.as_str());
            l.warm(id, UserProfile::default(), &[], e, T0).unwrap();
        }
        let rss1 = rss_bytes();
        // Ids are held by the bench too; subtract their share roughly by
        // measuring with one kind consumed (a counter per user exists
        // from the warm-up either way).
        memory.push((n, (rss1.saturating_sub(rss0)) as f64 / n as f64));
        for percent in [0usize, 10] {
            let mut hb = Vec::new();
            let mut check = Vec::new();
            let mut guarantee = Vec::new();
            let mut totals = Vec::new();
            let mut walk = Vec::new();
            let mut flushed = 0;
            for round in 0..5 {
                let now = T0.saturating_add_ms(1000 * (round as i64 + 1));
                dirty(&l, &ids, &fast, percent, now);
                let t = Instant::now();
                std::hint::black_box(l.totals());
                totals.push(t.elapsed());
                let t = Instant::now();
                std::hint::black_box(l.top_pending(10));
                walk.push(t.elapsed());
                // Heartbeat: a session timeout of an hour, so nobody is idle.
                let t = Instant::now();
                let out = l.heartbeat(now, 3_600_000, usize::MAX, 500);
                hb.push(t.elapsed());
                land(&l, &out.session_end, now);
                let t = Instant::now();
                let (batches, _) = l.take_oldest(100, 500, Trigger::Check);
                check.push(t.elapsed());
                land(&l, &batches, now);
                let t = Instant::now();
                let (batches, users) = l.take_all(500, Trigger::Guarantee);
                guarantee.push(t.elapsed());
                flushed = users;
                land(&l, &batches, now);
            }
            println!(
                "| {n} | {percent} % | {:.1} µs | {:.1} µs | {:.1} µs | {flushed} | {:.1} µs | {:.1} µs |",
                median(hb).as_secs_f64() * 1e6,
                median(check).as_secs_f64() * 1e6,
                median(guarantee).as_secs_f64() * 1e6,
                median(totals).as_secs_f64() * 1e6,
                median(walk).as_secs_f64() * 1e6,
            );
        }
        drop(l);
    }
    println!();
    println!(
        "| users tracked | resident memory per tracked user (RSS growth / users, one kind counted) |"
    );
    println!("|---|---|");
    for (n, b) in memory {
        println!("| {n} | {b:.0} bytes |");
    }
}
