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

async fn scrape(app: &crate::helpers::TestApp) -> String {
    let r = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn every_metric_family_is_exported_and_moves_under_load() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
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
    let mid = scrape(&app).await;
    assert_eq!(
        sample(&mid, "usage_sync_consume_total{result=\"allowed\"}"),
        10.0
    );
    assert_eq!(
        sample(&mid, "usage_sync_consume_total{result=\"denied\"}"),
        2.0
    );
    assert_eq!(
        sample(&mid, "usage_sync_consume_total{result=\"deduplicated\"}"),
        1.0
    );
    assert_eq!(
        sample(&mid, "usage_sync_consume_duration_seconds_count"),
        13.0
    );
    assert_eq!(
        sample(
            &mid,
            "usage_sync_consume_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        13.0
    );
    assert_eq!(sample(&mid, "usage_sync_pending_units"), 10.0);
    assert_eq!(sample(&mid, "usage_sync_users_tracked"), 1.0);
    assert_eq!(sample(&mid, "usage_sync_users_active"), 1.0);
    assert!(sample(&mid, "usage_sync_process_resident_memory_bytes") > 1e6);
    assert!(sample(&mid, "usage_sync_wal_segment_bytes") > 0.0);
    app.sync_all().await;
    let after = scrape(&app).await;
    assert_eq!(
        sample(
            &after,
            "usage_sync_flushes_total{trigger=\"manual\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(sample(&after, "usage_sync_flushed_units_total"), 10.0);
    assert_eq!(sample(&after, "usage_sync_rows_written_total"), 1.0);
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
    let advice = d["recommendations"].as_array().unwrap();
    assert!(
        advice
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("premium is at its limit")),
        "{d}"
    );

    app.sync_all().await;
    let (_, v) = app.get("/admin/v1/status").await;
    assert_eq!(v["sync"]["by_trigger"]["manual"]["units"], json!(20));
    assert_eq!(v["sync"]["write_amplification"], json!(20.0 / 3.0));
    let (s, _) = app.post("/admin/v1/stats/reset", &json!({})).await;
    assert_eq!(s, 200);
    let (_, v) = app.get("/admin/v1/status").await;
    assert_eq!(v["sync"]["flushes"], json!(0));
    assert_eq!(v["sync"]["by_trigger"]["manual"]["units"], json!(0));
    let (_, d) = app.get("/admin/v1/users/nobody/diagnose").await;
    assert_eq!(d["resident"], json!(false));
}

// Multi-threaded: the command runs blocking while the in-process
// instance must keep serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_command_shows_a_running_instance_and_its_checklist() {
    let app = spawn_app_with(&[("USAGE_SYNC_ADMIN_TOKEN", "adm")]).await;
    app.consume("s1", "fast", 4).await;
    let bin = env!("CARGO_BIN_EXE_usage-sync");
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(bin)
            .args(&args)
            .env_remove("USAGE_SYNC_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = run(vec![
        "status".into(),
        "--url".into(),
        app.address.clone(),
        "--token".into(),
        "adm".into(),
    ]);
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
    let (code, json_text, _) = run(vec![
        "status".into(),
        "--url".into(),
        app.address.clone(),
        "--token".into(),
        "adm".into(),
        "--json".into(),
    ]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(doc["checklist"].as_array().unwrap().len(), 5);
    assert_eq!(doc["pending_units"], json!(4));
    let (code, _, err) = run(vec![
        "status".into(),
        "--url".into(),
        app.address.clone(),
        "--token".into(),
        "wrong".into(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run(vec![
        "status".into(),
        "--url".into(),
        "http://127.0.0.1:1".into(),
    ]);
    assert_eq!(code, Some(2), "{err}");
}
