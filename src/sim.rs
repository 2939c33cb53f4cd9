//! Genesys Cloud simulator (`gcpool simulate`): token endpoint + `/api/v2/**` with limits.
//!
//! Kept apart from the proxy: it uses no proxy module, so it cannot drift into it.
//! [`Simulator::start`] runs one on `127.0.0.1:0` for tests; [`serve`] runs one on a bound
//! listener until a shutdown future resolves (what `gcpool simulate` does).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::parse_duration;

mod args;
mod limits;
mod server;
mod state;
mod stats;

pub use stats::{ClientStats, OrgStats, RouteStats, SimStats};

use state::State;

/// One OAuth client-credentials client the simulated org knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimClient {
    pub id: String,
    pub secret: String,
}

/// A per-route limit: at most `limit` admissions of `method template` per window, org-wide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRouteLimit {
    pub method: http::Method,
    /// Path template such as `/api/v2/architect/ivrs/{ivrId}`; `{x}` matches one segment.
    pub template: String,
    pub limit: u32,
}

/// How the simulated org behaves.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Known clients; default `sim-client-01`/`sim-secret-01` .. `-03`.
    pub clients: Vec<SimClient>,
    /// Lifetime of every minted token (`expires_in`); default 86400 s.
    pub token_lifetime: Duration,
    /// Length of every sliding window; default 60 s.
    pub window: Duration,
    /// Admissions per access token per window; default 300.
    pub token_limit: u32,
    /// Lower per-token limits for some client ids ("hidden" limits).
    pub token_limit_overrides: HashMap<String, u32>,
    /// Admissions of the whole org per window; default none.
    pub org_limit: Option<u32>,
    /// Per-route limits.
    pub route_limits: Vec<SimRouteLimit>,
    /// Added before each `/api/v2` answer; default zero.
    pub latency: Duration,
    /// Include the `limit` object in 429 bodies; default true.
    pub limit_in_body: bool,
}

/// A running simulator on `127.0.0.1`; dropping it (or [`Simulator::shutdown`]) stops it.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<io::Result<()>>>,
    stop: Option<DropGuard>,
}

/// Flags of `gcpool simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Number of OAuth clients: sim-client-01/sim-secret-01 .. sim-client-NN/sim-secret-NN.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub clients: u8,
    /// Lifetime of minted tokens (expires_in), e.g. 86400s, 24h, 2s.
    #[arg(long, default_value = "86400s", value_parser = parse_duration)]
    pub token_lifetime: Duration,
    /// Length of every sliding window, e.g. 60s, 1m30s, 500ms.
    #[arg(long, default_value = "60s", value_parser = args::parse_nonzero_duration)]
    pub window: Duration,
    /// Requests per access token per window.
    #[arg(long, default_value_t = 300)]
    pub token_limit: u32,
    /// Requests of the whole org per window (default: no org limit).
    #[arg(long)]
    pub org_limit: Option<u32>,
    /// Per-route limit, e.g. "PUT /api/v2/architect/ivrs/{ivrId}=100" (repeatable).
    #[arg(long = "route-limit", value_name = "METHOD TEMPLATE=N", value_parser = args::parse_route_limit)]
    pub route_limits: Vec<SimRouteLimit>,
    /// Lower per-token limit for one client, e.g. sim-client-02=5 (repeatable).
    #[arg(long = "hidden-token-limit", value_name = "CLIENT_ID=N", value_parser = args::parse_hidden_limit)]
    pub hidden_token_limits: Vec<(String, u32)>,
    /// Latency added before every /api/v2 answer, e.g. 0ms, 20ms.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Leave the optional `limit` object out of 429 bodies.
    #[arg(long)]
    pub no_limit_in_body: bool,
}

/// Runs the simulator until `shutdown` resolves.
///
/// # Errors
/// When the options are invalid (for example a hidden limit for an unknown client id) or the
/// listener cannot be bound.
pub async fn run_cli(
    args: SimulateArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let opts = args.options();
    // Validate before binding so a bad flag does not hold the port.
    State::new(&opts)?;
    let listen = args.listen;
    let listener = TcpListener::bind(listen).await.map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot listen on {listen} (--listen): {err}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let ids: Vec<&str> = opts.clients.iter().map(|c| c.id.as_str()).collect();
    eprintln!(
        "gcpool simulate: listening on http://{addr}; clients {} (secrets sim-secret-NN)",
        ids.join(", ")
    );
    serve(listener, opts, shutdown).await
}

/// Serves a simulator on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (at most 10 s). Used by `gcpool simulate`; tests use [`Simulator::start`].
///
/// # Errors
/// `InvalidInput` when `opts` are inconsistent (zero window, duplicate client ids, a hidden
/// limit for an unknown client, a route template outside `/api/v2/`).
pub async fn serve(
    listener: TcpListener,
    opts: SimOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = Arc::new(State::new(&opts)?);
    server::serve(listener, state, shutdown).await
}

// === impl SimOptions ===

impl Default for SimOptions {
    fn default() -> Self {
        Self::with_clients(3)
    }
}

impl SimOptions {
    /// Defaults with `n` clients `sim-client-01`/`sim-secret-01` .. `sim-client-NN`.
    pub fn with_clients(n: usize) -> Self {
        Self {
            clients: (1..=n)
                .map(|i| SimClient {
                    id: format!("sim-client-{i:02}"),
                    secret: format!("sim-secret-{i:02}"),
                })
                .collect(),
            token_lifetime: Duration::from_secs(86_400),
            window: Duration::from_secs(60),
            token_limit: 300,
            token_limit_overrides: HashMap::new(),
            org_limit: None,
            route_limits: Vec::new(),
            latency: Duration::ZERO,
            limit_in_body: true,
        }
    }

    /// Sets the length of every sliding window.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets the lifetime of minted tokens.
    #[must_use]
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Sets the per-token limit.
    #[must_use]
    pub fn token_limit(mut self, limit: u32) -> Self {
        self.token_limit = limit;
        self
    }

    /// Gives `client_id`'s tokens a lower ("hidden") per-token limit.
    #[must_use]
    pub fn hidden_limit(mut self, client_id: &str, limit: u32) -> Self {
        self.token_limit_overrides
            .insert(client_id.to_owned(), limit);
        self
    }

    /// Sets the org-wide limit.
    #[must_use]
    pub fn org_limit(mut self, limit: u32) -> Self {
        self.org_limit = Some(limit);
        self
    }

    /// Adds a per-route limit, e.g. `(Method::PUT, "/api/v2/architect/ivrs/{ivrId}", 100)`.
    #[must_use]
    pub fn route_limit(mut self, method: http::Method, template: &str, limit: u32) -> Self {
        self.route_limits
            .push(SimRouteLimit::new(method, template, limit));
        self
    }

    /// Sets the latency added before each `/api/v2` answer.
    #[must_use]
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Includes (default) or leaves out the `limit` object of 429 bodies.
    #[must_use]
    pub fn limit_in_body(mut self, on: bool) -> Self {
        self.limit_in_body = on;
        self
    }
}

// === impl SimRouteLimit ===

impl SimRouteLimit {
    pub fn new(method: http::Method, template: &str, limit: u32) -> Self {
        Self {
            method,
            template: template.to_owned(),
            limit,
        }
    }

    /// Key of this route in [`SimStats::routes`]: `"PUT /api/v2/architect/ivrs/{ivrId}"`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

// === impl SimulateArgs ===

impl SimulateArgs {
    /// The simulator options these flags describe.
    pub fn options(&self) -> SimOptions {
        let mut opts = SimOptions::with_clients(usize::from(self.clients))
            .window(self.window)
            .token_lifetime(self.token_lifetime)
            .token_limit(self.token_limit)
            .latency(self.latency)
            .limit_in_body(!self.no_limit_in_body);
        opts.org_limit = self.org_limit;
        opts.route_limits.clone_from(&self.route_limits);
        for (id, limit) in &self.hidden_token_limits {
            opts = opts.hidden_limit(id, *limit);
        }
        opts
    }
}

// === impl Simulator ===

impl Simulator {
    /// Binds `127.0.0.1:0` and serves `opts` in a background task.
    ///
    /// # Errors
    /// When `opts` are inconsistent (see [`serve`]) or the listener cannot be bound.
    pub async fn start(opts: SimOptions) -> io::Result<Simulator> {
        let state = Arc::new(State::new(&opts)?);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(server::serve(listener, state.clone(), async move {
            stopped.cancelled().await;
        }));
        Ok(Simulator {
            addr,
            state,
            task: Some(task),
            stop: Some(stop.drop_guard()),
        })
    }

    /// Address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: both the API base and the login base.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Snapshot of the counters (the same JSON as `GET /sim/stats`).
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Zeroes the counters and the `max_in_window` figures (as `POST /sim/reset-stats`).
    pub fn reset_stats(&self) {
        self.state.reset_stats();
    }

    /// Every token issued so far answers 401 `bad.credentials` (HIPAA idle expiry).
    pub fn revoke_tokens(&self) {
        self.state.revoke_tokens();
    }

    /// Makes the token endpoint answer 401 for `client_id` (or accept it again).
    pub fn set_credentials_rejected(&self, client_id: &str, rejected: bool) {
        self.state.set_credentials_rejected(client_id, rejected);
    }

    /// While `refused`, every `/api/v2` request with a token of `client_id` answers 401,
    /// fresh tokens included, while grants still succeed (a 401 storm).
    pub fn set_tokens_refused(&self, client_id: &str, refused: bool) {
        self.state.set_tokens_refused(client_id, refused);
    }

    /// Stops accepting, lets in-flight requests finish (at most 10 s), and waits for it.
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "simulator stopped with an error"),
                Err(error) => tracing::warn!(%error, "simulator task failed"),
            }
        }
    }
}
