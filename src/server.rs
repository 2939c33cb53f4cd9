//! The accept loop: one task per caller connection, HTTP/1.1 and HTTP/2 (hyper-util's auto
//! builder), TLS when configured (handshake in the connection's task), the connection's
//! deadlines (first head, slow heads, idle; see `conn_io` and `activity`), graceful drain
//! on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use std::sync::atomic::{AtomicUsize, Ordering};

mod activity;
mod conn_io;

pub use activity::TrackedBody;
use activity::{Activity, Quiet};
pub use conn_io::ConnCounters;
use conn_io::{ConnIo, HeadTimer};

use crate::tls::TlsAcceptor;

/// What a handler may answer with: any body hyper can write on either protocol.
pub trait ResponseBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connection settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Connections with no request in flight (and, HTTP/1, no byte arriving) are closed
    /// after this long (never sooner: Data Actions reuse connections and fail on ones
    /// closed under them); HTTP/2 ones with GOAWAY.
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub grace: Duration,
    /// The first request head must arrive within this of the connection's start (silent
    /// sockets), and every later HTTP/1 head within this of its first byte (slow-loris).
    pub header_read_timeout: Duration,
}

/// Open connections of one listener, shared by its worker threads, with a cap.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
    /// Counts connections closed at once because the cap was reached.
    refused: IntCounter,
}

/// One open connection; gives its place back when dropped.
#[derive(Debug)]
struct ConnectionSlot(Arc<ConnectionLimit>);

impl ConnectionLimit {
    pub fn new(max: usize, refused: IntCounter) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
            refused,
        })
    }

    fn take(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let open = self.open.fetch_add(1, Ordering::Relaxed);
        if open >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.inc();
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Read buffer limit while a request head is incomplete; hyper answers 431 (or closes) when
/// a head is still unfinished past it. hyper-util's builder does not expose hyper's exact
/// `max_header_size`, so a head that arrives in one read can be somewhat larger.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers; hyper answers 431 past it. Not above 100: hyper parses a head into
/// arrays of this many entries, on the stack up to 100 and on the heap above (two 4 KiB
/// allocations for every request: 128 cost about 1,000 instructions per request).
const MAX_HEADERS: usize = 100;
/// How long an idle connection closed by the idle timeout may take to go: an HTTP/2 peer
/// that does not acknowledge the GOAWAY (hyper waits for its PING ack) is then dropped,
/// unless a request slipped in meanwhile.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` with `handler` until `shutdown` is cancelled, then stops accepting
/// and waits up to `options.grace` for in-flight requests. With `tls`, every connection
/// starts with a TLS handshake; a failed one is logged at debug and closes the connection.
///
/// Every connection must send its first request head within `options.header_read_timeout`
/// and is closed gracefully (HTTP/2: GOAWAY) once idle for `options.idle_timeout`.
///
/// # Errors
/// Never in practice: accept errors (e.g. out of file descriptors) are logged and retried.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
    options: ServeOptions,
    tls: Option<TlsAcceptor>,
    limit: Option<Arc<ConnectionLimit>>,
    refusals: Option<ConnCounters>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    // Shared with the connection tasks, which build their connection there (after the
    // TLS handshake, when there is one).
    let builder = Arc::new(http_builder());
    let connections = TaskTracker::new();

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let slot = match &limit {
            Some(limit) => match limit.take() {
                Some(slot) => Some(slot),
                None => {
                    debug!(%peer, "connection cap reached; closing the new connection");
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            builder: builder.clone(),
            options,
            refusals: refusals.clone(),
            stop: shutdown.clone(),
        };
        // Tracked from the start, so a drain waits for (or, via `stop`, cuts) TLS
        // handshakes in progress too.
        connections.spawn(connection.start(stream, slot, tls.clone(), handler.clone()));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(options.grace, connections.wait())
        .await
        .is_err()
    {
        warn!(grace = ?options.grace, "grace period over; closing connections with requests still in flight");
    }
    Ok(())
}

/// What a connection task needs besides its stream and handler.
struct Connection {
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    options: ServeOptions,
    refusals: Option<ConnCounters>,
    stop: CancellationToken,
}

/// `handler` as a hyper service whose requests and answers `activity` and `head_timer`
/// follow: a request ends the head in progress, and counts in flight until its answer's
/// body is written or dropped (also when the caller leaves and the handler is dropped).
fn tracked<H, F, B>(
    handler: H,
    peer: SocketAddr,
    activity: Arc<Activity>,
    head_timer: Arc<HeadTimer>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<TrackedBody<B>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: ResponseBody,
{
    service_fn(move |request| {
        head_timer.head_done();
        let in_flight = activity.begin();
        let response = handler(request, peer);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
        }
    })
}

/// The caller takes none of its answers (HTTP/2 flow control held shut, or a full socket):
/// its connection is dropped, and with it the upstream exchanges behind its requests; the
/// answers cut count as `caller_stalled`.
fn stuck(peer: SocketAddr, activity: &Activity, counters: Option<&ConnCounters>) {
    debug!(%peer, "the caller took nothing of its answers for idle_timeout; dropping the connection");
    if let Some(counters) = counters {
        counters
            .caller_stalled
            .inc_by(activity.answers_open().max(1) as u64);
    }
}

/// hyper-util's builder for both protocols, with gcpool's limits.
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by `ConnIo`, idle connections by `Activity` (see their docs).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

impl Connection {
    /// Serves one accepted connection, after the TLS handshake when `tls` is set; `slot`
    /// holds its place under the connection cap until it ends.
    async fn start<H, F, B>(
        self,
        stream: tokio::net::TcpStream,
        slot: Option<ConnectionSlot>,
        tls: Option<TlsAcceptor>,
        handler: H,
    ) where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
        let _slot = slot;
        let Some(tls) = tls else {
            return self.run(stream, handler).await;
        };
        let stream = tokio::select! {
            accepted = tls.accept(stream) => match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(peer = %self.peer, error = %crate::telemetry::error_chain(&error), "TLS handshake failed");
                    return;
                }
            },
            () = self.stop.cancelled() => return,
        };
        self.run(stream, handler).await;
    }

    /// Serves one connection until the peer closes it, it idles out, or shutdown drains it.
    async fn run<S, H, F, B>(self, stream: S, handler: H)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
        let Self {
            peer,
            builder,
            options,
            refusals,
            stop,
        } = self;
        let activity = Activity::new();
        let head_timer = Arc::new(HeadTimer::default());
        let service = tracked(handler, peer, activity.clone(), head_timer.clone());
        let io = ConnIo::new(
            stream,
            head_timer,
            activity.clone(),
            options.header_read_timeout,
            options.idle_timeout,
            refusals.clone(),
        );
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle = tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    debug!(%peer, error = %error, "connection ended with an error");
                }
                return;
            }
            quiet = activity.quiet_for(options.idle_timeout) => match quiet {
                Quiet::Idle => true,
                Quiet::Stuck => return stuck(peer, &activity, refusals.as_ref()),
            },
            () = stop.cancelled() => false,
        };
        // HTTP/1: closes at once when idle, else after the response in progress;
        // HTTP/2: GOAWAY, then the streams in progress finish.
        connection.as_mut().graceful_shutdown();
        let ended = if idle {
            debug!(%peer, "closing an idle connection");
            match tokio::time::timeout(IDLE_CLOSE_GRACE, connection.as_mut()).await {
                Ok(ended) => ended,
                // A request that crossed the GOAWAY on the wire is served to its end.
                Err(_) if activity.in_flight() > 0 => connection.await,
                Err(_) => return,
            }
        } else {
            // Bounded by the drain's grace period in `serve`.
            connection.await
        };
        if let Err(error) = ended {
            debug!(%peer, error = %error, "connection ended with an error");
        }
    }
}
