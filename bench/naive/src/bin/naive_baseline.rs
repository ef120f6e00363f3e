//! The baseline usage-sync is measured against: what a team writes before
//! usage-sync, one `UPDATE usage SET used = used + 1` per request on SQLite.
//!
//! `naive_baseline <port> <db path> <FULL|NORMAL> <users>` serves
//! `POST /v1/consume` (`{"user_id", "kind"}`) and answers `{"allowed":
//! true}` after the UPDATE committed. WAL mode; `synchronous` as given
//! (FULL is SQLite's durable setting, the fair match for usage-sync's
//! durable acknowledgement). One connection, as SQLite has one writer.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use rusqlite::Connection;
use serde_json::{Value, json};
use usage_sync_naive::Body;

type Db = Arc<Mutex<Connection>>;

async fn consume(State(db): State<Db>, Json(b): Json<Body>) -> Json<Value> {
    let ok = tokio::task::spawn_blocking(move || {
        let c = db.lock().unwrap();
        c.prepare_cached("UPDATE usage SET used = used + 1 WHERE user_id = ?1 AND kind = ?2")
            .and_then(|mut s| s.execute([&b.user_id, &b.kind]))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    Json(json!({"allowed": ok}))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args[1].parse().unwrap();
    let path = &args[2];
    let sync = &args[3];
    let users: usize = args[4].parse().unwrap();
    let c = Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", sync).unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS usage (user_id TEXT NOT NULL, kind TEXT NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (user_id, kind)) WITHOUT ROWID",
    )
    .unwrap();
    {
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..users {
            tx.execute(
                "INSERT OR IGNORE INTO usage (user_id, kind, used) VALUES (?1, 'fast', 0)",
                [format!("user-{i}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let db: Db = Arc::new(Mutex::new(c));
    usage_sync_naive::serve(port, consume, db).await;
}
