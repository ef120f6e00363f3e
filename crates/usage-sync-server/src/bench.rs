//! `usage-sync bench`: a load generator against a running instance.
//!
//! Each connection is one task with its own keep-alive HTTP client, sending
//! `POST /v1/consume` back to back for random users and kinds until the
//! duration ends. It prints a progress line, then throughput, latency
//! percentiles and the instance's sync statistics before and after; with
//! `--grade`, the grade and recommendations of the product this replaces.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub url: String,
    pub api_token: Option<String>,
    pub admin_token: Option<String>,
    pub connections: usize,
    pub duration: Duration,
    pub users: u64,
    pub kinds: Vec<String>,
    /// Send a fresh request id with every consume (the dedup path).
    pub request_ids: bool,
    pub grade: bool,
    pub json: bool,
}

/// An error with its causes: reqwest's own words ("error sending request
/// for url") hide the one that matters ("Connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(&format!(": {s}"));
        src = s.source();
    }
    out
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    /// The first error of the run, with its cause: an HTTP status and the
    /// service's code and message, or the connection error.
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Latencies in microseconds, to three significant digits: its size
    /// is fixed (about 136 KiB, one per connection while running),
    /// however long the run.
    latencies_us: Histogram<u64>,
}

impl Default for BenchResult {
    fn default() -> Self {
        BenchResult {
            requests: 0,
            allowed: 0,
            denied: 0,
            errors: 0,
            first_error: None,
            seconds: 0.0,
            latencies_us: latency_histogram(),
        }
    }
}

/// Microseconds from 1 µs to 60 s (a slower answer counts as 60 s), three
/// significant digits: 17 buckets of 1 024 counts.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl BenchResult {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    /// Requests answered with a decision (200 or 429), in percent.
    pub fn success_percent(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.allowed + self.denied) as f64 * 100.0 / self.requests as f64
    }

    /// The latency at quantile `q` (0.5 is the median), in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// What a run's grade weighs besides the flush figures.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    pub p99_ms: f64,
    /// The instance logs a line per request (`USAGE_SYNC_VERBOSE_LOGGING`).
    pub verbose_logging: bool,
}

/// The grade of the product this replaces: A unless the average flush
/// takes more than 1 s, or more than 1 % of flushes fail, or fewer than
/// 99 % of requests succeed, or the consume p99 passes 10 ms, or the
/// instance logs every request (B); 3 s, 5 %, 95 %, 50 ms for C.
pub fn grade(
    avg_flush_ms: f64,
    flush_error_percent: f64,
    success_percent: f64,
    serving: Serving,
) -> char {
    let p99 = serving.p99_ms;
    if avg_flush_ms > 3000.0 || flush_error_percent > 5.0 || success_percent < 95.0 || p99 > 50.0 {
        'C'
    } else if avg_flush_ms > 1000.0
        || flush_error_percent > 1.0
        || success_percent < 99.0
        || p99 > 10.0
        || serving.verbose_logging
    {
        'B'
    } else {
        'A'
    }
}

/// Plain-language advice from the run and the instance's statistics.
pub fn recommendations(
    avg_flush_ms: f64,
    flush_error_percent: f64,
    success_percent: f64,
    flushes_per_hour: f64,
    pool_in_use: Option<(u64, u64)>,
    serving: Serving,
) -> Vec<String> {
    let mut out = Vec::new();
    if serving.verbose_logging {
        out.push(
            "verbose logging writes a line per request: set USAGE_SYNC_VERBOSE_LOGGING=false (the production profile does)".into(),
        );
    }
    if serving.p99_ms > 10.0 {
        out.push(format!(
            "consume p99 {:.1} ms: fewer connections per instance, more instances, or check CPU (status process.cpu_percent)",
            serving.p99_ms
        ));
    }
    if flushes_per_hour > 3600.0 {
        out.push(format!(
            "{flushes_per_hour:.0} flushes per hour: raise USAGE_SYNC_THRESHOLD or the check and heartbeat intervals so each flush carries more units"
        ));
    }
    if avg_flush_ms > 1000.0 {
        out.push(format!(
            "average flush {avg_flush_ms:.0} ms: check the database and its pool (USAGE_SYNC_DB_POOL_SIZE), and raise USAGE_SYNC_TIMEOUT above the slowest healthy flush"
        ));
    }
    if let Some((size, in_use)) = pool_in_use
        && in_use >= size
    {
        out.push(format!(
            "all {size} database connections in use: raise USAGE_SYNC_DB_POOL_SIZE or lower USAGE_SYNC_MAX_CONCURRENT_SYNCS"
        ));
    }
    if flush_error_percent > 1.0 {
        out.push(format!(
            "{flush_error_percent:.1} % of flushes failed: see last_error in usage-sync status; failed batches are retried and nothing is lost"
        ));
    }
    if success_percent < 99.0 {
        out.push(format!(
            "only {success_percent:.1} % of requests got a decision: the instance is overloaded or unavailable (fewer connections, more instances, or check /readyz)"
        ));
    }
    if out.is_empty() {
        out.push("nothing to change".into());
    }
    out
}

async fn status(client: &reqwest::Client, args: &BenchArgs) -> Option<Value> {
    let mut req = client.get(format!("{}/admin/v1/status", args.url));
    if let Some(t) = &args.admin_token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Runs the load and returns what it measured (no printing).
pub async fn load(args: &BenchArgs, progress: bool) -> BenchResult {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let run_id = fastrand::u64(..);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.connections);
    for c in 0..args.connections {
        let (stop, sent, args) = (stop.clone(), sent.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            // One client per task: one keep-alive connection each.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client");
            let url = format!("{}/v1/consume", args.url);
            let mut rng = fastrand::Rng::with_seed(run_id ^ c as u64);
            let (mut allowed, mut denied, mut errors) = (0u64, 0u64, 0u64);
            let mut first_error: Option<String> = None;
            let mut lat = latency_histogram();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let user = rng.u64(0..args.users.max(1));
                let kind = &args.kinds[rng.usize(0..args.kinds.len())];
                let mut body = json!({"user_id": format!("bench-{user}"), "kind": kind});
                if args.request_ids {
                    body["request_id"] = json!(format!("b{run_id:x}-{c}-{n}"));
                }
                n += 1;
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string());
                if let Some(t) = &args.api_token {
                    req = req.bearer_auth(t);
                }
                let t0 = Instant::now();
                match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let body = r.bytes().await.unwrap_or_default();
                        match s {
                            200 => allowed += 1,
                            429 => denied += 1,
                            _ => {
                                errors += 1;
                                if first_error.is_none() {
                                    let v: serde_json::Value =
                                        serde_json::from_slice(&body).unwrap_or_default();
                                    first_error = Some(format!(
                                        "{s} {}: {}",
                                        v["error"]["code"].as_str().unwrap_or("?"),
                                        v["error"]["message"].as_str().unwrap_or("?")
                                    ));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(error_chain(&e));
                        }
                    }
                }
                lat.saturating_record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (allowed, denied, errors, lat, first_error)
        }));
    }
    let deadline = started + args.duration;
    let mut last = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
        if progress {
            let done = started
                .elapsed()
                .as_secs_f64()
                .min(args.duration.as_secs_f64());
            let total = args.duration.as_secs_f64();
            let width = 30;
            // A progress bar's width from a fraction of the run.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let filled = ((done / total) * width as f64) as usize;
            let now = sent.load(Ordering::Relaxed);
            eprint!(
                "\r[{}{}] {:>4.0}/{:.0} s {:>9} requests {:>9.0} req/s",
                "#".repeat(filled),
                ".".repeat(width - filled),
                done,
                total,
                now,
                (now - last) as f64
            );
            last = now;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut r = BenchResult::default();
    for t in tasks {
        if let Ok((a, d, e, lat, first)) = t.await {
            r.allowed += a;
            r.denied += d;
            r.errors += e;
            // Same bounds on both sides: adding cannot fail.
            let _ = r.latencies_us.add(&lat);
            r.first_error = r.first_error.or(first);
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r.requests = r.allowed + r.denied + r.errors;
    if progress {
        eprintln!();
    }
    r
}

fn sync_figures(s: &Value) -> (f64, f64, f64, u64, i64) {
    let sync = &s["sync"];
    (
        sync["avg_flush_ms"].as_f64().unwrap_or(0.0),
        sync["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        sync["flushes_per_hour"].as_f64().unwrap_or(0.0),
        sync["flushes"].as_u64().unwrap_or(0),
        sync["units_flushed"].as_i64().unwrap_or(0),
    )
}

/// `usage-sync bench`: runs the load, prints the report; exit 1 if no
/// request got a decision, 2 if the instance cannot be reached.
pub fn run(args: BenchArgs) -> ExitCode {
    let rt = match crate::cli::build_runtime(true, ExitCode::from(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let client = reqwest::Client::new();
        match client.get(format!("{}/readyz", args.url)).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                eprintln!("✗ {} is not ready ({})", args.url, r.status());
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("✗ cannot reach {}: {}", args.url, error_chain(&e));
                return ExitCode::from(2);
            }
        }
        let before = status(&client, &args).await;
        // The progress line rewrites itself with `\r`: only on a terminal.
        let progress = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let r = load(&args, progress).await;
        let after = status(&client, &args).await;
        let (avg, err_pct, per_hour, flushes, units) =
            after.as_ref().map(sync_figures).unwrap_or_default();
        let (_, _, _, flushes0, units0) = before.as_ref().map(sync_figures).unwrap_or_default();
        let pool = after.as_ref().and_then(|s| {
            let p = &s["store"]["pool"];
            Some((p["size"].as_u64()?, p["in_use"].as_u64()?))
        });
        let serving = Serving {
            p99_ms: r.percentile_ms(0.99),
            verbose_logging: after
                .as_ref()
                .and_then(|s| s["verbose_logging"].as_bool())
                .unwrap_or(false),
        };
        let g = grade(avg, err_pct, r.success_percent(), serving);
        let advice = recommendations(avg, err_pct, r.success_percent(), per_hour, pool, serving);
        if args.json {
            let doc = json!({
                "requests": r.requests, "allowed": r.allowed, "denied": r.denied, "errors": r.errors, "first_error": r.first_error,
                "seconds": r.seconds, "requests_per_second": r.throughput(),
                "success_percent": r.success_percent(),
                "latency_ms": {"p50": r.percentile_ms(0.5), "p90": r.percentile_ms(0.9),
                               "p99": r.percentile_ms(0.99), "max": r.percentile_ms(1.0)},
                "sync_before": before.as_ref().map(|s| s["sync"].clone()),
                "sync_after": after.as_ref().map(|s| s["sync"].clone()),
                "grade": args.grade.then(|| g.to_string()),
                "recommendations": args.grade.then_some(&advice),
            });
            println!("{doc}");
        } else {
            let mut o = String::new();
            let _ = writeln!(
                o,
                "{} connections, {:.1} s, {} users, kinds {}{}",
                args.connections,
                r.seconds,
                args.users,
                args.kinds.join(","),
                if args.request_ids { ", a request id per consume" } else { "" }
            );
            let _ = writeln!(
                o,
                "requests      {:>12}  ({} allowed, {} denied, {} errors)",
                r.requests, r.allowed, r.denied, r.errors
            );
            if let Some(e) = &r.first_error {
                let _ = writeln!(o, "first error   {e}");
            }
            let _ = writeln!(o, "throughput    {:>12.0} requests/s", r.throughput());
            let _ = writeln!(o, "success       {:>11.2} %  (answered 200 or 429)", r.success_percent());
            let _ = writeln!(
                o,
                "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                r.percentile_ms(0.5),
                r.percentile_ms(0.9),
                r.percentile_ms(0.99),
                r.percentile_ms(1.0)
            );
            match (&before, &after) {
                (Some(_), Some(_)) => {
                    let _ = writeln!(
                        o,
                        "sync          {} flushes during the run ({} units); avg flush {avg:.1} ms, flush errors {err_pct:.2} %, {per_hour:.0} flushes/h since start",
                        flushes.saturating_sub(flushes0),
                        units - units0
                    );
                }
                _ => {
                    let _ = writeln!(
                        o,
                        "sync          (no status: pass --admin-token to see the sync statistics)"
                    );
                }
            }
            if args.grade {
                let _ = writeln!(o, "grade         {g}");
                for a in &advice {
                    let _ = writeln!(o, "  - {a}");
                }
            }
            print!("{o}");
        }
        if r.allowed + r.denied == 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_follow_the_original_thresholds() {
        let fast = Serving {
            p99_ms: 2.0,
            verbose_logging: false,
        };
        assert_eq!(grade(10.0, 0.0, 100.0, fast), 'A');
        assert_eq!(grade(1000.0, 1.0, 99.0, fast), 'A', "limits are inclusive");
        assert_eq!(grade(1001.0, 0.0, 100.0, fast), 'B');
        assert_eq!(grade(10.0, 1.5, 100.0, fast), 'B');
        assert_eq!(grade(10.0, 0.0, 98.0, fast), 'B');
        assert_eq!(grade(3001.0, 0.0, 100.0, fast), 'C');
        assert_eq!(grade(10.0, 6.0, 100.0, fast), 'C');
        assert_eq!(grade(10.0, 0.0, 90.0, fast), 'C');
        // p99 and logging weigh too: 47 ms with verbose logging is no A.
        let slow = Serving {
            p99_ms: 47.0,
            verbose_logging: true,
        };
        assert_eq!(grade(10.0, 0.0, 100.0, slow), 'B');
        let calm = |serving| grade(10.0, 0.0, 100.0, serving);
        let p99_51 = Serving {
            p99_ms: 51.0,
            ..fast
        };
        assert_eq!(calm(p99_51), 'C');
        let verbose = Serving {
            verbose_logging: true,
            ..fast
        };
        assert_eq!(calm(verbose), 'B');
        let advice = recommendations(10.0, 0.0, 100.0, 0.0, None, slow);
        assert!(
            advice
                .iter()
                .any(|a| a.contains("USAGE_SYNC_VERBOSE_LOGGING=false"))
        );
        assert!(advice.iter().any(|a| a.contains("p99 47.0 ms")));
        let r = recommendations(1500.0, 0.0, 100.0, 7200.0, Some((3, 3)), fast);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r[0].contains("USAGE_SYNC_THRESHOLD"));
        assert!(r[1].contains("USAGE_SYNC_TIMEOUT"));
        assert!(r[2].contains("USAGE_SYNC_DB_POOL_SIZE"));
        assert_eq!(
            recommendations(5.0, 0.0, 100.0, 10.0, None, fast),
            ["nothing to change"]
        );
    }

    #[test]
    fn percentiles() {
        let mut r = BenchResult {
            requests: 100,
            allowed: 100,
            ..Default::default()
        };
        assert_eq!(r.percentile_ms(0.5), 0.0, "no latencies yet");
        for ms in 1..=100 {
            r.latencies_us.record(ms * 1000).unwrap();
        }
        // Three significant digits: each within 0.1 % of the exact rank.
        for (q, exact) in [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0)] {
            let got = r.percentile_ms(q);
            assert!((got - exact).abs() <= exact / 1000.0, "p{q}: {got} ms");
        }
        assert_eq!(r.success_percent(), 100.0);
    }
}
