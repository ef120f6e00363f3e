//! `GET /metrics`: the engine's, the process's and the alerts' figures in
//! the Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! The engine counts on its own (striped counters and fixed-bucket
//! histograms on the request path, flush statistics in the sync engine);
//! this module only reads those figures at each scrape, as a
//! [`Collector`], and lets the library write the names, labels, escaping,
//! cumulative buckets and the `_total` of counters.
//!
//! Metrics carry no per-user labels (their cardinality would grow with the
//! user base); per-user detail is in `diagnose`. A scrape never walks the
//! users: pending units, users with units and the oldest pending unit come
//! from totals each ledger shard keeps as units change (one lock per
//! shard).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use usage_sync::{Engine, LogStatus};

use crate::alerts::Alert;
use crate::http::routes::operate::{cpu_basis_cores, process_stats};

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric, named `usage_sync_*`.
pub fn render(engine: &Engine, firing: Vec<&'static str>) -> String {
    let mut registry = Registry::with_prefix("usage_sync");
    registry.register_collector(Box::new(Scrape {
        engine: engine.clone(),
        firing,
    }));
    let mut out = String::with_capacity(8 << 10);
    // Writing into a `String` fails only if a collector does, and ours
    // only write; an error would leave a truncated page, never a panic.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(target: "admin", error = %e, "encoding the metrics failed");
    }
    out
}

/// One scrape's view: the engine, and the alerts firing at its start.
struct Scrape {
    engine: Engine,
    firing: Vec<&'static str>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl EncodeGaugeValue,
) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// `name` without its `_total`, which the encoder adds.
fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl EncodeCounterValue,
) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// A family of series told apart by labels.
fn family<const N: usize, V: Copy>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: &[([(&str, &str); N], V)],
) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
    ConstCounter<V>: EncodeMetric,
{
    let mut m = e.encode_descriptor(name, help, None, metric_type)?;
    for (labels, v) in series {
        let one = m.encode_family(labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(*v).encode(one)?,
            _ => ConstGauge::new(*v).encode(one)?,
        }
    }
    Ok(())
}

/// A histogram from cumulative counts per upper bound, as the engine's
/// snapshots give them (the encoder wants each bucket's own count).
fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    cumulative: &[(f64, u64)],
    count: u64,
    sum: f64,
) -> fmt::Result {
    let mut below = 0;
    let buckets: Vec<(f64, u64)> = cumulative
        .iter()
        .map(|&(bound, n)| {
            let own = n.saturating_sub(below);
            below = n;
            (bound, own)
        })
        .collect();
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    if labels.is_empty() {
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    } else {
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let engine = &self.engine;
        let e = &mut e;
        let r = engine.request_metrics();
        family(
            e,
            "consume",
            "Consume decisions by result.",
            MetricType::Counter,
            &[
                ([("result", "allowed")], r.allowed.get()),
                ([("result", "denied")], r.denied.get()),
                ([("result", "deduplicated")], r.deduplicated.get()),
            ],
        )?;
        let h = r.latency.snapshot();
        histogram(
            e,
            "consume_duration_seconds",
            "Time to decide and count a consume (including the log's durability wait).",
            &[],
            &h.buckets,
            h.count,
            h.sum_seconds,
        )?;

        let s = engine.stats();
        let flushes: Vec<([(&str, &str); 2], u64)> = s
            .by_trigger
            .iter()
            .flat_map(|(t, ts)| {
                [
                    ([("trigger", t.as_str()), ("outcome", "ok")], ts.flushes),
                    ([("trigger", t.as_str()), ("outcome", "error")], ts.failures),
                ]
            })
            .collect();
        family(
            e,
            "flushes",
            "Flushes by trigger and outcome.",
            MetricType::Counter,
            &flushes,
        )?;
        family(
            e,
            "flush_errors",
            "Failed flushes by kind (transient ones are retried).",
            MetricType::Counter,
            &[
                ([("kind", "transient")], s.transient_failures),
                (
                    [("kind", "permanent")],
                    s.failures.saturating_sub(s.transient_failures),
                ),
            ],
        )?;
        let mut cumulative = 0;
        let flush_buckets: Vec<(f64, u64)> = usage_sync::stats::FLUSH_BUCKETS
            .iter()
            .zip(&s.flush_buckets)
            .map(|(&b, n)| {
                cumulative += n;
                (b, cumulative)
            })
            .collect();
        histogram(
            e,
            "flush_duration_seconds",
            "Time of successful flushes (one transaction each).",
            &[],
            &flush_buckets,
            s.flushes,
            s.total_flush_time.as_secs_f64(),
        )?;
        let h = r.store_load.snapshot();
        histogram(
            e,
            "store_query_duration_seconds",
            "Store queries on the request path: loading users who are not in memory, one observation per call (a batch of up to 256 cold users is one call; flushes are in flush_duration_seconds).",
            &[("op", "load_user")],
            &h.buckets,
            h.count,
            h.sum_seconds,
        )?;
        counter(
            e,
            "flushed_units",
            "Net units written to the store.",
            // Net units can fall after refunds; a counter never does.
            u64::try_from(s.units_flushed).unwrap_or(0),
        )?;
        counter(
            e,
            "rows_written",
            "Counter rows written to the store.",
            s.rows_written,
        )?;

        let now = engine.now();
        let figures = engine.ledger_figures();
        let t = &figures.totals;
        gauge(
            e,
            "pending_units",
            "Units counted and not yet known to be in the store (units at risk without the log).",
            t.pending + t.in_flight,
        )?;
        let age = t.oldest_pending.map_or(0, |o| now.since(o));
        gauge(
            e,
            "oldest_pending_age_seconds",
            "Age of the oldest unit waiting to be flushed.",
            age as f64 / 1000.0,
        )?;
        gauge(
            e,
            "users_tracked",
            "Users held in memory.",
            figures.users_resident,
        )?;
        gauge(
            e,
            "users_active",
            "Users with units not yet in the store.",
            t.users_with_pending,
        )?;
        gauge(
            e,
            "request_ids_remembered",
            "Request ids inside the dedup window.",
            figures.request_ids_remembered,
        )?;
        gauge(
            e,
            "request_ids_limit",
            "Most request ids remembered at once; a consume with a new id past it is refused (503).",
            engine.config().max_request_ids,
        )?;
        if let Some(sh) = engine.sharing() {
            gauge(
                e,
                "redis_up",
                "1 while the shared tier (Redis) answers; 0 while degraded to the fallback.",
                u32::from(sh.up),
            )?;
            for (name, help, v) in [
                (
                    "redis_operations",
                    "Redis commands and scripts sent.",
                    sh.redis_operations,
                ),
                (
                    "redis_errors",
                    "Redis calls that failed or timed out.",
                    sh.redis_errors,
                ),
                (
                    "redis_fallback_decisions",
                    "Consume decisions made without Redis while degraded.",
                    sh.fallback_decisions,
                ),
                (
                    "lease_units_granted",
                    "Units taken from Redis as leases.",
                    sh.lease_units_granted,
                ),
                (
                    "lease_units_returned",
                    "Unspent lease units given back to Redis.",
                    sh.lease_units_returned,
                ),
            ] {
                counter(e, name, help, v)?;
            }
        }
        let (retry_batches, retry_units) = engine.retry_backlog();
        gauge(
            e,
            "retry_backlog_units",
            "Units in batches waiting for a retry.",
            retry_units,
        )?;
        gauge(
            e,
            "retry_backlog_batches",
            "Batches waiting for a retry.",
            retry_batches,
        )?;
        if let Some((size, in_use)) = engine.store_pool() {
            family(
                e,
                "store_pool_connections",
                "Store pool connections by state.",
                MetricType::Gauge,
                &[
                    ([("state", "in_use")], in_use),
                    ([("state", "idle_or_free")], size.saturating_sub(in_use)),
                ],
            )?;
        }
        if let Some(LogStatus {
            segment,
            segment_bytes,
            writable,
        }) = engine.log_status()
        {
            gauge(
                e,
                "wal_segment_bytes",
                "Bytes in the current write-ahead log segment.",
                segment_bytes,
            )?;
            gauge(
                e,
                "wal_segment",
                "Sequence number of the current write-ahead log segment.",
                segment,
            )?;
            gauge(
                e,
                "wal_writable",
                "1 while the write-ahead log can write; 0 while it cannot (a full disk): consumes answer 503 until it heals.",
                u32::from(writable),
            )?;
        }
        if let Some((cpu, rss)) = process_stats() {
            counter(e, "process_cpu_seconds", "CPU time of this process.", cpu)?;
            gauge(
                e,
                "process_cpu_quota_cores",
                "CPU cores the process may use: its cgroup quota, else 1 (the basis of the CPU alert).",
                cpu_basis_cores(),
            )?;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory of this process.",
                rss,
            )?;
        }
        gauge(
            e,
            "uptime_seconds",
            "Time since the engine started.",
            now.since(engine.started_at()) as f64 / 1000.0,
        )?;
        let alerts: Vec<([(&str, &str); 1], u32)> = Alert::ALL
            .iter()
            .map(|a| {
                let firing = u32::from(self.firing.contains(&a.name()));
                ([("alert", a.name())], firing)
            })
            .collect();
        family(
            e,
            "alert_firing",
            "1 while the alert fires (evaluated inside the service).",
            MetricType::Gauge,
            &alerts,
        )
    }
}
