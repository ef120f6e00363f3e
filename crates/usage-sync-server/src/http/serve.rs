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
//! - **Threads.** Accepted connections are handed round-robin to
//!   [`ConnectionThreads`]: one thread per core, each running its own
//!   single-threaded tokio runtime, so a connection's requests are parsed,
//!   answered and written on one thread without the work-stealing
//!   scheduler's cross-thread wake-ups (the shape actix-web uses; measured
//!   in docs/benchmarks.md). The accept loop itself stays on the caller's
//!   runtime, with one listener: a second instance on the same port still
//!   fails to bind (`SO_REUSEPORT` listeners per thread would let it bind
//!   silently and take half the connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
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

/// Threads that each run a single-threaded tokio runtime serving the
/// connections handed to them; stopped and joined on drop.
///
/// Drop them only after the engine's last store call: a handler running
/// on one of these runtimes may open a database or Redis connection (a
/// pool fills lazily), and that socket belongs to the runtime it was
/// opened on, so it dies with it.
pub struct ConnectionThreads {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl ConnectionThreads {
    /// One thread per core, as the process may use them (cgroup quotas
    /// included).
    pub fn per_core() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// No threads: connections are served on the caller's runtime.
    pub fn none() -> ConnectionThreads {
        ConnectionThreads {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// `n` threads, or none (with a warning) when they cannot be started:
    /// the service then serves on the caller's runtime, slower but whole.
    pub fn start_or_none(n: usize) -> ConnectionThreads {
        Self::start(n).unwrap_or_else(|e| {
            tracing::warn!(error = %e, threads = n, "cannot start the HTTP threads; serving on the main runtime");
            Self::none()
        })
    }

    pub fn start(n: usize) -> std::io::Result<ConnectionThreads> {
        let mut me = ConnectionThreads::none();
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            me.handles.push(rt.handle().clone());
            me.stops.push(stop);
            // On an error here `me` is dropped, which stops the threads
            // already started.
            me.threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        // Drives the runtime (and so every connection task
                        // spawned on it) until stopped; dropping the
                        // runtime then cancels whatever is left.
                        let _ = rt.block_on(stopped);
                    })?,
            );
        }
        Ok(me)
    }

    /// The runtime the next connection goes to, round-robin; `None` when
    /// there are no threads.
    fn pick(&self) -> Option<&Handle> {
        if self.handles.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        Some(&self.handles[i])
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        self.stops.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Serves one connection until it closes, or until `shut` turns true and
/// its in-flight request is answered.
async fn connection(
    stream: TcpStream,
    router: Router,
    header_timeout: Duration,
    mut shut: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(router);
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
}

/// Serves `router` on `listener` until `stop` turns true, then drains for
/// at most `drain` (see the module docs). Connections are served on
/// `threads` (on the caller's runtime if it has none). Returns how many
/// connections were still open at the deadline and were closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    threads: Arc<ConnectionThreads>,
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
        let (router, shut) = (router.clone(), stop.clone());
        let header_timeout = limits.header_timeout;
        match threads.pick() {
            Some(rt) => {
                // The stream moves to the other runtime's reactor: out of
                // this one as a std socket, into that one inside the task.
                let std = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand a connection to an HTTP thread; closed");
                        continue;
                    }
                };
                conns.spawn_on(
                    async move {
                        match TcpStream::from_std(std) {
                            Ok(stream) => {
                                connection(stream, router, header_timeout, shut, permit).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot serve a connection on an HTTP thread; closed");
                            }
                        }
                    },
                    rt,
                );
            }
            None => {
                conns.spawn(connection(stream, router, header_timeout, shut, permit));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a task spawned on `rt` runs: its thread's name.
    fn thread_of(rt: &Handle) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        rx.recv().unwrap().unwrap_or_default()
    }

    #[test]
    fn connections_go_round_robin_over_the_threads_which_stop_on_drop() {
        let threads = ConnectionThreads::start(2).unwrap();
        let picked: Vec<String> = (0..4).map(|_| thread_of(threads.pick().unwrap())).collect();
        assert_eq!(picked, ["http-0", "http-1", "http-0", "http-1"]);
        let rt = threads.pick().unwrap().clone();
        // Joins both threads: their runtimes are gone, and a task handed
        // to one now is cancelled instead of run.
        drop(threads);
        let task = rt.spawn(async { 1 });
        let local = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(local.block_on(task).unwrap_err().is_cancelled());
    }

    #[test]
    fn without_threads_connections_stay_on_the_callers_runtime() {
        assert!(ConnectionThreads::none().pick().is_none());
        assert!(ConnectionThreads::start(0).unwrap().pick().is_none());
    }
}
