//! The accept loop: one task per caller connection, HTTP/1.1 and HTTP/2 (hyper-util's auto
//! builder), TLS when configured (handshake in the connection's task), graceful drain on
//! shutdown.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntCounter;

mod head_timeout;

pub use head_timeout::HeadRefusals;
use head_timeout::{HeadTimeout, HeadTimer};

use crate::proxy::ProxyBody;
use crate::tls::TlsAcceptor;

/// Connection settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Idle keep-alive connections are closed after this long (never sooner: Data Actions
    /// reuse connections and fail on ones closed under them).
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub grace: Duration,
    /// A request head, once begun, must arrive within this (slow-loris).
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
/// Most request headers; hyper answers 431 past it.
const MAX_HEADERS: usize = 128;

/// Serves `listener` with `handler` until `shutdown` is cancelled, then stops accepting
/// and waits up to `options.grace` for in-flight requests. With `tls`, every connection
/// starts with a TLS handshake; a failed one is logged at debug and closes the connection.
///
/// # Errors
/// Never in practice: accept errors (e.g. out of file descriptors) are logged and retried.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: CancellationToken,
    options: ServeOptions,
    tls: Option<TlsAcceptor>,
    limit: Option<Arc<ConnectionLimit>>,
    refusals: Option<HeadRefusals>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    // Shared with TLS connection tasks, which build their connection after the handshake.
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();

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
        let handler = handler.clone();
        let head_timer = Arc::new(HeadTimer::default());
        let timer = head_timer.clone();
        let service = service_fn(move |request| {
            timer.head_done();
            let response = handler(request, peer);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let header_read_timeout = options.header_read_timeout;
        let Some(tls) = &tls else {
            let io = HeadTimeout::new(stream, head_timer, header_read_timeout, refusals.clone());
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(error) = connection.await {
                    debug!(%peer, error = %error, "connection ended with an error");
                }
            });
            continue;
        };
        // Watched from the start, so a drain waits for (or, via `stop`, cuts) handshakes
        // in progress too.
        let watcher = graceful.watcher();
        let (tls, builder, stop) = (tls.clone(), builder.clone(), shutdown.clone());
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = tokio::select! {
                accepted = tls.accept(stream) => match accepted {
                    Ok(stream) => stream,
                    Err(error) => {
                        debug!(%peer, error = %crate::tls::error_chain(&error), "TLS handshake failed");
                        return;
                    }
                },
                () = stop.cancelled() => return,
            };
            let io = HeadTimeout::new(stream, head_timer, header_read_timeout, refusals);
            let connection = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(grace = ?options.grace, "grace period over; closing connections with requests still in flight");
    }
    Ok(())
}
