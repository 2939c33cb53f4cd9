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
use http::header::{AGE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use tokio::time::Instant;

use super::exchange::{CacheResult, Exchange};
use super::rewrite::{self, UpstreamHead};
use super::{CallerRequest, Proxy, ProxyBody, WAIT_HEADER_NAME, finish_response};
use crate::admission::Refusal as Admission;
use crate::cache::{Cache, Entry, Freshness, Key, Lead, Role, RoutePolicy, Waited, storable};
use crate::proxy::Reject;
use crate::upstream::{BodyError, Outcome, UpstreamBody, UpstreamError};

/// Response header on every answer of a cached route: `hit`, `miss`, `coalesced`, `stale`
/// or `bypass`.
pub const CACHE_HEADER: &str = "x-gcpool-cache";
pub(super) const CACHE_HEADER_NAME: HeaderName = HeaderName::from_static(CACHE_HEADER);

/// Whether the caller asked for a fresh answer (`Cache-Control: no-cache`, or
/// `Pragma: no-cache`).
pub(super) fn refresh_asked(headers: &HeaderMap) -> bool {
    let says_no_cache = |name: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            })
        })
    };
    says_no_cache("cache-control") || says_no_cache("pragma")
}

/// A cached route's request: its key, whether it bypasses, and the route's policy.
pub(super) struct Cached {
    pub(super) cache: Arc<Cache>,
    pub(super) policy: RoutePolicy,
    pub(super) key: Key,
    pub(super) refresh: bool,
}

impl Cached {
    /// The cache's part in a request, when its route is cached and its method reads.
    pub(super) fn of(cache: Option<&Arc<Cache>>, caller: &CallerRequest) -> Option<Self> {
        let cache = cache?;
        let policy = cache.policy(caller.route.id()?)?;
        let method = &caller.parts.method;
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let target = caller
            .parts
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes());
        Some(Self {
            cache: cache.clone(),
            policy,
            key: Key::new(method, target, &caller.parts.headers),
            refresh: refresh_asked(&caller.parts.headers),
        })
    }
}

impl Proxy {
    pub(super) async fn forward_cached(
        &self,
        cached: Cached,
        caller: &CallerRequest,
        head: &UpstreamHead,
        started: Instant,
        deadline: Instant,
        exchange: &mut Exchange<'_>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let Cached {
            cache,
            policy,
            key,
            refresh,
        } = cached;
        let kept = cache.store.get(&key);
        self.cache_gauges(&cache);
        if !refresh
            && let Some(entry) = &kept
            && entry.freshness(Instant::now()) == Freshness::Fresh
        {
            exchange.cache = Some(CacheResult::Hit);
            return Ok(entry_response(entry, true));
        }
        let stale = kept.filter(|e| e.freshness(Instant::now()) != Freshness::Expired);
        let stale_or = |exchange: &mut Exchange<'_>, reject: Reject| match &stale {
            Some(entry) => {
                exchange.cache = Some(CacheResult::Stale);
                Ok(entry_response(entry, true))
            }
            None => Err(reject),
        };
        let mut lead = None;
        if !refresh {
            loop {
                match cache.flights.join(&key) {
                    Role::Leader(leader) => {
                        lead = Some(leader);
                        break;
                    }
                    Role::Follower(follow) => {
                        match tokio::time::timeout_at(deadline, follow.wait()).await {
                            Ok(Waited::Answered(entry)) => {
                                exchange.cache = Some(CacheResult::Coalesced);
                                return Ok(entry_response(&entry, false));
                            }
                            Ok(Waited::OnYourOwn) => break,
                            Ok(Waited::LeaderLost) => {}
                            Err(_) => {
                                let waited = Admission::Deadline {
                                    retry_after: std::time::Duration::from_secs(1),
                                    limit: None,
                                };
                                return stale_or(exchange, waited.into());
                            }
                        }
                    }
                }
            }
        }
        exchange.cache = Some(if refresh {
            CacheResult::Bypass
        } else {
            CacheResult::Miss
        });
        let (outcome, served) = match self
            .spend_attempts(caller, head, started, deadline, exchange)
            .await
        {
            Ok(done) => done,
            // A local 429: the last good answer, if the route allows it.
            Err(reject) if reject.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                return stale_or(exchange, reject);
            }
            Err(reject) => return Err(reject),
        };
        let response = match outcome {
            Outcome::Answered(response) if !response.status().is_server_error() => response,
            // An upstream 429 or failure (5xx, no answer): the last good answer, if any.
            // The leader, if any, fails here: a follower takes over.
            Outcome::RateLimited { .. }
            | Outcome::Answered(_)
            | Outcome::Transient(_)
            | Outcome::Failed(_)
                if stale.is_some() =>
            {
                return stale_or(exchange, Reject::UpstreamTimeout);
            }
            outcome => return self.settle(outcome, &served, exchange),
        };
        let (mut parts, body) = response.into_parts();
        rewrite::response_headers(&mut parts.headers);
        let mut body = body
            .stall_limit(served.request_timeout)
            .counted(self.inner.body_aborts.clone());
        let read = read_up_to(&mut body, cache.store.max_entry_bytes).await;
        let bytes = match read {
            Read::Whole(bytes) => bytes,
            Read::Longer(prefix) => {
                if let Some(lead) = lead {
                    lead.decline();
                }
                let response = Response::from_parts(parts, Either::Left(body.with_prefix(prefix)));
                return Ok(finish_response(response, &served.client, exchange.queued()));
            }
            Read::Failed(BodyError::Stalled(_)) => return Err(Reject::UpstreamTimeout),
            Read::Failed(BodyError::Upstream(error)) => {
                return Err(Reject::upstream(UpstreamError::Http(error)));
            }
        };
        self.keep(&cache, policy, key, lead, &parts, &bytes);
        let response = Response::from_parts(parts, Either::Right(Full::new(bytes)));
        Ok(finish_response(response, &served.client, exchange.queued()))
    }

    /// Stores the leader's answer when it may be kept, then hands it to the followers.
    fn keep(
        &self,
        cache: &Cache,
        policy: RoutePolicy,
        key: Key,
        lead: Option<Lead>,
        parts: &http::response::Parts,
        body: &Bytes,
    ) {
        let mut headers = parts.headers.clone();
        // A shared cache never hands one caller's cookie to another.
        headers.remove(SET_COOKIE);
        let entry = Arc::new(Entry {
            status: parts.status,
            headers,
            body: body.clone(),
            stored_at: Instant::now(),
            fresh_for: policy.ttl,
            stale_for: policy.stale_if_limited,
        });
        let may_keep = !policy.ttl.is_zero()
            && storable(
                &key,
                parts.status,
                &parts.headers,
                policy.ignore_upstream_cache_headers,
            )
            .is_ok();
        if may_keep {
            cache.store.put(key, entry.clone());
            self.cache_gauges(cache);
        }
        if let Some(lead) = lead {
            lead.land(entry);
        }
    }

    fn cache_gauges(&self, cache: &Cache) {
        let m = &self.inner.metrics;
        m.cache_entries
            .set(i64::try_from(cache.store.entries()).unwrap_or(i64::MAX));
        m.cache_bytes
            .set(i64::try_from(cache.store.bytes()).unwrap_or(i64::MAX));
    }
}

/// An answer from the store or a flight: its status, headers and body, `Age` on hits and
/// stale answers, and no wait.
fn entry_response(entry: &Entry, with_age: bool) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(entry.body.clone())));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    let headers = response.headers_mut();
    if with_age {
        headers.insert(AGE, HeaderValue::from(entry.age(Instant::now()).as_secs()));
    }
    headers.insert(WAIT_HEADER_NAME, HeaderValue::from_static("0"));
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
