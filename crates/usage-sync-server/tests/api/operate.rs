//! Metrics, status, diagnose and stats reset.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

/// The value of one sample line (`name{labels} value`) in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Asserts the value of each `(series, value)` in a scrape.
fn expect_samples(text: &str, expected: &[(&str, f64)]) {
    for &(series, value) in expected {
        assert_eq!(sample(text, series), value, "{series}");
    }
}

#[tokio::test]
async fn every_metric_family_is_exported_and_moves_under_load() {
    let app = spawn_app().await;
    let before = app.metrics().await;
    assert_eq!(
        sample(&before, "usage_sync_consume_total{result=\"allowed\"}"),
        0.0
    );
    for i in 0..12 {
        // premium: limit 10, so 2 of these are denied.
        app.post(
            "/v1/consume",
            &json!({"user_id": "m", "kind": "premium", "request_id": format!("m{i}")}),
        )
        .await;
    }
    app.post(
        "/v1/consume",
        &json!({"user_id": "m", "kind": "premium", "request_id": "m0"}),
    )
    .await;
    let mid = app.metrics().await;
    expect_samples(
        &mid,
        &[
            ("usage_sync_consume_total{result=\"allowed\"}", 10.0),
            ("usage_sync_consume_total{result=\"denied\"}", 2.0),
            ("usage_sync_consume_total{result=\"deduplicated\"}", 1.0),
            ("usage_sync_consume_duration_seconds_count", 13.0),
            (
                "usage_sync_consume_duration_seconds_bucket{le=\"+Inf\"}",
                13.0,
            ),
            ("usage_sync_pending_units", 10.0),
            ("usage_sync_users_tracked", 1.0),
            ("usage_sync_users_active", 1.0),
        ],
    );
    assert!(sample(&mid, "usage_sync_process_resident_memory_bytes") > 1e6);
    assert!(sample(&mid, "usage_sync_wal_segment_bytes") > 0.0);
    app.sync_all().await;
    let after = app.metrics().await;
    expect_samples(
        &after,
        &[
            (
                "usage_sync_flushes_total{trigger=\"manual\",outcome=\"ok\"}",
                1.0,
            ),
            ("usage_sync_flushed_units_total", 10.0),
            ("usage_sync_rows_written_total", 1.0),
            ("usage_sync_flush_duration_seconds_count", 1.0),
            ("usage_sync_flush_duration_seconds_bucket{le=\"+Inf\"}", 1.0),
            ("usage_sync_flush_duration_seconds_bucket{le=\"60\"}", 1.0),
        ],
    );
    // The user was loaded from the store once, on its first consume.
    assert_eq!(
        sample(
            &after,
            "usage_sync_store_query_duration_seconds_count{op=\"load_user\"}"
        ),
        1.0
    );
    assert_eq!(sample(&after, "usage_sync_pending_units"), 0.0);
    assert_eq!(
        sample(&after, "usage_sync_flush_errors_total{kind=\"permanent\"}"),
        0.0
    );
    // No per-user labels anywhere.
    assert!(!after.contains("user_id") && !after.contains("\"m\""));
}

#[tokio::test]
async fn a_metrics_token_is_required_once_configured() {
    let app = spawn_app_with(&[("USAGE_SYNC_METRICS_TOKEN", "scrape-me")]).await;
    let (s, v) = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let r = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn status_diagnose_and_stats_reset() {
    let app = spawn_app().await;
    app.consume("a", "fast", 3).await;
    app.consume("b", "fast", 7).await;
    app.consume("b", "premium", 10).await;
    let (s, v) = app.get("/admin/v1/status").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["pending_units"], json!(20));
    assert_eq!(v["users_tracked"], json!(2));
    assert_eq!(
        v["top_pending_users"],
        json!([{"user_id": "b", "pending": 17}, {"user_id": "a", "pending": 3}])
    );
    assert_eq!(v["store"]["backend"], json!("sqlite"));
    assert_eq!(v["store"]["reachable"], json!(true));
    assert_eq!(v["durability"], json!("batched"));
    assert_eq!(v["running"], json!(true));

    let (s, d) = app.get("/admin/v1/users/b/diagnose").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["kinds"]["fast"]["pending"], json!(7));
    assert_eq!(d["kinds"]["fast"]["in_flight"], json!(0));
    assert_eq!(d["kinds"]["premium"]["used"], json!(10));
    assert_eq!(d["resident"], json!(true));
    // Below the threshold: the next check takes it, the guarantee at the
    // latest; the quiet test instance runs both hourly or slower.
    let next = &d["kinds"]["fast"]["next_flush"];
    assert_eq!(next["trigger"], json!("check"), "{d}");
    assert!(next["in_ms"].as_u64().unwrap() <= 3_600_000, "{d}");
    assert_eq!(next["at_latest"]["trigger"], json!("guarantee"), "{d}");
    assert_eq!(d["last_flush"], json!({"at": null, "trigger": null}));
    assert_eq!(d["request_ids_remembered"], json!(0));
    let runs = &v["next_runs_ms"];
    assert!(runs["check"].as_u64().unwrap() <= 3_600_000, "{v}");
    assert!(runs["heartbeat"].as_u64().unwrap() <= 3_600_000, "{v}");
    assert!(runs["guarantee"].as_u64().unwrap() <= 7_200_000, "{v}");
    assert_eq!(runs["retry"], json!(null));
    let advice = d["recommendations"].as_array().unwrap();
    assert!(
        advice
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("premium is at its limit")),
        "{d}"
    );

    app.sync_all().await;
    let (s, _) = app
        .post(
            "/v1/consume",
            &json!({"user_id": "b", "kind": "fast", "request_id": "diag-1"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, d) = app.get("/admin/v1/users/b/diagnose").await;
    assert_eq!(d["last_flush"]["trigger"], json!("manual"), "{d}");
    assert_eq!(d["request_ids_remembered"], json!(1), "{d}");
    app.sync_all().await;
    let (_, v) = app.get("/admin/v1/status").await;
    assert_eq!(v["sync"]["by_trigger"]["manual"]["units"], json!(21));
    assert_eq!(v["sync"]["write_amplification"], json!(21.0 / 4.0));
    let (s, _) = app.post("/admin/v1/stats/reset", &json!({})).await;
    assert_eq!(s, 200);
    let (_, v) = app.get("/admin/v1/status").await;
    assert_eq!(v["sync"]["flushes"], json!(0));
    assert_eq!(v["sync"]["by_trigger"]["manual"]["units"], json!(0));
    let (_, d) = app.get("/admin/v1/users/nobody/diagnose").await;
    assert_eq!(d["resident"], json!(false));
}

// Against the real binary: the checklist measures the process's own CPU,
// and an in-process instance would share it with every other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_command_shows_a_running_instance_and_its_checklist() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_API_TOKEN", "api"),
            ("USAGE_SYNC_ADMIN_TOKEN", "adm"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/consume", server.address))
        .bearer_auth("api")
        .body(json!({"user_id": "s1", "kind": "fast", "amount": 4}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let bin = env!("CARGO_BIN_EXE_usage-sync");
    // `usage-sync status --url URL MORE...`: exit code, stdout, stderr.
    let status = |url: &str, more: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["status", "--url", url])
            .args(more)
            .env_remove("USAGE_SYNC_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = status(&server.address, &["--token", "adm"]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("durability batched"), "{text}");
    assert!(text.contains("4 units over 1 users"), "{text}");
    assert!(text.contains("top pending    s1 (4)"), "{text}");
    for check in [
        "✓ cpu",
        "✓ memory",
        "✓ flush latency",
        "✓ flush errors",
        "✓ store pool",
    ] {
        assert!(text.contains(check), "missing {check} in:\n{text}");
    }
    let (code, json_text, _) = status(&server.address, &["--token", "adm", "--json"]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(doc["checklist"].as_array().unwrap().len(), 5);
    assert_eq!(doc["pending_units"], json!(4));
    let (code, _, err) = status(&server.address, &["--token", "wrong"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("401") && err.contains("not this instance's"),
        "{err}"
    );
    // No token at all: the answer says how to give one.
    let (code, _, err) = status(&server.address, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--token"), "{err}");
    let (code, _, err) = status("http://127.0.0.1:1", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("onnection refused"),
        "the cause is named: {err}"
    );
}

/// Polls `GET /admin/v1/alerts` until `pred` holds (wall time, bounded).
async fn alerts_until(
    app: &crate::helpers::TestApp,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (s, v) = app.get("/admin/v1/alerts").await;
        assert_eq!(s, 200);
        if pred(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition never held; last: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn firing(v: &serde_json::Value, name: &str) -> bool {
    v["firing"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["alert"] == json!(name))
}

/// Holds SQLite's write lock for `hold`, in a thread (slow or failing flushes).
fn lock_db_for(db: std::path::PathBuf, hold: std::time::Duration) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(hold);
        c.execute_batch("COMMIT").unwrap();
    });
    rx.recv().unwrap();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_sync_latency_raises_flush_concurrency() {
    let app = spawn_app_with(&[
        ("USAGE_SYNC_ALERT_SYNC_LATENCY", "100"),
        ("USAGE_SYNC_ALERT_INTERVAL", "100"),
        ("USAGE_SYNC_ALERT_WINDOW", "60000"),
    ])
    .await;
    assert_eq!(app.engine.flush_concurrency(), 3);
    app.consume("slow", "fast", 1).await;
    // The database is busy for 500 ms: the flush waits, then lands.
    let lock = lock_db_for(app.db_path.clone(), std::time::Duration::from_millis(500));
    app.sync_all().await;
    lock.join().unwrap();
    let v = alerts_until(&app, |v| {
        firing(v, "HighSyncLatency") && v["actions"]["flush_concurrency"].as_u64().unwrap() > 3
    })
    .await;
    let a = v["firing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == json!("HighSyncLatency"))
        .unwrap()
        .clone();
    assert_eq!(a["action"], json!("scale_up"));
    assert!(a["value"].as_f64().unwrap() > 100.0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("usage_sync_alert_firing{alert=\"HighSyncLatency\"} 1"),
        "{metrics}"
    );
    // Step by step up to the ceiling, never beyond: three more
    // evaluations, each applying the action again, leave it at 12.
    let v = alerts_until(&app, |v| v["actions"]["flush_concurrency"] == json!(12)).await;
    let at_ceiling = v["evaluations"].as_u64().unwrap();
    let v = alerts_until(&app, |v| {
        v["evaluations"].as_u64().unwrap() >= at_ceiling + 3
    })
    .await;
    assert!(firing(&v, "HighSyncLatency"), "{v}");
    assert_eq!(v["actions"]["flush_concurrency"], json!(12));
    assert_eq!(app.engine.flush_concurrency(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_error_rate_calls_the_webhook_when_firing_and_resolved() {
    use axum::{Json, Router, routing::post};
    let received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let sink = received.clone();
    let hook = Router::new().route(
        "/hook",
        post(move |Json(body): Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await });

    let app = spawn_app_with(&[
        ("USAGE_SYNC_ALERT_WEBHOOK", &hook_url),
        ("USAGE_SYNC_ALERT_INTERVAL", "100"),
        ("USAGE_SYNC_ALERT_WINDOW", "1500"),
    ])
    .await;
    app.consume("e", "fast", 1).await;
    // Longer than SQLite's 2 s busy timeout: the flush fails.
    let lock = lock_db_for(app.db_path.clone(), std::time::Duration::from_millis(2600));
    let (s, v) = app.post("/admin/v1/users/e/sync", &json!({})).await;
    assert_eq!((s, v["error"]["code"].clone()), (503, json!("unavailable")));
    alerts_until(&app, |v| firing(v, "HighErrorRate")).await;
    lock.join().unwrap();
    // The retry lands; once the failure leaves the window, it resolves.
    alerts_until(&app, |v| !firing(v, "HighErrorRate")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = received.lock().unwrap().clone();
        let statuses: Vec<_> = got
            .iter()
            .map(|b| b["status"].as_str().unwrap().to_owned())
            .collect();
        if statuses == ["firing", "resolved"] {
            assert_eq!(got[0]["alert"], json!("HighErrorRate"));
            assert_eq!(got[0]["action"], json!("alert_team"));
            assert_eq!(got[0]["threshold"], json!(0.05));
            assert!(got[0]["value"].as_f64().unwrap() > 0.05);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook received {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.db("e", "fast").await,
        1,
        "the failed flush was retried and landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_cpu_usage_stretches_check_and_heartbeat() {
    let app = spawn_app_with(&[
        ("USAGE_SYNC_ALERT_CPU_PERCENT", "0"),
        ("USAGE_SYNC_ALERT_INTERVAL", "100"),
    ])
    .await;
    let client = app.client.clone();
    let url = format!("{}/v1/consume", app.address);
    let load = tokio::spawn(async move {
        for i in 0..20_000 {
            let _ = client
                .post(&url)
                .body(json!({"user_id": format!("c{}", i % 50), "kind": "fast"}).to_string())
                .send()
                .await;
        }
    });
    let v = alerts_until(&app, |v| {
        firing(v, "HighCPUUsage") && v["actions"]["cadence_multiplier"].as_u64().unwrap() >= 2
    })
    .await;
    assert_eq!(v["actions"]["cadence_reason"], json!("HighCPUUsage"));
    // Doubling per evaluation, capped at 8.
    alerts_until(&app, |v| v["actions"]["cadence_multiplier"] == json!(8)).await;
    let (_, status) = app.get("/admin/v1/status").await;
    assert_eq!(status["cadence"]["multiplier"], json!(8));
    load.abort();
}

/// The dashboard in a real browser: the real binary under load, the page in
/// headless Chromium (Debian's, driven by playwright-core from
/// `tests/browser`), charts holding data, a user lookup, a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(node_ok
        && std::path::Path::new(&chromium).exists()
        && browser_dir.join("node_modules/playwright-core").exists())
    {
        usage_sync_store::testing::skip(
            "node, chromium or tests/browser/node_modules missing; run .ci/run",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = crate::helpers::Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_API_TOKEN", "dash-api-token"),
            ("USAGE_SYNC_ADMIN_TOKEN", "dash-token"),
            ("USAGE_SYNC_THRESHOLD", "5"),
        ],
    )
    .await;
    // Load while the page polls: consumes spread over a thousand users,
    // flushes by threshold. Spread so that consumes stay allowed however
    // long Chromium takes to start on a busy machine: ten users of the free
    // plan (50 fast units each) ran out in 2.5 s, after which the allowed
    // rate the page waits for stayed at 0.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), format!("{}/v1/consume", bin.address));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"user_id": format!("dash-{}", i % 1000), "kind": "fast"});
                let _ = client
                    .post(&url)
                    .bearer_auth("dash-api-token")
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            i
        })
    };
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(&browser_dir)
        .env("CHROMIUM", &chromium)
        .arg("dashboard.mjs")
        .arg(&bin.address)
        .args(["dash-token", "dash-3"])
        .arg(&shot);
    let out = crate::helpers::run(cmd).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    let stdout = out.ok();
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["status"], json!(200), "{v}");
    assert_eq!(
        v["url"],
        json!(format!("{}/dashboard", bin.address)),
        "the token leaves the address bar: {v}"
    );
    assert_eq!(v["csp_violations"], json!([]), "{v}");
    assert_eq!(v["top_header"], json!("userpending units"), "{v}");
    assert_eq!(v["y_min"], json!(0), "rates start at 0: {v}");
    assert!(
        v["legend_values"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x != "--"),
        "legends show values, not --: {v}"
    );
    assert!(v["points"]["consumes"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["points"]["flushes"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["max_allowed_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["canvases"], json!(4), "one canvas per chart: {v}");
    assert_eq!(v["banner"], json!("No alerts firing"), "{v}");
    assert_eq!(v["lookup_status"], json!(200), "{v}");
    assert_eq!(v["lookup"]["user_id"], json!("dash-3"), "{v}");
    assert!(
        v["lookup"]["kinds"]["fast"]["used"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert_eq!(
        v["external_requests"],
        json!([]),
        "no network beyond the service: {v}"
    );
    assert_eq!(v["page_errors"], json!(null), "{v}");
    assert!(sent > 0);
    let png = std::fs::metadata(&shot).unwrap().len();
    assert!(png > 10_000, "screenshot of {png} bytes");
    eprintln!("dashboard screenshot: {}", shot.display());
}
