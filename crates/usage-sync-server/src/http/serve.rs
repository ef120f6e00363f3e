//! The HTTP/1 accept loop, with the limits a hostile or broken client
//! meets: a header-read timeout, a cap on connections served at once, and
//! a bounded drain at shutdown.
//!
//! Why not `axum::serve`: it runs hyper without a timer, so hyper's
//! header-read timeout is off (a client sending its headers a byte a
//! second held its connection for as long as it liked), it accepts without
//! bound (descriptors and memory grow with idle connections), and its
//! graceful shutdown waits for every connection with no deadline (a slow
//! upload held SIGTERM past the orchestrator's grace period).
//!
//! - **Headers.** hyper's `header_read_timeout` runs from the moment a
//!   connection is ready for a request until its headers are complete, so
//!   it bounds a dripping client *and* an idle keep-alive connection.
//! - **Bodies** are bounded where they are read (`extract::BodyBytes`,
//!   `USAGE_SYNC_BODY_TIMEOUT`).
//! - **Connections.** A permit of a semaphore is taken *before* `accept`:
//!   at the cap, new connections wait in the kernel's listen backlog (and
//!   are refused by the kernel once it is full) while the accepted ones are
//!   served as usual; each permit returns when its connection closes.
//! - **Shutdown.** On the stop signal the listener closes, every
//!   connection is asked to finish its in-flight request and close (idle
//!   ones close at once), and whatever is still open after `drain` is
//!   dropped, so the final flush starts within that bound.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Resolves once `rx` holds true (or its sender is gone). The guard
/// `wait_for` returns is dropped here: it must not live across an await.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The per-connection limits (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` turns true, then drains for
/// at most `drain` (see the module docs). Returns how many connections
/// were still open at the deadline and were closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> usize {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        // Reap finished connections so the set stays as small as the
        // number of open ones.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset
                    // before it was accepted: neither is fatal. Back off a
                    // little so an exhausted process does not spin.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut shut = stop.clone();
        let header_timeout = limits.header_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(&mut shut) => {
                    // Finish the request in flight, then close; an idle
                    // connection closes at once.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // No new connection from here on: the kernel refuses them.
    drop(listener);
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_ok() {
        return 0;
    }
    let left = conns.len();
    tracing::warn!(
        connections = left,
        drain_ms = %drain.as_millis(),
        "connections still open at the shutdown drain deadline (USAGE_SYNC_SHUTDOWN_TIMEOUT) are closed"
    );
    conns.shutdown().await;
    left
}
