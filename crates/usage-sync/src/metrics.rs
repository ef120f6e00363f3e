//! Request-path metrics: consume decisions and latency.
//!
//! These are touched on every consume from every core, so a single shared
//! atomic would bounce one cache line between the cores on each request.
//! Counters are striped: each thread adds to one of several padded slots
//! (chosen once per thread), and a read sums them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A counter that many threads add to cheaply.
pub struct StripedCounter {
    slots: [Slot; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

fn stripe() -> usize {
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

impl StripedCounter {
    pub fn add(&self, n: u64) {
        self.slots[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25,
];

/// A fixed-bucket histogram with striped counters.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<StripedCounter>,
    count: StripedCounter,
    sum_nanos: StripedCounter,
}

/// A histogram as read: cumulative counts per bound, then total and sum.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| StripedCounter::default()).collect(),
            count: StripedCounter::default(),
            sum_nanos: StripedCounter::default(),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].add(1);
        }
        self.count.add(1);
        self.sum_nanos
            .add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(&b, c)| {
                cumulative += c.get();
                (b, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.get(),
            sum_seconds: self.sum_nanos.get() as f64 / 1e9,
        }
    }
}

/// Consume decisions and their latency.
pub struct RequestMetrics {
    pub allowed: StripedCounter,
    pub denied: StripedCounter,
    pub deduplicated: StripedCounter,
    pub latency: Histogram,
    /// Store reads that make users resident: one observation per store
    /// call, which loads one user or a batch of cold ones (`loading`).
    pub store_load: Histogram,
}

impl RequestMetrics {
    /// Counts one decision by result.
    pub fn record(&self, deduplicated: bool, allowed: bool) {
        match (deduplicated, allowed) {
            (true, _) => self.deduplicated.add(1),
            (false, true) => self.allowed.add(1),
            (false, false) => self.denied.add(1),
        }
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            allowed: StripedCounter::default(),
            denied: StripedCounter::default(),
            deduplicated: StripedCounter::default(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            store_load: Histogram::new(&crate::stats::FLUSH_BUCKETS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = std::sync::Arc::new(StripedCounter::default());
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.add(1)))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 8000);
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&LATENCY_BUCKETS);
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_01, 1));
        assert_eq!(s.buckets[5], (0.000_5, 2));
        assert_eq!(
            s.buckets.last().unwrap().1,
            2,
            "1 s is above the last bound (only in +Inf)"
        );
    }
}
