//! Baseline: one `UPDATE usage_naive SET used = used + 1 ... RETURNING used`
//! per request on PostgreSQL, what a team writes before usage-sync.
//!
//! `naive_postgres <port> <postgres url> <users> <connections>` serves
//! `POST /v1/consume` (`{"user_id", "kind"}`) and answers `{"allowed":
//! true, "used"}` after the UPDATE committed (autocommit). The connections
//! are used round-robin, like a pool.

// Measurement arithmetic: its numbers are its own, not a client's.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use usage_sync_naive::Body;

struct Pool {
    clients: Vec<tokio_postgres::Client>,
    next: AtomicUsize,
}

async fn consume(
    State(pool): State<Arc<Pool>>,
    Json(b): Json<Body>,
) -> Result<Json<Value>, StatusCode> {
    let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.clients.len();
    let row = pool.clients[i]
        .query_opt(
            "UPDATE usage_naive SET used = used + 1 WHERE user_id = $1 AND kind = $2 RETURNING used",
            &[&b.user_id, &b.kind],
        )
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(
        json!({"allowed": row.is_some(), "used": row.map(|r| r.get::<_, i64>(0))}),
    ))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args[1].parse().unwrap();
    let url = &args[2];
    let users: usize = args[3].parse().unwrap();
    let n: usize = args[4].parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..n {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        clients.push(c);
    }
    clients[0]
        .batch_execute(
            "DROP TABLE IF EXISTS usage_naive;
             CREATE TABLE usage_naive (user_id TEXT NOT NULL, kind TEXT NOT NULL, used BIGINT NOT NULL, PRIMARY KEY (user_id, kind));",
        )
        .await
        .unwrap();
    clients[0]
        .execute(
            "INSERT INTO usage_naive SELECT 'user-' || g, 'fast', 0 FROM generate_series(0, $1::int - 1) g",
            &[&(users as i32)],
        )
        .await
        .unwrap();
    let pool = Arc::new(Pool {
        clients,
        next: AtomicUsize::new(0),
    });
    usage_sync_naive::serve(port, consume, pool).await;
}
