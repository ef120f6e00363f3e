//! Process-level durability: SIGKILL the real binary under load, crash it
//! right after a database commit, lock its database for 30 s, and check
//! that every acknowledged unit reaches the database exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Binary, db_total, eventually};

const UNLIMITED: &str =
    "[plans.free]\nlimits = { premium = \"unlimited\", fast = \"unlimited\" }\n";

/// What the client knows about the units it sent.
#[derive(Default)]
struct Ledger {
    /// (user, kind) → units acknowledged with 200, minus acknowledged refunds.
    acked: HashMap<(String, String), i64>,
    /// (user, kind) → units of consumes without a request id whose answer
    /// was lost (killed mid-request): counted or not, unknowable.
    uncertain: HashMap<(String, String), i64>,
    /// Request ids whose consume outcome is unknown: re-sent after the
    /// restart, where deduplication tells the truth.
    unresolved: Vec<(String, String, String, i64)>,
    /// Acknowledged consumes with a request id, not yet refunded.
    refundable: Vec<(String, String, String, i64)>,
    /// Refunds whose answer was lost.
    unresolved_refunds: Vec<(String, String, String, i64)>,
    next_id: u64,
}

type Shared = Arc<Mutex<Ledger>>;

async fn post(client: &reqwest::Client, url: &str, body: Value) -> Option<(u16, Value)> {
    let r = client.post(url).body(body.to_string()).send().await.ok()?;
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.ok()?;
    Some((status, v))
}

/// One client task: consumes (premium always with a request id, fast
/// without), and every 7th request refunds an earlier premium consume.
async fn drive(base: String, shared: Shared, seed: u64, stop: Arc<std::sync::atomic::AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let user = format!("u{}", rng.u8(0..8));
        if rng.u8(0..7) == 0 {
            let pick = {
                let mut l = shared.lock().unwrap();
                let n = l.refundable.len();
                (n > 0).then(|| l.refundable.swap_remove(rng.usize(0..n)))
            };
            if let Some((rid, u, k, amount)) = pick {
                let r = post(
                    &client,
                    &format!("{base}/v1/refund"),
                    json!({"request_id": rid}),
                )
                .await;
                let mut l = shared.lock().unwrap();
                match r {
                    Some((200, _)) => *l.acked.entry((u, k)).or_default() -= amount,
                    Some((s, v)) => panic!("refund answered {s}: {v}"),
                    None => l.unresolved_refunds.push((rid, u, k, amount)),
                }
                continue;
            }
        }
        let amount = rng.i64(1..4);
        let with_id = rng.bool();
        let kind = if with_id { "premium" } else { "fast" };
        let rid = with_id.then(|| {
            let mut l = shared.lock().unwrap();
            l.next_id += 1;
            format!("req-{seed}-{}", l.next_id)
        });
        let mut body = json!({"user_id": user, "kind": kind, "amount": amount});
        if let Some(r) = &rid {
            body["request_id"] = json!(r);
        }
        let r = post(&client, &format!("{base}/v1/consume"), body).await;
        let mut l = shared.lock().unwrap();
        let key = (user.clone(), kind.to_owned());
        match (r, rid) {
            (Some((200, v)), rid) => {
                assert_eq!(v["allowed"], json!(true));
                *l.acked.entry(key).or_default() += amount;
                if let Some(rid) = rid {
                    l.refundable.push((rid, user, kind.to_owned(), amount));
                }
            }
            (Some((503, _)), None) => {} // shutting down / starting: not counted
            (Some((503, _)), Some(rid)) => l.unresolved.push((rid, user, kind.to_owned(), amount)),
            (Some((s, v)), _) => panic!("consume answered {s}: {v}"),
            (None, None) => *l.uncertain.entry(key).or_default() += amount,
            (None, Some(rid)) => l.unresolved.push((rid, user, kind.to_owned(), amount)),
        }
    }
}

/// After a restart, learn the outcome of every request whose answer was
/// lost, by repeating it (idempotent by request id).
async fn resolve(base: &str, shared: &Shared) {
    let client = reqwest::Client::new();
    let (consumes, refunds) = {
        let mut l = shared.lock().unwrap();
        (
            std::mem::take(&mut l.unresolved),
            std::mem::take(&mut l.unresolved_refunds),
        )
    };
    for (rid, u, k, amount) in consumes {
        let body = json!({"user_id": u, "kind": k, "amount": amount, "request_id": rid});
        let (s, v) = post(&client, &format!("{base}/v1/consume"), body)
            .await
            .expect("server is up");
        assert_eq!(s, 200, "{v}");
        let mut l = shared.lock().unwrap();
        *l.acked.entry((u.clone(), k.clone())).or_default() += amount;
        l.refundable.push((rid, u, k, amount));
    }
    for (rid, u, k, amount) in refunds {
        let (s, v) = post(
            &client,
            &format!("{base}/v1/refund"),
            json!({"request_id": rid}),
        )
        .await
        .expect("server is up");
        // 200: applied now; 409: it had been applied before the kill.
        assert!(s == 200 || s == 409, "refund retry answered {s}: {v}");
        *shared.lock().unwrap().acked.entry((u, k)).or_default() -= amount;
    }
}

async fn kill_test(durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("usage-sync.toml");
    std::fs::write(&config, UNLIMITED).unwrap();
    let env = [
        ("USAGE_SYNC_CONFIG", config.to_str().unwrap()),
        ("USAGE_SYNC_DURABILITY", durability),
        // Flush often, so kills land before, during and after flushes.
        ("USAGE_SYNC_THRESHOLD", "4"),
        ("USAGE_SYNC_CHECK_INTERVAL", "150"),
    ];
    let shared: Shared = Arc::default();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..10 {
        let bin = Binary::start(dir.path(), &env).await;
        resolve(&bin.address, &shared).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                tokio::spawn(drive(
                    bin.address.clone(),
                    shared.clone(),
                    round * 100 + i,
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(150..700))).await;
        bin.signal("KILL");
        assert_eq!(
            bin.wait(Duration::from_secs(10)).await,
            None,
            "killed, no exit code"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let bin = Binary::start(dir.path(), &env).await;
    resolve(&bin.address, &shared).await;
    assert_eq!(bin.sync().await, 200);
    let (acked, uncertain) = {
        let l = shared.lock().unwrap();
        (l.acked.clone(), l.uncertain.clone())
    };
    let db = dir.path().join("usage-sync.db");
    let mut total_acked = 0;
    for u in 0..8 {
        let user = format!("u{u}");
        let premium = db_total(&db, &user, "premium").await;
        let want = acked
            .get(&(user.clone(), "premium".into()))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            premium, want,
            "{durability}: {user} premium (request ids: exact)"
        );
        let fast = db_total(&db, &user, "fast").await;
        let want = acked
            .get(&(user.clone(), "fast".into()))
            .copied()
            .unwrap_or(0);
        let maybe = uncertain
            .get(&(user.clone(), "fast".into()))
            .copied()
            .unwrap_or(0);
        assert!(
            fast >= want && fast <= want + maybe,
            "{durability}: {user} fast: database {fast}, acknowledged {want}, unknown outcome {maybe}"
        );
        total_acked += want;
    }
    assert!(
        total_acked > 500,
        "the load was too light to mean anything: {total_acked}"
    );
    eprintln!(
        "{durability}: 10 SIGKILLs, {total_acked} acknowledged fast units + exact premium totals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged_fsync() {
    kill_test("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged_batched() {
    kill_test("batched").await;
}

#[tokio::test]
async fn crash_right_after_a_database_commit_is_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage-sync.db");
    let bin = Binary::start(dir.path(), &[("USAGE_SYNC_FAULT_CRASH_AFTER_COMMIT", "1")]).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = post(
            &client,
            &format!("{}/v1/consume", bin.address),
            json!({"user_id": "u", "kind": "fast", "amount": 2}),
        )
        .await;
        assert_eq!(r.unwrap().0, 200);
    }
    // The sync commits, then the process aborts before logging it.
    assert!(
        client
            .post(format!("{}/admin/v1/sync", bin.address))
            .send()
            .await
            .is_err()
    );
    assert!(
        bin.wait(Duration::from_secs(10))
            .await
            .is_none_or(|c| c != 0)
    );
    assert_eq!(db_total(&db, "u", "fast").await, 6, "the commit landed");

    let bin = Binary::start(dir.path(), &[]).await;
    let usage = bin.get_json("/v1/users/u/usage").await;
    assert_eq!(usage["kinds"]["fast"]["used"], json!(6));
    assert_eq!(
        usage["kinds"]["fast"]["pending"],
        json!(0),
        "recovery found the flush id in the database"
    );
    assert_eq!(bin.sync().await, 200);
    assert_eq!(db_total(&db, "u", "fast").await, 6, "not applied twice");
}

#[tokio::test]
async fn a_request_id_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let body = json!({"user_id": "u", "kind": "premium", "amount": 3, "request_id": "once"});
    let bin = Binary::start(dir.path(), &[("USAGE_SYNC_DURABILITY", "fsync")]).await;
    let (s, v) = post(
        &client,
        &format!("{}/v1/consume", bin.address),
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!((s, v["deduplicated"].clone()), (200, json!(false)));
    bin.signal("KILL");
    bin.wait(Duration::from_secs(10)).await;

    let bin = Binary::start(dir.path(), &[("USAGE_SYNC_DURABILITY", "fsync")]).await;
    let (s, v) = post(&client, &format!("{}/v1/consume", bin.address), body)
        .await
        .unwrap();
    assert_eq!(
        (s, v["deduplicated"].clone(), v["used"].clone()),
        (200, json!(true), json!(3))
    );
    assert_eq!(bin.sync().await, 200);
    assert_eq!(
        db_total(&dir.path().join("usage-sync.db"), "u", "premium").await,
        3
    );
}

#[tokio::test]
async fn a_crash_in_the_middle_of_recovery_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage-sync.db");
    let client = reqwest::Client::new();
    let env = [("USAGE_SYNC_DURABILITY", "fsync")];
    let bin = Binary::start(dir.path(), &env).await;
    for i in 0..20 {
        let body = json!({"user_id": format!("r{}", i % 4), "kind": "fast", "amount": 2, "request_id": format!("q{i}")});
        assert_eq!(
            post(&client, &format!("{}/v1/consume", bin.address), body)
                .await
                .unwrap()
                .0,
            200
        );
    }
    // Part of it reaches the database, part is still only in the log.
    client
        .post(format!("{}/admin/v1/users/r0/sync", bin.address))
        .send()
        .await
        .unwrap();
    bin.signal("KILL");
    bin.wait(Duration::from_secs(10)).await;

    // Recovery dies after installing the state, before checkpointing it.
    let crashing = Binary::spawn_unready(
        dir.path(),
        &[
            ("USAGE_SYNC_DURABILITY", "fsync"),
            ("USAGE_SYNC_FAULT_CRASH_IN_RECOVERY", "true"),
        ],
    );
    assert!(
        crashing
            .wait(Duration::from_secs(20))
            .await
            .is_none_or(|c| c != 0),
        "the fault aborts the start"
    );
    let logs: String = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("binary-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("aborting in the middle of recovery"),
        "the abort was the injected fault"
    );

    let bin = Binary::start(dir.path(), &env).await;
    // The request ids survived both crashes.
    let body = json!({"user_id": "r1", "kind": "fast", "amount": 2, "request_id": "q1"});
    let (s, v) = post(&client, &format!("{}/v1/consume", bin.address), body)
        .await
        .unwrap();
    assert_eq!((s, v["deduplicated"].clone()), (200, json!(true)));
    assert_eq!(bin.sync().await, 200);
    for u in 0..4 {
        assert_eq!(db_total(&db, &format!("r{u}"), "fast").await, 10, "r{u}");
    }
}

/// Holds SQLite's write lock from another connection, as an operator's
/// long transaction or a backup tool would.
fn lock_database(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_fails_no_request_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage-sync.db");
    let config = dir.path().join("usage-sync.toml");
    std::fs::write(&config, UNLIMITED).unwrap();
    let env = [
        ("USAGE_SYNC_CONFIG", config.to_str().unwrap()),
        ("USAGE_SYNC_THRESHOLD", "3"),
        ("USAGE_SYNC_CHECK_INTERVAL", "500"),
    ];
    let bin = Binary::start(dir.path(), &env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/consume", bin.address);
    let users: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
    // Make the users resident (a cold user needs the database).
    for u in &users {
        assert_eq!(
            post(&client, &url, json!({"user_id": u, "kind": "fast"}))
                .await
                .unwrap()
                .0,
            200
        );
    }
    let mut acked = i64::try_from(users.len()).unwrap();
    let lock = lock_database(&db);
    let length = crate::helpers::outage_length();
    let outage = Instant::now();
    let mut failures = 0;
    let mut i = 0;
    while outage.elapsed() < length {
        let u = &users[i % users.len()];
        i += 1;
        match post(&client, &url, json!({"user_id": u, "kind": "fast"})).await {
            Some((200, _)) => acked += 1,
            other => {
                failures += 1;
                eprintln!("request failed during the outage: {other:?}");
            }
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(failures, 0);
    assert_eq!(
        db_total(&db, "o0", "fast").await,
        0,
        "nothing could be written during the outage"
    );
    drop(lock);
    let back = Instant::now();
    assert_eq!(bin.sync().await, 200);
    let catch_up = back.elapsed();
    let mut total = 0;
    for u in &users {
        total += db_total(&db, u, "fast").await;
    }
    assert_eq!(total, acked);
    assert!(acked > 1000, "too little load to mean anything: {acked}");
    eprintln!(
        "outage: {i} requests in {length:?}, {acked} units acknowledged, all persisted {catch_up:?} after the database came back"
    );
}

/// Unmounts a test's tmpfs even when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk stalls the log instead of wedging it, in both durable
/// modes: while the log cannot write, consumes answer 503 `unavailable`,
/// `/readyz` says why and the metric is 0; once space returns the log
/// writes again with no restart. Retried under their request ids, the
/// batch that met the full disk counts once; the database ends with
/// exactly the acknowledged units, and so does a restart.
#[tokio::test]
async fn a_full_disk_stalls_the_log_and_it_heals_when_space_returns() {
    for mode in ["batched", "fsync"] {
        full_disk_heals(mode).await;
    }
}

async fn full_disk_heals(mode: &str) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        usage_sync_store::testing::skip("cannot mount a tmpfs (needs root)");
        return;
    }
    let _unmount = Mounted(data.clone());
    let config = root.path().join("config.toml");
    std::fs::write(&config, UNLIMITED).unwrap();
    let db = root.path().join("usage.db");
    let env = [
        ("USAGE_SYNC_DATA_DIR", data.to_str().unwrap()),
        ("DATABASE_URL", &format!("sqlite://{}", db.display())),
        ("USAGE_SYNC_CONFIG", config.to_str().unwrap()),
        ("USAGE_SYNC_DURABILITY", mode),
    ];
    let bin = Binary::start(root.path(), &env).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let client = client.clone();
        let url = format!("{}{path}", bin.address);
        async move {
            let r = client
                .post(url)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let batch = |k: usize| {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"user_id": "disk", "kind": "fast", "request_id": format!("{mode}-{k}-{i}")}))
            .collect();
        json!({ "events": events })
    };
    // Fill the volume, then consume until the log cannot grow (the fsync
    // segment has zeros written ahead, so it takes a few batches).
    let mut filler = std::fs::File::create(data.join("filler")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let mut acked = 0i64;
    let mut failing = None;
    for k in 0..200 {
        let (s, v) = post("/v1/consume/batch", batch(k)).await;
        if s == 503 || v["results"][0]["status"] == json!(503) {
            failing = Some(k);
            break;
        }
        assert_eq!(s, 200, "{v}");
        let ok = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == json!(200))
            .count();
        assert_eq!(
            ok, 1000,
            "{mode}: a batch is acknowledged whole or not at all"
        );
        acked += 1000;
    }
    let failing = failing.expect("the log met the full disk");

    // Stalled: nothing is acknowledged, and everyone can see why.
    let (s, v) = post("/v1/consume", json!({"user_id": "disk", "kind": "fast"})).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (503, json!("unavailable")),
        "{v}"
    );
    let ready = bin.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);
    let why: Value = ready.json().await.unwrap();
    assert!(
        why["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{why}"
    );
    let metrics = || {
        let client = client.clone();
        let url = format!("{}/metrics", bin.address);
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert!(metrics().await.contains("usage_sync_wal_writable 0"));

    // Space returns: the log heals by itself.
    std::fs::remove_file(data.join("filler")).unwrap();
    let healed = eventually(Duration::from_secs(30), || async {
        post(
            "/v1/consume",
            json!({"user_id": "disk", "kind": "fast", "request_id": format!("{mode}-probe")}),
        )
        .await
        .0 == 200
    })
    .await;
    assert!(
        healed,
        "{mode}: consumes are acknowledged again without a restart"
    );
    acked += 1;
    assert!(metrics().await.contains("usage_sync_wal_writable 1"));
    let ready = bin.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 200);
    // The batch that met the full disk, retried under its ids: each event
    // counts once, whether its record reached the log before or after.
    let (s, v) = post("/v1/consume/batch", batch(failing)).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == json!(200)),
        "{v}"
    );
    acked += 1000;
    assert_eq!(post("/admin/v1/sync", json!({})).await.0, 200);
    assert_eq!(db_total(&db, "disk", "fast").await, acked, "{mode}");

    bin.signal("TERM");
    assert_eq!(bin.wait(Duration::from_secs(30)).await, Some(0));
    let bin = Binary::start(root.path(), &env).await;
    let usage = bin.get_json("/v1/users/disk/usage").await;
    assert_eq!(usage["kinds"]["fast"]["used"], json!(acked), "{mode}");
    bin.signal("TERM");
    assert_eq!(bin.wait(Duration::from_secs(30)).await, Some(0));
}

/// A log that lost records it had made durable refuses the start (exit 2,
/// naming the loss and the way out); `serve --accept-log-loss` starts with
/// what is left and says what was lost.
#[tokio::test]
async fn a_damaged_log_refuses_the_start_unless_the_loss_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    for i in 0..10 {
        let r = client
            .post(format!("{}/v1/consume", bin.address))
            .body(
                json!({"user_id": "dmg", "kind": "fast", "request_id": format!("d{i}")})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    bin.signal("TERM");
    assert_eq!(bin.wait(Duration::from_secs(30)).await, Some(0));
    // Cut the newest segment in half: its checkpoint is gone.
    let wal = dir.path().join("wal");
    let seg = usage_sync_store::wal::list_segments(&wal)
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();

    let refused = Binary::spawn_unready(dir.path(), &[]);
    assert_eq!(refused.wait(Duration::from_secs(30)).await, Some(2));
    let logs: String = crate::helpers::binary_logs(dir.path());
    assert!(
        logs.contains("write-ahead log")
            && logs.contains("is damaged")
            && logs.contains("--accept-log-loss"),
        "{logs}"
    );

    let accepted = Binary::spawn_with_args(dir.path(), &[], &["--accept-log-loss"]);
    let ready = eventually(Duration::from_secs(20), || {
        let client = client.clone();
        let url = format!("{}/readyz", accepted.address);
        async move { matches!(client.get(&url).send().await, Ok(r) if r.status() == 200) }
    })
    .await;
    assert!(ready, "starts with --accept-log-loss");
    // The units had reached the database at the clean stop.
    let usage = accepted.get_json("/v1/users/dmg/usage").await;
    assert_eq!(usage["kinds"]["fast"]["used"], json!(10));
    accepted.signal("TERM");
    assert_eq!(accepted.wait(Duration::from_secs(30)).await, Some(0));
    // The next start is clean again.
    let again = Binary::start(dir.path(), &[]).await;
    again.signal("TERM");
    assert_eq!(again.wait(Duration::from_secs(30)).await, Some(0));
}
