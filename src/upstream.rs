//! The HTTP client to Genesys (API and login hosts): HTTP/1.1 keep-alive connections over
//! rustls (`https://`, the real regions) or plain TCP (`http://`, the simulator).
//!
//! A small pool of our own instead of hyper-util's legacy client: one [`Upstream`] per
//! worker thread, so a connection's task, the request and the caller's connection all run
//! on the same thread. A connection goes back to the pool when its response body has been
//! read to the end (no task per request), and is dropped when the body is abandoned or the
//! upstream closes it. Request bodies are [`Full`] buffers (so an attempt can be replayed on
//! another client); response bodies stream back as they arrive, and one that stalls (no
//! byte for its stall limit while it is being read) ends with [`BodyError::Stalled`], so
//! the caller sees an aborted answer rather than a hang or a clean, truncated end.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::debug;

/// Idle connections older than this are not reused (servers close idle ones at ~60 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per host.
const MAX_IDLE_PER_HOST: usize = 1024;
/// How long a response body may send nothing while it is read, unless
/// [`UpstreamBody::stall_limit`] sets another bound.
const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] BoxError),
    #[error("upstream exchange failed")]
    Http(#[source] hyper::Error),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("request has no scheme or host")]
    BadUri,
}

impl UpstreamError {
    /// Whether the request surely never reached the upstream application
    /// (safe to retry for any method).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::BadUri)
    }
}

/// A pooled client. Clones share the pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

type PoolKey = (Scheme, Authority);

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A connection on loan to one exchange; back to the pool when the answer has been read.
#[derive(Debug)]
struct Loan {
    sender: SendRequest<Full<Bytes>>,
    key: PoolKey,
    pool: Arc<Pool>,
}

/// The upstream response body: streams, and returns its connection to the pool at the end.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    loan: Option<Loan>,
    stall_limit: Duration,
    /// Armed while a read waits for the upstream; reset by every frame.
    stall: Option<Pin<Box<Sleep>>>,
    /// Counts bodies cut because they stalled, or because the upstream failed mid-body.
    aborts: Option<BodyAborts>,
}

/// Counters of response bodies that did not end cleanly.
#[derive(Debug, Clone)]
pub struct BodyAborts {
    pub stalled: IntCounter,
    pub failed: IntCounter,
}

/// Why a response body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the upstream sent no byte of the response body for {0:?}")]
    Stalled(Duration),
    #[error("the upstream response body failed")]
    Upstream(#[source] hyper::Error),
}

// === impl Upstream ===

impl Upstream {
    /// A client trusting the webpki roots (no system trust store needed in a distroless
    /// image), offering HTTP/1.1 only.
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            connector,
            pool: Arc::default(),
        }
    }

    /// Sends one request (absolute URI) and waits for its response head, at most `timeout`.
    ///
    /// # Errors
    /// [`UpstreamError::Timeout`] past `timeout`, [`UpstreamError::Connect`] when no
    /// connection could be made, [`UpstreamError::Http`] when the exchange failed.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn exchange(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let uri = request.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(UpstreamError::BadUri);
        };
        let key = (scheme, authority);
        // HTTP/1.1 request line in origin form; Host names the upstream.
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
        if !request.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_str(key.1.as_str()).map_err(|_| UpstreamError::BadUri)?;
            request.headers_mut().insert(header::HOST, host);
        }

        // A pooled connection may turn out closed; then the request comes back unsent and
        // goes on a new connection.
        let mut request = request;
        loop {
            let (mut sender, fresh) = match self.checkout(&key).await {
                Some(sender) => (sender, false),
                None => (self.connect(&key).await?, true),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let loan = Loan {
                        sender,
                        key,
                        pool: self.pool.clone(),
                    };
                    return Ok(response.map(|body| UpstreamBody::new(body, loan)));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => {
                        debug!("pooled upstream connection was closed; using a new one");
                        request = unsent;
                    }
                    _ => return Err(UpstreamError::Http(error.into_error())),
                },
            }
        }
    }

    /// An idle, ready connection to `key`, if the pool has one.
    async fn checkout(&self, key: &PoolKey) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let idle = {
                let mut pool = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                pool.get_mut(key)?.pop()?
            };
            if idle.since.elapsed() > IDLE_TIMEOUT || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, key: &PoolKey) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        let uri = Uri::builder()
            .scheme(key.0.clone())
            .authority(key.1.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| UpstreamError::BadUri)?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io = connector.call(uri).await.map_err(UpstreamError::Connect)?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Loan ===

impl Loan {
    fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut pool = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.entry(self.key).or_default();
        if idle.len() < MAX_IDLE_PER_HOST {
            idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

// === impl UpstreamBody ===

impl UpstreamBody {
    fn new(body: Incoming, loan: Loan) -> Self {
        let mut this = Self {
            body,
            loan: Some(loan),
            stall_limit: DEFAULT_STALL_LIMIT,
            stall: None,
            aborts: None,
        };
        if this.body.is_end_stream() {
            this.finish();
        }
        this
    }

    /// Ends the body with [`BodyError::Stalled`] when the upstream sends nothing for
    /// `limit` while it is being read (time the reader is not reading does not count).
    #[must_use]
    pub fn stall_limit(mut self, limit: Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// Counts the ways this body can end badly.
    #[must_use]
    pub fn counted(mut self, aborts: BodyAborts) -> Self {
        self.aborts = Some(aborts);
        self
    }

    /// The answer was read to its end: the connection may serve the next request.
    fn finish(&mut self) {
        if let Some(loan) = self.loan.take() {
            loan.give_back();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match polled {
            Poll::Pending => {
                let limit = this.stall_limit;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The connection is mid-answer: it cannot serve another request.
                this.loan = None;
                this.stall = None;
                if let Some(aborts) = &this.aborts {
                    aborts.stalled.inc();
                }
                Poll::Ready(Some(Err(BodyError::Stalled(limit))))
            }
            Poll::Ready(ready) => {
                this.stall = None;
                match &ready {
                    None => this.finish(),
                    Some(Ok(_)) if this.body.is_end_stream() => this.finish(),
                    Some(Err(_)) => {
                        this.loan = None;
                        if let Some(aborts) = &this.aborts {
                            aborts.failed.inc();
                        }
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(ready.map(|r| r.map_err(BodyError::Upstream)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
