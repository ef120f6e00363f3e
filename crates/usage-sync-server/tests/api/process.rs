//! Tests of the real binary as a process.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Binary, db_total};

#[tokio::test]
async fn sigterm_flushes_everything_and_a_restart_shows_the_same_usage() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage-sync.db");
    let bin = Binary::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let mut allowed = 0;
    for i in 0..60 {
        let r = client
            .post(format!("{}/v1/consume", bin.address))
            .body(
                json!({"user_id": format!("u{}", i % 3), "kind": "premium", "amount": 1})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        allowed += (r.status() == 200) as i64;
    }
    assert_eq!(allowed, 30, "three users, limit 10 each");
    assert_eq!(
        db_total(&db, "u0", "premium").await,
        0,
        "quiet intervals: nothing flushed yet"
    );

    bin.signal("TERM");
    assert_eq!(
        bin.wait(Duration::from_secs(30)).await,
        Some(0),
        "clean exit after SIGTERM"
    );
    for u in ["u0", "u1", "u2"] {
        assert_eq!(db_total(&db, u, "premium").await, 10, "{u}");
    }

    let bin = Binary::start(dir.path(), &[]).await;
    let usage = bin.get_json("/v1/users/u1/usage").await;
    assert_eq!(usage["kinds"]["premium"]["used"], json!(10));
    assert_eq!(usage["kinds"]["premium"]["persisted"], json!(10));
    let r = client
        .post(format!("{}/v1/consume", bin.address))
        .body(json!({"user_id": "u1", "kind": "premium"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the limit holds across the restart");
    bin.signal("INT");
    assert_eq!(bin.wait(Duration::from_secs(30)).await, Some(0));
}

/// Runs the binary with `args` and the environment changed by `env`
/// (`None` removes a variable): its exit code, stdout and stderr.
fn run_binary(args: &[&str], env: &[(&str, Option<&str>)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_usage-sync"));
    cmd.args(args);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn check_config_reports_valid_and_invalid_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, text, _) = run_binary(
        &["check-config"],
        &[
            ("USAGE_SYNC_DATA_DIR", Some(data)),
            ("USAGE_SYNC_API_TOKEN", Some("hunter2")),
            ("USAGE_SYNC_ADMIN_TOKEN", Some("hunter3")),
            ("USAGE_SYNC_PRESET", Some("large")),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("hunter2"), "secrets are redacted");
    assert!(text.contains("api_token") && text.contains("<redacted>"));
    assert!(
        text.lines().any(|l| l.contains("max_concurrent_syncs")
            && l.contains("5")
            && l.contains("preset (large)")),
        "{text}"
    );
    for line in [
        "✓ database",
        "✓ data dir",
        "✓ durability",
        "✓ all 10 checks passed",
    ] {
        assert!(text.contains(line), "missing '{line}' in:\n{text}");
    }
    // An unreachable database fails the checklist (exit 1) and says how
    // to fix it; so does Redis, which is checked when configured.
    let unreachable = [
        (
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nowhere?connect_timeout=1",
            ),
            [
                "✗ database",
                "fix: start the database",
                "✗ 1 of 10 checks failed",
            ],
        ),
        (
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ["✗ redis", "fix: start Redis", "✗ 1 of 11 checks failed"],
        ),
    ];
    for ((var, url), lines) in unreachable {
        let (code, text, _) = run_binary(
            &["check-config"],
            &[
                ("USAGE_SYNC_DATA_DIR", Some(data)),
                (var, Some(url)),
                ("USAGE_SYNC_REDIS_TIMEOUT", Some("300ms")),
            ],
        );
        assert_eq!(code, Some(1), "{text}");
        for line in lines {
            assert!(text.contains(line), "missing '{line}' in:\n{text}");
        }
    }
    let (code, _, err) = run_binary(
        &["check-config"],
        &[("USAGE_SYNC_CHECK_INTERVAL", Some("often"))],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("sync_check_interval") && err.contains("USAGE_SYNC_CHECK_INTERVAL"),
        "{err}"
    );
    let (code, _, _) = run_binary(
        &["check-config"],
        &[
            ("NODE_ENV", Some("production")),
            ("USAGE_SYNC_API_TOKEN", None),
            ("USAGE_SYNC_ADMIN_TOKEN", None),
        ],
    );
    assert_eq!(code, Some(2), "production refuses to start without tokens");
    // One token without the other would leave the other routes open:
    // serve and check-config refuse it and name the missing variable.
    for cmd in ["serve", "check-config"] {
        let (code, _, err) = run_binary(
            &[cmd],
            &[
                ("USAGE_SYNC_DATA_DIR", Some(data)),
                ("USAGE_SYNC_API_TOKEN", Some("only-this-one-is-set")),
                ("USAGE_SYNC_ADMIN_TOKEN", None),
            ],
        );
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(
            err.contains("USAGE_SYNC_ADMIN_TOKEN is not") && err.contains("openssl rand -hex 32"),
            "{cmd}: {err}"
        );
    }
}

#[tokio::test]
async fn migrate_creates_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, _, err) = run_binary(&["migrate"], &[("USAGE_SYNC_DATA_DIR", Some(data))]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        db_total(&dir.path().join("usage-sync.db"), "x", "fast").await,
        0
    );
}

#[tokio::test]
async fn admin_plan_and_user_changes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let bin = Binary::start(dir.path(), &[]).await;
    let put = |path: String, body: serde_json::Value| {
        let client = client.clone();
        async move {
            client
                .put(path)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        put(
            format!("{}/admin/v1/plans/free", bin.address),
            json!({"limits": {"premium": 1, "fast": 2}})
        )
        .await,
        200
    );
    assert_eq!(
        put(
            format!("{}/admin/v1/users/v", bin.address),
            json!({"limits": {"fast": 7}})
        )
        .await,
        200
    );
    bin.signal("TERM");
    assert_eq!(bin.wait(Duration::from_secs(30)).await, Some(0));

    let bin = Binary::start(dir.path(), &[]).await;
    let usage = bin.get_json("/v1/users/v/usage").await;
    // The stored plan overrides the configured one; the user's override stays.
    assert_eq!(
        (
            usage["kinds"]["premium"]["limit"].clone(),
            usage["kinds"]["fast"]["limit"].clone()
        ),
        (json!(1), json!(7))
    );
    let consume = |n: u64| {
        let client = client.clone();
        let url = format!("{}/v1/consume", bin.address);
        async move {
            client
                .post(url)
                .body(json!({"user_id": "v", "kind": "fast", "amount": n}).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(consume(7).await, 200);
    assert_eq!(consume(1).await, 429);
}

/// The TypeScript client's own tests (Node's test runner) against this
/// build of the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_passes_its_tests_against_the_real_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/typescript");
    let node_major = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
        });
    if node_major.is_none_or(|m| m < 18) {
        usage_sync_store::testing::skip("Node 18+ not found");
        return;
    }
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(&dir)
        .env("USAGE_SYNC_BIN", env!("CARGO_BIN_EXE_usage-sync"))
        .args(["--test", "test/"]);
    let out = crate::helpers::run(cmd).await;
    let stdout = out.ok();
    assert!(
        stdout.contains("# pass 12") && stdout.contains("# fail 0"),
        "{stdout}"
    );
}

/// `usage-sync bench` against the real binary: it drives load, reads the
/// sync statistics, and grades the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_command_loads_an_instance_and_grades_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::helpers::Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_API_TOKEN", "api"),
            ("USAGE_SYNC_ADMIN_TOKEN", "adm"),
            ("USAGE_SYNC_THRESHOLD", "5"),
        ],
    )
    .await;
    // `usage-sync bench` against the server, with the API token and `more`.
    let bench = |more: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_usage-sync"));
        cmd.args(["bench", "--url", &server.address, "--token", "api"])
            .args(more)
            .env_remove("USAGE_SYNC_ADMIN_TOKEN")
            .env_remove("USAGE_SYNC_API_TOKEN");
        crate::helpers::run(cmd)
    };
    let out = bench(&[
        "--admin-token",
        "adm",
        "--connections",
        "4",
        "--duration",
        "1500ms",
        "--users",
        "20",
        "--kinds",
        "fast,premium",
        "--request-ids",
        "--grade",
        "--json",
    ])
    .await;
    let stdout = out.ok();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let requests = v["requests"].as_u64().unwrap();
    assert!(requests > 20, "{v}");
    assert_eq!(v["errors"], json!(0), "{v}");
    assert_eq!(
        v["allowed"].as_u64().unwrap() + v["denied"].as_u64().unwrap(),
        requests
    );
    // 20 users × (50 fast + 10 premium) of the free plan bound what can
    // be allowed.
    assert!(v["allowed"].as_u64().unwrap() <= 20 * 60, "{v}");
    assert_eq!(v["success_percent"], json!(100.0));
    assert!(v["latency_ms"]["p99"].as_f64().unwrap() >= v["latency_ms"]["p50"].as_f64().unwrap());
    // The grade is the one the run's own figures earn: A on an idle
    // machine, B when the rest of the suite pushes the p99 past 10 ms.
    let sync = &v["sync_after"];
    let expected = usage_sync_server::bench::grade(
        sync["avg_flush_ms"].as_f64().unwrap(),
        sync["error_rate"].as_f64().unwrap() * 100.0,
        v["success_percent"].as_f64().unwrap(),
        usage_sync_server::bench::Serving {
            p99_ms: v["latency_ms"]["p99"].as_f64().unwrap(),
            verbose_logging: false,
        },
    );
    assert_eq!(v["grade"], json!(expected.to_string()), "{v}");
    assert!(
        expected == 'A' || v["latency_ms"]["p99"].as_f64().unwrap() > 10.0,
        "nothing but a slow machine's p99 keeps this run from an A: {v}"
    );
    assert!(
        v["sync_after"]["flushes"].as_u64().unwrap() >= 1,
        "threshold flushes ran: {v}"
    );
    // The instance counted exactly what the bench saw allowed.
    let client = reqwest::Client::new();
    let st: Value = client
        .get(format!("{}/admin/v1/status", server.address))
        .bearer_auth("adm")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["consumes"]["allowed"], v["allowed"]);
    assert_eq!(st["consumes"]["denied"], v["denied"]);

    // An unreachable instance is exit code 2.
    let (code, _, err) = run_binary(
        &["bench", "--url", "http://127.0.0.1:1", "--duration", "1s"],
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("onnection refused"),
        "the cause is named: {err}"
    );
    // A kind the service does not know: every request fails, and the
    // report says why.
    let out = bench(&[
        "--kinds",
        "nope",
        "--duration",
        "300ms",
        "--connections",
        "1",
    ])
    .await;
    let text = &out.stdout;
    assert!(text.contains("first error   400 unknown_kind"), "{text}");
    assert!(!text.contains('\r') && !out.stderr.contains('\r'));
}

/// A second `serve` on a data dir in use (the natural way around "address
/// in use" is another port, same directory) exits 2 naming the dir and the
/// owner's pid, and never touches the live log; check-config and migrate
/// say the dir is in use. The first instance keeps every unit.
#[tokio::test]
async fn a_second_instance_on_one_data_dir_exits_2_and_the_log_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let first = Binary::start(dir.path(), &[]).await;
    let pid = first.child.id();
    assert_eq!(first.consume("owner", "fast", 20).await, 200);
    let segments = |d: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(d.join("wal"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        v.sort();
        v
    };
    let before = segments(dir.path());

    let second = Binary::spawn_unready(dir.path(), &[]);
    let code = second.wait(Duration::from_secs(30)).await;
    assert_eq!(code, Some(2), "a second serve on one data dir exits 2");
    let logs: String = crate::helpers::binary_logs(dir.path());
    let expected = format!("data dir {} is in use (pid {pid})", dir.path().display());
    assert!(logs.contains(&expected), "missing '{expected}' in:\n{logs}");
    assert_eq!(segments(dir.path()), before, "the live log was not touched");

    let data = dir.path().to_str().unwrap();
    let (code, text, _) = run_binary(&["check-config"], &[("USAGE_SYNC_DATA_DIR", Some(data))]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("✗ data dir") && text.contains(&format!("in use (pid {pid})")),
        "{text}"
    );
    let (code, _, err) = run_binary(&["migrate"], &[("USAGE_SYNC_DATA_DIR", Some(data))]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("is in use (pid {pid})")), "{err}");
    assert_eq!(segments(dir.path()), before);

    // The owner kept serving, and stops with every unit in the database.
    assert_eq!(first.consume("owner", "fast", 5).await, 200);
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(30)).await, Some(0));
    assert_eq!(
        db_total(&dir.path().join("usage-sync.db"), "owner", "fast").await,
        25
    );
    // A SIGKILLed owner leaves no stale lock: the next start takes it.
    let again = Binary::start(dir.path(), &[]).await;
    again.signal("KILL");
    let _ = again.wait(Duration::from_secs(10)).await;
    let third = Binary::start(dir.path(), &[]).await;
    third.signal("TERM");
    assert_eq!(third.wait(Duration::from_secs(30)).await, Some(0));
}

/// The first hour of a newcomer: a port already taken, a misspelt
/// variable, a log level typo. Each is said plainly; the ones that cannot
/// work exit 2.
#[tokio::test]
async fn startup_mistakes_are_named_with_the_fix() {
    let bin = env!("CARGO_BIN_EXE_usage-sync");
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["serve", "--listen", &format!("localhost:{port}")])
        .env("USAGE_SYNC_DATA_DIR", dir.path());
    let out = crate::helpers::run(cmd).await;
    let err = &out.stderr;
    assert_eq!(out.code, Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("--listen or USAGE_SYNC_LISTEN"),
        "{err}"
    );
    drop(taken);
    let data = dir.path().to_str().unwrap();
    let (code, text, _) = run_binary(
        &["check-config"],
        &[
            ("USAGE_SYNC_DATA_DIR", Some(data)),
            ("USAGE_SYNC_DURABLITY", Some("fsync")),
        ],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("✗ environment")
            && text.contains("USAGE_SYNC_DURABLITY (did you mean USAGE_SYNC_DURABILITY?)"),
        "{text}"
    );
    let (code, _, err) = run_binary(
        &["serve"],
        &[
            ("USAGE_SYNC_DATA_DIR", Some(data)),
            ("USAGE_SYNC_LOG_LEVEL", Some("warnn")),
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("did you mean 'warn'"), "{err}");
    let (_, help, _) = run_binary(&["serve", "--help"], &[]);
    assert!(
        help.contains("USAGE_SYNC_LISTEN") && help.contains("--listen"),
        "{help}"
    );
}
