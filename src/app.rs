//! The composition root: builds the budget store, the first config generation (pool, token
//! refreshers, admission, caller checks; see [`crate::generation`]), the proxy, the
//! reloader and the admin listener from a
//! [`Config`], and runs them until shutdown. `cli` and the integration
//! tests both start gcpool through [`Gcpool::start`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

use crate::admin::Admin;
use crate::admission::{Admission, BudgetTable, Registry};
use crate::budget::redis::RedisStore;
use crate::budget::{BudgetStore, FallbackStore, MemoryStore};
use crate::config::Config;
use crate::generation::{Builder, Live};
use crate::inbound::UNKNOWN_CALLER;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::proxy::Proxy;
use crate::reload::{ReloadError, ReloadSummary, Reloader};
use crate::server::{self, ConnCounters, ConnectionLimit, ServeOptions};
use crate::shutdown::Shutdown;
use crate::tls::{TlsAcceptor, TlsError};
use crate::upstream::Upstream;

/// Why gcpool could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `key` is the config key that names the address (`server.listen`, …).
    #[error("cannot listen on {addr} ({key})")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("shared state")]
    SharedState(#[source] crate::budget::BudgetError),
    #[error("inbound TLS (server.tls)")]
    Tls(#[source] TlsError),
    #[error("cannot start a worker thread")]
    Worker(#[source] std::io::Error),
}

/// The in-memory store, or with `shared_state` the Redis store behind a local fallback
/// (whose health and write-back task is owned by `shutdown`). Every Redis call is bounded by
/// `shared_state.timeout`.
fn budget_store(
    config: &Config,
    table: &BudgetTable,
    clients: &[String],
    shutdown: &Shutdown,
) -> Result<Arc<dyn BudgetStore>, StartError> {
    let Some(shared) = &config.shared_state else {
        return Ok(Arc::new(MemoryStore::new(table.defs(), clients.len())));
    };
    // Fail at start on a URL that can never work; a Redis that is down is fine.
    let redis = RedisStore::lazy(shared, table.defs(), clients).map_err(StartError::SharedState)?;
    let store = Arc::new(FallbackStore::new(
        table.defs(),
        clients.len(),
        shared.replicas_hint.get(),
        Arc::new(redis),
        shared.timeout,
    ));
    shutdown.spawn(
        store
            .clone()
            .run_recovery(shutdown.token())
            .instrument(info_span!("shared_state")),
    );
    Ok(store)
}

/// Worker threads serving the API listener: as many as cores, each a current-thread
/// runtime with its own upstream connection pool, so a request, its upstream connection
/// and their tasks stay on one thread (no cross-thread wake-ups on the hot path). Shared
/// state (pool, budgets, metrics) is behind `Arc`s.
fn spawn_workers(
    listener: TcpListener,
    proxy: &Proxy,
    shutdown: &Shutdown,
    options: ServeOptions,
    tls: Option<&TlsAcceptor>,
    limit: &Arc<ConnectionLimit>,
    refusals: &ConnCounters,
) -> Result<Vec<std::thread::JoinHandle<()>>, StartError> {
    let workers = std::env::var("GCPOOL_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let listener = listener.into_std().map_err(StartError::Worker)?;
    (0..workers)
        .map(|i| {
            let listener = listener.try_clone().map_err(StartError::Worker)?;
            // Behind one pointer: every connection's task holds the handler.
            let proxy = Arc::new(proxy.with_own_upstream());
            let stop = shutdown.token();
            let tls = tls.cloned();
            let limit = limit.clone();
            let refusals = refusals.clone();
            std::thread::Builder::new()
                .name(format!("gcpool-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            tracing::error!(%error, "cannot start a worker runtime");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        tokio::spawn(crate::upkeep::run(stop.clone()));
                        let listener = match TcpListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(error) => {
                                tracing::error!(%error, "worker cannot use the listener");
                                return;
                            }
                        };
                        let handler = move |request, _peer| {
                            let proxy = proxy.clone();
                            async move { proxy.handle(request).await }
                        };
                        let _ = server::serve(
                            listener,
                            handler,
                            stop,
                            options,
                            tls,
                            Some(limit),
                            Some(refusals),
                        )
                        .await;
                    });
                })
                .map_err(StartError::Worker)
        })
        .collect()
}

/// A running gcpool: API listener, admin listener, one token refresher per client.
#[derive(Debug)]
pub struct Gcpool {
    api_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: Shutdown,
    /// One thread per core, each with its own runtime, accepting on the shared listener.
    api: Vec<std::thread::JoinHandle<()>>,
    admin: JoinHandle<std::io::Result<()>>,
    tls: Option<TlsAcceptor>,
    reloader: Arc<Reloader>,
    pub metrics: Metrics,
}

impl Gcpool {
    /// Binds the listeners named in `config.server` and starts serving.
    ///
    /// # Errors
    /// When a listener cannot be bound, metrics cannot be registered or the TLS
    /// certificate or key is unusable.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { key, addr, source })
        };
        let api = bind("server.listen", config.server.listen).await?;
        let admin = bind("server.admin_listen", config.server.admin_listen).await?;
        Self::start_on(config, api, admin)
    }

    /// Starts serving on listeners the caller bound (tests bind `127.0.0.1:0`).
    ///
    /// # Errors
    /// When metrics cannot be registered or the TLS certificate or key is unusable.
    pub fn start_on(
        config: Config,
        api_listener: TcpListener,
        admin_listener: TcpListener,
    ) -> Result<Self, StartError> {
        // The route table (~2.6 MB for Genesys' 3,355 operations) is built now, not by the
        // first request: that request does not wait for it, and idle memory is the
        // running figure.
        crate::routes::RouteTable::genesys();
        let api_addr = api_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                key: "server.listen",
                addr: config.server.listen,
                source,
            })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                key: "server.admin_listen",
                addr: config.server.admin_listen,
                source,
            })?;
        let metrics =
            Metrics::register(&prometheus::Registry::new()).map_err(StartError::Metrics)?;
        // Before any task starts: an unusable certificate is a start error.
        let tls = config
            .server
            .tls
            .as_ref()
            .map(|files| TlsAcceptor::load(files, metrics.tls_handshake_failures.clone()))
            .transpose()
            .map_err(StartError::Tls)?;
        let shutdown = Shutdown::new();
        let upstream = Upstream::new();

        let mut registry = Registry::default();
        let table = BudgetTable::build(&config, &mut registry);
        let store = budget_store(&config, &table, registry.client_names(), &shutdown)?;
        let mut builder = Builder::new(
            &config,
            registry,
            store,
            upstream.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let (first, _) = builder.build(&config, None);
        let live = Arc::new(Live::new(first));
        let proxy = Proxy::new(&config, live.clone(), upstream, metrics.clone());
        let reloader = Reloader::new(config.clone(), builder, live, metrics.clone());
        shutdown.spawn(
            reloader
                .clone()
                .watch(shutdown.token())
                .instrument(info_span!("config_reload")),
        );
        let options = ServeOptions {
            idle_timeout: config.server.idle_timeout,
            grace: config.server.shutdown_grace,
            header_read_timeout: config.server.header_read_timeout,
        };
        // The main runtime's threads allocate too (token refreshes, admin, Redis answers):
        // one of them calls the upkeep hook; the API workers each call it (`spawn_workers`).
        shutdown.spawn(crate::upkeep::run(shutdown.token()));
        if let Some(tls) = &tls {
            shutdown.spawn(
                tls.clone()
                    .watch(shutdown.token())
                    .instrument(info_span!("tls_reload")),
            );
        }
        let limit = ConnectionLimit::new(
            config.server.max_connections,
            metrics
                .rejections
                .with_label_values(&["connection_limit", UNKNOWN_CALLER]),
        );
        // Refused before any request was read: no caller is known.
        let reason = |r: &str| metrics.rejections.with_label_values(&[r, UNKNOWN_CALLER]);
        let refusals = ConnCounters {
            timeout: reason("header_timeout"),
            too_large: reason("header_too_large"),
            malformed: reason("bad_request"),
            caller_stalled: metrics
                .response_aborted
                .with_label_values(&["caller_stalled"]),
        };
        let api = spawn_workers(
            api_listener,
            &proxy,
            &shutdown,
            options,
            tls.as_ref(),
            &limit,
            &refusals,
        )?;
        let admin_state = Admin::new(reloader.live(), metrics.clone(), shutdown.token());
        let admin = tokio::spawn(server::serve(
            admin_listener,
            move |request, _peer| {
                let admin = admin_state.clone();
                async move { admin.handle(&request).await }
            },
            shutdown.token(),
            options,
            // Plain: the admin listener defaults to loopback (SPEC).
            None,
            None,
            None,
        ));
        info!(%api_addr, %admin_addr, tls = tls.is_some(), clients = config.clients.len(), "gcpool listening");
        Ok(Self {
            api_addr,
            admin_addr,
            shutdown,
            api,
            admin,
            tls,
            reloader,
            metrics,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The inbound TLS acceptor, when `server.tls` is set ([`TlsAcceptor::reload`] is what
    /// SIGHUP does).
    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// The current config's pool of clients.
    pub fn pool(&self) -> Arc<Pool> {
        self.reloader.live().current().pool.clone()
    }

    /// The current config's admission (budgets and queue).
    pub fn admission(&self) -> Arc<Admission> {
        self.reloader.live().current().admission.clone()
    }

    /// Applies `config` as SIGHUP applies the config file (see [`crate::reload`]).
    ///
    /// # Errors
    /// When `config` changes a key only a restart applies; nothing changes then.
    pub fn reload(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        self.reloader.apply(config)
    }

    /// Re-reads the config file gcpool was started from and applies it (what SIGHUP does).
    ///
    /// # Errors
    /// When the file does not validate or changes a key only a restart applies.
    pub fn reload_file(&self) -> Result<ReloadSummary, ReloadError> {
        self.reloader.reload_file()
    }

    /// The shutdown owner; [`Shutdown::trigger`] starts a graceful stop.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Waits until both listeners have drained after shutdown, then stops background tasks.
    pub async fn wait(self) {
        let workers = self.api;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        let _ = self.admin.await;
        self.shutdown.trigger();
        self.shutdown.wait_tasks().await;
        info!("gcpool stopped");
    }
}
