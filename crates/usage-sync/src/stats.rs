//! Counters describing what the sync engine has done, per trigger.
//!
//! Flushes happen at most a few hundred times a second, so a mutex around
//! plain integers is simpler than atomics and costs nothing measurable.

use std::sync::Mutex;
use std::time::Duration;
use usage_sync_core::Locked;

use usage_sync_core::{Timestamp, Trigger};

/// Upper bounds (seconds) of the flush-duration histogram buckets.
pub const FLUSH_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Per-trigger totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriggerStats {
    pub flushes: u64,
    pub failures: u64,
    pub units: i64,
    pub rows: u64,
}

/// A snapshot of the sync statistics.
#[derive(Clone, Debug, Default)]
pub struct SyncStatsSnapshot {
    /// Indexed by [`Trigger::index`].
    pub by_trigger: Vec<(Trigger, TriggerStats)>,
    pub flushes: u64,
    pub failures: u64,
    pub transient_failures: u64,
    pub units_flushed: i64,
    pub rows_written: u64,
    /// Batches whose flush id was already in the store: a retry of a commit
    /// whose acknowledgement was lost. Nothing was applied twice.
    pub already_applied: u64,
    /// Time spent in flush attempts, successful or not (a timed-out
    /// attempt counts its whole timeout): a database that times out every
    /// flush must show as slow, not as idle.
    pub total_flush_time: Duration,
    pub max_flush_time: Duration,
    /// Users whose counters a successful flush wrote, counted once per
    /// flush (the original guide's `syncCount`, which counts per-user
    /// syncs where `flushes` counts batches).
    pub user_syncs: u64,
    /// When these statistics started: the engine's start, or the last
    /// `POST /admin/v1/stats/reset`. Rates such as flushes per hour are
    /// over the time since.
    pub since: Option<Timestamp>,
    pub last_flush_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Successful flushes per [`FLUSH_BUCKETS`] bucket (not cumulative);
    /// the last entry counts flushes slower than the largest bound.
    pub flush_buckets: [u64; FLUSH_BUCKETS.len() + 1],
}

impl SyncStatsSnapshot {
    /// Average time of a flush attempt, failed and timed-out ones included.
    pub fn avg_flush_ms(&self) -> f64 {
        let attempts = self.flushes + self.failures;
        if attempts == 0 {
            0.0
        } else {
            self.total_flush_time.as_secs_f64() * 1000.0 / attempts as f64
        }
    }

    /// Successful flushes per hour since [`SyncStatsSnapshot::since`].
    pub fn flushes_per_hour(&self, now: Timestamp) -> f64 {
        let secs = self.since.map_or(0.0, |t| now.since(t) as f64 / 1000.0);
        if secs > 0.0 {
            self.flushes as f64 * 3600.0 / secs
        } else {
            0.0
        }
    }

    pub fn error_rate(&self) -> f64 {
        let attempts = self.flushes + self.failures;
        if attempts == 0 {
            0.0
        } else {
            self.failures as f64 / attempts as f64
        }
    }

    /// The flush time below which a fraction `q` of flushes finished, as
    /// the upper bound of the histogram bucket it falls in (so an upper
    /// estimate); `None` before the first flush or beyond the last bound.
    pub fn flush_percentile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.flush_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        // A rank from a quantile (0 to 1) of a count: not a client's
        // number, and clamped to 1..=total before the cast.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = (q * total as f64).ceil().clamp(1.0, total as f64) as u64;
        let mut seen = 0;
        for (i, n) in self.flush_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return FLUSH_BUCKETS.get(i).map(|b| b * 1000.0);
            }
        }
        None
    }

    pub fn trigger(&self, t: Trigger) -> &TriggerStats {
        &self.by_trigger[t.index()].1
    }
}

#[derive(Debug)]
pub(crate) struct SyncStats {
    inner: Mutex<SyncStatsSnapshot>,
}

impl SyncStats {
    pub(crate) fn new(since: Timestamp) -> Self {
        let snap = SyncStatsSnapshot {
            since: Some(since),
            by_trigger: Trigger::ALL
                .iter()
                .map(|t| (*t, TriggerStats::default()))
                .collect(),
            ..Default::default()
        };
        SyncStats {
            inner: Mutex::new(snap),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut SyncStatsSnapshot) -> R) -> R {
        f(&mut self.inner.locked())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn success(
        &self,
        trigger: Trigger,
        took: Duration,
        units: i64,
        rows: u64,
        users: u64,
        already_applied: bool,
        now: Timestamp,
    ) {
        self.with(|s| {
            s.user_syncs += users;
            let t = &mut s.by_trigger[trigger.index()].1;
            t.flushes += 1;
            t.units += units;
            t.rows += rows;
            s.flushes += 1;
            s.units_flushed += units;
            s.rows_written += rows;
            s.already_applied += already_applied as u64;
            s.total_flush_time += took;
            s.max_flush_time = s.max_flush_time.max(took);
            let secs = took.as_secs_f64();
            let i = FLUSH_BUCKETS
                .iter()
                .position(|&b| secs <= b)
                .unwrap_or(FLUSH_BUCKETS.len());
            s.flush_buckets[i] += 1;
            s.last_flush_at = Some(now);
        })
    }

    pub(crate) fn failure(&self, trigger: Trigger, took: Duration, transient: bool, error: String) {
        self.with(|s| {
            s.total_flush_time += took;
            s.max_flush_time = s.max_flush_time.max(took);
            s.by_trigger[trigger.index()].1.failures += 1;
            s.failures += 1;
            s.transient_failures += transient as u64;
            s.last_error = Some(error);
        })
    }

    pub(crate) fn snapshot(&self) -> SyncStatsSnapshot {
        self.with(|s| s.clone())
    }

    /// Starts the statistics over at `now`.
    pub(crate) fn reset(&self, now: Timestamp) {
        *self.inner.locked() = SyncStats::new(now).snapshot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_percentiles_are_bucket_upper_bounds() {
        let s = SyncStats::new(Timestamp::EPOCH);
        assert_eq!(s.snapshot().flush_percentile_ms(0.5), None);
        for ms in [2, 2, 2, 40, 40, 40, 40, 40, 40, 700] {
            s.success(
                Trigger::Check,
                Duration::from_millis(ms),
                1,
                1,
                1,
                false,
                Timestamp::EPOCH,
            );
        }
        let snap = s.snapshot();
        assert_eq!(snap.flush_percentile_ms(0.3), Some(2.5));
        assert_eq!(snap.flush_percentile_ms(0.5), Some(50.0));
        assert_eq!(snap.flush_percentile_ms(0.99), Some(1000.0));
        s.reset(Timestamp::EPOCH);
        assert_eq!(s.snapshot().flush_buckets.iter().sum::<u64>(), 0);
    }

    /// The monitor as the original guide means it: failed and timed-out
    /// attempts count in the average flush time, rates run from the last
    /// reset, and per-user syncs are counted apart from batches.
    #[test]
    fn failures_count_in_the_average_and_rates_start_at_the_reset() {
        let t = |s: i64| Timestamp::EPOCH.saturating_add_ms(s * 1000);
        let s = SyncStats::new(t(0));
        s.success(
            Trigger::Check,
            Duration::from_millis(100),
            5,
            3,
            3,
            false,
            t(1),
        );
        s.failure(
            Trigger::Check,
            Duration::from_millis(5000),
            true,
            "timed out".into(),
        );
        let snap = s.snapshot();
        assert!(
            (snap.avg_flush_ms() - 2550.0).abs() < 1e-9,
            "{}",
            snap.avg_flush_ms()
        );
        assert_eq!((snap.flushes, snap.user_syncs), (1, 3));
        // One flush an hour after the start: 1 per hour.
        assert!((snap.flushes_per_hour(t(3600)) - 1.0).abs() < 1e-9);
        // Reset at 6 s: a flush right after is one flush over the time
        // since the reset, not since the start.
        s.reset(t(6));
        s.success(
            Trigger::Check,
            Duration::from_millis(10),
            1,
            1,
            1,
            false,
            t(7),
        );
        let snap = s.snapshot();
        assert!((snap.flushes_per_hour(t(3606)) - 1.0).abs() < 1e-9);
        assert_eq!(snap.since, Some(t(6)));
    }
}
