//! Admission: which client serves a request, and when.
//!
//! For every healthy client (fewest in flight first) the budgets that would apply are
//! listed — the org cap, the route's budget, the client's token budget — and the store
//! reserves the soonest instant among them, all budgets at once. The request then waits
//! for that instant (a caller who leaves gives the slot back) or, when it lies past
//! `queue.max_wait` or the deadline, is answered with a local 429 at once.
//!
//! Admission refuses in its own words ([`Refusal`]); the request path turns them into
//! answers. It never retries: a client lost while the request waited is a refusal the
//! request path may spend an attempt on.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::budget::{
    self, AdmitRequest, Binding, BudgetDef, BudgetId, BudgetKind, BudgetStore, Candidate, CoolDown,
    Decision, Reservation, Share, per_window,
};
use crate::config::{BudgetScope, Config};
use crate::metrics::Metrics;
use crate::pool::{Lease, Pool};
use crate::routes::RouteId;
use crate::upstream::{LimitScope, UpstreamLimit};

/// Longest cool-down an upstream 429 sets.
const MAX_COOL_DOWN: Duration = Duration::from_secs(180);

/// Why admission let a request not go now.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no OAuth client of the pool has a usable token")]
    NoHealthyClient,
    #[error("the {} admits no request within the queue's max wait", budget_phrase(*.kind))]
    OverBudget {
        kind: BudgetKind,
        retry_after: Duration,
        limit: Option<LimitInfo>,
    },
    #[error("too many requests are already waiting for a slot")]
    QueueFull,
    #[error("no slot frees up before the request's deadline")]
    Deadline {
        retry_after: Duration,
        limit: Option<LimitInfo>,
    },
    #[error("every client of the pool is cooling down after upstream 429s")]
    AllCoolingDown { retry_after: Duration },
    /// The reserved client lost its token while the request waited (slot given back).
    #[error("the client chosen for the request lost its token while the request waited")]
    ClientLost {
        client: usize,
        /// How long it waited for the slot it gave back.
        waited: Duration,
    },
    /// A reload changed the budgets the request met while it waited (slot given back):
    /// admitted under the old limits, it would not count against the new ones.
    #[error("the budgets changed while the request waited")]
    Reconfigured {
        /// How long it waited for the slot it gave back.
        waited: Duration,
    },
}

/// The gcpool budget named in a local 429's `limit` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The budget's name, e.g. `token:pool-01` or `org`.
    pub key: String,
    /// Its rate per minute.
    pub value: u32,
}

/// Every budget of the config, and which apply to a (client, route).
#[derive(Debug, Clone)]
pub struct BudgetTable {
    defs: Vec<BudgetDef>,
    /// Per-minute rate of each budget (for learned limits given per minute).
    per_minute: Vec<u32>,
    /// By client index (`None`: the client is not in this config).
    token: Vec<Option<BudgetId>>,
    org: BudgetId,
    endpoints: HashMap<RouteId, EndpointBudgets>,
    /// Callers with a quota of their own (`per_minute`), by caller label.
    callers: HashMap<String, BudgetId>,
    window: Duration,
}

#[derive(Debug, Clone)]
enum EndpointBudgets {
    Org(BudgetId),
    /// By client index.
    Token(Vec<Option<BudgetId>>),
}

/// Candidate lists kept between requests, so that building a request's list allocates
/// nothing once the lists have grown to the pool's size.
#[derive(Debug, Default)]
pub struct CandidateLists {
    spare: Mutex<Vec<Vec<Candidate>>>,
}

/// One request's candidates (a slice); the list goes back to its [`CandidateLists`] on drop.
#[derive(Debug)]
pub struct CandidateList<'a> {
    lists: &'a CandidateLists,
    list: Vec<Candidate>,
}

/// Chooses a client and waits for its slot.
#[derive(Debug)]
pub struct Admission {
    store: Arc<dyn BudgetStore>,
    table: Arc<BudgetTable>,
    max_wait: Duration,
    max_pending: usize,
    /// Shared with the admissions of later configs: waiting requests count until they leave.
    pending: Arc<AtomicUsize>,
    /// Shown by `gcpool_queue_pending` (the only metric admission records: it must be live).
    metrics: Metrics,
    /// Shared with the admissions of later configs (learned limits outlive a reload).
    learned: Arc<Mutex<BTreeMap<String, u32>>>,
    candidate_lists: CandidateLists,
}

/// Who asks for admission: its label, its sub-pool if it is confined to one, and the
/// share of every budget its lane may fill.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub name: &'a str,
    pub clients: Option<&'a [usize]>,
    pub share: Share,
}

/// Leave to use one client now, with its token (counted in flight while held).
#[derive(Debug)]
pub struct Permit {
    pub client: usize,
    /// How long admission waited: for the slot, and for a token when none was usable.
    pub waited: Duration,
    pub lease: Lease,
    /// The admission it used, to give back if the request does not go (see
    /// [`Admission::give_back`]).
    reservation: Reservation,
}

/// Gives a reservation back unless the request reached its instant.
struct ReleaseOnDrop<'a> {
    store: &'a dyn BudgetStore,
    reservation: Option<Reservation>,
}

/// Counts a request as waiting in the queue while it lives.
struct Pending<'a> {
    admission: &'a Admission,
}

// === impl Registry ===

/// Stable ids of budgets and clients for the life of the process: a name keeps its id
/// across config reloads, new names get new ids, removed names keep theirs unused. The
/// budget stores index by these ids, so a request admitted under one config and one
/// under the next count against the same windows.
#[derive(Debug, Default)]
pub struct Registry {
    budgets: HashMap<String, BudgetId>,
    defs: Vec<BudgetDef>,
    per_minute: Vec<u32>,
    clients: HashMap<String, usize>,
    client_names: Vec<String>,
}

impl Registry {
    /// The id of budget `name`, now defined as `def` at `per_minute`.
    fn budget(&mut self, def: BudgetDef, per_minute: u32) -> BudgetId {
        if let Some(&id) = self.budgets.get(&def.name) {
            self.defs[id] = def;
            self.per_minute[id] = per_minute;
            return id;
        }
        let id = self.defs.len();
        self.budgets.insert(def.name.clone(), id);
        self.defs.push(def);
        self.per_minute.push(per_minute);
        id
    }

    /// The index of client `name` (its slot in the pool and in the stores' cool-downs).
    pub fn client(&mut self, name: &str) -> usize {
        if let Some(&index) = self.clients.get(name) {
            return index;
        }
        let index = self.client_names.len();
        self.clients.insert(name.to_owned(), index);
        self.client_names.push(name.to_owned());
        index
    }

    /// Every client name ever configured, by index.
    pub fn client_names(&self) -> &[String] {
        &self.client_names
    }
}

// === impl BudgetTable ===

impl BudgetTable {
    /// The budgets of `config` with ids of their own (no reload to come).
    pub fn new(config: &Config) -> Self {
        Self::build(config, &mut Registry::default())
    }

    /// The budgets of `config`, with the ids `registry` gave them under earlier configs.
    pub fn build(config: &Config, registry: &mut Registry) -> Self {
        let budgets = &config.budgets;
        let window = budgets.window;
        let length = window + budgets.guard;
        let keys: Vec<usize> = config
            .clients
            .iter()
            .map(|c| registry.client(&c.name))
            .collect();
        let clients = registry.client_names.len();
        let mut add = |kind, name: String, rate: u32| {
            let def = BudgetDef {
                kind,
                name,
                limit: per_window(rate, window),
                window: length,
            };
            registry.budget(def, rate)
        };
        let by_client = |ids: Vec<BudgetId>| {
            let mut slots = vec![None; clients];
            for (&key, id) in keys.iter().zip(ids) {
                slots[key] = Some(id);
            }
            slots
        };
        let token = by_client(
            config
                .clients
                .iter()
                .map(|c| {
                    add(
                        BudgetKind::Token,
                        format!("token:{}", c.name),
                        c.requests_per_minute.get(),
                    )
                })
                .collect(),
        );
        let org = add(BudgetKind::Org, "org".into(), budgets.org_per_minute.get());
        let mut endpoints = HashMap::new();
        for e in &budgets.endpoints {
            let route = format!("{} {}", e.method, e.path);
            let rate = e.per_minute.get();
            let ids = match e.scope {
                BudgetScope::Org => EndpointBudgets::Org(add(
                    BudgetKind::Endpoint,
                    format!("endpoint:{route}"),
                    rate,
                )),
                BudgetScope::Token => EndpointBudgets::Token(by_client(
                    config
                        .clients
                        .iter()
                        .map(|c| {
                            add(
                                BudgetKind::Endpoint,
                                format!("endpoint:{route}:{}", c.name),
                                rate,
                            )
                        })
                        .collect(),
                )),
            };
            endpoints.insert(e.route, ids);
        }
        let callers = config
            .inbound
            .callers()
            .filter_map(|(name, caller)| {
                let rate = caller.per_minute?.get();
                let id = add(BudgetKind::Caller, format!("caller:{name}"), rate);
                Some((name.to_owned(), id))
            })
            .collect();
        Self {
            defs: registry.defs.clone(),
            per_minute: registry.per_minute.clone(),
            token,
            org,
            endpoints,
            callers,
            window,
        }
    }

    /// The quota of the caller labelled `caller`, if it has one.
    pub fn caller_budget(&self, caller: &str) -> Option<BudgetId> {
        if self.callers.is_empty() {
            return None;
        }
        self.callers.get(caller).copied()
    }

    pub fn defs(&self) -> &[BudgetDef] {
        &self.defs
    }

    /// Budgets that apply when `client` serves `route` for a caller with quota `caller`:
    /// shared ones first.
    pub fn for_client(
        &self,
        client: usize,
        route: Option<RouteId>,
        caller: Option<BudgetId>,
    ) -> Vec<BudgetId> {
        let mut ids = Vec::with_capacity(3);
        let endpoint = route.and_then(|r| self.endpoints.get(&r));
        self.push_budgets(client, endpoint, caller, &mut ids);
        ids
    }

    /// Makes `list` the candidates for `route` on `clients` (in order of preference), each
    /// with the budgets of [`BudgetTable::for_client`], reusing the list's allocations.
    pub fn fill_candidates(
        &self,
        clients: &[usize],
        route: Option<RouteId>,
        caller: Option<BudgetId>,
        list: &mut Vec<Candidate>,
    ) {
        let endpoint = route.and_then(|r| self.endpoints.get(&r));
        list.truncate(clients.len());
        for (i, &client) in clients.iter().enumerate() {
            match list.get_mut(i) {
                Some(candidate) => {
                    candidate.client = client;
                    candidate.budgets.clear();
                    self.push_budgets(client, endpoint, caller, &mut candidate.budgets);
                }
                None => {
                    let mut budgets = Vec::with_capacity(3);
                    self.push_budgets(client, endpoint, caller, &mut budgets);
                    list.push(Candidate { client, budgets });
                }
            }
        }
    }

    /// Appends the budgets that apply when `client` serves a route with budgets `endpoint`
    /// for a caller with quota `caller`: shared ones (the caller's, org, route in org
    /// scope) first.
    fn push_budgets(
        &self,
        client: usize,
        endpoint: Option<&EndpointBudgets>,
        caller: Option<BudgetId>,
        ids: &mut Vec<BudgetId>,
    ) {
        ids.extend(caller);
        ids.push(self.org);
        match endpoint {
            Some(EndpointBudgets::Org(id)) => ids.push(*id),
            Some(EndpointBudgets::Token(per_client)) => {
                ids.extend(per_client.get(client).copied().flatten());
            }
            None => {}
        }
        ids.extend(self.token(client));
    }

    pub fn token(&self, client: usize) -> Option<BudgetId> {
        self.token.get(client).copied().flatten()
    }

    pub fn org(&self) -> BudgetId {
        self.org
    }

    /// The route's budgets (one, or one per client).
    pub fn endpoint(&self, route: RouteId) -> Vec<BudgetId> {
        match self.endpoints.get(&route) {
            Some(EndpointBudgets::Org(id)) => vec![*id],
            Some(EndpointBudgets::Token(ids)) => ids.iter().copied().flatten().collect(),
            None => Vec::new(),
        }
    }

    /// Every budget of this config (not those of clients or routes a reload removed), in
    /// id order.
    pub fn in_use(&self) -> Vec<BudgetId> {
        let mut ids = self.tokens();
        ids.push(self.org);
        ids.extend(self.callers.values());
        for budgets in self.endpoints.values() {
            match budgets {
                EndpointBudgets::Org(id) => ids.push(*id),
                EndpointBudgets::Token(per_client) => ids.extend(per_client.iter().flatten()),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Every token budget of this config.
    pub fn tokens(&self) -> Vec<BudgetId> {
        self.token.iter().copied().flatten().collect()
    }

    /// Admissions per window for a per-minute rate, as the budgets count them.
    pub fn per_window(&self, per_minute: u32) -> u32 {
        per_window(per_minute, self.window)
    }

    pub fn per_minute(&self, budget: BudgetId) -> u32 {
        self.per_minute.get(budget).copied().unwrap_or(0)
    }

    fn limit_info(&self, budget: BudgetId) -> Option<LimitInfo> {
        self.defs.get(budget).map(|d| LimitInfo {
            key: d.name.clone(),
            value: self.per_minute(budget),
        })
    }
}

// === impl CandidateLists ===

impl CandidateLists {
    /// Spare lists kept at most: enough for the requests that await a shared store at once
    /// on a busy replica; more are dropped after use.
    const KEPT: usize = 64;

    /// The candidates for `route` on `clients` (in order of preference), in a spare list.
    pub fn build<'a>(
        &'a self,
        table: &BudgetTable,
        clients: &[usize],
        route: Option<RouteId>,
        caller: Option<BudgetId>,
    ) -> CandidateList<'a> {
        let mut list = self.lock().pop().unwrap_or_default();
        table.fill_candidates(clients, route, caller, &mut list);
        CandidateList { lists: self, list }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Candidate>>> {
        // The spare lists stay usable whatever a panicking holder left: each is refilled.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deref for CandidateList<'_> {
    type Target = [Candidate];

    fn deref(&self) -> &[Candidate] {
        &self.list
    }
}

impl Drop for CandidateList<'_> {
    fn drop(&mut self) {
        let mut spare = self.lists.lock();
        if spare.len() < CandidateLists::KEPT {
            spare.push(std::mem::take(&mut self.list));
        }
    }
}

// === impl Admission ===

impl Admission {
    pub fn new(
        config: &Config,
        store: Arc<dyn BudgetStore>,
        table: Arc<BudgetTable>,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            table,
            max_wait: config.budgets.queue.max_wait,
            max_pending: config.budgets.queue.max_pending,
            pending: Arc::default(),
            metrics,
            learned: Arc::default(),
            candidate_lists: CandidateLists::default(),
        }
    }

    /// The admission of a reloaded config: same store (reconfigured by the caller), same
    /// queue count and learned limits, the new budgets and queue settings.
    pub fn reconfigured(&self, config: &Config, table: Arc<BudgetTable>) -> Self {
        Self {
            store: self.store.clone(),
            table,
            max_wait: config.budgets.queue.max_wait,
            max_pending: config.budgets.queue.max_pending,
            pending: self.pending.clone(),
            metrics: self.metrics.clone(),
            learned: self.learned.clone(),
            candidate_lists: CandidateLists::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn BudgetStore> {
        &self.store
    }

    pub fn table(&self) -> &Arc<BudgetTable> {
        &self.table
    }

    /// Reserves a slot for `route` on the soonest healthy client and waits for it.
    ///
    /// # Errors
    /// A local 429 (`OverBudget`, `QueueFull`, `Deadline`, `AllCoolingDown`) when no slot
    /// comes in time; `NoHealthyClient` when no client has a usable token and none that
    /// re-mints after an upstream 401 gets one within `queue.max_wait` and the deadline;
    /// `ClientLost` when the chosen client lost its token while the request waited.
    ///
    /// `max_wait`: the request's own cap on its wait (`x-gcpool-max-wait`), below
    /// `queue.max_wait`; a slot past it is a local 429 at once, as past the deadline.
    ///
    /// `caller`: who asks; its sub-pool (client indices), if it is confined to one, and its
    /// quota, if it has one, apply.
    pub async fn admit(
        &self,
        pool: &Pool,
        route: Option<RouteId>,
        deadline: Instant,
        max_wait: Option<Duration>,
        caller: Caller<'_>,
    ) -> Result<Permit, Refusal> {
        let max_wait = max_wait.map_or(self.max_wait, |cap| cap.min(self.max_wait));
        // No client with a usable token: wait (queued, within `max_wait` and the deadline)
        // while one whose token the upstream refused re-mints.
        let token_wait_until = (Instant::now() + max_wait).min(deadline);
        let mut token_waited = Duration::ZERO;
        let (client, reservation) = loop {
            match self.reserve(pool, route, deadline, max_wait, caller).await {
                Err(Refusal::NoHealthyClient) => {
                    let _pending = Pending::enter(self);
                    let since = Instant::now();
                    let look_again = pool.wait_for_token(token_wait_until).await;
                    token_waited += since.elapsed();
                    if !look_again {
                        return Err(Refusal::NoHealthyClient);
                    }
                }
                reserved => break reserved?,
            }
        };
        let waited = reservation.wait;
        let mut guard = ReleaseOnDrop {
            store: &*self.store,
            reservation: Some(reservation),
        };
        if !waited.is_zero() {
            let _pending = Pending::enter(self);
            // Measured from now, after the store answered: the wait was computed on the
            // store's clock when it decided, so the request never leaves early (with Redis
            // the round trip would otherwise be taken off the wait).
            // Dropped here (caller gone) → the guard gives the slot back.
            tokio::time::sleep_until(Instant::now() + waited).await;
        }
        // A client whose token died while the request waited gives its slot back (guard).
        let waited = waited + token_waited;
        let lease = pool
            .lease(client, Instant::now())
            .ok_or(Refusal::ClientLost { client, waited })?;
        let reservation = guard
            .reservation
            .take()
            .ok_or(Refusal::ClientLost { client, waited })?;
        Ok(Permit {
            client,
            waited,
            lease,
            reservation,
        })
    }

    /// Reserves the soonest slot, or maps the refusal to the local 429 it means.
    async fn reserve(
        &self,
        pool: &Pool,
        route: Option<RouteId>,
        deadline: Instant,
        max_wait: Duration,
        caller: Caller<'_>,
    ) -> Result<(usize, Reservation), Refusal> {
        let now = Instant::now();
        let mut order = pool.candidates(now);
        if let Some(clients) = caller.clients {
            order.retain(|i| clients.contains(i));
        }
        if order.is_empty() {
            return Err(Refusal::NoHealthyClient);
        }
        // `max_pending` bounds the requests that wait: past it, a request is admitted only
        // if it waits for nothing (a higher lane's headroom, a budget others do not wait
        // on), else refused `queue_full`.
        let queue_full = self.pending.load(Ordering::Relaxed) >= self.max_pending;
        let quota = self.table.caller_budget(caller.name);
        let candidates = self
            .candidate_lists
            .build(&self.table, &order, route, quota);
        let until_deadline = deadline.saturating_duration_since(now);
        let request = AdmitRequest {
            candidates: &candidates,
            route,
            max_wait: if queue_full {
                Duration::ZERO
            } else {
                max_wait.min(until_deadline)
            },
            share: caller.share,
        };
        let decision = self
            .store
            .admit(request)
            .await
            .map_err(|_| Refusal::QueueFull)?;
        let reservation = match decision {
            Decision::Admitted(reservation) => reservation,
            Decision::Refused(refused) if queue_full && refused.wait.is_some() => {
                return Err(Refusal::QueueFull);
            }
            Decision::Refused(mut refused) => {
                if refused.wait.is_none() && refused.binding.is_none() {
                    // Never admitted: name a budget the lane's share leaves nothing of, if
                    // that is why (the stores only say "never").
                    refused.binding = self
                        .emptied_by_share(&candidates, caller.share)
                        .map(Binding::Budget);
                }
                return Err(self.local_429(&refused));
            }
        };
        Ok((candidates[reservation.candidate].client, reservation))
    }

    /// The first budget of `candidates` of which `share` fills nothing (by its configured
    /// limit), if `share` is less than whole.
    fn emptied_by_share(&self, candidates: &[Candidate], share: Share) -> Option<BudgetId> {
        if share == Share::WHOLE {
            return None;
        }
        candidates
            .iter()
            .flat_map(|c| c.budgets.iter().copied())
            .find(|&b| {
                self.table
                    .defs
                    .get(b)
                    .is_some_and(|d| Share::applies_to(d.kind) && share.of(d.limit) == 0)
            })
    }

    /// The local 429 a store's refusal means: `Deadline` when a slot comes within
    /// `max_wait` but after the request's deadline, else the budget (or cool-down) that
    /// binds.
    fn local_429(&self, refused: &budget::Refusal) -> Refusal {
        let retry_after = refused.wait.unwrap_or(Duration::from_secs(60));
        let limit = match refused.binding {
            Some(Binding::Budget(b)) => self.table.limit_info(b),
            _ => None,
        };
        let kind = match refused.binding {
            Some(Binding::Budget(b)) => self.table.defs.get(b).map(|d| d.kind),
            _ => None,
        };
        // A caller's own quota is named as such however soon its next slot comes: the
        // caller spent it, no deadline did.
        if refused.wait.is_some_and(|wait| wait <= self.max_wait)
            && kind != Some(BudgetKind::Caller)
        {
            return Refusal::Deadline { retry_after, limit };
        }
        let over = |kind| Refusal::OverBudget {
            kind,
            retry_after,
            limit: None,
        };
        match refused.binding {
            Some(Binding::Budget(b)) => Refusal::OverBudget {
                kind: self.table.defs[b].kind,
                retry_after,
                limit,
            },
            Some(Binding::RouteCoolDown) => over(BudgetKind::Endpoint),
            Some(Binding::PoolCoolDown) | None => over(BudgetKind::Org),
            Some(Binding::ClientCoolDown) => Refusal::AllCoolingDown { retry_after },
        }
    }

    /// Whether `client` serving `route` meets the same budgets, with the same limits, under
    /// `next` (a reloaded config's admission) as under this one.
    pub fn same_budgets(
        &self,
        next: &Admission,
        client: usize,
        route: Option<RouteId>,
        caller: &str,
    ) -> bool {
        let (now, then) = (
            self.table
                .for_client(client, route, self.table.caller_budget(caller)),
            next.table
                .for_client(client, route, next.table.caller_budget(caller)),
        );
        let limit = |table: &BudgetTable, id: BudgetId| table.defs.get(id).map(|d| d.limit);
        now == then
            && now
                .iter()
                .all(|&id| limit(&self.table, id) == limit(&next.table, id))
    }

    /// Gives a permit's admission back: the request will not be sent with it.
    pub fn give_back(&self, permit: Permit) {
        let Permit {
            reservation, lease, ..
        } = permit;
        drop(lease);
        tokio::spawn(self.store.release(reservation));
    }

    /// Acts on an upstream 429 seen by `client` for `route`: cools down what the limit
    /// names for `Retry-After`, and lowers the matching budgets when the 429 reveals a
    /// lower limit than configured (until restart, reloads included; logged once, shown in
    /// `/status`).
    pub async fn upstream_limited(
        &self,
        limit: &UpstreamLimit,
        client: usize,
        route: Option<RouteId>,
    ) {
        let scope = limit.scope();
        let target = match (scope, route) {
            (LimitScope::Client, _) | (LimitScope::Route, None) => CoolDown::Client(client),
            (LimitScope::Route, Some(route)) => CoolDown::Route(route),
            (LimitScope::Pool, _) => CoolDown::Pool,
        };
        // Daily limits answer with Retry-After of hours; SDKs give up past 180 s. Cool down
        // at most that long and let the next request learn whether it still holds.
        self.store
            .cool_down(target, limit.retry_after.min(MAX_COOL_DOWN))
            .await;
        let Some(value) = limit.limit.as_ref().and_then(|l| l.value) else {
            return;
        };
        let per_minute = u32::try_from(value).unwrap_or(u32::MAX);
        let budgets = match (scope, route) {
            (LimitScope::Client, _) => self.table.tokens(),
            (LimitScope::Route, Some(route)) => self.table.endpoint(route),
            // A service limit (e.g. `directory` / `user.rate.per.minute`) covers only that
            // service's routes, not the org budget: cool the pool down, learn nothing.
            (LimitScope::Route, None) | (LimitScope::Pool, _) => Vec::new(),
        };
        let per_window = self.table.per_window(per_minute);
        for budget in budgets {
            if per_minute < self.table.per_minute(budget)
                && self.store.lower_limit(budget, per_window).await
            {
                let name = &self.table.defs()[budget].name;
                warn!(budget = %name, per_minute, "upstream 429 revealed a lower limit; budget lowered until restart");
                self.learned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.clone(), per_minute);
            }
        }
    }

    /// Budgets lowered by upstream 429s: name → per-minute rate.
    pub fn learned_limits(&self) -> BTreeMap<String, u32> {
        self.learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `(used, limit)` of the token budget of each of `pool`'s clients (in
    /// [`Pool::clients`] order) and of the org budget, and how long each client index
    /// still cools down.
    pub async fn snapshot(&self, pool: &Pool) -> (Vec<(u32, u32)>, (u32, u32), Vec<Duration>) {
        let ids: Vec<Option<BudgetId>> = pool.clients().map(|(i, _)| self.table.token(i)).collect();
        let mut budgets: Vec<BudgetId> = ids.iter().flatten().copied().collect();
        budgets.push(self.table.org());
        let snapshot = self.store.snapshot(budgets, pool.index_bound()).await;
        let mut usage = snapshot.usage.into_iter();
        let per_client = ids
            .iter()
            .map(|id| id.and_then(|_| usage.next()).unwrap_or_default())
            .collect();
        let org = usage.next().unwrap_or_default();
        (per_client, org, snapshot.cooling)
    }

    /// Requests waiting for their slot now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

fn budget_phrase(kind: BudgetKind) -> &'static str {
    match kind {
        BudgetKind::Token => "token budget of every client",
        BudgetKind::Endpoint => "route's budget",
        BudgetKind::Org => "org budget",
        BudgetKind::Caller => "caller's budget",
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            // In memory this is done at once; the Redis store needs its round trip.
            tokio::spawn(self.store.release(reservation));
        }
    }
}

impl<'a> Pending<'a> {
    fn enter(admission: &'a Admission) -> Self {
        admission.pending.fetch_add(1, Ordering::Relaxed);
        admission.metrics.queue_pending.inc();
        Self { admission }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.admission.pending.fetch_sub(1, Ordering::Relaxed);
        self.admission.metrics.queue_pending.dec();
    }
}
