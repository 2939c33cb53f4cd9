//! Hot reload: the configuration requests see now, and how a new one replaces it.
//!
//! A [`Generation`] is what a config decides that may change while gcpool runs: the pool
//! of clients, admission (budgets, queue), who may call (API keys, allowed routes), the
//! body limit and the request deadline. [`Live`] holds the current one. A request takes it
//! once for its inbound checks and once per upstream attempt for admission, so a reload
//! never drops a request in flight: it finishes with the clients and tokens it started with.
//!
//! [`Reloader::apply`] builds the next generation from a new config, reusing what did not
//! change, and swaps it in:
//! - a client with the same name and credentials keeps its token, refresher and counters;
//!   one whose `client_id` or secret changed keeps serving with its current token while a
//!   grant with the new credentials runs at once (rejected credentials fail the client, as
//!   at start); a removed client's refresher stops (its requests in flight finish);
//! - budgets keep their ids by name ([`Registry`]), so the store's windows, cool-downs and
//!   learned limits carry over and only the limits change.
//!
//! A config that fails validation, or changes a key only a restart can apply (listeners,
//! TLS files, limits of the connection layer, Genesys hosts, shared state, budget window),
//! is rejected with the reason logged and counted, and the current generation stays.
//! [`Reloader::watch`] applies the config file on SIGHUP and when it, or a `*_file` it
//! names, changes (polled every [`POLL_INTERVAL`]; a change is read once two polls agree,
//! so a file is not read half-written).
//!
//! Not carried over: changing an endpoint budget's `scope` (org ↔ token) changes its
//! budgets' names, so they start with empty windows, as after a restart.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::admission::{Admission, BudgetTable, Registry};
use crate::budget::BudgetStore;
use crate::config::{Config, ConfigErrors, ProcessEnv};
use crate::inbound::Authenticator;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolClient};
use crate::routes::RouteId;
use crate::shutdown::{Hangup, Shutdown, watch_reloads};
use crate::token::{TokenMetrics, TokenSlot, refresher};
use crate::upstream::Upstream;

/// How often the config file and its secret files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What one config decides for the request path.
#[derive(Debug)]
pub struct Generation {
    /// 1 at start, +1 per applied reload.
    pub number: u64,
    pub pool: Arc<Pool>,
    pub admission: Arc<Admission>,
    pub auth: Authenticator,
    /// `None`: every route; else only these.
    pub allow_routes: Option<HashSet<RouteId>>,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
}

/// The current generation, swapped whole by a reload.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Generation>,
}

/// Why a new config was not applied (the current one stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{path} is not a valid gcpool config:\n{errors}")]
    Invalid { path: String, errors: ConfigErrors },
    #[error("{} cannot change while gcpool runs; restart to apply", .0.join(", "))]
    RestartNeeded(Vec<&'static str>),
    #[error("gcpool was started without a config file; nothing to re-read")]
    NoFile,
}

/// What an applied reload changed.
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

/// Applies new configs; owns the token refreshers of the current clients.
#[derive(Debug)]
pub struct Reloader {
    live: Arc<Live>,
    /// `None` when started from a config built in memory (tests).
    path: Option<PathBuf>,
    store: Arc<dyn BudgetStore>,
    metrics: Metrics,
    builder: PoolBuilder,
    state: Mutex<State>,
}

/// Builds a config's pool: keeps, rotates or creates clients and runs their refreshers.
#[derive(Debug)]
struct PoolBuilder {
    upstream: Upstream,
    metrics: Metrics,
    shutdown: Shutdown,
}

#[derive(Debug)]
struct State {
    config: Config,
    registry: Registry,
    /// Stops each current client's refresher, by client name.
    refreshers: HashMap<String, CancellationToken>,
    /// The watched files as they were just before they were last read.
    stamps: Vec<Stamp>,
    /// Changed stamps seen by the last poll: applied once a poll sees them again (so a
    /// file caught half-written is read only once the writer is done).
    settling: Option<Vec<Stamp>>,
}

/// A file's modification time and length (`None`: unreadable).
type Stamp = (PathBuf, Option<(SystemTime, u64)>);

// === impl Live ===

impl Live {
    /// The generation new work uses. Cheap (an atomic load and a reference count).
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }
}

// === impl Reloader ===

impl Reloader {
    /// Builds generation 1 from `config`, whose budgets `registry` numbered into `table`
    /// and `store` holds, and starts a token refresher per client.
    pub fn start(
        config: Config,
        mut registry: Registry,
        table: BudgetTable,
        store: Arc<dyn BudgetStore>,
        upstream: Upstream,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        let admission = Arc::new(Admission::new(
            &config,
            store.clone(),
            Arc::new(table),
            metrics.clone(),
        ));
        let builder = PoolBuilder {
            upstream,
            metrics: metrics.clone(),
            shutdown,
        };
        let mut refreshers = HashMap::new();
        let (pool, _) = builder.pool(&config, &mut registry, None, &mut refreshers);
        let first = Generation::new(1, &config, pool, admission);
        Arc::new(Self {
            live: Arc::new(Live {
                current: ArcSwap::from_pointee(first),
            }),
            path: config.source.clone(),
            store,
            metrics,
            builder,
            state: Mutex::new(State {
                stamps: stamps(&watched(config.source.as_ref(), &config)),
                config,
                registry,
                refreshers,
                settling: None,
            }),
        })
    }

    /// The current generation's holder, for the request path and the admin listener.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Re-reads the config file and applies it.
    ///
    /// # Errors
    /// As [`Reloader::apply`]; [`ReloadError::Invalid`] when the file does not validate.
    pub fn reload_file(&self) -> Result<ReloadSummary, ReloadError> {
        let Some(path) = &self.path else {
            return Err(self.rejected(ReloadError::NoFile));
        };
        // Stamped before reading: a write landing during the read changes the files again
        // and the next poll reads them once more.
        let before = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let paths: Vec<PathBuf> = state.stamps.iter().map(|(p, _)| p.clone()).collect();
            stamps(&paths)
        };
        match Config::load(path, &ProcessEnv) {
            Ok(config) => self.apply_read(config, Some(before)),
            Err(errors) => {
                // Reported once per change of the files, not at every poll.
                self.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stamps = before;
                Err(self.rejected(ReloadError::Invalid {
                    path: path.display().to_string(),
                    errors,
                }))
            }
        }
    }

    /// Applies `config`: builds the next generation and swaps it in. Requests in flight
    /// finish under the generation they started with.
    ///
    /// # Errors
    /// [`ReloadError::RestartNeeded`] when `config` changes a key only a restart applies;
    /// nothing changes then.
    pub fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        self.apply_read(config, None)
    }

    /// [`Reloader::apply`] of a config read from files whose stamps were `before` just
    /// before the read.
    fn apply_read(
        &self,
        config: Config,
        before: Option<Vec<Stamp>>,
    ) -> Result<ReloadSummary, ReloadError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let fixed = restart_needed(&state.config, &config);
        if !fixed.is_empty() {
            if let Some(before) = before {
                state.stamps = before;
            }
            return Err(self.rejected(ReloadError::RestartNeeded(fixed)));
        }
        let state = &mut *state;
        let current = self.live.current();
        let old_limits: Vec<u32> = current
            .admission
            .table()
            .defs()
            .iter()
            .map(|d| d.limit)
            .collect();
        let table = BudgetTable::build(&config, &mut state.registry);
        let budgets_changed = table
            .defs()
            .iter()
            .enumerate()
            .filter(|(id, def)| old_limits.get(*id) != Some(&def.limit))
            .count();
        // The store first: the new generation's budget ids must exist before it serves.
        self.store
            .reconfigure(table.defs(), state.registry.client_names());
        let admission = Arc::new(current.admission.reconfigured(&config, Arc::new(table)));
        let (pool, mut summary) = self.builder.pool(
            &config,
            &mut state.registry,
            Some(&current.pool),
            &mut state.refreshers,
        );
        summary.budgets_changed = budgets_changed;
        summary.generation = current.number + 1;
        self.live.current.store(Arc::new(Generation::new(
            summary.generation,
            &config,
            pool,
            admission,
        )));
        for name in &summary.removed {
            self.metrics.forget_client(name);
        }
        let mut now = stamps(&watched(self.path.as_ref(), &config));
        for (path, stamp) in &mut now {
            if let Some((_, earlier)) = before.iter().flatten().find(|(p, _)| p == path) {
                *stamp = *earlier;
            }
        }
        state.stamps = now;
        for warning in &config.warnings {
            warn!("{warning}");
        }
        state.config = config;
        self.metrics
            .config_reloads
            .with_label_values(&["applied"])
            .inc();
        self.metrics.config_last_reload_successful.set(1);
        info!(
            generation = summary.generation,
            clients = state.config.clients.len(),
            added = ?summary.added,
            removed = ?summary.removed,
            rotated = ?summary.rotated,
            budgets_changed = summary.budgets_changed,
            "config reloaded"
        );
        Ok(summary)
    }

    /// Applies the config file on SIGHUP and when a watched file changes, until `stop`.
    /// SIGHUP is caught from this call on (before, it would end the process); call it
    /// inside the runtime.
    pub fn watch(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let hangup = self
            .path
            .is_some()
            .then(|| Hangup::new("config reload on file change only"));
        async move {
            let Some(hangup) = hangup else {
                return;
            };
            let reloader = &self;
            watch_reloads(
                hangup,
                POLL_INTERVAL,
                stop,
                "config",
                || reloader.changed(),
                || {
                    let _ = reloader.reload_file();
                },
            )
            .await;
        }
    }

    /// Whether a watched file differs from when it was last read, the same way for two
    /// polls in a row.
    fn changed(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let paths: Vec<PathBuf> = state.stamps.iter().map(|(p, _)| p.clone()).collect();
        let now = stamps(&paths);
        if now == state.stamps {
            state.settling = None;
            return false;
        }
        if state.settling.as_ref() == Some(&now) {
            state.settling = None;
            return true;
        }
        state.settling = Some(now);
        false
    }

    /// Counts and logs a rejected reload.
    fn rejected(&self, error: ReloadError) -> ReloadError {
        self.metrics
            .config_reloads
            .with_label_values(&["rejected"])
            .inc();
        self.metrics.config_last_reload_successful.set(0);
        warn!("config reload rejected; keeping the current config: {error}");
        error
    }
}

// === impl PoolBuilder ===

impl PoolBuilder {
    /// The pool of `config`'s clients: kept, rotated or new (each new slot with its
    /// refresher started), and the refreshers of clients no longer configured stopped.
    fn pool(
        &self,
        config: &Config,
        registry: &mut Registry,
        previous: Option<&Pool>,
        refreshers: &mut HashMap<String, CancellationToken>,
    ) -> (Arc<Pool>, ReloadSummary) {
        let mut summary = ReloadSummary::default();
        let mut clients = Vec::with_capacity(config.clients.len());
        let mut kept: HashSet<&str> = HashSet::new();
        for c in &config.clients {
            let index = registry.client(&c.name);
            kept.insert(&c.name);
            let existing = previous.and_then(|p| p.client(index));
            let client = match existing {
                Some(old) if old.tokens.has_credentials(&c.client_id, &c.client_secret) => {
                    old.tokens
                        .set_remint_interval(config.genesys.token_remint_interval);
                    old.clone()
                }
                Some(old) => {
                    let slot = Arc::new(
                        old.tokens
                            .rotated(c.client_id.clone(), c.client_secret.clone()),
                    );
                    slot.set_remint_interval(config.genesys.token_remint_interval);
                    self.spawn_refresher(refreshers, &slot, true);
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
                        config.genesys.token_remint_interval,
                    ));
                    self.spawn_refresher(refreshers, &slot, false);
                    if previous.is_some() {
                        summary.added.push(c.name.clone());
                    }
                    Arc::new(PoolClient::new(c.name.clone(), slot))
                }
            };
            clients.push((index, client));
        }
        refreshers.retain(|name, stop| {
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
    fn spawn_refresher(
        &self,
        refreshers: &mut HashMap<String, CancellationToken>,
        slot: &Arc<TokenSlot>,
        grant_now: bool,
    ) {
        let stop = self.shutdown.token().child_token();
        if let Some(old) = refreshers.insert(slot.name().to_owned(), stop.clone()) {
            old.cancel();
        }
        self.shutdown.spawn(
            refresher::run(slot.clone(), stop, grant_now)
                // Not inside the span of the reload that started it.
                .instrument(info_span!(parent: None, "token_refresh", client = %slot.name())),
        );
    }
}

// === impl Generation ===

impl Generation {
    fn new(number: u64, config: &Config, pool: Arc<Pool>, admission: Arc<Admission>) -> Self {
        let allowed = &config.inbound.allow_routes;
        Self {
            number,
            pool,
            admission,
            auth: Authenticator::new(&config.inbound),
            allow_routes: (!allowed.is_empty()).then(|| allowed.iter().map(|r| r.route).collect()),
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout,
        }
    }
}

/// The keys of `next` that differ from `current` and only a restart can apply.
fn restart_needed(current: &Config, next: &Config) -> Vec<&'static str> {
    let (a, b) = (&current.server, &next.server);
    let tls = |c: &Config| {
        c.server
            .tls
            .as_ref()
            .map(|t| (t.cert_file.clone(), t.key_file.clone()))
    };
    let shared = |c: &Config| {
        c.shared_state.as_ref().map(|s| {
            (
                s.redis_url.expose().to_owned(),
                s.key_prefix.clone(),
                s.replicas_hint,
                s.timeout,
            )
        })
    };
    [
        ("server.listen", a.listen != b.listen),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        ("server.tls", tls(current) != tls(next)),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.max_body_bytes_in_flight",
            a.max_body_bytes_in_flight != b.max_body_bytes_in_flight,
        ),
        ("server.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "server.header_read_timeout",
            a.header_read_timeout != b.header_read_timeout,
        ),
        (
            "server.shutdown_grace",
            a.shutdown_grace != b.shutdown_grace,
        ),
        (
            "genesys",
            current.genesys.api_base != next.genesys.api_base
                || current.genesys.login_base != next.genesys.login_base,
        ),
        ("shared_state", shared(current) != shared(next)),
        (
            "budgets.window",
            current.budgets.window != next.budgets.window,
        ),
        ("budgets.guard", current.budgets.guard != next.budgets.guard),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// The config file gcpool re-reads, then every secret file `config` read.
fn watched(source: Option<&PathBuf>, config: &Config) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = source.into_iter().cloned().collect();
    for file in &config.files {
        if !paths.contains(file) {
            paths.push(file.clone());
        }
    }
    paths
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|path| {
            let stamp = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path.clone(), stamp)
        })
        .collect()
}
