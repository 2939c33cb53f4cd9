//! The admin listener (never the public one):
//!
//! | path | answer |
//! |---|---|
//! | `GET /` | the status page: HTML of what `/status` says, refreshing itself (see [`page`]) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when a client has a usable token and no shutdown started; else 503 + JSON reason |
//! | `GET /status` | JSON: version, uptime, generation, shared state, clients, budgets, queue, last minute, cache |
//! | `GET /metrics` | Prometheus text exposition |

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::{BudgetId, BudgetKind};
use crate::cache::{Cache, CacheResult};
use crate::generation::Live;
use crate::inbound::Policy;
use crate::metrics::Metrics;
use crate::pool::ClientStatus;
use crate::proxy::{ProxyBody, json_response, whole_body};
use crate::routes::RouteTable;

pub mod page;
pub mod rates;

use rates::{Counts, LastMinute, Rates};

/// State the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    live: Arc<Live>,
    metrics: Metrics,
    shutdown: CancellationToken,
    started: Instant,
    /// Samples of the counters for the last minute's figures (sampled while this lives).
    rates: Arc<Rates>,
}

/// Everything `/status` and the status page show, read at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub version: &'static str,
    pub uptime_s: u64,
    pub config_generation: u64,
    pub shared_state: SharedState,
    pub org_budget: Usage,
    pub queue_pending: usize,
    /// Budget name → rate per minute, lowered by upstream 429s.
    pub learned_limits: BTreeMap<String, u32>,
    pub clients: Vec<ClientStatus>,
    /// Every budget of the current config, with its window's fill.
    pub budgets: Vec<BudgetUse>,
    pub last_minute: LastMinute,
    /// The response cache; `None` when no route is cached.
    pub cache: Option<CacheView>,
    /// Each caller (SPEC §12): the api keys' in config order, then `anonymous` when allowed.
    pub callers: Vec<CallerStatus>,
}

/// One caller: its own rules, and its requests since start (`gcpool_requests_total`,
/// `gcpool_rejections_total` with its `caller` label).
#[derive(Debug, Clone, Serialize)]
pub struct CallerStatus {
    pub name: String,
    /// Its `max_wait`; `None`: `budgets.queue.max_wait`.
    pub max_wait_ms: Option<u64>,
    /// Its own route list; empty: none of its own.
    pub allow_routes: Vec<String>,
    /// Its sub-pool's clients; empty: all of them.
    pub clients: Vec<String>,
    /// Its lane (`realtime`, `standard`, `batch`) and the share of every token, route and
    /// org budget that lane may fill (1.0: all of it).
    pub lane: &'static str,
    pub lane_share: f64,
    /// Its quota (`per_minute`): admissions in the current window, and the limit per window;
    /// `None` without one.
    pub quota: Option<Usage>,
    /// Answered since start, and of those refused by gcpool.
    pub requests: u64,
    pub rejected: u64,
}

/// The response cache: what it holds and how each cached route was answered since start.
#[derive(Debug, Clone, Serialize)]
pub struct CacheView {
    pub entries: u64,
    pub bytes: u64,
    /// Sorted by route.
    pub routes: Vec<CachedRoute>,
}

/// One cached route's answers since start (`gcpool_cache_requests_total`).
#[derive(Debug, Clone, Serialize)]
pub struct CachedRoute {
    /// e.g. `GET /api/v2/routing/queues/{queueId}`.
    pub route: String,
    pub ttl_ms: u64,
    pub hit: u64,
    pub miss: u64,
    pub coalesced: u64,
    pub stale: u64,
    pub bypass: u64,
    /// Answers that needed no upstream call of their own (hits and coalesced) over all;
    /// 0 before the first request.
    pub hit_ratio: f64,
}

/// The budget store in use.
#[derive(Debug, Clone, Serialize)]
pub struct SharedState {
    pub backend: &'static str,
    pub up: bool,
}

/// Admissions in a budget's current window, and its limit per window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub used: u32,
    pub limit: u32,
}

/// One budget's window.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetUse {
    /// e.g. `token:pool-01`, `org`, `endpoint:PUT /api/v2/architect/ivrs/{ivrId}`.
    pub name: String,
    /// `token`, `endpoint` or `org`.
    pub kind: &'static str,
    pub used: u32,
    pub limit: u32,
    /// The window, guard time included.
    pub window_ms: u64,
}

// === impl Admin ===

impl Admin {
    /// Also starts sampling `metrics` for the last minute's figures (until `shutdown`, or
    /// until every clone of this admin is dropped).
    pub fn new(live: Arc<Live>, metrics: Metrics, shutdown: CancellationToken) -> Self {
        let started = Instant::now();
        let rates = Arc::new(Rates::new(started, Counts::read(&metrics)));
        Rates::spawn_sampler(&rates, metrics.clone(), shutdown.clone());
        Self {
            live,
            metrics,
            shutdown,
            started,
            rates,
        }
    }

    pub async fn handle<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": "admin endpoints answer GET only", "code": "method.not.allowed", "status": 405}),
            );
        }
        match request.uri().path() {
            "/" => self.page().await,
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            "/readyz" => self.readyz(),
            "/status" => match serde_json::to_vec(&self.view().await) {
                Ok(body) => body_response(StatusCode::OK, "application/json", body.into()),
                Err(e) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"message": format!("status: {e}"), "code": "internal.server.error", "status": 500}),
                ),
            },
            "/metrics" => {
                self.refresh_gauges().await;
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"message": "admin paths: / /healthz /readyz /status /metrics", "code": "not.found", "status": 404}),
            ),
        }
    }

    /// The status page. Its policy forbids loading anything: the page is all there is.
    async fn page(&self) -> Response<ProxyBody> {
        let html = page::render(&self.view().await);
        let mut response = text(StatusCode::OK, "text/html; charset=utf-8", html);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }

    fn readyz(&self) -> Response<ProxyBody> {
        let (ready, reason) = if self.shutdown.is_cancelled() {
            (false, "shutting down")
        } else if !self.live.current().pool.is_ready(Instant::now()) {
            (false, "no client has a usable token")
        } else {
            (true, "")
        };
        if ready {
            json_response(StatusCode::OK, &json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": reason}),
            )
        }
    }

    /// What `/status` and the page show: one snapshot of the store for every budget.
    async fn view(&self) -> View {
        let live = self.live.current();
        let table = live.admission.table();
        let store = live.admission.store();
        let ids = table.in_use();
        let snapshot = store.snapshot(ids.clone(), live.pool.index_bound()).await;
        let now = Instant::now();
        let usage: HashMap<BudgetId, (u32, u32)> = ids
            .iter()
            .copied()
            .zip(snapshot.usage.iter().copied())
            .collect();
        let clients = live
            .pool
            .clients()
            .map(|(i, c)| {
                let budget = table
                    .token(i)
                    .and_then(|id| usage.get(&id).copied())
                    .unwrap_or_default();
                let cooling = snapshot.cooling.get(i).is_some_and(|d| !d.is_zero());
                c.status(now, budget, cooling)
            })
            .collect();
        let budgets = ids
            .iter()
            .zip(&snapshot.usage)
            .filter_map(|(&id, &(used, limit))| {
                let def = table.defs().get(id)?;
                Some(BudgetUse {
                    name: def.name.clone(),
                    kind: kind_name(def.kind),
                    used,
                    limit,
                    window_ms: u64::try_from(def.window.as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        let (used, limit) = usage.get(&table.org()).copied().unwrap_or_default();
        View {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            config_generation: live.number,
            shared_state: SharedState {
                backend: store.backend(),
                up: store.is_up(),
            },
            org_budget: Usage { used, limit },
            queue_pending: live.admission.pending(),
            learned_limits: live.admission.learned_limits(),
            clients,
            budgets,
            last_minute: self.rates.last_minute(now, Counts::read(&self.metrics)),
            cache: live.cache.as_deref().map(|cache| self.cache_view(cache)),
            callers: self.callers(&live.inbound, |caller| {
                let id = table.caller_budget(caller)?;
                let (used, limit) = usage.get(&id).copied().unwrap_or_default();
                Some(Usage { used, limit })
            }),
        }
    }

    /// Each caller of `inbound`, with its quota's window (`quota`: by caller label).
    fn callers(
        &self,
        inbound: &Policy,
        quota: impl Fn(&str) -> Option<Usage>,
    ) -> Vec<CallerStatus> {
        let requests = per_caller(&self.metrics.requests);
        let rejected = per_caller(&self.metrics.rejections);
        inbound
            .callers()
            .into_iter()
            .map(|c| CallerStatus {
                requests: requests.get(&*c.name).copied().unwrap_or(0),
                rejected: rejected.get(&*c.name).copied().unwrap_or(0),
                name: c.name.to_string(),
                max_wait_ms: c
                    .max_wait
                    .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
                quota: quota(&c.name),
                allow_routes: c.allow_routes,
                clients: c.clients,
                lane: c.lane.name(),
                lane_share: f64::from(c.share_permille) / 1000.0,
            })
            .collect()
    }

    fn cache_view(&self, cache: &Cache) -> CacheView {
        let table = RouteTable::genesys();
        let mut routes: Vec<CachedRoute> = cache
            .routes()
            .map(|(id, policy, counts)| {
                let op = table.operation(id);
                let (hit, miss, coalesced, stale, bypass) = (
                    counts.get(CacheResult::Hit),
                    counts.get(CacheResult::Miss),
                    counts.get(CacheResult::Coalesced),
                    counts.get(CacheResult::Stale),
                    counts.get(CacheResult::Bypass),
                );
                let all = hit + miss + coalesced + stale + bypass;
                CachedRoute {
                    route: op.to_string(),
                    ttl_ms: u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX),
                    hit,
                    miss,
                    coalesced,
                    stale,
                    bypass,
                    hit_ratio: if all == 0 {
                        0.0
                    } else {
                        (hit + coalesced) as f64 / all as f64
                    },
                }
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        cache.store.sync();
        CacheView {
            entries: cache.store.entries(),
            bytes: cache.store.bytes(),
            routes,
        }
    }

    /// Gauges derived from state are computed at scrape time, not on the request path.
    async fn refresh_gauges(&self) {
        let live = self.live.current();
        self.metrics
            .shared_state_up
            .set(i64::from(live.admission.store().is_up()));
        // The cache of the current config (none: 0), expired answers forgotten first.
        let (entries, bytes) = live.cache.as_deref().map_or((0, 0), |cache| {
            cache.store.sync();
            (cache.store.entries(), cache.store.bytes())
        });
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(gauge(entries));
        self.metrics.cache_bytes.set(gauge(bytes));
        let statuses = self.view().await.clients;
        // Only the current clients: a scrape that raced a reload must not bring back the
        // gauges of a removed client.
        for family in [
            &self.metrics.client_healthy,
            &self.metrics.client_budget_limit,
            &self.metrics.client_budget_used,
            &self.metrics.token_expires_in,
        ] {
            family.reset();
        }
        for status in statuses {
            let name = [status.name.as_str()];
            self.metrics
                .client_healthy
                .with_label_values(&name)
                .set(i64::from(status.healthy));
            self.metrics
                .client_budget_limit
                .with_label_values(&name)
                .set(i64::from(status.budget_limit));
            self.metrics
                .client_budget_used
                .with_label_values(&name)
                .set(i64::try_from(status.budget_used).unwrap_or(i64::MAX));
            self.metrics
                .token_expires_in
                .with_label_values(&name)
                .set(i64::try_from(status.token_expires_in_s).unwrap_or(i64::MAX));
        }
    }
}

/// A counter family's sum per `caller` label.
fn per_caller(counters: &prometheus::IntCounterVec) -> BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut sums = BTreeMap::new();
    for family in counters.collect() {
        for m in family.get_metric() {
            if let Some(caller) = m.get_label().iter().find(|l| l.name() == "caller") {
                // Integer counters: exact in f64 up to 2^53.
                *sums.entry(caller.value().to_owned()).or_default() +=
                    m.get_counter().get_value().max(0.0) as u64;
            }
        }
    }
    sums
}

fn kind_name(kind: BudgetKind) -> &'static str {
    match kind {
        BudgetKind::Token => "token",
        BudgetKind::Endpoint => "endpoint",
        BudgetKind::Org => "org",
        BudgetKind::Caller => "caller",
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    body_response(status, content_type, Bytes::from(body))
}

fn body_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ProxyBody> {
    let mut response = Response::new(whole_body(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
