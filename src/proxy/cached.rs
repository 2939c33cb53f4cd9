//! The request path of a cached route (SPEC §11): a fresh answer from the store, else one
//! upstream call per key (coalescing), whose answer is stored when it may be, and a stale
//! answer instead of a 429 or an upstream failure where the route allows it.
//!
//! Runs after the caller's checks, so a cached answer reaches only callers that passed
//! them; a hit spends no budget. The leader reads the answer's body whole (up to the
//! store's largest entry) before answering, so that its followers and the store get it; a
//! longer body is streamed on, its read part first, and the followers call upstream alone.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{AGE, CACHE_CONTROL, PRAGMA, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either};
use tokio::time::Instant;

use std::time::Duration;

use http::StatusCode;

use super::exchange::Exchange;
use super::rewrite;
use super::{
    CallerRequest, Proxy, ProxyBody, Served, WAIT_HEADER_NAME, finish_response, whole_body,
};
use crate::admission::Refusal as Admission;
use crate::budget::Share;
use crate::cache::{
    Cache, CacheResult, Entry, Freshness, Key, Lead, NotStored, ResultCounts, Role, RoutePolicy,
    Waited, storable,
};
use crate::proxy::Reject;
use crate::upstream::{BodyError, Outcome, UpstreamBody, UpstreamError};

/// Response header on every answer of a cached route: `hit`, `miss`, `coalesced`, `stale`
/// or `bypass`.
pub const CACHE_HEADER: &str = "x-gcpool-cache";
pub(super) const CACHE_HEADER_NAME: HeaderName = HeaderName::from_static(CACHE_HEADER);

/// Whether the caller asked for a fresh answer (`Cache-Control: no-cache`, or
/// `Pragma: no-cache`).
pub(super) fn refresh_asked(headers: &HeaderMap) -> bool {
    let says_no_cache = |name: HeaderName| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            })
        })
    };
    says_no_cache(CACHE_CONTROL) || says_no_cache(PRAGMA)
}

/// A cached route's request: its key, whether it bypasses, the route's policy, and the
/// last good answer once [`Cached::before`] looked.
pub(super) struct Cached {
    cache: Arc<Cache>,
    policy: RoutePolicy,
    /// The route's counters, handed to the exchange by [`Cached::before`].
    counts: Option<Arc<ResultCounts>>,
    key: Key,
    refresh: bool,
    /// A kept answer past its `ttl`, within `stale_if_limited`.
    stale: Option<Arc<Entry>>,
    /// A flight this request followed ended with the upstream unable to answer: after a
    /// second such flight it calls upstream on its own rather than queue behind another.
    outage_seen: bool,
    /// The flight this request leads, if it does.
    lead: Option<Lead>,
}

/// Request headers that make an answer about the caller's own copy or a part of the
/// resource (304, 206, 412): such a request neither uses nor feeds the cache.
const CONDITIONAL: [HeaderName; 6] = [
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::IF_RANGE,
    http::header::RANGE,
];

impl Cached {
    /// The cache's part in a request, when its route is cached, its method reads and it
    /// asks for the whole resource unconditionally.
    pub(super) fn of(cache: Option<&Arc<Cache>>, caller: &CallerRequest) -> Option<Box<Self>> {
        let cache = cache?;
        let (policy, counts) = cache.route(caller.route.id()?)?;
        let (method, headers) = (&caller.parts.method, &caller.parts.headers);
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        if CONDITIONAL.iter().any(|name| headers.contains_key(name)) {
            return None;
        }
        let target = caller
            .parts
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes());
        // Boxed, as are the futures of `before` and `after`: the request path's future
        // holds a pointer, not the cache's state, so uncached requests do not copy it.
        Some(Box::new(Self {
            cache: cache.clone(),
            policy,
            counts: Some(counts.clone()),
            key: Key::new(method, target, headers),
            refresh: refresh_asked(headers),
            stale: None,
            outage_seen: false,
            lead: None,
        }))
    }

    /// A fresh answer from the store, or the flight's answer (or a refusal: a follower
    /// past its deadline); `None`: call upstream, as the flight's leader or alone.
    ///
    /// `wait_cap`: the request's own cap on its wait (the caller's `max_wait`,
    /// `x-gcpool-max-wait`): a follower waits for its flight no longer than that either,
    /// since the flight's leader may itself be waiting for a slot. `share`: the caller's
    /// lane's share of every budget (asked only on a miss); it follows no flight of a
    /// lower lane's leader.
    pub(super) async fn before(
        &mut self,
        deadline: Instant,
        wait_cap: Option<Duration>,
        share: impl Fn() -> Share,
        exchange: &mut Exchange<'_>,
    ) -> Option<Result<Response<ProxyBody>, Reject>> {
        let wait_until = wait_cap.map_or(deadline, |cap| deadline.min(Instant::now() + cap));
        exchange.cache_counts = self.counts.take();
        exchange.cache = Some(if self.refresh {
            CacheResult::Bypass
        } else {
            CacheResult::Miss
        });
        loop {
            // Again after a lost leader: its successor may have stored the answer.
            if let Some(hit) = self.look(exchange) {
                return Some(Ok(hit));
            }
            if self.refresh {
                return None;
            }
            match self.cache.flights.join(&self.key, share().permille()) {
                Role::Leader(lead) => {
                    // A flight's leader stores its answer before it leaves the map: a
                    // request that looked before the store and joined after the leave finds
                    // the answer now. Its own flight then fails, and whoever followed it
                    // looks again and finds the answer too.
                    if let Some(hit) = self.look(exchange) {
                        drop(lead);
                        return Some(Ok(hit));
                    }
                    self.lead = Some(lead);
                    return None;
                }
                // A lower lane leads, and may wait for a slot this lane has: upstream, alone
                // (the answer is still stored).
                Role::Alone => return None,
                Role::Follower(follow) => {
                    match tokio::time::timeout_at(wait_until, follow.wait()).await {
                        Ok(Waited::Answered(entry)) => {
                            exchange.cache = Some(CacheResult::Coalesced);
                            return Some(Ok(entry_response(&entry, None)));
                        }
                        Ok(Waited::OnYourOwn) => return None,
                        // An outage: the last good answer at once, rather than each
                        // follower trying upstream in turn.
                        Ok(Waited::Unavailable) if self.stale.is_some() => {
                            return Some(self.stale_or(Reject::UpstreamTimeout, exchange));
                        }
                        // The upstream failed the flight (a 5xx after retries, a 429, no
                        // answer): one of its followers takes over, as when a leader is lost.
                        // If that one fails too, its followers go on their own, all at once:
                        // in an outage no caller waits behind a line of failing calls.
                        Ok(Waited::Unavailable) if self.outage_seen => return None,
                        Ok(Waited::Unavailable) => self.outage_seen = true,
                        Ok(Waited::LeaderLost) => {}
                        Err(_) => {
                            let waited = Admission::Deadline {
                                retry_after: Duration::from_secs(1),
                                limit: None,
                            };
                            return Some(self.instead_of(waited.into(), exchange));
                        }
                    }
                }
            }
        }
    }

    /// The store's answer: a hit when fresh (judged by the current policy) and the caller
    /// did not bypass; else it is remembered as the last good answer when the route allows
    /// stale answers.
    fn look(&mut self, exchange: &mut Exchange<'_>) -> Option<Response<ProxyBody>> {
        let entry = self.cache.store.get(&self.key)?;
        let now = Instant::now();
        match self.policy.freshness(&entry, now) {
            Freshness::Fresh if !self.refresh => {
                exchange.cache = Some(CacheResult::Hit);
                return Some(entry_response(&entry, Some(now)));
            }
            Freshness::Expired => {}
            // A fresh answer too stands in, for a caller who bypassed, when the route
            // allows stale answers at all.
            Freshness::Fresh | Freshness::Stale if !self.policy.stale_if_limited.is_zero() => {
                self.stale = Some(entry);
            }
            Freshness::Fresh | Freshness::Stale => {}
        }
        None
    }

    /// The last good answer instead of a local 429 (the route's `stale_if_limited`), else
    /// the refusal.
    pub(super) fn instead_of(
        &mut self,
        reject: Reject,
        exchange: &mut Exchange<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        if reject.status() != StatusCode::TOO_MANY_REQUESTS {
            return Err(reject);
        }
        self.stale_or(reject, exchange)
    }

    /// The last good answer, telling the flight's followers the upstream could not answer;
    /// else `reject` (and the flight fails: a follower takes over).
    fn stale_or(
        &mut self,
        reject: Reject,
        exchange: &mut Exchange<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let Some(entry) = &self.stale else {
            return Err(reject);
        };
        if let Some(lead) = self.lead.take() {
            lead.unavailable();
        }
        exchange.cache = Some(CacheResult::Stale);
        Ok(entry_response(entry, Some(Instant::now())))
    }

    /// The answer of the last attempt: read whole, kept when it may be and handed to the
    /// followers; or the last good answer instead of an upstream 429 or failure. A flight
    /// whose leader answers otherwise fails here (`lead` dropped): a follower takes over.
    pub(super) async fn after(
        mut self: Box<Self>,
        proxy: &Proxy,
        outcome: Outcome,
        served: &Served,
        exchange: &mut Exchange<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let response = match outcome {
            Outcome::Answered(response) if !response.status().is_server_error() => response,
            // An upstream 429 or failure (5xx, no answer): the last good answer, if any.
            Outcome::RateLimited { .. }
            | Outcome::Answered(_)
            | Outcome::Transient(_)
            | Outcome::Failed(_)
                if self.stale.is_some() =>
            {
                return self.stale_or(Reject::UpstreamTimeout, exchange);
            }
            // The upstream failed: the followers hear so (see `before`).
            outcome @ (Outcome::RateLimited { .. }
            | Outcome::Answered(_)
            | Outcome::Transient(_)
            | Outcome::Failed(_)) => {
                if let Some(lead) = self.lead.take() {
                    lead.unavailable();
                }
                return proxy.settle(outcome, served, exchange);
            }
            // A 401 is the token's, not the upstream's: the flight fails, one takes over.
            outcome => return proxy.settle(outcome, served, exchange),
        };
        let (mut parts, body) = response.into_parts();
        rewrite::response_headers(&mut parts.headers);
        let mut body = body
            .stall_limit(served.request_timeout)
            .counted(proxy.inner.body_aborts.clone());
        let bytes = match read_up_to(&mut body, self.cache.store.max_entry_bytes).await {
            Read::Whole(bytes) => bytes,
            Read::Longer(prefix) => {
                if let Some(lead) = self.lead.take() {
                    lead.decline();
                }
                let rest = Box::new(Prefixed {
                    prefix: Some(prefix),
                    rest: body,
                });
                let response = Response::from_parts(parts, Either::Right(Either::Right(rest)));
                return Ok(finish_response(response, &served.client, exchange.queued()));
            }
            // The body stalled or broke: an upstream failure like a 5xx, so the last good
            // answer stands in where the route allows it, and the followers hear of it.
            Read::Failed(error) => {
                let reject = match error {
                    BodyError::Stalled(_) => Reject::UpstreamTimeout,
                    BodyError::Upstream(error) => Reject::upstream(UpstreamError::Http(error)),
                };
                if self.stale.is_some() {
                    return self.stale_or(reject, exchange);
                }
                if let Some(lead) = self.lead.take() {
                    lead.unavailable();
                }
                return Err(reject);
            }
        };
        let lead = self.lead.take();
        self.keep(lead, &parts, &bytes);
        let response = Response::from_parts(parts, whole_body(bytes));
        Ok(finish_response(response, &served.client, exchange.queued()))
    }

    /// Stores the leader's answer when it may be kept, then hands it to the followers when
    /// it fits them all: not an answer in an encoding some of them may not accept, nor one
    /// about a copy or a part (the requests that ask for those never join a flight, but an
    /// upstream may send them anyway).
    fn keep(&self, lead: Option<Lead>, parts: &http::response::Parts, body: &Bytes) {
        let mut headers = parts.headers.clone();
        // A shared cache never hands one caller's cookie to another.
        headers.remove(SET_COOKIE);
        // Every answer from the entry (hit, coalesced, stale) waited for no slot.
        headers.insert(WAIT_HEADER_NAME, HeaderValue::from_static("0"));
        // Places for the headers each answer from the entry sets, so that setting them
        // replaces a value: a clone of a map has no room, and an insert would grow it
        // (`CACHE=1 bench/instructions.sh`: ~700 instructions per hit).
        // The upstream's own `Age`, if valid, is kept apart (an invalid one is dropped).
        let upstream_age = parts
            .headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        headers.insert(AGE, HeaderValue::from_static("0"));
        headers.insert(CACHE_HEADER_NAME, HeaderValue::from_static("hit"));
        let policy = self.policy;
        let kept_against_headers = policy.ignore_upstream_cache_headers
            && storable(&self.key, parts.status, &parts.headers, false).is_err();
        let entry = Arc::new(Entry {
            status: parts.status,
            headers,
            body: body.clone(),
            stored_at: Instant::now(),
            upstream_age,
            kept_against_headers,
            fresh_for: policy.ttl,
            stale_for: policy.stale_if_limited,
        });
        let verdict = storable(
            &self.key,
            parts.status,
            &parts.headers,
            policy.ignore_upstream_cache_headers,
        );
        if !policy.ttl.is_zero() && verdict.is_ok() {
            self.cache.store.put(self.key.clone(), entry.clone());
        }
        let Some(lead) = lead else {
            return;
        };
        let about_a_copy = matches!(
            parts.status,
            StatusCode::PARTIAL_CONTENT
                | StatusCode::NOT_MODIFIED
                | StatusCode::PRECONDITION_FAILED
        );
        if about_a_copy || verdict == Err(NotStored::Encoding) {
            lead.decline();
        } else {
            lead.land(entry);
        }
    }
}

/// An answer from the store or a flight: its status, headers (`x-gcpool-wait-ms: 0` among
/// them, see [`Cached::keep`]) and body, and `Age` on hits and stale answers.
/// `age_at`: the instant its `Age` is told at; `None` for a flight's answer, which keeps
/// the upstream's `Age` as it came (none if it sent none).
fn entry_response(entry: &Entry, age_at: Option<Instant>) -> Response<ProxyBody> {
    let mut response = Response::new(whole_body(entry.body.clone()));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    let headers = response.headers_mut();
    match (age_at, entry.upstream_age) {
        (Some(now), _) => headers.insert(AGE, HeaderValue::from(entry.age_header_secs(now))),
        (None, Some(age)) => headers.insert(AGE, HeaderValue::from(age.as_secs())),
        (None, None) => headers.remove(AGE),
    };
    response
}

/// A body read up to a limit.
enum Read {
    Whole(Bytes),
    /// Longer than the limit: what was read so far.
    Longer(Bytes),
    Failed(BodyError),
}

async fn read_up_to(body: &mut UpstreamBody, limit: u64) -> Read {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                    if read.len() as u64 > limit && !body.is_end_stream() {
                        return Read::Longer(read.freeze());
                    }
                }
            }
            Err(error) => return Read::Failed(error),
        }
    }
    Read::Whole(read.freeze())
}

/// An upstream body of which the cache read a part (longer than it keeps): that part first,
/// then the rest as it streams.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Option<Bytes>,
    rest: UpstreamBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        if let Some(prefix) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(prefix))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.size_hint();
        let Some(prefix) = &self.prefix else {
            return rest;
        };
        let len = prefix.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(len));
        }
        hint
    }
}
