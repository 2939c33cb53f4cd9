//! Config generations: what one config decides for the request path, how it is built, and
//! the one that requests see now.
//!
//! A [`Generation`] is what may change while gcpool runs: the pool of clients, admission
//! (budgets, queue), the caller checks ([`Policy`]: API keys, allowed routes, body limit)
//! and the request deadline. [`Builder::build`] makes every generation, the first at start
//! and each on reload, the same way, reusing what did not change:
//! - a client with the same name and credentials keeps its token, refresher and counters;
//!   one whose `client_id` or secret changed keeps serving with its current token while a
//!   grant with the new credentials runs at once (rejected credentials fail the client, as
//!   at start); a removed client's refresher stops (its requests in flight finish);
//! - budgets keep their ids by name ([`Registry`]), so the store's windows, cool-downs and
//!   learned limits carry over and only the limits change.
//!
//! [`Live`] holds the current generation. A request takes it once for its caller checks
//! and once per admission, so a reload never drops a request in flight: it finishes with
//! the clients and tokens it started with.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::admission::{Admission, BudgetTable, Caller, Permit, Refusal, Registry};
use crate::budget::{BudgetStore, Share};
use crate::cache::Cache;
use crate::config::Config;
use crate::inbound::{BodyMemory, Policy};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolClient};
use crate::routes::RouteId;
use crate::shutdown::Shutdown;
use crate::token::{TokenMetrics, TokenSlot, refresher};
use crate::upstream::Upstream;

/// What one config decides for the request path.
#[derive(Debug)]
pub struct Generation {
    /// 1 at start, +1 per applied reload.
    pub number: u64,
    pub pool: Arc<Pool>,
    pub admission: Arc<Admission>,
    /// Every check on the caller's request.
    pub inbound: Policy,
    pub request_timeout: Duration,
    /// The response cache; `None` when no route is cached.
    pub cache: Option<Arc<Cache>>,
    /// Callers confined to a sub-pool (`clients`), by caller label: the client indices
    /// their requests may use. Empty when no caller is confined.
    pub sub_pools: HashMap<Arc<str>, Arc<[usize]>>,
    /// Callers whose lane fills less than whole budgets (`inbound.lanes`), by caller
    /// label: their share. Empty when every lane fills whole budgets.
    pub shares: HashMap<Arc<str>, Share>,
}

impl Generation {
    /// The share of every budget `caller`'s requests may fill (its lane's).
    pub fn share(&self, caller: &str) -> Share {
        if self.shares.is_empty() {
            return Share::WHOLE;
        }
        self.shares.get(caller).copied().unwrap_or(Share::WHOLE)
    }

    /// Whether `client` may serve `caller` under this config: the caller is known and its
    /// sub-pool, if any, holds the client.
    pub fn serves(&self, caller: &str, client: usize) -> bool {
        self.inbound.knows(caller)
            && self
                .sub_pools
                .get(caller)
                .is_none_or(|clients| clients.contains(&client))
    }
}

/// The current generation, swapped whole by a reload.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Generation>,
}

/// What a generation changed from the one before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Clients whose `client_id` or secret changed.
    pub rotated: Vec<String>,
    /// Budgets whose limit changed, added ones included.
    pub budgets_changed: usize,
}

/// Builds generations; owns the budget ids, the store and the token refreshers of the
/// current clients.
#[derive(Debug)]
pub struct Builder {
    registry: Registry,
    store: Arc<dyn BudgetStore>,
    upstream: Upstream,
    metrics: Metrics,
    shutdown: Shutdown,
    /// Restart-only (`server.max_body_bytes_in_flight`): one for every generation.
    body_memory: BodyMemory,
    /// Stops each current client's refresher, by client name.
    refreshers: HashMap<String, CancellationToken>,
}

// === impl Live ===

impl Live {
    pub fn new(first: Generation) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// The generation new work uses. Cheap (an atomic load and a reference count).
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Makes `next` the generation new work uses.
    pub fn replace(&self, next: Generation) {
        self.current.store(Arc::new(next));
    }

    /// Admits a request for `route` under the current generation (see
    /// [`Admission::admit`]); returns the generation it was admitted under with the permit.
    ///
    /// # Errors
    /// As [`Admission::admit`], and [`Refusal::Reconfigured`] when a reload changed the
    /// budgets the chosen client meets for `route`, or lowered the share of them the
    /// caller's lane may fill, while the request waited (its slot is given back).
    ///
    /// `caller`: the request's caller label, as the generation numbered `checked_under`
    /// knew it; a caller confined to a sub-pool is admitted only on its clients. A caller
    /// that a reload since removed or renamed is admitted nowhere (`NoHealthyClient`): its
    /// rules are gone with its name.
    pub async fn admit(
        &self,
        route: Option<RouteId>,
        deadline: Instant,
        max_wait: Option<Duration>,
        caller: &str,
        checked_under: u64,
    ) -> Result<(Arc<Generation>, Permit), Refusal> {
        let generation = self.current();
        if generation.number != checked_under && !generation.inbound.knows(caller) {
            return Err(Refusal::NoHealthyClient);
        }
        let sub_pool = if generation.sub_pools.is_empty() {
            None
        } else {
            generation.sub_pools.get(caller).cloned()
        };
        let share = generation.share(caller);
        let permit = generation
            .admission
            .admit(
                &generation.pool,
                route,
                deadline,
                max_wait,
                Caller {
                    name: caller,
                    clients: sub_pool.as_deref(),
                    share,
                },
            )
            .await?;
        let now = self.current.load();
        // A reload while it waited: other budgets or limits, a sub-pool without its client,
        // or a smaller share of every budget (its lane's) than its slot was taken under all
        // make it start over under the new config.
        if now.number != generation.number
            && (!generation
                .admission
                .same_budgets(&now.admission, permit.client, route, caller)
                || now.share(caller) < share)
            || !now.serves(caller, permit.client)
        {
            let waited = permit.waited;
            generation.admission.give_back(permit);
            return Err(Refusal::Reconfigured { waited });
        }
        Ok((generation, permit))
    }
}

// === impl Builder ===

impl Builder {
    /// A builder whose budgets `registry` numbered and `store` holds; token refreshers run
    /// on `shutdown`'s tasks and fetch tokens with `upstream`.
    pub fn new(
        config: &Config,
        registry: Registry,
        store: Arc<dyn BudgetStore>,
        upstream: Upstream,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            registry,
            store,
            upstream,
            metrics,
            shutdown,
            body_memory: Policy::body_memory(config),
            refreshers: HashMap::new(),
        }
    }

    /// The budget store every generation admits through.
    pub fn store(&self) -> &Arc<dyn BudgetStore> {
        &self.store
    }

    /// The generation of `config` that follows `previous` (`None`: the first). The store
    /// learns the new budgets before the generation exists, so it can serve at once.
    pub fn build(
        &mut self,
        config: &Config,
        previous: Option<&Generation>,
    ) -> (Generation, ReloadSummary) {
        let table = BudgetTable::build(config, &mut self.registry);
        let budgets_changed = table
            .defs()
            .iter()
            .enumerate()
            .filter(|&(id, def)| {
                previous.and_then(|p| p.admission.table().defs().get(id).map(|d| d.limit))
                    != Some(def.limit)
            })
            .count();
        self.store
            .reconfigure(table.defs(), self.registry.client_names());
        let table = Arc::new(table);
        let admission = Arc::new(match previous {
            Some(previous) => previous.admission.reconfigured(config, table),
            None => Admission::new(config, self.store.clone(), table, self.metrics.clone()),
        });
        self.metrics
            .queue_max_wait
            .set(config.budgets.queue.max_wait.as_secs_f64());
        let (pool, mut summary) = self.pool(config, previous.map(|p| &*p.pool));
        summary.budgets_changed = budgets_changed;
        summary.generation = previous.map_or(1, |p| p.number + 1);
        let generation = Generation {
            number: summary.generation,
            pool,
            admission,
            inbound: Policy::new(config, self.body_memory.clone()),
            sub_pools: self.sub_pools(config),
            shares: shares(config),
            request_timeout: config.server.request_timeout,
            cache: Cache::build(
                &config.cache,
                previous.and_then(|p| p.cache.as_deref()),
                &self.metrics.cache_requests,
            ),
        };
        (generation, summary)
    }

    /// Each confined caller's client indices (see [`Generation::sub_pools`]).
    fn sub_pools(&mut self, config: &Config) -> HashMap<Arc<str>, Arc<[usize]>> {
        config
            .inbound
            .callers()
            .filter(|(_, caller)| !caller.clients.is_empty())
            .map(|(name, caller)| {
                let indices: Vec<usize> = caller
                    .clients
                    .iter()
                    .map(|c| self.registry.client(c))
                    .collect();
                (Arc::from(name), Arc::from(indices))
            })
            .collect()
    }

    /// The pool of `config`'s clients: kept, rotated or new (each new slot with its
    /// refresher started), and the refreshers of clients no longer configured stopped.
    fn pool(&mut self, config: &Config, previous: Option<&Pool>) -> (Arc<Pool>, ReloadSummary) {
        let mut summary = ReloadSummary::default();
        let mut clients = Vec::with_capacity(config.clients.len());
        let mut kept: HashSet<&str> = HashSet::new();
        let remint = config.genesys.token_remint_interval;
        for c in &config.clients {
            let index = self.registry.client(&c.name);
            kept.insert(&c.name);
            let client = match previous.and_then(|p| p.client(index)) {
                Some(old) if old.tokens.has_credentials(&c.client_id, &c.client_secret) => {
                    old.tokens.set_remint_interval(remint);
                    old.clone()
                }
                Some(old) => {
                    let slot = Arc::new(
                        old.tokens
                            .rotated(c.client_id.clone(), c.client_secret.clone()),
                    );
                    slot.set_remint_interval(remint);
                    self.spawn_refresher(&slot, true);
                    summary.rotated.push(c.name.clone());
                    Arc::new(old.with_tokens(slot))
                }
                None => {
                    let slot = Arc::new(TokenSlot::new(
                        c.name.clone(),
                        c.client_id.clone(),
                        c.client_secret.clone(),
                        config.genesys.login_base.clone(),
                        self.upstream.clone(),
                        TokenMetrics {
                            grants: self.metrics.token_refresh.clone(),
                            refused: self.metrics.token_refused.clone(),
                        },
                        remint,
                    ));
                    self.spawn_refresher(&slot, false);
                    if previous.is_some() {
                        summary.added.push(c.name.clone());
                    }
                    Arc::new(PoolClient::new(c.name.clone(), slot))
                }
            };
            clients.push((index, client));
        }
        self.refreshers.retain(|name, stop| {
            let keep = kept.contains(name.as_str());
            if !keep {
                stop.cancel();
                summary.removed.push(name.clone());
            }
            keep
        });
        summary.removed.sort();
        (Arc::new(Pool::with_indices(clients)), summary)
    }

    /// Starts `slot`'s refresher, stopping the one it replaces.
    fn spawn_refresher(&mut self, slot: &Arc<TokenSlot>, grant_now: bool) {
        let stop = self.shutdown.token().child_token();
        if let Some(old) = self.refreshers.insert(slot.name().to_owned(), stop.clone()) {
            old.cancel();
        }
        self.shutdown.spawn(
            refresher::run(slot.clone(), stop, grant_now)
                // Not inside the span of the reload that started it.
                .instrument(info_span!(parent: None, "token_refresh", client = %slot.name())),
        );
    }
}

/// Each caller whose lane fills less than whole budgets, with its share (see
/// [`Generation::shares`]).
fn shares(config: &Config) -> HashMap<Arc<str>, Share> {
    let lanes = &config.inbound.lanes;
    config
        .inbound
        .callers()
        .map(|(name, caller)| (name, Share::from_permille(lanes.permille(caller.lane))))
        .filter(|&(_, share)| share != Share::WHOLE)
        .map(|(name, share)| (Arc::from(name), share))
        .collect()
}
