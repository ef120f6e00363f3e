//! The service on PostgreSQL: the real binary, a real server, and an
//! outage made by cutting a TCP proxy between them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use usage_sync_store::testing::TempDatabase;
use usage_sync_store::{PostgresStore, Store};

use crate::helpers::{Binary, TestApp, pick, spawn_app_with};

/// Forwards a local port to PostgreSQL; `set_down(true)` drops every open
/// connection and refuses new ones, like a network partition.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let upstream = upstream.clone();
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, down, cut }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|g| *g += 1);
        }
    }
}

fn upstream_of(url: &str) -> (String, String) {
    // postgres://user@host:port/db -> ("host:port", "user")
    let rest = url.split_once("://").unwrap().1;
    let (auth, rest) = rest.split_once('@').unwrap();
    (rest.split_once('/').unwrap().0.to_owned(), auth.to_owned())
}

const UNLIMITED: &str =
    "[plans.free]\nlimits = { premium = \"unlimited\", fast = \"unlimited\" }\n";

/// Sends `n` consumes at once, the i-th with `body(i)`; their statuses,
/// in order.
async fn consume_at_once(app: &TestApp, n: usize, body: impl Fn(usize) -> Value) -> Vec<u16> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url) = (app.client.clone(), format!("{}/v1/consume", app.address));
        let body = body(i).to_string();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn the_service_runs_on_postgres() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let app = spawn_app_with(&[("DATABASE_URL", &db.url), ("USAGE_SYNC_DB_POOL_SIZE", "3")]).await;
    let statuses = consume_at_once(&app, 100, |i| {
        json!({"user_id": format!("p{}", i % 5), "kind": "fast", "request_id": format!("r{i}")})
    })
    .await;
    assert_eq!(statuses, vec![200; 100]);
    assert_eq!(app.sync_all().await["flushed_units"], json!(100));
    let store = PostgresStore::connect(&db.url, 1).unwrap();
    let rows = store.all_usage().await.unwrap();
    assert_eq!(rows.iter().map(|r| r.used).sum::<i64>(), 100);
    assert_eq!(rows.len(), 5);
    let (s, v) = app.get("/readyz").await;
    assert_eq!((s, v["store"].clone()), (200, json!("postgres")));
}

/// Connections are served on their own threads' runtimes, and a request
/// that loads a user may open a pool connection there. The final flush at
/// shutdown runs after the last HTTP connection closed: it must still
/// reach PostgreSQL through those connections (the threads outlive it).
#[tokio::test]
async fn the_shutdown_flush_reaches_postgres_through_connections_requests_opened() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let app = spawn_app_with(&[("DATABASE_URL", &db.url), ("USAGE_SYNC_DB_POOL_SIZE", "4")]).await;
    let statuses = consume_at_once(
        &app,
        200,
        |i| json!({"user_id": format!("s{}", i % 50), "kind": "fast"}),
    )
    .await;
    assert_eq!(statuses, vec![200; 200]);
    // Nothing flushed yet: every unit goes out in the shutdown flush.
    let store = PostgresStore::connect(&db.url, 1).unwrap();
    assert_eq!(store.all_usage().await.unwrap().len(), 0);
    let (report, _dir) = app.stop().await;
    assert_eq!((report.flushed_units, report.remaining_units), (200, 0));
    let rows = store.all_usage().await.unwrap();
    assert_eq!(rows.iter().map(|r| r.used).sum::<i64>(), 200);
    assert_eq!(rows.len(), 50);
}

/// Two instances on one PostgreSQL database without Redis: once one has
/// flushed, the other's usage view includes those units (it reads the
/// database's value), while its own pending units still count.
#[tokio::test]
async fn without_redis_usage_reads_what_other_instances_flushed() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("USAGE_SYNC_DB_POOL_SIZE", "2"),
    ];
    let (a, b) = (spawn_app_with(&env).await, spawn_app_with(&env).await);
    for _ in 0..3 {
        assert_eq!(a.consume("both", "fast", 1).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(b.consume("both", "fast", 1).await.0, 200);
    }
    // Before a flush, each instance knows only its own units.
    assert_eq!(b.usage("both").await["kinds"]["fast"]["used"], json!(2));
    a.sync_all().await;
    let fast = b.usage("both").await["kinds"]["fast"].clone();
    assert_eq!(
        pick(&fast, &["persisted", "pending", "used"]),
        json!([3, 2, 5]),
        "{fast}"
    );
    assert_eq!(fast["remaining"], json!(45));
    b.sync_all().await;
    assert_eq!(a.usage("both").await["kinds"]["fast"]["used"], json!(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_under_load_fails_no_request_and_loses_nothing() {
    let Some(db) = TempDatabase::create().await else {
        return;
    };
    let (upstream, user) = upstream_of(&db.url);
    let proxy = Proxy::start(upstream).await;
    let name = db.url.rsplit_once('/').unwrap().1;
    let via_proxy = format!(
        "postgres://{user}@127.0.0.1:{}/{name}?connect_timeout=2",
        proxy.port
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("usage-sync.toml");
    std::fs::write(&config, UNLIMITED).unwrap();
    let env = [
        ("USAGE_SYNC_CONFIG", config.to_str().unwrap()),
        ("DATABASE_URL", via_proxy.as_str()),
        ("USAGE_SYNC_THRESHOLD", "3"),
        ("USAGE_SYNC_CHECK_INTERVAL", "500"),
        ("USAGE_SYNC_TIMEOUT", "2000"),
    ];
    let bin = Binary::start(dir.path(), &env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/consume", bin.address);
    let post = |body: Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(url)
                .body(body.to_string())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    let users: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
    let mut acked = 0i64;
    for u in &users {
        assert_eq!(post(json!({"user_id": u, "kind": "fast"})).await, Some(200));
        acked += 1;
    }
    proxy.set_down(true);
    let length = crate::helpers::outage_length();
    let outage = Instant::now();
    let mut i = 0;
    while outage.elapsed() < length {
        let u = &users[i % users.len()];
        i += 1;
        assert_eq!(
            post(json!({"user_id": u, "kind": "fast"})).await,
            Some(200),
            "request {i} during the outage"
        );
        acked += 1;
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (s, _) = {
        let r = bin.get("/readyz").await;
        (r.status().as_u16(), ())
    };
    assert_eq!(s, 503, "readiness reports the unreachable database");
    proxy.set_down(false);
    let back = Instant::now();
    let synced = crate::helpers::eventually(Duration::from_secs(30), || async {
        client
            .post(format!("{}/admin/v1/sync", bin.address))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(synced, "sync after the outage");
    let catch_up = back.elapsed();
    let store = PostgresStore::connect(&db.url, 1).unwrap();
    let total = usage_sync_store::testing::total_used(&store).await;
    assert_eq!(total, acked);
    eprintln!(
        "postgres outage: {i} requests in {length:?}, {acked} units, all persisted {catch_up:?} after it came back"
    );
}

/// Store errors keep their cause and say what to do: an unknown role and a
/// missing database are refused logins that waiting cannot heal (exit 2,
/// the URL with its password redacted, the server's own words); a closed
/// port is unreachable (retried; readyz stays 503). check-config tells
/// them apart too.
#[tokio::test]
async fn database_errors_name_their_cause_and_the_ones_that_cannot_heal_exit_2() {
    let Some(_db) = TempDatabase::create().await else {
        return;
    };
    let admin = usage_sync_store::testing::postgres_admin_url();
    let (scheme, rest) = admin.split_once("://").unwrap();
    let (auth, hostdb) = rest.split_once('@').unwrap();
    let host = hostdb.split_once('/').unwrap().0;
    let secret = auth
        .split_once(':')
        .map(|(_, p)| format!(":{p}"))
        .unwrap_or_default();
    let cases = [
        (
            format!(
                "{scheme}://nobody_{:x}{secret}@{host}/postgres",
                fastrand::u32(..)
            ),
            "refused the login",
            "password in DATABASE_URL",
        ),
        (
            format!(
                "{scheme}://{auth}@{host}/no_such_db_{:x}",
                fastrand::u32(..)
            ),
            "does not exist",
            "createdb",
        ),
    ];
    let bin = env!("CARGO_BIN_EXE_usage-sync");
    for (url, cause, fix) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USAGE_SYNC_DATA_DIR", dir.path())
            .env("USAGE_SYNC_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", url);
        let out = crate::helpers::run(cmd).await;
        let err = &out.stderr;
        assert_eq!(out.code, Some(2), "{url}: {err}");
        assert!(err.contains(cause) && err.contains(fix), "{url}: {err}");
        assert!(
            !err.contains("db error"),
            "the server's own words, not 'db error': {err}"
        );
        if !secret.is_empty() {
            assert!(
                err.contains("<redacted>") && !err.contains(&secret[1..]),
                "{err}"
            );
        }
        let out = std::process::Command::new(bin)
            .arg("check-config")
            .env("USAGE_SYNC_DATA_DIR", dir.path())
            .env("DATABASE_URL", url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("✗ database") && text.contains(cause) && text.contains(fix),
            "{text}"
        );
    }
    // A closed port can heal: the service keeps trying and stays unready,
    // saying why.
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::spawn_unready(
        dir.path(),
        &[(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/test?connect_timeout=1",
        )],
    );
    let log = dir.path().to_owned();
    let said = crate::helpers::eventually(Duration::from_secs(20), || {
        let log = log.clone();
        async move {
            let t = crate::helpers::binary_logs(&log);
            t.contains("cannot reach the database") && t.contains("onnection refused")
        }
    })
    .await;
    assert!(said, "the retry says the port refused the connection");
    let r = reqwest::get(format!("{}/readyz", bin.address))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
}

/// A data dir that is a file cannot heal: exit 2 with the path and the
/// cause, at once.
#[tokio::test]
async fn a_data_dir_that_is_a_file_exits_2_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_usage-sync"))
        .arg("serve")
        .env("USAGE_SYNC_DATA_DIR", &file)
        .env("USAGE_SYNC_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "data dir {} is not a writable directory",
            file.display()
        )) && (err.contains("File exists") || err.contains("Not a directory")),
        "{err}"
    );
}
