//! `Proxy::handle`: the request path, in request order.
//!
//! caller checks (`inbound::Policy`: target, key, route, body) → attempts, each an
//! admission (`generation::Live::admit`: client and budgets, fair wait), the request
//! rewritten with that client's token (`rewrite`) and one upstream exchange
//! (`Upstream::attempt`, classified), whose outcome `Attempts` judges: done, or
//! retry (429: cool down and go elsewhere; 401: drop the token; 502/503/504 or a lost
//! connection: back off, idempotent methods only unless the request never left) → the
//! answer. `Exchange` records every fact once, as it happens. Refusals of every layer
//! become answers in one place, [`Reject`]. A gateway login (`inbound::gateway`) is
//! answered right after the caller checks, with the token they minted: no admission, no
//! upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{Either, Full};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::admission::{Permit, Refusal as Admission};
use crate::config::Config;
use crate::generation::{Generation, Live};
use crate::inbound::{CallerRequest, Checked, LOGIN_ROUTE, Login, Refusal};
use crate::metrics::Metrics;
use crate::pool::PoolClient;
use crate::upstream::{BodyAborts, Outcome, Upstream, UpstreamBody};

mod attempts;
mod cached;
mod exchange;
mod reject;
mod rewrite;

use attempts::{Attempts, Verdict};
pub use cached::CACHE_HEADER;
use exchange::Exchange;
pub use reject::{REASON_HEADER, Reject, ceil_secs, json_response};
pub use rewrite::ApiTarget;
use rewrite::UpstreamHead;

/// Response header: the pool client that served the request.
pub const CLIENT_HEADER: &str = "x-gcpool-client";

/// Response header: milliseconds the request waited for admission.
pub const WAIT_HEADER: &str = "x-gcpool-wait-ms";

const CLIENT_HEADER_NAME: HeaderName = HeaderName::from_static(CLIENT_HEADER);
const WAIT_HEADER_NAME: HeaderName = HeaderName::from_static(WAIT_HEADER);

/// Body of every response gcpool sends: streamed from upstream, written by gcpool (or
/// kept by the cache), or the rest of an upstream body behind its part the cache read.
pub type ProxyBody = Either<UpstreamBody, Either<Full<Bytes>, Box<cached::Prefixed>>>;

/// A body gcpool has whole.
pub fn whole_body(bytes: Bytes) -> ProxyBody {
    Either::Right(Either::Left(Full::new(bytes)))
}

/// The request path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    upstream: Upstream,
}

#[derive(Debug)]
struct Inner {
    /// The current config generation (swapped by a reload).
    live: Arc<Live>,
    metrics: Metrics,
    target: ApiTarget,
    /// Counts streamed answers cut midway.
    body_aborts: BodyAborts,
}

/// One admitted attempt: the generation it was admitted under and its permit.
struct Admitted {
    generation: Arc<Generation>,
    permit: Permit,
}

// === impl Proxy ===

impl Proxy {
    pub fn new(config: &Config, live: Arc<Live>, upstream: Upstream, metrics: Metrics) -> Self {
        let api = &config.genesys.api_base;
        let target = ApiTarget::new(
            api.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS),
            api.authority()
                .cloned()
                .expect("config validation guarantees api_base has a host"),
        )
        .expect("an authority is a valid header value");
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
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut exchange = Exchange::new(&self.inner.metrics, request.method());
        // No `async fn` between this and `forward`: each layer would copy the whole future.
        let mut response = match self.forward(request, &mut exchange).await {
            Ok(response) => {
                let outcome = if exchange.own_answer {
                    exchange::Outcome::Answered
                } else {
                    exchange::Outcome::Forwarded
                };
                exchange.answered(response.status(), outcome);
                response
            }
            Err(reject) => {
                let outcome = if reject.is_rejection() {
                    debug!(reason = reject.reason(), "request refused: {reject}");
                    exchange::Outcome::Rejected(reject.reason())
                } else {
                    warn!(error = %reject, source = ?std::error::Error::source(&reject).map(ToString::to_string), "request failed upstream");
                    exchange::Outcome::Error
                };
                let response = reject.into_response();
                exchange.answered(response.status(), outcome);
                response
            }
        };
        if let Some(result) = exchange.cache {
            response.headers_mut().insert(
                cached::CACHE_HEADER_NAME,
                HeaderValue::from_static(result.label()),
            );
            exchange.cached(result);
        }
        response
    }

    /// Checks the caller's request, then spends attempts on it until one yields an answer.
    async fn forward<B>(
        &self,
        request: Request<B>,
        exchange: &mut Exchange<'_>,
    ) -> Result<Response<ProxyBody>, Reject>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let started = Instant::now();
        let generation = self.inner.live.current();
        let deadline = started + generation.request_timeout;
        let checked = generation.inbound.check(request, deadline).await;
        let cache = generation.cache.clone();
        let checked_under = generation.number;
        drop(generation);
        let checked = checked.map_err(|refused| {
            exchange.route = refused.route;
            exchange.caller = refused.caller;
            refused.refusal
        })?;
        let mut caller = match checked {
            Checked::Api(caller) => caller,
            Checked::Login(login) => return Ok(logged_in(login, exchange)),
        };
        exchange.route = caller.route.label();
        exchange.caller = Some(caller.caller.clone());
        // Before the head takes the caller's headers over: the key reads some of them.
        let mut cached = cached::Cached::of(cache.as_ref(), &caller);
        if let Some(cached) = &mut cached {
            // Its lane's share, on a miss: a request follows no flight a lower lane leads.
            let share = || self.inner.live.current().share(&caller.caller);
            if let Some(answer) =
                Box::pin(cached.before(deadline, caller.max_wait, share, exchange)).await
            {
                return answer;
            }
        }
        // After the cache: a hit needs no upstream head. A path refused here was never
        // answered upstream, so no kept answer has its key.
        let head = UpstreamHead::new(&mut caller.parts, &self.inner.target)
            .map_err(|_| Refusal::BadPath)?;
        // The attempts stay in this function's own state: a separate `async fn` for them
        // costs a copy of its future per request (`bench/instructions.sh`: ~800 instructions).
        let mut attempts = Attempts::new(&caller.parts.method, started, deadline);
        let (outcome, served) = loop {
            if !attempts.begin() {
                return Err(Admission::NoHealthyClient.into());
            }
            let (generation, permit) = match self
                .inner
                .live
                .admit(
                    caller.route.id(),
                    deadline,
                    caller.max_wait,
                    &caller.caller,
                    checked_under,
                )
                .await
            {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    if let Admission::ClientLost { waited, .. }
                    | Admission::Reconfigured { waited } = refusal
                    {
                        exchange.admitted(waited);
                    }
                    match attempts.refused(&refusal) {
                        Verdict::Retry { .. } => continue,
                        Verdict::Done => {
                            return match &mut cached {
                                Some(cached) => cached.instead_of(refusal.into(), exchange),
                                None => Err(refusal.into()),
                            };
                        }
                    }
                }
            };
            exchange.admitted(permit.waited);
            let admitted = Admitted { generation, permit };
            let (outcome, served) = self
                .attempt(&caller, &head, admitted, deadline, exchange)
                .await;
            match attempts.judge(outcome.kind(), served.index, served.minted_at) {
                Verdict::Done => break (outcome, served),
                Verdict::Retry { back_off } => {
                    debug!(client = %served.client.name, outcome = ?outcome.kind(), "retrying");
                    drop((outcome, served));
                    if back_off {
                        attempts.back_off().await;
                    }
                }
            }
        };
        match cached {
            None => self.settle(outcome, &served, exchange),
            Some(cached) => Box::pin(cached.after(self, outcome, &served, exchange)).await,
        }
    }
}

/// Who served an attempt.
#[derive(Debug)]
struct Served {
    client: Arc<PoolClient>,
    index: usize,
    minted_at: Instant,
    /// Of the generation the attempt was admitted under.
    request_timeout: Duration,
}

impl Proxy {
    /// Sends the caller's request with the permit's token, and acts on what the upstream
    /// said about the client: a 429 cools down what its limit names, a 401 drops the
    /// token, any other answer below 500 shows the token works.
    async fn attempt(
        &self,
        caller: &CallerRequest,
        head: &UpstreamHead,
        admitted: Admitted,
        deadline: Instant,
        exchange: &mut Exchange<'_>,
    ) -> (Outcome, Served) {
        let Admitted { generation, permit } = admitted;
        let (lease, route) = (&permit.lease, caller.route.id());
        let request = head.request(caller.body.clone(), &lease.token.bearer);
        let sent = Instant::now();
        let outcome = self.upstream.attempt(request, deadline).await;
        exchange.attempted(&lease.client, outcome.status(), sent.elapsed());
        let client = &lease.client;
        match &outcome {
            Outcome::RateLimited { limit, .. } => {
                client.record_upstream_429();
                warn!(client = %client.name, route = exchange.route, retry_after = ?limit.retry_after, limit = ?limit.limit, "upstream answered 429; cooling down");
                generation
                    .admission
                    .upstream_limited(limit, permit.client, route)
                    .await;
            }
            Outcome::Unauthorized(_) => {
                // Tokens can die before expires_in (revocation, HIPAA idle timeout). The
                // slot drops the token and re-mints at most once per interval; a token
                // younger than that makes the client sit out (see token::pacing).
                let verdict = client.tokens.refused(&lease.token, Instant::now());
                debug!(client = %client.name, ?verdict, "upstream answered 401");
            }
            // Answered past authentication: the token works (ends a refusal streak).
            Outcome::Answered(response) if !response.status().is_server_error() => {
                client.tokens.accepted(lease.token.generation);
            }
            Outcome::Answered(_) | Outcome::Transient(_) | Outcome::Failed(_) => {}
        }
        let served = Served {
            client: client.clone(),
            index: permit.client,
            minted_at: lease.token.minted_at,
            request_timeout: generation.request_timeout,
        };
        (outcome, served)
    }

    /// The caller's answer from the last attempt's outcome.
    fn settle(
        &self,
        outcome: Outcome,
        served: &Served,
        exchange: &Exchange<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let response = match outcome {
            Outcome::RateLimited { response, .. } => response.map(whole_body),
            Outcome::Answered(response)
            | Outcome::Unauthorized(response)
            | Outcome::Transient(response) => response.map(|body| {
                // A body that stalls for a whole request_timeout is cut (the caller sees
                // an aborted answer, never a hang).
                Either::Left(
                    body.stall_limit(served.request_timeout)
                        .counted(self.inner.body_aborts.clone()),
                )
            }),
            Outcome::Failed(error) => return Err(Reject::upstream(error)),
        };
        Ok(finish_response(response, &served.client, exchange.queued()))
    }
}

/// The answer to a gateway login: the caller token, shaped as Genesys' login shapes its own
/// (`access_token`, `token_type`, `expires_in`), never cached (RFC 6749 §5.1).
fn logged_in(login: Login, exchange: &mut Exchange<'_>) -> Response<ProxyBody> {
    exchange.route = LOGIN_ROUTE;
    exchange.own_answer = true;
    let body = serde_json::json!({
        "access_token": login.token.access_token.expose(),
        "token_type": "bearer",
        "expires_in": login.token.expires_in,
    });
    exchange.caller = Some(login.caller);
    let mut response = json_response(StatusCode::OK, &body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The upstream answer as the caller gets it: hop-by-hop headers removed, gcpool's added.
fn finish_response(
    mut response: Response<ProxyBody>,
    client: &PoolClient,
    waited: Duration,
) -> Response<ProxyBody> {
    let headers = response.headers_mut();
    rewrite::response_headers(headers);
    if let Some(name) = &client.name_header {
        headers.insert(CLIENT_HEADER_NAME, name.clone());
    }
    let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    let waited = match waited_ms {
        // Most requests wait for nothing: no allocation for them.
        0 => HeaderValue::from_static("0"),
        ms => HeaderValue::from(ms),
    };
    headers.insert(WAIT_HEADER_NAME, waited);
    response
}
