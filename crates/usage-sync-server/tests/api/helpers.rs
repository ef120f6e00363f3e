//! Test helpers: an in-process app on a random port with a fresh SQLite
//! database, and a way to run the real binary.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use usage_sync::Engine;
use usage_sync_server::configuration;
use usage_sync_server::startup::Application;

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub engine: Engine,
    pub db_path: PathBuf,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<usage_sync::ShutdownReport>>>,
}

/// Environment for a test instance: nothing fires on a timer unless the
/// test overrides it, so every flush in a test is one the test caused.
pub fn quiet_env(dir: &Path) -> BTreeMap<String, String> {
    [
        ("USAGE_SYNC_LISTEN", "127.0.0.1:0".to_owned()),
        ("USAGE_SYNC_DATA_DIR", dir.display().to_string()),
        ("USAGE_SYNC_HEARTBEAT_INTERVAL", "3600000".into()),
        ("USAGE_SYNC_CHECK_INTERVAL", "3600000".into()),
        ("USAGE_SYNC_MAX_SYNC_INTERVAL", "7200000".into()),
        ("USAGE_SYNC_THRESHOLD", "1000000".into()),
        ("USAGE_SYNC_VERBOSE_LOGGING", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the service in-process with extra environment settings.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut env = quiet_env(dir.path());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let settings = configuration::load_from(None, &env).unwrap();
    let app = Application::build(settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let slot = app.engine_slot();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let ready = eventually(Duration::from_secs(20), || async { slot.get().is_some() }).await;
    assert!(ready, "the service did not finish starting");
    let engine = slot.get().unwrap().clone();
    TestApp {
        address,
        client: reqwest::Client::new(),
        engine,
        db_path: dir.path().join("usage-sync.db"),
        dir,
        stop: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body.to_string()), None)
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(body.to_string()), None)
            .await
    }

    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body), None)
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None, None).await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.address, path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}));
        (status, json)
    }

    pub async fn consume(&self, user: &str, kind: &str, amount: u64) -> (u16, Value) {
        self.post(
            "/v1/consume",
            &json!({"user_id": user, "kind": kind, "amount": amount}),
        )
        .await
    }

    /// The Prometheus text of `GET /metrics` (no token configured).
    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.address))
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

    pub async fn usage(&self, user: &str) -> Value {
        let (s, v) = self.get(&format!("/v1/users/{user}/usage")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// What the database holds for (user, kind), summed over periods.
    pub async fn db(&self, user: &str, kind: &str) -> i64 {
        db_total(&self.db_path, user, kind).await
    }

    pub async fn sync_all(&self) -> Value {
        let (s, v) = self.post("/admin/v1/sync", &json!({})).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Graceful stop (what SIGTERM does in the binary). Returns the data
    /// dir so the caller can still read the database.
    pub async fn stop(mut self) -> (usage_sync::ShutdownReport, TempDir) {
        let _ = self.stop.take().unwrap().send(());
        let report = self.task.take().unwrap().await.unwrap().unwrap();
        (report, self.dir)
    }
}

/// Sum of a (user, kind) over all periods, read from the SQLite file with
/// a plain read-only connection (works while another connection holds the
/// write lock).
pub async fn db_total(db: &Path, user: &str, kind: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row(
        "SELECT COALESCE(SUM(used), 0) FROM usage WHERE user_id = ?1 AND kind = ?2",
        [user, kind],
        |r| r.get(0),
    )
    .unwrap()
}

/// `key` of every element of the array `v`, as a JSON array.
pub fn column(v: &Value, key: &str) -> Value {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].clone())
        .collect()
}

/// The fields `keys` of `v`, in order, as one array: an assertion on
/// several fields of an answer reads `pick(&v, &["used", "limit"])` against
/// `json!([9, 10])`.
pub fn pick(v: &serde_json::Value, keys: &[&str]) -> serde_json::Value {
    keys.iter().map(|k| v[*k].clone()).collect()
}

/// How long the outage tests keep the database away: 8 s unless
/// `USAGE_SYNC_TEST_OUTAGE_SECS` says otherwise (30 reruns the 30 s
/// outages they once always took). Long enough for flush retries to back
/// off several times (100 ms doubling) and for a thousand and more
/// requests to be acknowledged meanwhile; the assertions do not depend on
/// the length.
pub fn outage_length() -> Duration {
    let secs = std::env::var("USAGE_SYNC_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    Duration::from_secs(secs)
}

/// Polls `f` until it returns true or `max` passes (wall time: for tests
/// that drive a real process or real timers).
pub async fn eventually<F, Fut>(max: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + max;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `usage-sync` binary, started as a child process.
pub struct Binary {
    pub child: Child,
    pub address: String,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Binary {
    /// Starts the binary and waits until `/readyz` answers 200.
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> Binary {
        let b = Binary::spawn_unready(dir, extra);
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", b.address);
        let ready = eventually(Duration::from_secs(20), || {
            let client = client.clone();
            let url = url.clone();
            async move { matches!(client.get(&url).send().await, Ok(r) if r.status() == 200) }
        })
        .await;
        assert!(ready, "binary did not become ready; see {}", dir.display());
        b
    }

    /// Starts the binary without waiting for it.
    pub fn spawn_unready(dir: &Path, extra: &[(&str, &str)]) -> Binary {
        Binary::spawn_with_args(dir, extra, &[])
    }

    /// Starts `usage-sync serve ARGS…` without waiting for it.
    pub fn spawn_with_args(dir: &Path, extra: &[(&str, &str)], args: &[&str]) -> Binary {
        let port = free_port();
        let mut env = quiet_env(dir);
        env.insert("USAGE_SYNC_LISTEN".into(), format!("127.0.0.1:{port}"));
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let log = std::fs::File::create(dir.join(format!("binary-{port}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_usage-sync"))
            .arg("serve")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Binary {
            child,
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `POST /v1/consume` on the binary (no token); the status code.
    pub async fn consume(&self, user: &str, kind: &str, amount: u64) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/v1/consume", self.address))
            .body(json!({"user_id": user, "kind": kind, "amount": amount}).to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// `GET path` on the binary (no token).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("{}{path}", self.address))
            .await
            .unwrap()
    }

    /// `POST /admin/v1/sync` on the binary (no admin token): flushes
    /// everything; the status code.
    pub async fn sync(&self) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/admin/v1/sync", self.address))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// `GET path` on the binary, as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.address))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait(mut self, max: Duration) -> Option<i32> {
        let deadline = Instant::now() + max;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a command ended: its exit code, stdout and stderr.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Stdout, once the command is known to have succeeded.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "the command failed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }
}

/// Runs `cmd` to its end on a blocking thread, so that the servers this
/// test's runtime serves keep answering it meanwhile.
pub async fn run(mut cmd: Command) -> Ran {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ran {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

/// Everything the binaries started in `dir` wrote to stderr.
pub fn binary_logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("binary-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}
