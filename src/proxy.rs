//! `Proxy::handle`: the request path, in request order.
//!
//! inbound checks → authenticate → route match (allow-list) → read body (bounded) →
//! admission (client + budgets, fair wait) → inject its token → forward → on 429 cool down
//! and retry elsewhere, on 401 drop that token (the client re-mints, at most once per
//! interval) and retry, on 502/503/504 back off and retry idempotent methods → answer, with
//! every fact recorded once in `Exchange::finish`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::Config;
use crate::inbound;
use crate::metrics::Metrics;
use crate::reload::Live;
use crate::routes::RouteTable;
use crate::upstream::{BodyAborts, Upstream, UpstreamBody, UpstreamError};

mod reject;
mod retry;
mod rewrite;

pub use reject::{LimitInfo, REASON_HEADER, Reject, ceil_secs, json_response};
pub use retry::{LimitScope, UpstreamLimit};
pub use rewrite::ApiTarget;

/// Response header: the pool client that served the request.
pub const CLIENT_HEADER: &str = "x-gcpool-client";
/// Upstream attempts per request at most (429 elsewhere, 401 on a token minted after the
/// request began, transient 5xx); a 401 on an older token costs none, once per client.
const MAX_ATTEMPTS: u32 = 4;
/// Largest upstream error body read to learn which limit fired.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Response header: milliseconds the request waited for admission.
pub const WAIT_HEADER: &str = "x-gcpool-wait-ms";

/// Body of every response gcpool sends: streamed from upstream, or written by gcpool.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// The request path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    upstream: Upstream,
}

#[derive(Debug)]
struct Inner {
    /// Pool, budgets, keys and limits of the current config (swapped by a reload).
    live: Arc<Live>,
    metrics: Metrics,
    target: ApiTarget,
    /// One permit per byte of request body held in memory (`server.max_body_bytes_in_flight`).
    body_memory: Arc<Semaphore>,
    /// Counts streamed answers cut midway.
    body_aborts: BodyAborts,
}

/// Facts learnt about one request, recorded once when it ends.
#[derive(Debug)]
struct Exchange {
    method: Method,
    route: &'static str,
    client: Option<String>,
    reject: Option<&'static str>,
    upstream_error: bool,
}

// === impl Proxy ===

impl Proxy {
    pub fn new(config: &Config, live: Arc<Live>, upstream: Upstream, metrics: Metrics) -> Self {
        let api = &config.genesys.api_base;
        let target = ApiTarget {
            scheme: api.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS),
            authority: api
                .authority()
                .cloned()
                .expect("config validation guarantees api_base has a host"),
        };
        let body_memory = Arc::new(Semaphore::new(
            usize::try_from(config.server.max_body_bytes_in_flight)
                .unwrap_or(Semaphore::MAX_PERMITS)
                .min(Semaphore::MAX_PERMITS),
        ));
        let body_aborts = BodyAborts {
            stalled: metrics
                .response_aborted
                .with_label_values(&["upstream_stalled"]),
            failed: metrics
                .response_aborted
                .with_label_values(&["upstream_error"]),
        };
        Self {
            inner: Arc::new(Inner {
                live,
                metrics,
                target,
                body_memory,
                body_aborts,
            }),
            upstream,
        }
    }

    /// The same proxy with a connection pool of its own (one per worker thread).
    pub fn with_own_upstream(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            upstream: Upstream::new(),
        }
    }

    /// Answers one caller request; never fails (errors become Genesys-shaped answers).
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let mut exchange = Exchange {
            method: request.method().clone(),
            route: "other",
            client: None,
            reject: None,
            upstream_error: false,
        };
        let response = match self.forward(request, &mut exchange).await {
            Ok(response) => response,
            Err(reject) => {
                if reject.is_rejection() {
                    debug!(reason = reject.reason(), "request refused: {reject}");
                    exchange.reject = Some(reject.reason());
                } else {
                    warn!(error = %reject, source = ?std::error::Error::source(&reject).map(ToString::to_string), "request failed upstream");
                    exchange.upstream_error = true;
                }
                reject.into_response()
            }
        };
        exchange.finish(&self.inner.metrics, response.status());
        response
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<Response<ProxyBody>, Reject> {
        let inner = &*self.inner;
        let started = Instant::now();
        // Admission takes the current config again for each attempt (a reload may land
        // while the body is read or the request waits); the rest of this request keeps it.
        let config = inner.live.current();
        let deadline = started + config.request_timeout;

        inbound::check_target(
            request.method(),
            request.uri(),
            request.version(),
            &inner.target.authority,
        )?;
        config.auth.authenticate(request.headers())?;
        let table = RouteTable::genesys();
        let route = table.lookup(request.method(), request.uri().path());
        exchange.route = route.label();
        inbound::check_method(request.method(), request.uri().path(), &route, table)?;
        if let Some(allowed) = &config.allow_routes
            && !route.id().is_some_and(|id| allowed.contains(&id))
        {
            return Err(Reject::RouteNotAllowed(reject::route_text(
                route.operation(),
            )));
        }
        let (parts, body) = request.into_parts();
        // The bytes stay counted against the in-flight cap until this request ends.
        let (body, _body_memory) = read_body(
            &parts.headers,
            body,
            config.max_body_bytes,
            deadline,
            &inner.body_memory,
        )
        .await?;
        drop(config);

        let mut waited = Duration::ZERO;
        // Clients whose token, minted before this request began, the upstream refused
        // (revoked, idle-expired). Each may do so once without spending an attempt, so
        // every token dying at once costs a caller nothing; the loop stays finite (at most
        // MAX_ATTEMPTS + one per client).
        let mut stale_refused: Vec<usize> = Vec::new();
        let mut attempt = 0;
        while attempt < MAX_ATTEMPTS {
            attempt += 1;
            let last = attempt == MAX_ATTEMPTS;
            let live = inner.live.current();
            let permit = live
                .admission
                .admit(&live.pool, route.id(), deadline)
                .await?;
            waited += permit.waited;
            let next = inner.live.current();
            if next.number != live.number
                && !live
                    .admission
                    .same_budgets(&next.admission, permit.client, route.id())
            {
                // A reload changed what this request must fit in while it waited: admitted
                // under the old limits, it would not count against the new ones.
                live.admission.give_back(permit);
                continue;
            }
            let lease = permit.lease;
            exchange.client = Some(lease.client.name.clone());

            let upstream_request =
                rewrite::upstream_request(&parts, body.clone(), &inner.target, &lease.token.bearer)
                    .map_err(|_| Reject::BadPath)?;
            let sent = Instant::now();
            let result = self
                .upstream
                .send(upstream_request, deadline.saturating_duration_since(sent))
                .await;
            inner
                .metrics
                .upstream_duration
                .with_label_values(&[exchange.route])
                .observe(sent.elapsed().as_secs_f64());
            let client = &lease.client.name;
            let response = match result {
                Ok(response) => response,
                Err(error) => {
                    inner
                        .metrics
                        .upstream_requests
                        .with_label_values(&[client, "error"])
                        .inc();
                    let reached = !error.is_connect();
                    if matches!(error, UpstreamError::Timeout) {
                        return Err(Reject::UpstreamTimeout);
                    }
                    if !last && retry::may_retry(&parts.method, None, reached) {
                        debug!(client = %client, error = %error, "upstream connection failed; retrying");
                        backoff_until(attempt, deadline).await;
                        continue;
                    }
                    return Err(Reject::UpstreamUnreachable(error));
                }
            };
            let status = response.status();
            inner
                .metrics
                .upstream_requests
                .with_label_values(&[client, status.as_str()])
                .inc();
            if status == StatusCode::UNAUTHORIZED {
                // Tokens can die before expires_in (revocation, HIPAA idle timeout). The
                // slot drops the token and re-mints at most once per interval; a token
                // younger than that makes the client sit out (see token::pacing).
                let tokens = &lease.client.tokens;
                let verdict = tokens.refused(&lease.token, Instant::now());
                debug!(client = %client, ?verdict, "upstream answered 401");
                // A token minted before this request began says nothing about whether the
                // pool can serve it: retry without spending an attempt (once per client).
                let free =
                    lease.token.minted_at < started && !stale_refused.contains(&permit.client);
                if free {
                    stale_refused.push(permit.client);
                    attempt -= 1;
                }
                // A token minted after it began counts as an attempt; the caller sees that
                // 401 only when it was the last one the attempts and the deadline allow.
                if free || (!last && Instant::now() < deadline) {
                    drop((lease, response));
                    continue;
                }
            } else if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                // Answered past authentication: the token works (ends a refusal streak).
                lease.client.tokens.accepted(lease.token.generation);
            }
            match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    lease.client.record_upstream_429();
                    inner
                        .metrics
                        .upstream_429
                        .with_label_values(&[client, exchange.route])
                        .inc();
                    let (mut head, body) = response.into_parts();
                    let body = tokio::time::timeout_at(
                        deadline,
                        Limited::new(body, MAX_ERROR_BODY).collect(),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(http_body_util::Collected::to_bytes)
                    .unwrap_or_default();
                    // The body is now what was read; its length is set anew.
                    head.headers.remove(header::CONTENT_LENGTH);
                    head.headers.remove(header::TRANSFER_ENCODING);
                    let limit = UpstreamLimit::parse(&head.headers, &body);
                    warn!(client = %client, route = exchange.route, retry_after = ?limit.retry_after, limit = ?limit.limit, "upstream answered 429; cooling down");
                    live.admission
                        .upstream_limited(&limit, permit.client, route.id())
                        .await;
                    if !last && Instant::now() < deadline {
                        continue;
                    }
                    let response = Response::from_parts(head, Either::Right(Full::new(body)));
                    return Ok(finish_response(response, client, waited));
                }
                StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
                    if !last && retry::may_retry(&parts.method, Some(status), true) =>
                {
                    debug!(client = %client, %status, "upstream failed transiently; retrying");
                    drop((lease, response));
                    backoff_until(attempt, deadline).await;
                    continue;
                }
                _ => {
                    let (head, body) = response.into_parts();
                    // A body that stalls for a whole request_timeout is cut (the caller
                    // sees an aborted answer, never a hang).
                    let body = body
                        .stall_limit(live.request_timeout)
                        .counted(inner.body_aborts.clone());
                    let response = Response::from_parts(head, Either::Left(body));
                    return Ok(finish_response(response, client, waited));
                }
            }
        }
        Err(Reject::NoHealthyClient)
    }
}

/// Sleeps the backoff of `attempt`, but not past `deadline`.
async fn backoff_until(attempt: u32, deadline: Instant) {
    let until = (Instant::now() + retry::backoff(attempt)).min(deadline);
    tokio::time::sleep_until(until).await;
}

/// Reads the caller's body by `deadline`, refusing it past `max` bytes (also for chunked
/// bodies) and when its bytes would take the bodies in flight past the cap (`memory`:
/// one permit per byte). Bytes are counted as they arrive, so a body that announces
/// 500 KB and stalls holds what it sent, not what it announced. The permit returned holds
/// them until dropped.
async fn read_body(
    headers: &http::HeaderMap,
    mut body: Incoming,
    max: u64,
    deadline: Instant,
    memory: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Reject> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Reject::BodyTooLarge(max));
    }
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Reject::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Reject::BadBody),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len() as u64);
        if total > max {
            return Err(Reject::BodyTooLarge(max));
        }
        let bytes = u32::try_from(data.len()).map_err(|_| Reject::BodyTooLarge(max))?;
        let permit = memory
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| Reject::BodyMemory)?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        chunks.push(data);
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(usize::try_from(total).unwrap_or(0));
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    };
    Ok((body, held))
}

/// The upstream answer as the caller gets it: hop-by-hop headers removed, gcpool's added.
fn finish_response(
    response: Response<ProxyBody>,
    client: &str,
    waited: Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    rewrite::response_headers(&mut parts.headers);
    if let Ok(value) = HeaderValue::from_str(client) {
        parts.headers.insert(CLIENT_HEADER, value);
    }
    parts.headers.insert(
        WAIT_HEADER,
        HeaderValue::from(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX)),
    );
    Response::from_parts(parts, body)
}

/// A bounded label for the method: the standard ones, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

// === impl Exchange ===

impl Exchange {
    fn finish(&self, metrics: &Metrics, status: StatusCode) {
        let outcome = if self.reject.is_some() {
            "rejected"
        } else if self.upstream_error {
            "error"
        } else {
            "forwarded"
        };
        metrics
            .requests
            .with_label_values(&[
                self.route,
                method_label(&self.method),
                status.as_str(),
                outcome,
            ])
            .inc();
        if let Some(reason) = self.reject {
            metrics.rejections.with_label_values(&[reason]).inc();
        }
    }
}
