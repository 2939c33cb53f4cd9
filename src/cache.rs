//! The response cache (SPEC §11): what a cached answer is keyed by ([`Key`]), which answers
//! may be kept ([`storable`]), the bounded store ([`Store`]) and the coalescing of
//! concurrent identical requests ([`Flights`]).
//!
//! No HTTP client and no budgets: the request path (`proxy::cached`) asks and decides.
//!
//! The store is moka's (`moka::sync::Cache`): size-aware eviction by TinyLFU (it keeps the
//! entries asked for most, "the least valuable first" out), an expiry per entry, and
//! eviction callbacks that keep the byte count exact. Both bounds hold at once through the
//! weight: an entry weighs its bytes, but at least `max_bytes / max_entries`, so a full
//! store of small entries holds `max_entries` of them and one of large entries
//! `max_bytes` of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use prometheus::{IntCounter, IntCounterVec};

use crate::config::CacheConfig;
use crate::routes::{RouteId, RouteTable};

mod flight;
mod key;

pub use flight::{Flights, Follow, Lead, Role, Waited};
pub use key::Key;

/// The cache of one config generation: which routes are cached and how, over a store and
/// flights that a reload keeps while the bounds stay the same.
#[derive(Debug)]
pub struct Cache {
    routes: HashMap<RouteId, CachedRoute, foldhash::fast::RandomState>,
    pub store: Arc<Store>,
    pub flights: Arc<Flights>,
    bounds: (u64, u64),
}

/// One cached route: how, and what the cache did for its requests so far.
#[derive(Debug)]
struct CachedRoute {
    policy: RoutePolicy,
    results: Arc<ResultCounts>,
}

/// What the cache did for a request of a cached route (`x-gcpool-cache`,
/// `gcpool_cache_requests_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Coalesced,
    Stale,
    Bypass,
}

impl CacheResult {
    pub const ALL: [Self; 5] = [
        Self::Hit,
        Self::Miss,
        Self::Coalesced,
        Self::Stale,
        Self::Bypass,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
        }
    }
}

/// One route's `gcpool_cache_requests_total` counters, one per result, looked up once when
/// the cache is built rather than by label on every request.
#[derive(Debug)]
pub struct ResultCounts([IntCounter; 5]);

impl ResultCounts {
    fn new(counters: &IntCounterVec, route: &str) -> Self {
        Self(CacheResult::ALL.map(|r| counters.with_label_values(&[route, r.label()])))
    }

    pub fn add(&self, result: CacheResult) {
        self.0[result as usize].inc();
    }

    /// Requests with `result` since start (the counter survives reloads).
    pub fn get(&self, result: CacheResult) -> u64 {
        self.0[result as usize].get()
    }
}

/// How one route is cached (`cache.routes[i]`).
#[derive(Debug, Clone, Copy)]
pub struct RoutePolicy {
    pub ttl: Duration,
    pub stale_if_limited: Duration,
    pub ignore_upstream_cache_headers: bool,
}

impl RoutePolicy {
    /// How usable `entry` is at `now` under this policy (the current config's, which a
    /// reload may have changed since the entry was kept).
    pub fn freshness(&self, entry: &Entry, now: Instant) -> Freshness {
        if entry.kept_against_headers && !self.ignore_upstream_cache_headers {
            return Freshness::Expired;
        }
        let age = entry.age(now);
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl.saturating_add(self.stale_if_limited) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }
}

impl Cache {
    /// The cache `config` describes, `None` without routes. With `previous` of the same
    /// bounds, its store and flights go on (a reload does not empty the cache). Each
    /// route counts its requests in `counters` (`gcpool_cache_requests_total`).
    pub fn build(
        config: &CacheConfig,
        previous: Option<&Cache>,
        counters: &IntCounterVec,
    ) -> Option<Arc<Self>> {
        if config.routes.is_empty() {
            return None;
        }
        let bounds = (config.max_entries, config.max_bytes);
        let (store, flights) = match previous {
            Some(p) if p.bounds == bounds => (p.store.clone(), p.flights.clone()),
            _ => (
                Arc::new(Store::new(config.max_entries, config.max_bytes)),
                Flights::new(),
            ),
        };
        let table = RouteTable::genesys();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let policy = RoutePolicy {
                    ttl: r.ttl,
                    stale_if_limited: r.stale_if_limited,
                    ignore_upstream_cache_headers: r.ignore_upstream_cache_headers,
                };
                let template = table.operation(r.route).template();
                let results = Arc::new(ResultCounts::new(counters, template));
                (r.route, CachedRoute { policy, results })
            })
            .collect();
        Some(Arc::new(Self {
            routes,
            store,
            flights,
            bounds,
        }))
    }

    /// How `route` is cached, if it is, and its counters.
    pub fn route(&self, route: RouteId) -> Option<(RoutePolicy, &Arc<ResultCounts>)> {
        self.routes.get(&route).map(|r| (r.policy, &r.results))
    }

    /// How `route` is cached, if it is.
    pub fn policy(&self, route: RouteId) -> Option<RoutePolicy> {
        self.routes.get(&route).map(|r| r.policy)
    }

    /// Every cached route, in no particular order, with its counts.
    pub fn routes(&self) -> impl Iterator<Item = (RouteId, RoutePolicy, &ResultCounts)> + '_ {
        self.routes
            .iter()
            .map(|(&id, route)| (id, route.policy, &*route.results))
    }
}

/// An answer, as the cache keeps it and as a flight hands it to the requests that waited.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the answer arrived.
    pub stored_at: Instant,
    /// The `Age` the upstream gave it, if a valid one: a hit's `Age` adds its time here
    /// (RFC 9111 §4.2.3), a flight's answer keeps it as it came.
    pub upstream_age: Option<Duration>,
    /// Kept only because the route ignored the upstream's cache headers (`Set-Cookie`,
    /// `Cache-Control: private`/`no-store`, `Vary`): a policy that no longer does so after a
    /// reload does not serve it.
    pub kept_against_headers: bool,
    /// How long it is fresh (the route's `ttl`), and after that how long it may still be
    /// served instead of a 429 or an upstream failure (`stale_if_limited`).
    pub fresh_for: Duration,
    pub stale_for: Duration,
}

/// How usable an entry is at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past its `ttl`, within `stale_if_limited`.
    Stale,
    Expired,
}

impl Entry {
    /// Seconds since the answer arrived (`Age`), or zero for an instant before it.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// The `Age` to tell at `now`, in seconds: the upstream's, plus the time since it
    /// arrived, at most 2^31 (RFC 9111 §1.2.2).
    pub fn age_header_secs(&self, now: Instant) -> u64 {
        let age = self.upstream_age.unwrap_or_default() + self.age(now);
        age.as_secs().min(1 << 31)
    }

    /// Bytes it holds, for `max_bytes`: the body and the header names and values.
    pub fn bytes(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        (self.body.len() + headers) as u64
    }
}

/// Why an answer is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    #[error("only 200 answers are stored")]
    Status,
    #[error("the answer sets a cookie")]
    SetsCookie,
    #[error("upstream said Cache-Control: private or no-store")]
    Private,
    #[error("the answer varies on a header the key does not hold")]
    Varies,
    #[error("the answer's Content-Encoding is one the key does not tell apart")]
    Encoding,
}

/// Whether an answer may be kept for a request with `key` (SPEC §11). With
/// `ignore_upstream_cache_headers` (the operator's decision, per route) `Set-Cookie`,
/// `Cache-Control` and `Vary` are not looked at. An answer encoded other than gzip, or
/// gzip for a caller that does not accept it, is never kept.
pub fn storable(
    key: &Key,
    status: StatusCode,
    headers: &HeaderMap,
    ignore_upstream_cache_headers: bool,
) -> Result<(), NotStored> {
    if status != StatusCode::OK {
        return Err(NotStored::Status);
    }
    // Every coding on every `Content-Encoding` line: identity, or one gzip for a key that
    // accepts gzip.
    let mut gzips = 0;
    for coding in directives(headers, &CONTENT_ENCODING) {
        if coding.eq_ignore_ascii_case("gzip") {
            gzips += 1;
        } else if !coding.eq_ignore_ascii_case("identity") {
            return Err(NotStored::Encoding);
        }
    }
    if gzips > 1 || (gzips == 1 && !key.accepts_gzip()) {
        return Err(NotStored::Encoding);
    }
    if ignore_upstream_cache_headers {
        return Ok(());
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetsCookie);
    }
    let private = directives(headers, &CACHE_CONTROL)
        .any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"));
    if private {
        return Err(NotStored::Private);
    }
    let unknown_vary = directives(headers, &VARY).any(|name| {
        !["accept", "accept-language", "accept-encoding"]
            .iter()
            .any(|known| name.eq_ignore_ascii_case(known))
    });
    if unknown_vary {
        return Err(NotStored::Varies);
    }
    Ok(())
}

/// The comma-separated items of every `name` header, each up to its `=` and trimmed. A
/// value that is not text reads as `no-store`, which keeps the answer out either way (as a
/// `Cache-Control` directive, or as an unknown `Content-Encoding`).
fn directives<'a>(
    headers: &'a HeaderMap,
    name: &'a http::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("no-store").split(','))
        .map(|item| item.split('=').next().unwrap_or_default().trim())
        .filter(|item| !item.is_empty())
}

/// The bounded store of answers.
pub struct Store {
    entries: moka::sync::Cache<Key, Arc<Entry>, foldhash::fast::RandomState>,
    /// Bytes of keys and entries held, kept by the insert and eviction callbacks.
    bytes: Arc<AtomicU64>,
    /// The largest entry kept: a sixteenth of `max_bytes`.
    pub max_entry_bytes: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// An entry's expiry: fresh plus stale time from when it was stored, again on replacement.
/// moka keeps its own clock (real time); whether an entry is fresh or stale is
/// [`Entry::freshness`]'s answer, on tokio's clock.
struct Expiry;

#[allow(
    clippy::disallowed_types,
    reason = "moka's Expiry trait names std's Instant; the instants are not used"
)]
impl moka::Expiry<Key, Arc<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.fresh_for.saturating_add(entry.stale_for))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.fresh_for.saturating_add(entry.stale_for))
    }
}

fn held(key: &Key, entry: &Entry) -> u64 {
    key.len() as u64 + entry.bytes()
}

impl Store {
    /// A store of at most `max_entries` entries and `max_bytes` bytes of keys and entries
    /// (both at least 1).
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(1);
        let floor = max_bytes.div_ceil(max_entries);
        // moka's weights are u32: above 4 GiB they count in units of several bytes, so that
        // no weight (at most `max_bytes` units' worth) is clipped. Weights round up and the
        // capacity down, so both bounds still hold.
        let unit = max_bytes.div_ceil(u64::from(u32::MAX)).max(1);
        let bytes = Arc::new(AtomicU64::new(0));
        let evicted = bytes.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes / unit)
            .weigher(move |key: &Key, entry: &Arc<Entry>| {
                let weight = held(key, entry).max(floor).div_ceil(unit);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(Expiry)
            .eviction_listener(move |key: Arc<Key>, entry: Arc<Entry>, _cause| {
                evicted.fetch_sub(held(&key, &entry), Ordering::Relaxed);
            })
            // foldhash: randomly seeded like std's SipHash (keys are callers' paths), and
            // cheaper per lookup (`CACHE=1 bench/instructions.sh`).
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            entries,
            bytes,
            max_entry_bytes: (max_bytes / 16).max(1),
        }
    }

    /// The entry for `key`, fresh or stale; `None` once expired.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    /// Keeps `entry` under `key`, replacing what was there; `false` when it is too large to
    /// keep (over a sixteenth of `max_bytes`). The bounds hold when this returns.
    pub fn put(&self, key: Key, entry: Arc<Entry>) -> bool {
        let size = held(&key, &entry);
        if size > self.max_entry_bytes {
            return false;
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.entries.insert(key, entry);
        // Eviction runs now, not at some later call: the bounds are what the config says
        // after every insert. Inserts follow upstream calls, so this is never the hot path.
        self.entries.run_pending_tasks();
        true
    }

    /// Forgets `key`'s entry.
    pub fn remove(&self, key: &Key) {
        self.entries.invalidate(key);
        self.entries.run_pending_tasks();
    }

    /// Entries held (`gcpool_cache_entries`).
    pub fn entries(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes of keys and entries held (`gcpool_cache_bytes`).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Forgets expired entries now (moka does as it is used): before the counts are read
    /// for a scrape.
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;
