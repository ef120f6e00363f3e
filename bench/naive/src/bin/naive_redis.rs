//! Baseline: one Redis round trip per request, the way a Redis-backed rate
//! limiter counts: a Lua script that increments the user's counter and
//! takes the increment back if it went over the limit.
//!
//! `naive_redis <port> <redis url> <limit>` serves `POST /v1/consume`
//! (`{"user_id", "kind"}`) and answers `{"allowed"}` after Redis answered.

use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use redis::Script;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use usage_sync_naive::Body;

static CHECK_AND_INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('INCRBY', KEYS[1], 1)
if v > tonumber(ARGV[1]) then
  redis.call('DECRBY', KEYS[1], 1)
  return 0
end
return 1
"#,
    )
});

#[derive(Clone)]
struct App {
    conn: ConnectionManager,
    limit: u64,
}

async fn consume(State(app): State<App>, Json(b): Json<Body>) -> Result<Json<Value>, StatusCode> {
    let mut conn = app.conn.clone();
    let allowed: i64 = CHECK_AND_INCREMENT
        .key(format!("naive:{{{}}}:{}", b.user_id, b.kind))
        .arg(app.limit)
        .invoke_async(&mut conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok(Json(json!({"allowed": allowed == 1})))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args[1].parse().unwrap();
    let client = redis::Client::open(args[2].as_str()).unwrap();
    let limit: u64 = args[3].parse().unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    usage_sync_naive::serve(port, consume, App { conn, limit }).await;
}
