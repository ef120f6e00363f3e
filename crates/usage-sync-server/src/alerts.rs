//! Alerts evaluated inside the service, and their actions.
//!
//! Every `alert_interval` a reading is taken (flush counters, flush time,
//! process CPU); the [`Evaluator`] keeps the readings of the last
//! `alert_window` and compares the window's figures with the thresholds:
//!
//! | alert | fires when | action |
//! |---|---|---|
//! | `HighSyncLatency` | average flush time > threshold (5000 ms) | `scale_up`: flush concurrency +1 per evaluation while firing, up to a ceiling |
//! | `HighErrorRate` | failed / attempted flushes > threshold (5 %) | `alert_team`: an error log line and a JSON POST to `USAGE_SYNC_ALERT_WEBHOOK` (retried, off the request path) |
//! | `HighCPUUsage` | process CPU > threshold (80 % of a core) | `reduce_frequency`: check and heartbeat intervals ×2 per evaluation while firing, up to ×8; restored when resolved |
//!
//! Fired and resolved events are logged, listed at `GET /admin/v1/alerts`
//! and exported as `usage_sync_alert_firing`. The evaluator is a pure
//! function of its readings, so its steps are unit-tested with injected
//! values.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use usage_sync_core::Locked;

use serde_json::{Value, json};
use usage_sync::Engine;

use crate::http::routes::operate::process_stats;

/// The three alerts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alert {
    HighSyncLatency,
    HighErrorRate,
    HighCpuUsage,
}

impl Alert {
    pub const ALL: [Alert; 3] = [
        Alert::HighSyncLatency,
        Alert::HighErrorRate,
        Alert::HighCpuUsage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alert::HighSyncLatency => "HighSyncLatency",
            Alert::HighErrorRate => "HighErrorRate",
            Alert::HighCpuUsage => "HighCPUUsage",
        }
    }

    pub fn action(self) -> &'static str {
        match self {
            Alert::HighSyncLatency => "scale_up",
            Alert::HighErrorRate => "alert_team",
            Alert::HighCpuUsage => "reduce_frequency",
        }
    }
}

/// Thresholds and timing.
#[derive(Clone, Debug)]
pub struct AlertConfig {
    pub sync_latency_ms: f64,
    pub error_rate: f64,
    pub cpu_percent: f64,
    pub window: Duration,
    pub interval: Duration,
    pub webhook: Option<String>,
    pub concurrency_ceiling: usize,
    /// `SYNC_PERFORMANCE_MODE=optimized`: the adaptive controller owns the
    /// cadence (and `HighCPUUsage` leaves it to it).
    pub adaptive: bool,
    /// What 100 % CPU is, in cores: the cgroup quota, else one core
    /// (`operate::cpu_basis_cores`).
    pub cpu_cores: f64,
}

/// One reading of the cumulative counters.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub at: Instant,
    pub flushes: u64,
    pub failures: u64,
    pub flush_time: Duration,
    pub cpu_seconds: f64,
}

/// A change of an alert's state.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Fired { alert: Alert, value: f64 },
    Resolved { alert: Alert, value: f64 },
}

/// The figures of the current window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowFigures {
    pub avg_flush_ms: f64,
    pub error_rate: f64,
    pub cpu_percent: f64,
}

/// Decides, from readings, which alerts fire.
pub struct Evaluator {
    config: AlertConfig,
    readings: VecDeque<Reading>,
    firing: Vec<(Alert, Instant, f64)>,
}

impl Evaluator {
    pub fn new(config: AlertConfig) -> Self {
        Evaluator {
            config,
            readings: VecDeque::new(),
            firing: Vec::new(),
        }
    }

    pub fn threshold(&self, a: Alert) -> f64 {
        match a {
            Alert::HighSyncLatency => self.config.sync_latency_ms,
            Alert::HighErrorRate => self.config.error_rate,
            Alert::HighCpuUsage => self.config.cpu_percent,
        }
    }

    /// Figures over the window: between the oldest reading still inside it
    /// (or just before it) and the newest.
    pub fn figures(&self) -> WindowFigures {
        let (Some(first), Some(last)) = (self.readings.front(), self.readings.back()) else {
            return WindowFigures::default();
        };
        let flushes = last.flushes.saturating_sub(first.flushes);
        let failures = last.failures.saturating_sub(first.failures);
        let time = last.flush_time.saturating_sub(first.flush_time);
        let wall = last.at.duration_since(first.at).as_secs_f64();
        WindowFigures {
            // Over every attempt: a database that times out every flush
            // has no successful flush to average, and must still read slow.
            avg_flush_ms: if flushes + failures > 0 {
                time.as_secs_f64() * 1000.0 / (flushes + failures) as f64
            } else {
                0.0
            },
            error_rate: if flushes + failures > 0 {
                failures as f64 / (flushes + failures) as f64
            } else {
                0.0
            },
            cpu_percent: if wall > 0.0 {
                ((last.cpu_seconds - first.cpu_seconds) / wall / self.config.cpu_cores * 100.0)
                    .max(0.0)
            } else {
                0.0
            },
        }
    }

    /// Adds a reading and returns the alerts that fired or resolved.
    pub fn observe(&mut self, r: Reading) -> Vec<Event> {
        self.readings.push_back(r);
        // Keep one reading at or before the window's start as the base.
        while self.readings.len() > 2
            && r.at.duration_since(self.readings[1].at) >= self.config.window
        {
            self.readings.pop_front();
        }
        let f = self.figures();
        let mut events = Vec::new();
        for a in Alert::ALL {
            let value = match a {
                Alert::HighSyncLatency => f.avg_flush_ms,
                Alert::HighErrorRate => f.error_rate,
                Alert::HighCpuUsage => f.cpu_percent,
            };
            let active = self.readings.len() >= 2 && value > self.threshold(a);
            let pos = self.firing.iter().position(|(x, _, _)| *x == a);
            match (active, pos) {
                (true, None) => {
                    self.firing.push((a, r.at, value));
                    events.push(Event::Fired { alert: a, value });
                }
                (true, Some(i)) => self.firing[i].2 = value,
                (false, Some(i)) => {
                    self.firing.remove(i);
                    events.push(Event::Resolved { alert: a, value });
                }
                (false, None) => {}
            }
        }
        events
    }

    /// Readings currently in the window.
    pub fn readings(&self) -> usize {
        self.readings.len()
    }

    /// Alerts firing now: (alert, since, latest value).
    pub fn firing(&self) -> &[(Alert, Instant, f64)] {
        &self.firing
    }
}

/// What `GET /admin/v1/alerts` and the metrics show.
#[derive(Default)]
pub struct AlertsView {
    pub firing: Vec<Value>,
    pub history: VecDeque<Value>,
    pub figures: WindowFigures,
    pub firing_names: Vec<&'static str>,
    /// Readings in the window (figures mean something from 2 on).
    pub readings: usize,
    /// Evaluations since start; each ran the firing alerts' actions once
    /// before it was counted here.
    pub evaluations: u64,
}

pub type SharedAlerts = Arc<Mutex<AlertsView>>;

fn now_text(engine: &Engine) -> String {
    engine.now().to_rfc3339()
}

/// Posts an alert to the webhook, retrying 3 times with backoff, in its own
/// task: never on the request path, never blocking evaluation.
fn notify(webhook: &Option<String>, body: Value) {
    let Some(url) = webhook.clone() else { return };
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(c) => c,
            Err(_) => return,
        };
        let backoff = usage_sync_core::Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(4),
        };
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(backoff.delay(attempt - 1, fastrand::f64())).await;
            }
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => {
                    tracing::warn!(target: "admin", status = %r.status(), attempt, "alert webhook refused the alert")
                }
                Err(e) => {
                    tracing::warn!(target: "admin", error = %e, attempt, "alert webhook unreachable")
                }
            }
        }
        tracing::error!(target: "admin", "alert webhook failed after 4 attempts; the alert is only in the logs");
    });
}

/// Takes a reading every interval, evaluates, and carries out actions.
pub async fn run(engine: Engine, config: AlertConfig, view: SharedAlerts) {
    let base_concurrency = engine.flush_concurrency();
    let mut eval = Evaluator::new(config.clone());
    let mut controller = crate::cadence::Controller::new(crate::cadence::Bands::default());
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !engine.is_accepting() {
            return;
        }
        let s = engine.stats();
        let reading = Reading {
            at: Instant::now(),
            flushes: s.flushes,
            failures: s.failures,
            flush_time: s.total_flush_time,
            cpu_seconds: process_stats().map_or(0.0, |p| p.0),
        };
        let events = eval.observe(reading);
        for e in &events {
            let (alert, value, status) = match e {
                Event::Fired { alert, value } => (*alert, *value, "firing"),
                Event::Resolved { alert, value } => (*alert, *value, "resolved"),
            };
            let body = json!({
                "alert": alert.name(),
                "action": alert.action(),
                "status": status,
                "value": value,
                "threshold": eval.threshold(alert),
                "at": now_text(&engine),
                "service": "usage-sync",
            });
            match (alert, status) {
                (Alert::HighErrorRate, "firing") => {
                    tracing::error!(target: "admin", alert = alert.name(), value, "alert firing: flushes are failing; action alert_team");
                }
                (_, "firing") => {
                    tracing::warn!(target: "admin", alert = alert.name(), value, action = alert.action(), "alert firing")
                }
                _ => tracing::info!(target: "admin", alert = alert.name(), value, "alert resolved"),
            }
            if alert == Alert::HighErrorRate {
                notify(&config.webhook, body.clone());
            }
            if (alert, status) == (Alert::HighCpuUsage, "resolved") && !config.adaptive {
                engine.set_cadence(1, "as configured");
            }
            let mut v = view.locked();
            v.history.push_front(body);
            v.history.truncate(50);
        }
        // Actions repeat while an alert stays firing: one step per
        // evaluation, within their bounds.
        for (alert, _, _) in eval.firing() {
            match alert {
                Alert::HighSyncLatency => {
                    let next = (engine.flush_concurrency() + 1)
                        .min(config.concurrency_ceiling.max(base_concurrency));
                    engine.raise_flush_concurrency(next);
                }
                Alert::HighCpuUsage if !config.adaptive => {
                    let m = (engine.cadence().0 * 2).min(8);
                    engine.set_cadence(m, "HighCPUUsage");
                }
                Alert::HighCpuUsage => {}
                Alert::HighErrorRate => {}
            }
        }
        if config.adaptive && eval.readings() >= 2 {
            let f = eval.figures();
            let (m, why) = controller.step(f.cpu_percent, f.avg_flush_ms);
            engine.set_cadence(m, &why);
        }
        let mut v = view.locked();
        v.figures = eval.figures();
        v.readings = eval.readings();
        v.evaluations += 1;
        v.firing_names = eval.firing().iter().map(|(a, _, _)| a.name()).collect();
        v.firing = eval
            .firing()
            .iter()
            .map(|(a, since, value)| {
                json!({
                    "alert": a.name(),
                    "action": a.action(),
                    "value": value,
                    "threshold": eval.threshold(*a),
                    "firing_for_seconds": since.elapsed().as_secs_f64(),
                })
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertConfig {
        AlertConfig {
            adaptive: false,
            sync_latency_ms: 5000.0,
            error_rate: 0.05,
            cpu_percent: 80.0,
            window: Duration::from_secs(300),
            interval: Duration::from_secs(15),
            webhook: None,
            concurrency_ceiling: 8,
            cpu_cores: 1.0,
        }
    }

    /// Under a CPU quota, 100 % is the quota: the process that uses 0.4 of
    /// a core under a 500m limit is at 80 % and fires `HighCPUUsage`
    /// (measured against one core it read 40 % and could never reach 80).
    #[test]
    fn cpu_is_measured_against_the_quota() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(AlertConfig {
            cpu_cores: 0.5,
            cpu_percent: 70.0,
            ..cfg()
        });
        e.observe(reading(t0, 0, 0, 0, 0, 0.0));
        let fired = e.observe(reading(t0, 10, 0, 0, 0, 4.0));
        assert!((e.figures().cpu_percent - 80.0).abs() < 1e-9);
        assert_eq!(
            fired,
            vec![Event::Fired {
                alert: Alert::HighCpuUsage,
                value: 80.0
            }]
        );
    }

    #[test]
    fn the_quota_is_read_from_a_cgroup_v2_or_v1_root() {
        use crate::http::routes::operate::cpu_quota_cores;
        let root = tempfile::tempdir().unwrap();
        assert_eq!(cpu_quota_cores(root.path()), None, "no cgroup: no quota");
        std::fs::write(root.path().join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(cpu_quota_cores(root.path()), Some(0.5));
        std::fs::write(root.path().join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(cpu_quota_cores(root.path()), None, "unlimited");
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("cpu")).unwrap();
        std::fs::write(v1.path().join("cpu/cpu.cfs_quota_us"), "150000\n").unwrap();
        std::fs::write(v1.path().join("cpu/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(cpu_quota_cores(v1.path()), Some(1.5));
        std::fs::write(v1.path().join("cpu/cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(cpu_quota_cores(v1.path()), None);
    }

    fn reading(
        t0: Instant,
        secs: u64,
        flushes: u64,
        failures: u64,
        flush_ms: u64,
        cpu: f64,
    ) -> Reading {
        Reading {
            at: t0 + Duration::from_secs(secs),
            flushes,
            failures,
            flush_time: Duration::from_millis(flush_ms),
            cpu_seconds: cpu,
        }
    }

    #[test]
    fn nothing_fires_on_a_single_reading_or_when_calm() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(cfg());
        assert!(e.observe(reading(t0, 0, 0, 0, 0, 0.0)).is_empty());
        assert!(e.observe(reading(t0, 15, 100, 1, 1000, 3.0)).is_empty());
        let f = e.figures();
        // 1 000 ms over 101 attempts, the failed one included.
        assert!((f.avg_flush_ms - 1000.0 / 101.0).abs() < 1e-9);
        assert!((f.error_rate - 1.0 / 101.0).abs() < 1e-9);
        assert!((f.cpu_percent - 20.0).abs() < 1e-9);
    }

    #[test]
    fn each_alert_fires_above_its_threshold_and_resolves_below() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(cfg());
        e.observe(reading(t0, 0, 0, 0, 0, 0.0));
        // 10 flushes of 6 s each, 1 failure in 11 attempts (9 %), CPU 90 %.
        let ev = e.observe(reading(t0, 100, 10, 1, 60_000, 90.0));
        let names: Vec<_> = ev
            .iter()
            .map(|x| match x {
                Event::Fired { alert, .. } => alert.name(),
                Event::Resolved { .. } => "resolved?",
            })
            .collect();
        assert_eq!(
            names,
            vec!["HighSyncLatency", "HighErrorRate", "HighCPUUsage"]
        );
        assert_eq!(e.firing().len(), 3);
        // Still firing: no new events.
        assert!(
            e.observe(reading(t0, 200, 20, 2, 120_000, 180.0))
                .is_empty()
        );
        // The window (300 s) moves past the bad period: fast flushes, no
        // failures, little CPU.
        let mut ev = e.observe(reading(t0, 500, 1000, 2, 121_000, 181.0));
        ev.extend(e.observe(reading(t0, 800, 2000, 2, 122_000, 182.0)));
        let resolved: Vec<_> = ev
            .iter()
            .filter_map(|x| match x {
                Event::Resolved { alert, .. } => Some(alert.name()),
                Event::Fired { .. } => None,
            })
            .collect();
        assert_eq!(
            resolved,
            vec!["HighSyncLatency", "HighErrorRate", "HighCPUUsage"]
        );
        assert!(e.firing().is_empty());
    }

    #[test]
    fn thresholds_are_strict() {
        let t0 = Instant::now();
        let mut e = Evaluator::new(AlertConfig {
            error_rate: 0.5,
            ..cfg()
        });
        e.observe(reading(t0, 0, 0, 0, 0, 0.0));
        // Exactly 50 % is not above 50 %.
        assert!(e.observe(reading(t0, 10, 1, 1, 10, 0.0)).is_empty());
        assert_eq!(
            e.observe(reading(t0, 20, 1, 3, 10, 0.0)),
            vec![Event::Fired {
                alert: Alert::HighErrorRate,
                value: 0.75
            }]
        );
    }
}
