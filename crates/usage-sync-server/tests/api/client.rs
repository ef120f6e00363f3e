//! The Rust client (`usage-sync-client`) against the real binary, including
//! a retry after a lost answer, made by a proxy that forwards the first
//! request and drops its response.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use usage_sync_client::{Client, Error};

use crate::helpers::Binary;

async fn server() -> (Binary, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        dir.path(),
        &[
            ("USAGE_SYNC_API_TOKEN", "api-t"),
            ("USAGE_SYNC_ADMIN_TOKEN", "admin-t"),
        ],
    )
    .await;
    (bin, dir)
}

fn client(base: &str) -> Client {
    Client::builder(base)
        .api_token("api-t")
        .admin_token("admin-t")
        .backoff(Duration::from_millis(10))
        .build()
        .unwrap()
}

/// Forwards connections to `upstream`; for the first `lose` connections it
/// delivers the request but closes the client's side instead of answering.
async fn lossy_proxy(upstream: String, lose: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut out = TcpStream::connect(upstream).await.unwrap();
                if n < lose {
                    // Read the whole request, deliver it, wait for the
                    // answer, and drop it.
                    let mut buf = vec![0u8; 64 * 1024];
                    let k = inbound.read(&mut buf).await.unwrap();
                    out.write_all(&buf[..k]).await.unwrap();
                    let _ = out.read(&mut buf).await;
                    drop(inbound);
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_covers_the_api_and_retries_without_counting_twice() {
    let (bin, _dir) = server().await;
    let c = client(&bin.address);

    // consume: generated id, dedup, 429 as allowed: false
    let d = c.consume("rc-1", "premium", 9, None).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.used, d.request_id.len()), (9, 32));
    let again = c
        .consume("rc-1", "premium", 9, Some(&d.request_id))
        .await
        .unwrap();
    assert_eq!((again.deduplicated, again.used), (Some(true), 9));
    let over = c.consume("rc-1", "premium", 2, None).await.unwrap();
    assert_eq!((over.allowed, over.remaining), (false, Some(1)));

    // check, refund, usage
    let chk = c.check("rc-2", "fast", 50).await.unwrap();
    assert_eq!((chk.allowed, chk.used), (true, 0));
    let r = c.consume("rc-2", "fast", 4, Some("rc-2-a")).await.unwrap();
    // The id is bound to its request: another user, or another amount,
    // is a conflict that counts and refunds nothing.
    let e = c
        .consume("rc-3", "fast", 4, Some("rc-2-a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("request_id_conflict"));
    let e = c.refund(&r.request_id, Some("rc-3")).await.unwrap_err();
    assert_eq!(e.code(), Some("request_id_conflict"));
    let back = c.refund(&r.request_id, Some("rc-2")).await.unwrap();
    assert_eq!(back.map(|r| r.refunded), Some(4));
    let e = c.refund("rc-2-a", None).await.unwrap_err();
    assert_eq!(e.code(), Some("already_refunded"));
    assert_eq!(
        c.refund("never", None).await.unwrap_err().code(),
        Some("unknown_request")
    );
    assert_eq!(c.usage("rc-2").await.unwrap().kinds["fast"].used, 0);

    // batch
    let b = c
        .consume_batch(&[
            ("rc-b", "premium", 6, None),
            ("rc-b", "premium", 6, None),
            ("rc-b", "nope", 1, None),
        ])
        .await
        .unwrap();
    let outcomes: Vec<Result<bool, Option<&str>>> = b
        .iter()
        .map(|r| r.as_ref().map(|d| d.allowed).map_err(Error::code))
        .collect();
    assert_eq!(outcomes, [Ok(true), Ok(false), Err(Some("unknown_kind"))]);
    assert_eq!(b[0].as_ref().unwrap().request_id.len(), 32);

    // client mistakes are errors, not retried
    match c.consume("rc-3", "nope", 1, None).await.unwrap_err() {
        Error::Api { status, code, .. } => {
            assert_eq!((status, code.as_str()), (400, "unknown_kind"))
        }
        other => panic!("{other:?}"),
    }
    let wrong = Client::builder(&bin.address)
        .api_token("x")
        .build()
        .unwrap();
    assert_eq!(
        wrong.usage("a").await.unwrap_err().code(),
        Some("unauthorized")
    );

    // admin calls
    let limits: BTreeMap<String, Option<u64>> =
        [("premium".to_owned(), Some(3)), ("fast".to_owned(), None)].into();
    let plan = c.put_plan("rc-team", "monthly", &limits).await.unwrap();
    assert_eq!(plan.limits["premium"], Some(3));
    let u = c.put_user("rc-4", Some("rc-team"), None).await.unwrap();
    assert_eq!(u.plan, "rc-team");
    c.consume("rc-4", "premium", 2, None).await.unwrap();
    assert_eq!(c.sync_user("rc-4").await.unwrap(), 2);
    c.consume("rc-4", "fast", 5, None).await.unwrap();
    assert!(c.sync_all().await.unwrap().flushed_units >= 5);
    let diag = c.diagnose("rc-4").await.unwrap();
    assert_eq!(diag.kinds["premium"]["persisted"], 2);
    let list = c.list_users(&[("search", "rc-4")]).await.unwrap();
    assert_eq!(list.matched, 1);
    assert_eq!(c.reset_user("rc-4").await.unwrap().kinds["premium"].used, 0);
    assert!(c.status().await.unwrap().running);
    assert!(c.alerts().await.unwrap().window.is_object());
    c.reset_stats().await.unwrap();
    // Everything was flushed and idle since: every resident user goes.
    let evicted = c.evict(0).await.unwrap();
    assert_eq!(evicted.resident_users, 0);

    // A lost answer: the first attempt is counted, its answer never
    // arrives; the retry under the same id is deduplicated.
    let upstream = bin.address.trim_start_matches("http://").to_owned();
    let (proxy, seen) = lossy_proxy(upstream.clone(), 1).await;
    let via = client(&proxy);
    let d = via.consume("rc-5", "fast", 3, None).await.unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "one lost attempt, one retry"
    );
    assert_eq!((d.allowed, d.deduplicated, d.used), (true, Some(true), 3));
    assert_eq!(c.usage("rc-5").await.unwrap().kinds["fast"].used, 3);
    // The same for a refund: the retry finds it done and reports success.
    let (proxy, _) = lossy_proxy(upstream, 1).await;
    let back = client(&proxy).refund(&d.request_id, None).await.unwrap();
    assert_eq!(back, None, "done by the lost attempt");
    assert_eq!(c.usage("rc-5").await.unwrap().kinds["fast"].used, 0);

    // Unreachable after the retries.
    let down = Client::builder("http://127.0.0.1:1")
        .retries(1)
        .backoff(Duration::from_millis(1))
        .build()
        .unwrap();
    assert!(matches!(
        down.check("a", "fast", 1).await.unwrap_err(),
        Error::Unreachable(_)
    ));
}

/// Batching (opt-in): concurrent consumes go out as one batch request,
/// each call gets its own decision in the order made, a lost answer is
/// retried without counting twice, and an event the service refuses fails
/// its own call only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_consumes_share_a_request_keep_their_order_and_fail_alone() {
    let (bin, _dir) = server().await;
    let batched = |base: &str, max_events: usize| {
        Client::builder(base)
            .api_token("api-t")
            .backoff(Duration::from_millis(10))
            .batch(Duration::from_secs(2), max_events)
            .build()
            .unwrap()
    };
    // 20 calls fill one batch; the proxy loses its first answer.
    let upstream = bin.address.trim_start_matches("http://").to_owned();
    let (proxy, seen) = lossy_proxy(upstream, 1).await;
    let c = batched(&proxy, 20);
    let calls: Vec<_> = (0..20u64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(
                async move { c.consume(&format!("rb-{i}"), "fast", i % 5 + 1, None).await },
            )
        })
        .collect();
    let mut results = Vec::new();
    for h in calls {
        results.push(h.await.unwrap().unwrap());
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "one batch request, lost once, sent again"
    );
    for (i, d) in (0u64..).zip(&results) {
        assert_eq!(
            (d.user_id.to_string(), d.amount, d.used, d.deduplicated),
            (format!("rb-{i}"), i % 5 + 1, i % 5 + 1, Some(true)),
            "answered from the first attempt's records"
        );
        assert_eq!(d.request_id.len(), 32);
    }
    let direct = client(&bin.address);
    assert_eq!(direct.usage("rb-7").await.unwrap().kinds["fast"].used, 3);

    // One user, in call order; the unknown kind fails alone.
    let c = batched(&bin.address, 1000);
    let (a, bad, b, over) = tokio::join!(
        c.consume("rb-o", "premium", 6, None),
        c.consume("rb-o", "nope", 1, None),
        c.consume("rb-o", "premium", 4, None),
        c.consume("rb-o", "premium", 1, None),
    );
    let (a, b, over) = (a.unwrap(), b.unwrap(), over.unwrap());
    assert_eq!(
        [
            (a.allowed, a.used),
            (b.allowed, b.used),
            (over.allowed, over.used)
        ],
        [(true, 6), (true, 10), (false, 10)]
    );
    match bad.unwrap_err() {
        Error::Api { status, code, .. } => {
            assert_eq!((status, code.as_str()), (400, "unknown_kind"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Client::builder("http://127.0.0.1:1")
            .batch(Duration::from_millis(1), 0)
            .build(),
        Err(Error::Config(_))
    ));
}
