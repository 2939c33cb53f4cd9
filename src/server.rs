//! The accept loop: one task per caller connection, HTTP/1.1 and HTTP/2 (hyper's builders;
//! the protocol told by the first bytes, as hyper-util's auto builder does), TLS when
//! configured (handshake in the connection's task), the connection's deadlines (first head,
//! slow heads, idle; see `conn_io` and `activity`), graceful drain on shutdown.
//!
//! An HTTP/1 connection that has had nothing to do for `PARK_AFTER` (10 ms) is *parked*: hyper's
//! connection (its read and write buffers, 8 KiB each, the box its request futures run in,
//! its cached header map) is taken apart, and the connection waits for its next request
//! holding little more than its socket; the next byte brings up a new hyper connection.
//!
//! The connection task is what a parked connection holds, so it stays small (`Open`): it
//! holds the connection's parts once and waits, parked, on the IO's own timer; everything
//! larger (the protocol sniff, a stretch of HTTP/1 serving with hyper's connection, HTTP/2,
//! the TLS handshake) runs in a box of its own that goes when it ends. What a parked plain
//! connection holds: its task, tokio's registration of its socket, its `Activity` and the
//! box of its IO's timer (`tests/connection_memory.rs` counts the heap; `bench/memory.sh`
//! the RSS of 10,000).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use std::sync::atomic::{AtomicUsize, Ordering};

mod activity;
mod conn_io;

pub use activity::TrackedBody;
use activity::{Activity, Quiet};
pub use conn_io::ConnCounters;
use conn_io::{ConnIo, IoRules, Protocol, Wake};

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

/// The service a connection is served with (the handler, tracked: see `Open::service`).
trait ConnService<B>:
    Service<Request<Incoming>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

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
/// a head is still unfinished past it. hyper's exact `max_header_size` is not set (as under
/// hyper-util's builder before), so a head that arrives in one read can be somewhat larger.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most request headers; hyper answers 431 past it. Not above 100: hyper parses a head into
/// arrays of this many entries, on the stack up to 100 and on the heap above (two 4 KiB
/// allocations for every request: 128 cost about 1,000 instructions per request).
const MAX_HEADERS: usize = 100;
/// How long an idle connection closed by the idle timeout may take to go: an HTTP/2 peer
/// that does not acknowledge the GOAWAY (hyper waits for its PING ack) is then dropped,
/// unless a request slipped in meanwhile.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long an HTTP/1 connection has nothing to do (no request in flight, no head on its
/// way, no byte arriving) before it is parked (see the module doc). A caller sending
/// requests back to back keeps its hyper connection; one that pauses longer pays a new one
/// (a few allocations) with its next request. Short, because connections served at a high
/// rate each hold ~20 KiB until they park, and glibc keeps the peak of that heap.
const PARK_AFTER: Duration = Duration::from_millis(10);

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
    let listener_rules = Arc::new(ListenerRules::new(options, refusals));
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
            rules: listener_rules.clone(),
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
    rules: Arc<ListenerRules>,
    stop: CancellationToken,
}

/// What a listener's connections share: hyper's builders, the options, the IO's rules.
#[derive(Debug)]
struct ListenerRules {
    builders: Builders,
    options: ServeOptions,
    io: Arc<IoRules>,
}

impl ListenerRules {
    fn new(options: ServeOptions, refusals: Option<ConnCounters>) -> Self {
        Self {
            builders: Builders::new(),
            options,
            io: Arc::new(IoRules {
                head_limit: options.header_read_timeout,
                first_head_limit: options.header_read_timeout.min(options.idle_timeout),
                write_limit: options.idle_timeout,
                refusals,
            }),
        }
    }

    fn refusals(&self) -> Option<&ConnCounters> {
        self.io.refusals.as_ref()
    }
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

/// An accepted connection for its whole life. Its task holds this once and borrows it, and
/// every larger await (the protocol sniff, hyper's connection, HTTP/2) is boxed while it
/// runs: the task's size is what a parked connection needs.
struct Open<S, H> {
    connection: Connection,
    /// `None` only while a hyper connection holds it.
    io: Option<ConnIo<S>>,
    handler: H,
    activity: Arc<Activity>,
    _slot: Option<ConnectionSlot>,
}

impl<S, H> Open<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The connection's task.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` would hold its `self` argument twice, as the argument and as a local"
    )]
    fn serve<F, B>(mut self) -> impl Future<Output = ()> + Send + 'static
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
        async move { self.run().await }
    }

    /// The handler as a hyper service for a stretch of serving, its requests and answers
    /// followed by the connection's activity: a request ends the head in progress, and
    /// counts in flight until its answer's body is written or dropped (also when the caller
    /// leaves and the handler is dropped).
    fn service<F, B>(
        &self,
    ) -> impl Service<
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
        let (handler, peer, activity) = (
            self.handler.clone(),
            self.connection.peer,
            self.activity.clone(),
        );
        service_fn(move |request| {
            activity.head_done();
            let in_flight = activity.begin();
            let response = handler(request, peer);
            async move {
                let response = response.await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
            }
        })
    }

    /// Serves the connection until the peer closes it, it idles out, or shutdown drains it.
    ///
    /// HTTP/1: hyper's connection serves it until it rests for [`PARK_AFTER`]; then it is
    /// parked, and a new hyper connection comes up with the next request's first byte.
    async fn run<F, B>(&mut self)
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
        let Some(io) = self.io.as_mut() else { return };
        // Silent so far: it waits as a parked connection does, bounded by its first head's
        // deadline, and the sniff's box comes with its first byte.
        let woke = tokio::select! {
            woke = io.next_byte() => woke,
            () = self.connection.stop.cancelled() => return,
        };
        match woke {
            Ok(Wake::Byte) => {}
            Ok(Wake::Closed | Wake::Idle) => return,
            Err(error) => {
                return debug!(peer = %self.connection.peer, %error, "connection ended with an error");
            }
        }
        let protocol = Box::pin(self.connection.first_bytes(io, &self.activity)).await;
        match protocol {
            Some(Protocol::Http1) => {}
            // HTTP/2 connections are few, and their serving state is larger.
            Some(Protocol::Http2) => {
                let Some(io) = self.io.take() else { return };
                let service = self.service();
                return Box::pin(self.connection.serve_http2(io, service, &self.activity)).await;
            }
            None => return,
        }
        loop {
            let Some(io) = self.io.take() else { return };
            let service = self.service();
            match Box::pin(self.connection.serve_http1(io, service, &self.activity)).await {
                Stretch::Parked(io) => self.io = Some(io),
                Stretch::Over => return,
            }
            let Some(io) = self.io.as_mut() else { return };
            if !self.connection.parked(io, &self.activity).await {
                return;
            }
        }
    }
}

/// hyper's builders for both protocols, with gcpool's limits.
#[derive(Debug)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new() -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // Heads are timed by `ConnIo`, idle connections by `Activity` (see their docs).
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        Self { http1, http2 }
    }
}

/// A service that is `Unpin` whatever it wraps (it is never pinned through), so hyper's
/// HTTP/1 connection is `Unpin` (its request futures live in a box of its own) and can be
/// taken apart (`into_parts`) once it has ended. Its futures are the wrapped service's:
/// boxing them instead (for `poll_without_shutdown`) cost ~10,000 instructions a request,
/// mostly copying the future into its box.
#[derive(Clone)]
struct Unpinned<S>(S);

impl<S> Unpin for Unpinned<S> {}

impl<S, R> Service<R> for Unpinned<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> Self::Future {
        self.0.call(request)
    }
}

/// How a stretch of HTTP/1 serving ended.
enum Stretch<S> {
    /// Nothing to do for [`PARK_AFTER`]: the IO, to be parked.
    Parked(ConnIo<S>),
    /// The connection is over (closed, failed, stuck or stopped).
    Over,
}

/// What ended hyper's connection, or why it is to end.
enum Served {
    /// hyper's connection ended (the peer closed, `Connection: close`, or an error).
    Ended(hyper::Result<()>),
    /// Nothing to do for a while: park it (HTTP/1) or close it gracefully.
    Idle,
    /// The caller takes none of its answers.
    Stuck,
    /// Shutdown: close it gracefully.
    Stop,
}

impl Connection {
    /// Serves one accepted connection, after the TLS handshake when `tls` is set; `slot`
    /// holds its place under the connection cap until it ends. A plain connection's task
    /// is [`Open::serve`] itself; a TLS one's is boxed (a second allocation), so plain
    /// ones are not made the size of TLS ones.
    fn start<H, F, B>(
        self,
        stream: tokio::net::TcpStream,
        slot: Option<ConnectionSlot>,
        tls: Option<TlsAcceptor>,
        handler: H,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
        match tls {
            None => Either::Left(self.open(stream, slot, handler).serve()),
            Some(tls) => Either::Right(Box::pin(self.start_tls(stream, slot, tls, handler))),
        }
    }

    /// The TLS handshake, then [`Open::serve`].
    async fn start_tls<H, F, B>(
        self,
        stream: tokio::net::TcpStream,
        slot: Option<ConnectionSlot>,
        tls: TlsAcceptor,
        handler: H,
    ) where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
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
        self.open(stream, slot, handler).serve().await;
    }

    /// The state of a connection that starts now: its head deadline runs from here.
    fn open<S, H, F, B>(self, stream: S, slot: Option<ConnectionSlot>, handler: H) -> Open<S, H>
    where
        H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: ResponseBody,
    {
        let activity = Activity::new();
        let io = ConnIo::new(stream, activity.clone(), self.rules.io.clone());
        Open {
            connection: self,
            io: Some(io),
            handler,
            activity,
            _slot: slot,
        }
    }

    /// Waits for the first bytes to tell the connection's protocol (`None`: it ended first).
    async fn first_bytes<S>(&self, io: &mut ConnIo<S>, activity: &Activity) -> Option<Protocol>
    where
        S: AsyncRead + Unpin,
    {
        let protocol = tokio::select! {
            protocol = sniff(io) => protocol,
            _ = activity.quiet_for(self.rules.options.idle_timeout) => return None,
            () = self.stop.cancelled() => return None,
        };
        protocol.unwrap_or_else(|error| {
            debug!(peer = %self.peer, %error, "connection ended with an error");
            None
        })
    }

    /// Serves HTTP/1 with hyper's connection until the peer closes it, shutdown, or it
    /// rests for [`PARK_AFTER`]: then hyper's connection is taken apart and the IO handed
    /// back to be parked.
    async fn serve_http1<S, Svc, B>(
        &self,
        mut io: ConnIo<S>,
        service: Svc,
        activity: &Activity,
    ) -> Stretch<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        Svc: ConnService<B>,
        B: ResponseBody,
    {
        loop {
            let mut connection = self
                .rules
                .builders
                .http1
                .serve_connection(TokioIo::new(io), Unpinned(service.clone()));
            let served = tokio::select! {
                ended = &mut connection => Served::Ended(ended),
                quiet = activity.rested_for(PARK_AFTER.min(self.rules.options.idle_timeout), self.rules.options.idle_timeout) => match quiet {
                    Quiet::Idle => Served::Idle,
                    Quiet::Stuck => Served::Stuck,
                },
                () = self.stop.cancelled() => Served::Stop,
            };
            let parking = matches!(served, Served::Idle);
            let ended = match served {
                Served::Ended(ended) => ended,
                Served::Stuck => {
                    stuck(self.peer, activity, self.rules.refusals());
                    return Stretch::Over;
                }
                // Closes at once when idle, else after the response in progress (bounded by
                // the writes' limit, or when stopping by the drain's grace period).
                Served::Idle | Served::Stop => {
                    // Parking: hyper's shutdown of the IO at its end is skipped.
                    activity.parking(parking);
                    Pin::new(&mut connection).graceful_shutdown();
                    // hyper ends at once when idle, after the answer in progress otherwise,
                    // and waits for a head it has begun: bounded by the head deadline, and
                    // here by the idle timeout should nothing move at all.
                    tokio::select! {
                        ended = &mut connection => ended,
                        _ = activity.quiet_for(self.rules.options.idle_timeout) => {
                            debug!(peer = %self.peer, "closing a connection that stayed quiet while closing");
                            return Stretch::Over;
                        }
                    }
                }
            };
            if let Err(error) = ended {
                debug!(peer = %self.peer, error = %error, "connection ended with an error");
                return Stretch::Over;
            }
            if !parking {
                // The peer closed, asked to (`Connection: close`), or shutdown: hyper has
                // closed the connection.
                return Stretch::Over;
            }
            activity.parking(false);
            // Its buffers go with it (`read_buf` holds the read buffer's allocation even when
            // empty).
            let http1::Parts {
                io: parts_io,
                read_buf,
                ..
            } = connection.into_parts();
            io = parts_io.into_inner();
            // Empty lines left behind a request are no head (see `conn_io::is_blank`).
            if conn_io::is_blank(&read_buf) {
                return Stretch::Parked(io);
            }
            // The start of a pipelined head: its deadline runs from now, on a new hyper
            // connection.
            io.replay_partial_head(read_buf);
        }
    }

    /// A parked HTTP/1 connection waits for its next request's first byte (handed back to
    /// be read again); `false` once it is over (closed by its peer, the idle timeout or
    /// shutdown). Nothing is in flight while parked, so the idle deadline is fixed.
    async fn parked<S>(&self, io: &mut ConnIo<S>, activity: &Activity) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let idle_deadline = activity.last_active() + self.rules.options.idle_timeout;
        let woke = tokio::select! {
            woke = io.parked(idle_deadline) => woke,
            () = self.stop.cancelled() => Ok(Wake::Closed),
        };
        match woke {
            Ok(Wake::Byte) => return true,
            Ok(Wake::Closed) => {}
            Ok(Wake::Idle) => debug!(peer = %self.peer, "closing an idle connection"),
            Err(error) => {
                debug!(peer = %self.peer, error = %error, "connection ended with an error");
                return false;
            }
        }
        io.close(IDLE_CLOSE_GRACE).await;
        false
    }

    /// Serves an HTTP/2 connection until the peer closes it, it idles out, or shutdown
    /// drains it.
    async fn serve_http2<S, Svc, B>(&self, io: ConnIo<S>, service: Svc, activity: &Activity)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        Svc: ConnService<B>,
        B: ResponseBody,
    {
        let (peer, options) = (self.peer, self.rules.options);
        let connection = self
            .rules
            .builders
            .http2
            .serve_connection(TokioIo::new(io), service);
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
                Quiet::Stuck => return stuck(peer, activity, self.rules.refusals()),
            },
            () = self.stop.cancelled() => false,
        };
        // GOAWAY, then the streams in progress finish.
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

/// Reads a connection's first bytes until they show its protocol (hyper-util's auto
/// builder does the same), and hands them back to be read again; `None` if the peer closed
/// first.
async fn sniff<S: AsyncRead + Unpin>(io: &mut ConnIo<S>) -> std::io::Result<Option<Protocol>> {
    let mut first = [0; 24];
    let mut len = 0;
    let protocol = loop {
        if let Some(protocol) = io.protocol() {
            break protocol;
        }
        // At most what is left of the HTTP/2 preface, so `first` always holds it all.
        match io.read(&mut first[len..]).await? {
            0 => return Ok(None),
            n => len += n,
        }
    };
    io.replay(Bytes::copy_from_slice(&first[..len]));
    Ok(Some(protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds its task: a plain one's must stay small. In a test build
    /// it was 1,944 bytes before issue 13 and 1,216 after its first pass (the futures of
    /// every await point inline, the connection's parts held twice); 408 now.
    #[tokio::test]
    async fn a_plain_connections_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let connection = Connection {
            peer,
            rules: Arc::new(ListenerRules::new(
                ServeOptions {
                    idle_timeout: Duration::from_secs(1),
                    grace: Duration::from_secs(1),
                    header_read_timeout: Duration::from_secs(1),
                },
                None,
            )),
            stop: CancellationToken::new(),
        };
        let handler = |_: Request<Incoming>, _: SocketAddr| async {
            Response::new(http_body_util::Empty::<Bytes>::new())
        };
        let task = connection.start(stream, None, None, handler);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 448, "a connection's task future is {size} bytes");
    }
}
