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
//!
//! [`Upstream::attempt`] sends one request and classifies the answer ([`Outcome`]); what
//! to do next is the request path's decision. The one resend here is connection checkout,
//! not a retry: a request a pooled connection turned out closed for was never written, so
//! it goes once more on a new connection (and the connections idle longer than that one
//! are dropped, the upstream has closed them too).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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

mod limit;
mod outcome;

pub use limit::{DEFAULT_RETRY_AFTER, LimitObject, LimitScope, UpstreamLimit};
pub use outcome::{Outcome, OutcomeKind};

/// Idle connections older than this are not reused (servers close idle ones at ~60 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per host.
const MAX_IDLE_PER_HOST: usize = 1024;
/// Idle connections nobody needs are closed (each holds ~25 KB: hyper's buffers and task).
const REAPING: Reaping = Reaping {
    spare_after: Duration::from_secs(5),
    warm: 8,
    every: Duration::from_secs(1),
};
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
    #[error("the upstream closed the connection before the request was sent")]
    Closed,
    #[error("request has no scheme or host")]
    BadUri,
}

impl UpstreamError {
    /// Whether the request surely never reached the upstream application
    /// (safe to retry for any method).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::BadUri | Self::Closed)
    }
}

/// A request a connection did not take.
#[derive(Debug)]
enum Unsent {
    /// Never written: it can go on another connection.
    Request(Box<Request<Full<Bytes>>>),
    /// Written, at least in part: the exchange failed.
    Failed(hyper::Error),
}

/// A pooled client. Clones share the pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
}

/// Idle connections per host. A worker talks to two hosts (the API and the login host), so
/// a short list searched in order beats a hash map: hashing an `Authority` lowercases it byte
/// by byte through SipHash, about 1,000 instructions per lookup, twice per request. Hosts
/// are only ever added, so a host's index names it for the pool's life.
///
/// While it holds idle connections a reaper task closes those nobody needs (see
/// [`Reaping`]): a burst leaves as many idle connections as it had requests in flight.
#[derive(Debug)]
struct Pool {
    hosts: Mutex<Vec<Host>>,
    reaping: Reaping,
    /// A reaper task runs; set and cleared with `hosts` locked.
    reaper: AtomicBool,
}

/// When idle connections are closed before their [`IDLE_TIMEOUT`]. The pool hands out its
/// newest idle connection first, so one idle for `spare_after` was not needed by the load
/// of that whole while: it is spare (HAProxy's `pool-purge-delay` is 5 s too). The `warm`
/// newest of a host stay until the idle timeout, so a quiet sidecar does not open a new
/// TLS connection to Genesys after every lull.
#[derive(Debug, Clone, Copy)]
struct Reaping {
    spare_after: Duration,
    warm: usize,
    /// How often the reaper looks.
    every: Duration,
}

/// Index of a host in [`Pool::hosts`].
type HostId = usize;

#[derive(Debug)]
struct Host {
    scheme: Scheme,
    authority: Authority,
    /// Newest last.
    idle: Vec<Idle>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A connection on loan to one exchange; back to the pool when the answer has been read.
#[derive(Debug)]
struct Loan {
    sender: SendRequest<Full<Bytes>>,
    host: HostId,
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
            pool: Arc::new(Pool::new(REAPING)),
        }
    }

    /// Sends one request (absolute URI) by `deadline` and classifies the answer.
    pub async fn attempt(&self, request: Request<Full<Bytes>>, deadline: Instant) -> Outcome {
        let sent = self.send_by(request, deadline).await;
        Outcome::classify(sent, deadline).await
    }

    /// Sends one request (absolute URI) and waits for its response head, at most `timeout`.
    ///
    /// # Errors
    /// [`UpstreamError::Timeout`] past `timeout`, [`UpstreamError::Connect`] when no
    /// connection could be made, [`UpstreamError::Closed`] when a new connection closed
    /// before the request was written, [`UpstreamError::Http`] when the exchange failed.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.send_by(request, Instant::now() + timeout).await
    }

    /// [`send`](Self::send), answered by `deadline`.
    async fn send_by(
        &self,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match tokio::time::timeout_at(deadline, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn exchange(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let uri = request.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamError::BadUri);
        };
        let host = self.pool.host(scheme, authority);
        if !request.headers().contains_key(header::HOST) {
            let value =
                HeaderValue::from_str(authority.as_str()).map_err(|_| UpstreamError::BadUri)?;
            request.headers_mut().insert(header::HOST, value);
        }
        // HTTP/1.1 request line in origin form; Host names the upstream.
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);

        // A pooled connection may turn out closed; then the request comes back unsent and
        // goes once more, on a new connection.
        // Connecting is rare (once per pooled connection) and its future holds a whole TLS
        // stream: boxed, so it does not swell every request's future.
        let (sender, pooled) = match self.checkout(host).await {
            Some(sender) => (sender, true),
            None => (Box::pin(self.connect(host)).await?, false),
        };
        let request = match self.send_on(sender, request, host).await {
            Err(Unsent::Request(request)) if pooled => {
                debug!("pooled upstream connection was closed; using a new one");
                self.pool.forget(host);
                *request
            }
            Err(Unsent::Request(_)) => return Err(UpstreamError::Closed),
            Err(Unsent::Failed(error)) => return Err(UpstreamError::Http(error)),
            Ok(response) => return Ok(response),
        };
        let sender = Box::pin(self.connect(host)).await?;
        match self.send_on(sender, request, host).await {
            Ok(response) => Ok(response),
            Err(Unsent::Request(_)) => Err(UpstreamError::Closed),
            Err(Unsent::Failed(error)) => Err(UpstreamError::Http(error)),
        }
    }

    /// Sends `request` on `sender`; on success the connection is on loan to the answer.
    async fn send_on(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
        host: HostId,
    ) -> Result<Response<UpstreamBody>, Unsent> {
        match sender.try_send_request(request).await {
            Ok(response) => {
                let loan = Loan {
                    sender,
                    host,
                    pool: self.pool.clone(),
                };
                Ok(response.map(|body| UpstreamBody::new(body, loan)))
            }
            Err(mut error) => match error.take_message() {
                Some(unsent) => Err(Unsent::Request(Box::new(unsent))),
                None => Err(Unsent::Failed(error.into_error())),
            },
        }
    }

    /// An idle, ready connection to `host`, if the pool has one.
    async fn checkout(&self, host: HostId) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.pool.lock().get_mut(host)?.idle.pop()?;
            if idle.since.elapsed() > IDLE_TIMEOUT || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, host: HostId) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        let (scheme, authority) = {
            let hosts = self.pool.lock();
            let host = hosts.get(host).ok_or(UpstreamError::BadUri)?;
            (host.scheme.clone(), host.authority.clone())
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
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

// === impl Pool ===

impl Pool {
    fn new(reaping: Reaping) -> Self {
        Self {
            hosts: Mutex::default(),
            reaping,
            reaper: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Host>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of the host `scheme://authority`, added on first use.
    fn host(&self, scheme: &Scheme, authority: &Authority) -> HostId {
        let mut hosts = self.lock();
        // Names compared byte for byte: requests to one host all come from one config value.
        let known = hosts.iter().position(|host| {
            host.scheme == *scheme && host.authority.as_str() == authority.as_str()
        });
        known.unwrap_or_else(|| {
            hosts.push(Host {
                scheme: scheme.clone(),
                authority: authority.clone(),
                idle: Vec::new(),
            });
            hosts.len() - 1
        })
    }

    /// Drops the idle connections to `host`: one of them was found closed, and the others
    /// have been idle at least as long (the stack gives the newest first).
    fn forget(&self, host: HostId) {
        if let Some(host) = self.lock().get_mut(host) {
            host.idle.clear();
        }
    }

    /// Starts the reaper unless it runs (`hosts`: the pool's, locked). Outside a runtime
    /// (a pool dropped with its last body) there is none; the next give-back starts it.
    fn wake_reaper(self: &Arc<Self>, _locked: &[Host]) {
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(reap(Arc::downgrade(self)));
            }
            Err(_) => self.reaper.store(false, Ordering::Relaxed),
        }
    }
}

/// The reaper: every `reaping.every`, closes the spare and expired idle connections; ends
/// once none is left (or the pool is gone).
async fn reap(pool: Weak<Pool>) {
    loop {
        let Some(every) = pool.upgrade().map(|pool| pool.reaping.every) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut hosts = pool.lock();
        let now = Instant::now();
        let mut left = 0;
        for host in hosts.iter_mut() {
            host.reap(now, &pool.reaping);
            left += host.idle.len();
        }
        if left == 0 {
            pool.reaper.store(false, Ordering::Relaxed);
            return;
        }
    }
}

impl Host {
    /// Drops the idle connections that are closed, past the idle timeout, or spare (but
    /// the warm ones).
    fn reap(&mut self, now: Instant, reaping: &Reaping) {
        // Newest last: the warm ones are the last `warm`.
        let warm_from = self.idle.len().saturating_sub(reaping.warm);
        let mut index = 0;
        self.idle.retain(|idle| {
            let warm = index >= warm_from;
            index += 1;
            let age = now.saturating_duration_since(idle.since);
            !idle.sender.is_closed() && age <= IDLE_TIMEOUT && (warm || age < reaping.spare_after)
        });
    }
}

// === impl Loan ===

impl Loan {
    fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut hosts = self.pool.lock();
        if let Some(host) = hosts.get_mut(self.host)
            && host.idle.len() < MAX_IDLE_PER_HOST
        {
            host.idle.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
            self.pool.wake_reaper(&hosts);
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

#[cfg(test)]
mod tests {
    //! The connection pool's edge cases against a scripted HTTP/1.1 server on 127.0.0.1.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the server does with each request of a connection.
    #[derive(Clone, Copy)]
    enum Script {
        /// Answers `ok` and keeps the connection.
        KeepAlive,
        /// Answers `ok`, then closes the connection (without `Connection: close`).
        CloseAfterAnswer,
        /// Announces 100 bytes, sends 2, closes.
        TruncatedBody,
        /// Announces 100 bytes, sends 2, keeps the connection open and silent.
        StalledBody,
    }

    /// A server answering every connection by `script`; counts connections accepted.
    async fn server(script: Script) -> (String, Arc<AtomicUsize>) {
        let (base, accepted, _) = server_counting_closes(script).await;
        (base, accepted)
    }

    /// [`server`], also counting the connections the client closed.
    async fn server_counting_closes(
        script: Script,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, closes) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let closes = closes.clone();
                tokio::spawn(async move {
                    serve(stream, script).await;
                    closes.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (base, accepted, closed)
    }

    async fn serve(mut stream: TcpStream, script: Script) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            head.clear();
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let answer: &[u8] = match script {
                Script::KeepAlive | Script::CloseAfterAnswer => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                }
                Script::TruncatedBody | Script::StalledBody => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok"
                }
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
            match script {
                Script::KeepAlive => {}
                Script::StalledBody => {
                    // Held open until the client drops it.
                    let _ = stream.read(&mut byte).await;
                    return;
                }
                Script::CloseAfterAnswer | Script::TruncatedBody => {
                    let _ = stream.shutdown().await;
                    return;
                }
            }
        }
    }

    fn get(base: &str) -> Request<Full<Bytes>> {
        Request::get(format!("{base}/api/v2/users/me"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn body(response: Response<UpstreamBody>) -> Result<Bytes, BodyError> {
        Ok(response.into_body().collect().await?.to_bytes())
    }

    fn idle(upstream: &Upstream) -> usize {
        let hosts = upstream.pool.hosts.lock().unwrap();
        hosts.iter().map(|host| host.idle.len()).sum()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_connection_read_to_the_end_serves_the_next_request() {
        let (base, accepted) = server(Script::KeepAlive).await;
        let upstream = Upstream::new();
        for _ in 0..3 {
            let response = upstream.send(get(&base), SECOND).await.unwrap();
            assert_eq!(body(response).await.unwrap(), "ok");
            assert_eq!(idle(&upstream), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced_and_the_request_still_goes() {
        let (base, accepted) = server(Script::CloseAfterAnswer).await;
        let upstream = Upstream::new();
        // Sent at once, or after the close was seen: either way the pooled connection is
        // found closed (at checkout, or when it gives the request back unsent).
        for round in 1..=20 {
            let response = upstream.send(get(&base), SECOND).await.unwrap();
            assert_eq!(body(response).await.unwrap(), "ok", "round {round}");
            if round % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            20,
            "one connection per answer"
        );
    }

    #[tokio::test]
    async fn a_connection_that_ended_gives_its_request_back_unsent() {
        let (base, accepted) = server(Script::KeepAlive).await;
        let upstream = Upstream::new();
        let uri: Uri = base.parse().unwrap();
        let (scheme, authority) = (uri.scheme().unwrap(), uri.authority().unwrap());
        let host = upstream.pool.host(scheme, authority);
        // A connection whose task is gone (as when the upstream closed it) takes nothing.
        let io = TcpStream::connect(authority.as_str()).await.unwrap();
        let (sender, connection) = http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
        drop(connection);
        let sent = upstream.send_on(sender, get(""), host).await;
        let Err(Unsent::Request(unsent)) = sent else {
            panic!("the request must come back unsent");
        };
        // It can go on another connection as it is.
        assert_eq!(unsent.uri().path(), "/api/v2/users/me");
        let sender = upstream.connect(host).await.unwrap();
        let response = upstream.send_on(sender, *unsent, host).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_a_pooled_connection_gives_back_unsent_goes_on_a_new_one() {
        let (base, accepted) = server(Script::KeepAlive).await;
        let upstream = Upstream::new();
        let uri: Uri = base.parse().unwrap();
        let host = upstream
            .pool
            .host(uri.scheme().unwrap(), uri.authority().unwrap());
        // A pooled connection whose peer has just gone: its task has not run since, so it
        // still looks open and ready when checked out, and gives the request back unsent.
        let (ours, theirs) = tokio::io::duplex(4096);
        let (sender, connection) = http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(connection);
        tokio::task::yield_now().await;
        upstream.pool.hosts.lock().unwrap()[host].idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        drop(theirs);
        let response = upstream.send(get(&base), SECOND).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "resent on a new connection"
        );
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_drops_its_connection() {
        let (base, accepted) = server(Script::TruncatedBody).await;
        let upstream = Upstream::new();
        let registry = prometheus::Registry::new();
        let counter = |name: &str| {
            let c = IntCounter::new(name, name).unwrap();
            registry.register(Box::new(c.clone())).unwrap();
            c
        };
        let aborts = BodyAborts {
            stalled: counter("stalled"),
            failed: counter("failed"),
        };
        for round in 1..=2 {
            let response = upstream.send(get(&base), SECOND).await.unwrap();
            let response = response.map(|b| b.counted(aborts.clone()));
            assert!(
                matches!(body(response).await, Err(BodyError::Upstream(_))),
                "round {round}"
            );
            assert_eq!(idle(&upstream), 0, "the loan is not given back");
        }
        assert_eq!(aborts.failed.get(), 2);
        assert_eq!(aborts.stalled.get(), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_that_stalls_drops_its_open_connection() {
        let (base, accepted) = server(Script::StalledBody).await;
        let upstream = Upstream::new();
        for round in 1..=2 {
            let response = upstream.send(get(&base), SECOND).await.unwrap();
            let response = response.map(|b| b.stall_limit(Duration::from_millis(50)));
            assert!(
                matches!(body(response).await, Err(BodyError::Stalled(_))),
                "round {round}"
            );
            // Still open, but mid-answer: it must not serve another request.
            assert_eq!(idle(&upstream), 0, "the loan is not given back");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Waits (at most 5 s) until `count` reaches `want`.
    async fn reaches(count: &AtomicUsize, want: usize) -> bool {
        for _ in 0..500 {
            if count.load(Ordering::SeqCst) == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn idle_connections_nobody_needs_are_closed_but_the_warm_ones_until_the_idle_timeout() {
        let (base, accepted, closed) = server_counting_closes(Script::KeepAlive).await;
        let mut upstream = Upstream::new();
        upstream.pool = Arc::new(Pool::new(Reaping {
            spare_after: Duration::from_millis(200),
            warm: 2,
            every: Duration::from_millis(20),
        }));
        // A burst of 6 at once: 6 connections, all idle once their answers are read.
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (upstream, request) = (upstream.clone(), get(&base));
            sends.spawn(async move { upstream.send(request, SECOND).await.unwrap() });
        }
        let responses = sends.join_all().await;
        for response in responses {
            assert_eq!(body(response).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
        assert_eq!(idle(&upstream), 6);
        // Used again within `spare_after`: nothing is spare yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(idle(&upstream), 6);
        assert_eq!(closed.load(Ordering::SeqCst), 0);
        // Past it: the 4 oldest are closed, the 2 newest kept.
        assert!(reaches(&closed, 4).await, "closed: {closed:?}");
        assert_eq!(idle(&upstream), 2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(closed.load(Ordering::SeqCst), 4, "the warm ones stay");
        // The warm ones go at the idle timeout; then the reaper ends.
        for idle in &mut upstream.pool.hosts.lock().unwrap()[0].idle {
            idle.since = Instant::now().checked_sub(IDLE_TIMEOUT + SECOND).unwrap();
        }
        assert!(reaches(&closed, 6).await, "closed: {closed:?}");
        assert_eq!(idle(&upstream), 0);
        assert!(
            reaches_false(&upstream.pool.reaper).await,
            "the reaper ends"
        );
        // And starts again with the next connection pooled.
        let response = upstream.send(get(&base), SECOND).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        assert!(upstream.pool.reaper.load(Ordering::Relaxed));
        assert_eq!(accepted.load(Ordering::SeqCst), 7);
    }

    async fn reaches_false(flag: &AtomicBool) -> bool {
        for _ in 0..500 {
            if !flag.load(Ordering::Relaxed) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_idle_timeout_is_not_reused() {
        let (base, accepted) = server(Script::KeepAlive).await;
        let upstream = Upstream::new();
        let response = upstream.send(get(&base), SECOND).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        {
            let mut hosts = upstream.pool.hosts.lock().unwrap();
            let idle = hosts.first_mut().unwrap().idle.first_mut().unwrap();
            idle.since = Instant::now().checked_sub(IDLE_TIMEOUT + SECOND).unwrap();
        }
        let response = upstream.send(get(&base), SECOND).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");
        assert_eq!(
            idle(&upstream),
            1,
            "the expired one is gone, the new one pooled"
        );
    }
}
