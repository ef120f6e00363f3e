//! What a slow, idle or never-finishing client can and cannot do to the
//! real binary: header and body timeouts, idle connections at scale, and a
//! shutdown that a slow upload cannot hold past its deadline.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Binary, db_total};

fn addr(bin: &Binary) -> String {
    bin.address.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent and
/// how long that took, or `None` if it was still open at `max`.
async fn until_closed(stream: &mut TcpStream, max: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = max.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&got).into_owned(),
                    started.elapsed(),
                ));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn consume(client: &reqwest::Client, bin: &Binary, user: &str) -> u16 {
    client
        .post(format!("{}/v1/consume", bin.address))
        .body(json!({"user_id": user, "kind": "fast"}).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A client dripping its headers is cut off at the header timeout; one
/// dripping its body gets 408 `request_timeout` at the body timeout; an
/// idle keep-alive connection is closed at the header timeout too.
#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_HEADER_TIMEOUT", "1s"),
            ("USAGE_SYNC_BODY_TIMEOUT", "1s"),
        ],
    )
    .await;
    // Headers that never finish, one byte every 200 ms.
    let mut drip = TcpStream::connect(addr(&bin)).await.unwrap();
    let dripper = tokio::spawn(async move {
        let started = Instant::now();
        for b in b"POST /v1/consume HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaa" {
            if drip.write_all(&[*b]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    });
    // A body that never finishes.
    let mut body = TcpStream::connect(addr(&bin)).await.unwrap();
    body.write_all(
        b"POST /v1/consume HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user_id\"",
    )
    .await
    .unwrap();
    // An idle keep-alive connection after one request.
    let mut idle = TcpStream::connect(addr(&bin)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let (answer, took) = until_closed(&mut body, Duration::from_secs(10))
        .await
        .expect("the slow body is cut off");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (answer, took) = until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let cut = tokio::time::timeout(Duration::from_secs(15), dripper)
        .await
        .expect("the dripping client is cut off")
        .unwrap();
    let cut = cut.expect("the server closed the connection before the headers were done");
    assert!(cut < Duration::from_secs(6), "{cut:?}");
    // Nothing was counted by the half-sent consume.
    let client = reqwest::Client::new();
    assert_eq!(consume(&client, &bin, "after").await, 200);
}

/// A thousand idle connections hold a thousand permits, not the service:
/// consumes on other connections keep being answered, and so does the
/// readiness probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_stop_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[("USAGE_SYNC_MAX_CONNECTIONS", "1100")]).await;
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr(&bin)).await.unwrap());
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..50 {
        assert_eq!(
            consume(&client, &bin, &format!("busy-{}", i % 5)).await,
            200
        );
    }
    let r = bin.get("/readyz").await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "50 consumes took {:?} next to 1000 idle connections",
        started.elapsed()
    );
    drop(idle);
}

/// SIGTERM with a slow upload open: the process stops accepting, waits at
/// most the shutdown timeout for the upload, closes it, flushes, and exits
/// 0; every acknowledged unit is in the database.
#[tokio::test]
async fn sigterm_with_a_slow_upload_open_exits_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_SHUTDOWN_TIMEOUT", "2s"),
            ("USAGE_SYNC_BODY_TIMEOUT", "60s"),
            ("USAGE_SYNC_HEADER_TIMEOUT", "60s"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let mut acked = 0;
    for _ in 0..7 {
        acked += i64::from(consume(&client, &bin, "upload").await == 200);
    }
    assert_eq!(acked, 7);
    let mut slow = TcpStream::connect(addr(&bin)).await.unwrap();
    slow.write_all(
        b"POST /v1/consume HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"user_id\": \"upload\"",
    )
    .await
    .unwrap();
    // Let the server start reading that body before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    bin.signal("TERM");
    let code = bin.wait(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(code, Some(0), "clean exit");
    assert!(
        took < Duration::from_secs(10),
        "the stop took {took:?} with a 2 s shutdown timeout"
    );
    assert_eq!(
        db_total(&dir.path().join("usage-sync.db"), "upload", "fast").await,
        acked
    );
}

/// At the connection cap, a new connection waits in the listen backlog
/// instead of being served or failing: here three idle connections fill a
/// cap of three, and a consume on a fourth is answered once the header
/// timeout has closed one of them.
#[tokio::test]
async fn past_the_connection_cap_new_connections_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_MAX_CONNECTIONS", "3"),
            ("USAGE_SYNC_HEADER_TIMEOUT", "1s"),
        ],
    )
    .await;
    // Accepted in order: whatever still holds a permit, the three idle
    // connections are served before the consume, and each holds its
    // permit until the header timeout closes it.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr(&bin)).await.unwrap());
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    assert_eq!(consume(&client, &bin, "queued").await, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(8),
        "answered after {waited:?}"
    );
    drop(idle);
}
