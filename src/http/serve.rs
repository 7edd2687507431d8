//! The accept loop: hyper through `hyper_util`, with a timer, so that a
//! client which never finishes its request headers (slow loris) is cut off
//! after `header_read_timeout`; `axum::serve` sets no timer, which leaves
//! hyper's header timeout inert. Bodies are bounded by the request timeout
//! layer.
//!
//! Every connection, HTTP/1 or HTTP/2, is closed gracefully once it has had
//! no request in flight for `idle_timeout` (hyper has no idle timeout of its
//! own for HTTP/2, whose header reads the HTTP/1 timer does not cover); at
//! most `max_connections` are open at once (past that the accept loop waits,
//! and new clients queue in the kernel's backlog); HTTP/2 streams, header
//! lists and reset floods are bounded, and a peer that stops answering
//! keep-alive pings is dropped. Shutdown: stop accepting, let every
//! connection finish its in-flight request, close idle ones.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Longest a client may take to send request headers (HTTP/1).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// How long an idle connection asked to close may take to do so.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// HTTP/2 streams in flight on one connection.
const H2_MAX_STREAMS: u32 = 256;
/// Bytes of one HTTP/2 header list (HTTP/1's limit is hyper's ~100 headers).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Streams a peer may open and reset before its connection is refused
/// (the "rapid reset" flood).
const H2_MAX_PENDING_RESETS: usize = 32;

/// When a connection last had a request start or end, and how many run.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(last))
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serves `app` on `listener` until `shutdown`, then drains connections for
/// up to `grace`.
pub async fn serve<S>(
    listener: TcpListener, app: S, limits: ServeLimits, shutdown: CancellationToken,
    grace: Duration,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .keep_alive_interval(Some(limits.idle_timeout.min(Duration::from_secs(30))))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    loop {
        // A slot first: at the cap, stop accepting until a connection ends.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if slots.available_permits() == 0 {
            metrics::counter!("zen_http_connection_limit_reached_total").increment(1);
        }
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        });
        let tracked = activity.clone();
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(move |req: Request<hyper::body::Incoming>| {
                    // The peer's address, for extractors that ask for it
                    // (the console's sign-in rate limit).
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                })
                .map_future(move |fut| {
                    let guard = InFlight::new(&tracked);
                    async move {
                        let response = fut.await;
                        drop(guard);
                        response
                    }
                }),
        );
        let builder = builder.clone();
        let closing = closing.clone();
        let idle_timeout = limits.idle_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let mut tick = tokio::time::interval(
                idle_timeout.clamp(Duration::from_millis(100), Duration::from_secs(1)),
            );
            let mut shutting = false;
            // Set when an idle connection was asked to close: a peer that
            // does not take part (an HTTP/2 client that never acks the
            // closing ping) is dropped at this deadline.
            let mut hard_close: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = closing.cancelled(), if !shutting => {
                        conn.as_mut().graceful_shutdown();
                        shutting = true;
                    }
                    _ = tick.tick() => {
                        if let Some(deadline) = hard_close {
                            if tokio::time::Instant::now() >= deadline {
                                tracing::debug!("idle connection did not close; dropped");
                                break;
                            }
                        } else if !shutting
                            && activity.idle_for().is_some_and(|d| d >= idle_timeout)
                        {
                            conn.as_mut().graceful_shutdown();
                            shutting = true;
                            hard_close = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open at the shutdown deadline; closing"
        );
    }
}
