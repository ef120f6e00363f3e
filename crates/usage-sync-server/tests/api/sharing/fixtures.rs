//! What the sharing tests run: Redis servers of their own, instances of
//! the binary over one PostgreSQL, and the checks they share.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use usage_sync_store::testing::TempDatabase;
use usage_sync_store::{PostgresStore, Store};

use crate::helpers::{Binary, eventually, free_port};

pub(super) fn system_redis_url() -> String {
    std::env::var("USAGE_SYNC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether Redis answers; in CI it must.
pub(super) async fn redis_available(url: &str) -> bool {
    let ok = async {
        let client = redis::Client::open(url).ok()?;
        let mut c = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    }
    .await
    .is_some();
    if !ok {
        usage_sync_store::testing::skip(&format!(
            "Redis not reachable at {url}; run .ci/run or start it"
        ));
    }
    ok
}

/// Where most sharing tests start: the system's Redis (or a skip), a
/// fresh database, a plan file with `limit` of each kind, and a key prefix
/// of their own.
pub(super) struct Setup {
    pub db: TempDatabase,
    /// Holds the plan file for as long as the test runs.
    _dir: TempDir,
    pub config: String,
    pub prefix: String,
}

pub(super) async fn setup(limit: u64) -> Option<Setup> {
    if !redis_available(&system_redis_url()).await {
        return None;
    }
    let db = TempDatabase::create().await?;
    let dir = tempfile::tempdir().unwrap();
    let config = plan_file(dir.path(), limit);
    Some(Setup {
        db,
        _dir: dir,
        config,
        prefix: unique_prefix(),
    })
}

pub(super) fn redis_server_installed() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        usage_sync_store::testing::skip("redis-server is not installed; run .ci/run");
    }
    ok
}

pub(super) fn unique_prefix() -> String {
    format!("t{}-{:x}", std::process::id(), fastrand::u64(..))
}

/// A private `redis-server` on a port of its own, killed on drop.
pub(super) struct RedisServer {
    child: Option<Child>,
    pub(super) port: u16,
    dir: TempDir,
    cluster: bool,
}

impl RedisServer {
    pub(super) async fn start(cluster: bool) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            cluster,
        };
        s.restart().await;
        s
    }

    pub(super) async fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir.path().to_str().unwrap(),
        ]);
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = self.url();
        let up = eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move { redis_ping(&url).await }
        })
        .await;
        assert!(up, "redis-server on {} did not start", self.port);
    }

    pub(super) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) async fn redis_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_millis(500),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut c)
        .await
        .is_ok()
}

/// One instance of the service: its data dir and the running binary.
pub(super) struct Instance {
    pub(super) bin: Binary,
    _dir: TempDir,
    pub(super) client: reqwest::Client,
}

impl Instance {
    pub(super) async fn start(env: &[(&str, &str)]) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let bin = Binary::start(dir.path(), env).await;
        Instance {
            bin,
            _dir: dir,
            client: reqwest::Client::new(),
        }
    }

    pub(super) async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.bin.address);
        let req = match method {
            "GET" => self.client.get(url),
            "PUT" => self.client.put(url),
            _ => self.client.post(url),
        };
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(super) async fn consume(&self, user: &str, rid: Option<&str>) -> (u16, Value) {
        let mut body = json!({"user_id": user, "kind": "fast"});
        if let Some(r) = rid {
            body["request_id"] = json!(r);
        }
        self.send("POST", "/v1/consume", Some(&body)).await
    }

    pub(super) async fn status(&self) -> Value {
        let (s, v) = self.send("GET", "/admin/v1/status", None).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub(super) async fn sync(&self) {
        let (s, v) = self.send("POST", "/admin/v1/sync", Some(&json!({}))).await;
        assert_eq!(s, 200, "{v}");
    }
}

/// Every instance answers the same `used` and `remaining` for each user,
/// before any of them has flushed: the shared count, not each instance's
/// own memory.
pub(super) async fn same_answer_everywhere(
    inst: &[Instance],
    users: &[String],
    used: u64,
    limit: u64,
) {
    for u in users {
        for (n, i) in inst.iter().enumerate() {
            let (s, v) = i.send("GET", &format!("/v1/users/{u}/usage"), None).await;
            assert_eq!(s, 200, "{v}");
            let fast = &v["kinds"]["fast"];
            assert_eq!(
                (fast["used"].clone(), fast["remaining"].clone()),
                (json!(used), json!(limit - used)),
                "instance {n}, user {u}: {v}"
            );
            // The admin user list shows the same for the users it returns.
            let (s, v) = i
                .send("GET", &format!("/admin/v1/users?search={u}"), None)
                .await;
            assert_eq!(s, 200, "{v}");
            let row = v["users"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["user_id"] == json!(u))
                .unwrap_or_else(|| panic!("{u} listed: {v}"))
                .clone();
            assert_eq!(
                row["kinds"]["fast"]["used"],
                json!(used),
                "instance {n}: {row}"
            );
        }
    }
}

/// A config file with one plan whose `fast` limit is `limit`.
pub(super) fn plan_file(dir: &Path, limit: u64) -> String {
    let path = dir.join("plans.toml");
    std::fs::write(
        &path,
        format!("[plans.free]\nlimits = {{ premium = 5, fast = {limit} }}\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// Sends `n` consumes for `users`, round-robin over the instances, all at
/// once; returns admitted units per user. Every answer must be 200 or 429.
pub(super) async fn spray(
    instances: &[Instance],
    users: &[String],
    n: usize,
) -> BTreeMap<String, u64> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let inst = &instances[i % instances.len()];
        let (client, url) = (
            inst.client.clone(),
            format!("{}/v1/consume", inst.bin.address),
        );
        let user = users[i % users.len()].clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"user_id": user, "kind": "fast"});
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (user, status, v)
        }));
    }
    let mut admitted = BTreeMap::new();
    for t in tasks {
        let (user, status, v) = t.await.unwrap();
        match status {
            200 => *admitted.entry(user).or_insert(0) += 1,
            429 => assert_eq!(v["allowed"], json!(false), "{v}"),
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    admitted
}

pub(super) async fn db_totals(url: &str) -> BTreeMap<String, i64> {
    let store = PostgresStore::connect(url, 1).unwrap();
    let mut out = BTreeMap::new();
    for r in store.all_usage().await.unwrap() {
        *out.entry(r.user_id).or_insert(0) += r.used;
    }
    out
}

pub(super) async fn three_instances(
    db: &TempDatabase,
    config: &str,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Vec<Instance> {
    let redis = system_redis_url();
    let mut env = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("USAGE_SYNC_DB_POOL_SIZE", "3"),
        ("USAGE_SYNC_CONFIG", config),
        ("REDIS_URL", redis.as_str()),
        ("USAGE_SYNC_REDIS_PREFIX", prefix),
        // Flushes run while the test sprays, so the three instances write
        // into the same rows concurrently.
        ("USAGE_SYNC_THRESHOLD", "3"),
        // These tests are about a reachable Redis. With the default 500 ms,
        // a machine starved by the rest of the suite can time a command
        // out, and the instance rightly answers from its own view (the
        // outage tests set their own, short timeout).
        ("USAGE_SYNC_REDIS_TIMEOUT", "5s"),
    ];
    env.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(Instance::start(&env).await);
    }
    out
}
