//! Helpers for tests that need a real PostgreSQL database (used by this
//! workspace's test suites; small enough to ship rather than duplicate).

/// The server tests use: `USAGE_SYNC_TEST_POSTGRES_URL`, default the local
/// server with trust auth.
pub fn postgres_admin_url() -> String {
    std::env::var("USAGE_SYNC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped (with its connections)
/// when this value is dropped.
pub struct TempDatabase {
    admin_url: String,
    name: String,
    /// Connection URL of the new database.
    pub url: String,
}

impl TempDatabase {
    /// Creates a fresh database. Returns `None` (after printing a notice)
    /// when no server is reachable, unless `CI` is set: in CI a missing
    /// server is a failure, never a silent skip.
    pub async fn create() -> Option<TempDatabase> {
        let admin_url = postgres_admin_url();
        let (client, conn) = match tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
        {
            Ok(c) => c,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("PostgreSQL at {admin_url} is required in CI: {e}");
                }
                eprintln!(
                    "SKIPPED: PostgreSQL not reachable at {admin_url} ({e}); run .ci/run or start it"
                );
                return None;
            }
        };
        tokio::spawn(conn);
        let name = format!("usage_sync_test_{}_{:016x}", std::process::id(), rand_u64());
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("CREATE DATABASE");
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("USAGE_SYNC_TEST_POSTGRES_URL must end in /database");
        Some(TempDatabase {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
