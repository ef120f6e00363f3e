//! Operating the service: Prometheus metrics (written by
//! [`crate::metrics`]), the status document, a per-user diagnosis, and
//! resetting the sync statistics.
//!
//! The status document's top-users list walks every resident user: an
//! operator's view, polled by the dashboard (a metrics scrape never does).

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use usage_sync::{Engine, StoreReachability};
use usage_sync_core::Locked;
use usage_sync_core::Trigger;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::UserPath;
use usage_sync_api::{Alerts, Diagnosis, StatsReset, Status};

/// Process CPU seconds and resident bytes, from `/proc/self/stat` read
/// with the system's clock tick and page size (Linux; `None` elsewhere).
#[cfg(target_os = "linux")]
pub fn process_stats() -> Option<(f64, u64)> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second().max(1);
    let cpu = (stat.utime + stat.stime) as f64 / ticks as f64;
    Some((cpu, stat.rss.saturating_mul(procfs::page_size())))
}

#[cfg(not(target_os = "linux"))]
pub fn process_stats() -> Option<(f64, u64)> {
    None
}

/// CPU cores the process may use by its cgroup quota: `cpu.max` (cgroup
/// v2, `quota period`) or `cpu.cfs_quota_us` / `cpu.cfs_period_us` (v1)
/// under `root`; `None` without a quota (`max`, `-1`, or no cgroup).
pub fn cpu_quota_cores(root: &std::path::Path) -> Option<f64> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    if let Some(v2) = read("cpu.max") {
        let mut f = v2.split_whitespace();
        let quota: f64 = f.next()?.parse().ok()?;
        let period: f64 = f.next().unwrap_or("100000").parse().ok()?;
        return (quota > 0.0 && period > 0.0).then(|| quota / period);
    }
    let quota: f64 = read("cpu/cpu.cfs_quota_us")?.trim().parse().ok()?;
    let period: f64 = read("cpu/cpu.cfs_period_us")?.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// What 100 % CPU means in the service's figures (the alert, the adaptive
/// cadence, the runtime checklist): the container's CPU quota when it has
/// one, as memory is measured against its limit (under a 500m limit, 100 %
/// is half a core, the most the process can get); one core otherwise.
/// Read once.
pub fn cpu_basis_cores() -> f64 {
    static BASIS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *BASIS.get_or_init(|| cpu_quota_cores(std::path::Path::new("/sys/fs/cgroup")).unwrap_or(1.0))
}

/// The memory this process may use: the cgroup limit when there is one
/// (containers), else the machine's memory.
pub fn memory_limit() -> Option<u64> {
    for path in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(v) = std::fs::read_to_string(path)
            && let Ok(n) = v.trim().parse::<u64>()
            && n < (1 << 60)
        {
            return Some(n);
        }
    }
    machine_memory()
}

#[cfg(target_os = "linux")]
fn machine_memory() -> Option<u64> {
    use procfs::Current;
    procfs::Meminfo::current().ok().map(|m| m.mem_total)
}

#[cfg(not(target_os = "linux"))]
fn machine_memory() -> Option<u64> {
    None
}

/// The runtime checklist of the original deployment guide, with measured
/// values: CPU < 50 %, memory < 70 % of the limit, average flush < 5 s,
/// flush error rate < 1 %, store connections within the pool.
async fn runtime_checklist(state: &AppState, engine: &Engine) -> (Value, Vec<Value>) {
    // CPU over the alert window once it has two readings; before that
    // (the first alert interval after start) a 250 ms sample, so start-up
    // work is not mistaken for load.
    let (window_cpu, readings) = {
        let v = state.alerts.locked();
        (v.figures.cpu_percent, v.readings)
    };
    let cpu_percent = if readings >= 2 {
        window_cpu
    } else {
        let t0 = std::time::Instant::now();
        let c0 = process_stats().map_or(0.0, |p| p.0);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let c1 = process_stats().map_or(0.0, |p| p.0);
        ((c1 - c0) / t0.elapsed().as_secs_f64() / cpu_basis_cores() * 100.0).max(0.0)
    };
    let rss = process_stats().map_or(0, |p| p.1);
    let limit = memory_limit();
    let mem_percent = limit.map(|l| rss as f64 * 100.0 / l as f64);
    let s = engine.stats();
    let mut checks = vec![
        json!({"check": "cpu", "ok": cpu_percent < 50.0, "value": format!("{cpu_percent:.1} %"), "target": "< 50 % of the CPU quota (one core without a quota)"}),
        json!({"check": "memory", "ok": mem_percent.is_none_or(|p| p < 70.0),
               "value": format!("{} MiB of {} MiB", rss >> 20, limit.map_or("?".into(), |l| (l >> 20).to_string())),
               "target": "< 70 % of the limit"}),
        json!({"check": "flush latency", "ok": s.avg_flush_ms() < 5000.0, "value": format!("{:.1} ms average", s.avg_flush_ms()), "target": "< 5 s"}),
        json!({"check": "flush errors", "ok": s.error_rate() < 0.01, "value": format!("{:.2} %", s.error_rate() * 100.0), "target": "< 1 %"}),
    ];
    checks.push(match engine.store_pool() {
        Some((size, in_use)) => json!({"check": "store pool", "ok": in_use < size, "value": format!("{in_use} of {size} in use"), "target": "below the pool size"}),
        None => json!({"check": "store pool", "ok": true, "value": "no pool (SQLite)", "target": "below the pool size"}),
    });
    let process =
        json!({"cpu_percent": cpu_percent, "rss_bytes": rss, "memory_limit_bytes": limit});
    (process, checks)
}

pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let firing = state.alerts.locked().firing_names.clone();
    let body = crate::metrics::render(state.engine()?, firing);
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body))
}

pub async fn status(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    let engine = state.engine()?;
    let s = engine.stats();
    let now = engine.now();
    let figures = engine.ledger_figures();
    let t = &figures.totals;
    let store_ok =
        engine.ping_store(std::time::Duration::from_secs(2)).await == StoreReachability::Reachable;
    let by_trigger: serde_json::Map<String, Value> = Trigger::ALL
        .iter()
        .map(|t| {
            let ts = s.trigger(*t);
            (
                t.as_str().to_owned(),
                json!({"flushes": ts.flushes, "failures": ts.failures, "units": ts.units, "rows": ts.rows}),
            )
        })
        .collect();
    let top: Vec<Value> = engine
        .top_pending(10)
        .into_iter()
        .map(|(u, n)| json!({"user_id": u.as_str(), "pending": n}))
        .collect();
    let uptime_s = now.since(engine.started_at()) as f64 / 1000.0;
    let c = engine.config();
    let (process, checklist) = runtime_checklist(&state, engine).await;
    let firing = state.alerts.locked().firing.clone();
    let (cadence, cadence_reason) = engine.cadence();
    let next_runs_ms = engine.next_runs().map(|r| {
        json!({
            "check": u64::try_from(r.check.as_millis()).unwrap_or(u64::MAX),
            "heartbeat": u64::try_from(r.heartbeat.as_millis()).unwrap_or(u64::MAX),
            "guarantee": u64::try_from(r.guarantee.as_millis()).unwrap_or(u64::MAX),
            "retry": r.retry.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
    });
    Ok(Json(Status {
        running: engine.is_accepting(),
        uptime_seconds: uptime_s,
        profile: state.info.profile.clone(),
        preset: state.info.preset.clone(),
        durability: state.info.durability.clone(),
        verbose_logging: state.verbose,
        pending_units: t.pending + t.in_flight,
        users_tracked: figures.users_resident as u64,
        users_active: t.users_with_pending as u64,
        oldest_pending_age_seconds: t
            .oldest_pending
            .map_or(0.0, |o| now.since(o) as f64 / 1000.0),
        retry_backlog_units: engine.retry_backlog().1,
        request_ids_remembered: figures.request_ids_remembered as u64,
        flush_concurrency: engine.flush_concurrency() as u64,
        sync: json!({
            "enabled": c.enabled,
            "flushes": s.flushes,
            "failures": s.failures,
            "error_rate": s.error_rate(),
            "avg_flush_ms": s.avg_flush_ms(),
            "p50_flush_ms": s.flush_percentile_ms(0.5),
            "p99_flush_ms": s.flush_percentile_ms(0.99),
            "max_flush_ms": s.max_flush_time.as_secs_f64() * 1000.0,
            "flushes_per_hour": s.flushes_per_hour(now),
            "user_syncs": s.user_syncs,
            "since": s.since.map(|t| t.to_rfc3339()),
            "units_flushed": s.units_flushed,
            "rows_written": s.rows_written,
            "write_amplification": if s.rows_written > 0 { s.units_flushed as f64 / s.rows_written as f64 } else { 0.0 },
            "already_applied": s.already_applied,
            "last_flush_at": s.last_flush_at.map(|t| t.to_rfc3339()),
            "last_error": s.last_error,
            "by_trigger": by_trigger,
            "intervals_ms": {
                "heartbeat": u64::try_from(c.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
                "check": u64::try_from(c.check_interval.as_millis()).unwrap_or(u64::MAX),
                "guarantee": u64::try_from(c.max_sync_interval.as_millis()).unwrap_or(u64::MAX),
            },
        }),
        consumes: json!({
            "allowed": engine.request_metrics().allowed.get(),
            "denied": engine.request_metrics().denied.get(),
            "deduplicated": engine.request_metrics().deduplicated.get(),
        }),
        cadence: json!({"multiplier": cadence, "reason": cadence_reason}),
        next_runs_ms: next_runs_ms.unwrap_or(Value::Null),
        top_pending_users: top,
        sharing: sharing_json(engine),
        store: json!({"backend": engine.store_backend(), "reachable": store_ok, "pool": engine.store_pool().map(|(size, in_use)| json!({"size": size, "in_use": in_use}))}),
        process,
        checklist,
        alerts: firing,
    }))
}

pub async fn diagnose(
    State(state): State<AppState>,
    UserPath(user): UserPath,
) -> Result<Json<Diagnosis>, ApiError> {
    let engine = state.engine()?;
    let u = engine.usage(&user).await?;
    let c = engine.config();
    let threshold = i64::try_from(c.force_sync_threshold).unwrap_or(i64::MAX);
    let mut kinds = serde_json::Map::new();
    let mut advice = Vec::new();
    let runs = engine.next_runs();
    let ms = |d: Option<std::time::Duration>| {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    for k in &u.kinds {
        let waiting = k.pending - k.in_flight;
        let next = if k.in_flight != 0 {
            json!({
                "trigger": "retry",
                "in_ms": ms(runs.and_then(|r| r.retry)),
                "why": "a flush of this counter is in progress or waiting for a retry (same flush id)",
            })
        } else if waiting >= threshold {
            json!({"trigger": "threshold", "in_ms": 0, "why": "due now by threshold"})
        } else if waiting != 0 {
            json!({
                "trigger": "check",
                "in_ms": ms(runs.map(|r| r.check)),
                "at_latest": {"trigger": "guarantee", "in_ms": ms(runs.map(|r| r.guarantee))},
                "why": "the next check flushes the oldest pending users first (up to max_active_users_check); the guarantee pass flushes everything",
            })
        } else {
            json!({"trigger": null, "in_ms": null, "why": "nothing to flush"})
        };
        kinds.insert(
            k.kind.name().to_owned(),
            json!({
                "persisted": k.persisted,
                "pending": waiting,
                "in_flight": k.in_flight,
                "used": k.used,
                "limit": k.limit,
                "next_flush": next,
                "lease": engine.lease_of(&user, &k.kind).map(|(units, expires_in_ms)| json!({"units": units, "expires_in_ms": expires_in_ms})),
            }),
        );
        if k.limit.is_some_and(|l| k.used >= l) {
            advice.push(format!("{} is at its limit for this period; consumes are denied until the period ends, a reset, or a higher limit", k.kind.name()));
        }
        if k.in_flight != 0 && engine.retry_backlog().0 > 0 {
            advice.push(
                "flushes are being retried: check the store (GET /admin/v1/status, last_error)"
                    .to_owned(),
            );
        }
    }
    if !u.resident {
        advice.push(
            "not in memory: the figures are the database's; the user is loaded on its next request"
                .to_owned(),
        );
    }
    Ok(Json(Diagnosis {
        user_id: user.as_str().to_owned(),
        plan: u.plan.clone(),
        period_start: u.period_start.to_rfc3339(),
        resident: u.resident,
        kinds: Value::Object(kinds),
        last_sync_at: u.last_sync_at.map(|t| t.to_rfc3339()),
        last_activity_at: u.last_activity_at.map(|t| t.to_rfc3339()),
        last_flush: json!({
            "at": u.last_sync_at.map(|t| t.to_rfc3339()),
            "trigger": u.last_sync_trigger.map(|t| t.as_str()),
        }),
        request_ids_remembered: engine.request_ids_of(&user) as u64,
        force_sync_threshold: threshold,
        guarantee_ms: u64::try_from(c.max_sync_interval.as_millis()).unwrap_or(u64::MAX),
        recommendations: advice,
    }))
}

/// The shared tier as status shows it (`null` in single-instance mode).
fn sharing_json(engine: &Engine) -> Value {
    let Some(s) = engine.sharing() else {
        return json!({"mode": "none"});
    };
    json!({
        "mode": s.mode.as_str(),
        "fallback": s.fallback.as_str(),
        "redis_reachable": s.up,
        "degraded": !s.up,
        "redis_operations": s.redis_operations,
        "redis_errors": s.redis_errors,
        "fallback_decisions": s.fallback_decisions,
        "outages": s.outages,
        "leases_held": s.leases_held,
        "lease_units_held": s.lease_units_held,
        "lease_units_returned": s.lease_units_returned,
        "units_to_reconcile": s.debt_units,
    })
}

pub async fn alerts(State(state): State<AppState>) -> Result<Json<Alerts>, ApiError> {
    let engine = state.engine()?;
    let v = state.alerts.locked();
    let (multiplier, reason) = engine.cadence();
    Ok(Json(Alerts {
        firing: v.firing.clone(),
        recent: v.history.iter().cloned().collect(),
        window: json!({
            "avg_flush_ms": v.figures.avg_flush_ms,
            "error_rate": v.figures.error_rate,
            "cpu_percent": v.figures.cpu_percent,
        }),
        actions: json!({
            "flush_concurrency": engine.flush_concurrency(),
            "cadence_multiplier": multiplier,
            "cadence_reason": reason,
        }),
        evaluations: v.evaluations,
    }))
}

pub async fn reset_stats(State(state): State<AppState>) -> Result<Json<StatsReset>, ApiError> {
    state.engine()?.reset_stats();
    tracing::info!(target: "admin", "sync statistics reset");
    Ok(Json(StatsReset { reset: true }))
}
