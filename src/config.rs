//! The validated, typed configuration (SPEC §3).
//!
//! `config/file.rs` mirrors the YAML; `config/expand.rs` resolves `${VAR}` and `*_file`;
//! `config/validate.rs` turns the mirror into these types, collecting every error with its
//! key path. Code outside this module never sees a raw string that validation should have
//! settled.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Uri};

use crate::routes::RouteId;
use crate::secret::Secret;

mod duration;
mod expand;
mod file;
mod validate;

use duration::format_duration;
pub use duration::parse_duration;
pub use expand::{Env, ProcessEnv};

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub genesys: GenesysConfig,
    pub clients: Vec<ClientConfig>,
    pub budgets: BudgetsConfig,
    pub inbound: InboundConfig,
    pub shared_state: Option<SharedStateConfig>,
    pub cache: CacheConfig,
    /// Things that are allowed but probably not meant (e.g. Σ client budgets > org cap).
    pub warnings: Vec<String>,
    /// The config file, when loaded from one (what a reload re-reads).
    pub source: Option<PathBuf>,
    /// The files this config was read from: the config file (when loaded from one), then
    /// every `*_file` secret. A reload watches them.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub max_body_bytes: u64,
    /// Bytes of request bodies held in memory at once, over all requests
    /// (`server.max_body_bytes_in_flight`, default 64 MiB and never below `max_body_bytes`);
    /// past it a new body is refused (503, `body_memory`).
    pub max_body_bytes_in_flight: u64,
    /// Open caller connections at most (`server.max_connections`, default 20000); past it a
    /// new connection is closed at once.
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    /// Once the first byte of a request head arrives, the whole head must arrive within this
    /// (`server.header_read_timeout`, default 10s): slow-loris protection.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM (`server.shutdown_grace`, default 30s).
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct GenesysConfig {
    pub region: String,
    /// `https://api.{region}` unless overridden; no trailing slash, no path.
    pub api_base: Uri,
    /// `https://login.{region}` unless overridden; no trailing slash, no path.
    pub login_base: Uri,
    /// Shortest time between two token grants of one client, however many upstream 401s
    /// arrive (`genesys.token_remint_interval`, default 1s, at most 1m). A token younger
    /// than this that gets 401 is a real rejection: the client sits out the rest of it.
    pub token_remint_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Unique label for logs, metrics and /status.
    pub name: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub requests_per_minute: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// One budget for the route, shared by every client.
    Org,
    /// One budget per client for the route.
    Token,
}

#[derive(Debug, Clone)]
pub struct EndpointBudget {
    pub method: Method,
    /// Path template, e.g. `/api/v2/architect/ivrs/{ivrId}`.
    pub path: String,
    /// The operation `method path` names in [`RouteTable::genesys`](crate::routes::RouteTable::genesys).
    pub route: RouteId,
    pub per_minute: NonZeroU32,
    pub scope: BudgetScope,
}

#[derive(Debug, Clone)]
pub struct BudgetsConfig {
    pub token_per_minute: NonZeroU32,
    pub org_per_minute: NonZeroU32,
    pub window: Duration,
    /// Safety margin added between gcpool's window and the upstream's (`budgets.guard`, default 50ms).
    pub guard: Duration,
    pub endpoints: Vec<EndpointBudget>,
    pub queue: QueueConfig,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub max_wait: Duration,
    pub max_pending: usize,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    /// sha256 of the key; the key itself is never kept.
    pub sha256: [u8; 32],
    /// What its gateway caller tokens are signed with (`inbound.gateway`), derived from the
    /// key itself when the config gives it (`key`, `key_file`); `None` for a key given as its
    /// digest only (`key_sha256`), which cannot log in through the gateway.
    pub token_key: Option<TokenKey>,
    /// What this key's caller may do beyond the global rules.
    pub caller: CallerPolicy,
}

impl InboundConfig {
    /// Every caller's label and rules: the api keys' in config order, then the anonymous
    /// caller's (whether or not anonymous access is on).
    pub fn callers(&self) -> impl Iterator<Item = (&str, &CallerPolicy)> {
        self.api_keys
            .iter()
            .map(|k| (k.name.as_str(), &k.caller))
            .chain(std::iter::once((ANONYMOUS_CALLER, &self.anonymous_caller)))
    }
}

/// Key material for one caller's gateway tokens: SHA-256 over a label of its own and the
/// caller's key, so neither the key's digest (which a config may show as `key_sha256`) nor
/// anything else gcpool prints yields it. Never printed (`Debug` says so).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The domain-separation label hashed before the key.
    const LABEL: &'static [u8] = b"gcpool gateway caller token key v1\0";

    /// The token key of the API key `key`.
    pub fn derive(key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(Self::LABEL);
        hasher.update(key.as_bytes());
        TokenKey(hasher.finalize().into())
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// The `caller` label of the anonymous caller (`inbound.anonymous_caller`); no api key may
/// take it as its name.
pub const ANONYMOUS_CALLER: &str = "anonymous";
/// The `caller` label of a request refused before its caller was known; no api key may take
/// it as its name.
pub const UNKNOWN_CALLER: &str = "unknown";

/// A caller's own rules on top of the global ones (SPEC §12), for an api key's caller or
/// the anonymous one (`inbound.anonymous_caller`); each optional.
#[derive(Debug, Clone, Default)]
pub struct CallerPolicy {
    /// Longest its requests wait for a slot: at most `budgets.queue.max_wait`.
    pub max_wait: Option<Duration>,
    /// Routes it may call, on top of `inbound.allow_routes` (both must allow a route);
    /// empty: no limit of its own.
    pub allow_routes: Vec<RouteRule>,
    /// Its sub-pool: the names of the `clients` its requests may use; empty: all of them.
    pub clients: Vec<String>,
    /// Its own quota: admissions per minute over every client, a budget like the others
    /// (`caller:<name>`, local 429 reason `caller_budget`).
    pub per_minute: Option<NonZeroU32>,
    /// Its lane: the share of every budget its requests may fill (`inbound.lanes`).
    pub lane: Lane,
}

/// A caller's lane (SPEC §12): which share of every token, route and org budget its
/// requests may fill, so that lower lanes leave the headroom above them to higher ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Lane {
    Realtime,
    #[default]
    Standard,
    Batch,
}

impl Lane {
    /// Every lane, highest first.
    pub const ALL: [Lane; 3] = [Lane::Realtime, Lane::Standard, Lane::Batch];

    /// Its name in config, `/status` and `check`.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Realtime => "realtime",
            Lane::Standard => "standard",
            Lane::Batch => "batch",
        }
    }
}

/// `inbound.lanes`: the share of every budget each lane may fill, in thousandths (1000: the
/// whole budget). A lane not configured fills the whole budget; so does every lane when
/// `inbound.lanes` is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneShares {
    pub realtime: u16,
    pub standard: u16,
    pub batch: u16,
}

impl Default for LaneShares {
    fn default() -> Self {
        Self {
            realtime: 1000,
            standard: 1000,
            batch: 1000,
        }
    }
}

impl LaneShares {
    /// `lane`'s share, in thousandths.
    pub fn permille(&self, lane: Lane) -> u16 {
        match lane {
            Lane::Realtime => self.realtime,
            Lane::Standard => self.standard,
            Lane::Batch => self.batch,
        }
    }
}

/// Admissions per window for a per-minute rate: `rate × window / 60 s`, at least 1.
pub fn per_window(per_minute: u32, window: Duration) -> u32 {
    let n = u128::from(per_minute) * window.as_micros() / 60_000_000;
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// What a share of `permille` thousandths may fill of a budget of `limit` admissions per
/// window: rounded down, so a share never exceeds its part.
pub fn share_of(permille: u16, limit: u32) -> u32 {
    let part = u64::from(limit) * u64::from(permille.min(1000)) / 1000;
    u32::try_from(part).unwrap_or(limit)
}

/// A share in thousandths as config writes it: `0.5`, `0.9`, `1.0`.
pub fn format_share(permille: u16) -> String {
    let (whole, rest) = (permille / 1000, permille % 1000);
    if rest == 0 {
        format!("{whole}.0")
    } else {
        format!("{whole}.{}", format!("{rest:03}").trim_end_matches('0'))
    }
}

#[derive(Debug, Clone)]
pub struct RouteRule {
    pub method: Method,
    /// Path template, e.g. `/api/v2/users/{userId}`.
    pub path: String,
    /// The operation `method path` names in [`RouteTable::genesys`](crate::routes::RouteTable::genesys).
    pub route: RouteId,
}

#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub api_keys: Vec<ApiKey>,
    pub allow_anonymous: bool,
    /// Empty means every /api/v2 route.
    pub allow_routes: Vec<RouteRule>,
    /// The rules of the caller without a key (`inbound.anonymous_caller`).
    pub anonymous_caller: CallerPolicy,
    /// The share of every budget each lane may fill (`inbound.lanes`).
    pub lanes: LaneShares,
    /// The Genesys SDKs' gateway mode (`inbound.gateway`); `None`: off.
    pub gateway: Option<GatewayConfig>,
}

/// `inbound.gateway` (SPEC §12): what the Genesys SDKs' gateway setting (Python
/// `set_gateway`, JavaScript `setGateway`, the Terraform provider's `gateway` block) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `POST {login_path}/oauth/token` answers caller tokens: empty, or `/` and segments of
    /// letters, digits, `-`, `.`, `_`, `~` (no `.` or `..` segment), no trailing `/`.
    pub login_path: String,
    /// API calls are also taken at `{api_path}/api/v2/...`; same form as `login_path`.
    pub api_path: String,
    /// How long a caller token is valid: whole seconds, 1s to 48h.
    pub token_lifetime: Duration,
}

/// `inbound.gateway.login_path` when the section leaves it out.
pub const DEFAULT_GATEWAY_LOGIN_PATH: &str = "/login";
/// `inbound.gateway.token_lifetime` when the section leaves it out.
pub const DEFAULT_GATEWAY_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest `inbound.gateway.token_lifetime`: Genesys' own longest token (48 h).
pub const MAX_GATEWAY_TOKEN_LIFETIME: Duration = Duration::from_secs(48 * 3600);

#[derive(Debug, Clone)]
pub struct SharedStateConfig {
    /// May carry a password, so it is a secret.
    pub redis_url: Secret,
    pub key_prefix: String,
    pub replicas_hint: NonZeroU32,
    /// How long one Redis call may take before this replica decides on its local share
    /// (`shared_state.timeout`).
    pub timeout: Duration,
}

/// The response cache (SPEC §11, `cache`): no routes, no cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// At most this many answers kept (`cache.max_entries`, default 10000).
    pub max_entries: u64,
    /// At most this many bytes of keys and answers kept (`cache.max_bytes`, default 64 MiB).
    pub max_bytes: u64,
    pub routes: Vec<CacheRoute>,
}

/// One cached route (`cache.routes[i]`).
#[derive(Debug, Clone)]
pub struct CacheRoute {
    /// `GET` or `HEAD`.
    pub method: Method,
    /// Path template, e.g. `/api/v2/routing/queues/{queueId}`.
    pub path: String,
    /// The operation `method path` names in [`RouteTable::genesys`](crate::routes::RouteTable::genesys).
    pub route: RouteId,
    /// How long an answer is fresh; zero coalesces concurrent requests and keeps nothing.
    pub ttl: Duration,
    /// How long past `ttl` an answer may still stand in for a 429 or an upstream failure
    /// (`stale_if_limited`); zero is off.
    pub stale_if_limited: Duration,
    /// Keep answers whatever their `Cache-Control`, `Set-Cookie` and `Vary` say (the
    /// operator's decision; Genesys marks every answer `no-store`).
    pub ignore_upstream_cache_headers: bool,
}

/// Every error found while loading a config; each names its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One problem in the config, at `path` (e.g. `clients[2].client_secret`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct ConfigError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === impl Config ===

impl Config {
    /// Reads, expands and validates the config file at `path`.
    ///
    /// # Errors
    /// Every problem found, each with its key path (and line, where the YAML parser gives one).
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        validate::load(path, env)
    }

    /// Parses and validates config text; `*_file` paths are relative to `base_dir`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_yaml(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
        validate::from_yaml(text, base_dir, env)
    }

    /// The resolved config as YAML, with every secret replaced by `<redacted>`
    /// (printed by `gcpool check`).
    pub fn redacted_yaml(&self) -> String {
        validate::redacted_yaml(self)
    }

    /// What each caller may do, in words, one line each (printed by `gcpool check`): its
    /// clients, its longest wait, its routes.
    pub fn callers_explained(&self) -> Vec<String> {
        let inbound = &self.inbound;
        inbound
            .callers()
            .filter(|&(name, _)| name != ANONYMOUS_CALLER || inbound.allow_anonymous)
            .map(|(name, caller)| {
                let clients = if caller.clients.is_empty() {
                    format!("all {} clients", self.clients.len())
                } else {
                    format!("clients {}", caller.clients.join(", "))
                };
                let wait = match caller.max_wait {
                    Some(wait) => format!("waits at most {}", format_duration(wait)),
                    None => format!(
                        "waits at most {} (budgets.queue.max_wait)",
                        format_duration(self.budgets.queue.max_wait)
                    ),
                };
                let routes = match (
                    caller.allow_routes.is_empty(),
                    inbound.allow_routes.is_empty(),
                ) {
                    (true, true) => "every route".to_owned(),
                    (true, false) => "the routes of inbound.allow_routes".to_owned(),
                    (false, global_open) => {
                        let own: Vec<String> = caller
                            .allow_routes
                            .iter()
                            .filter(|r| {
                                global_open
                                    || inbound.allow_routes.iter().any(|g| g.route == r.route)
                            })
                            .map(|r| format!("{} {}", r.method, r.path))
                            .collect();
                        if own.is_empty() {
                            "no route (its allow_routes are all off the global list)".to_owned()
                        } else {
                            format!("only {}", own.join(", "))
                        }
                    }
                };
                let quota = caller
                    .per_minute
                    .map(|n| format!("; a quota of {n} a minute"))
                    .unwrap_or_default();
                let lane = caller.lane;
                let share = inbound.lanes.permille(lane);
                let lane = if share == 1000 {
                    format!("lane {} (fills whole budgets)", lane.name())
                } else {
                    format!(
                        "lane {} (fills {} of each token, route and org budget)",
                        lane.name(),
                        format_share(share)
                    )
                };
                format!("{name}: {clients}{quota}; {lane}; {wait}; {routes}")
            })
            .collect()
    }

    /// The SDKs' gateway mode in words (printed by `gcpool check`), or `None` when
    /// `inbound.gateway` is off.
    pub fn gateway_explained(&self) -> Option<String> {
        let gateway = self.inbound.gateway.as_ref()?;
        // A key given as its digest only signs no token: that caller cannot log in.
        let (callers, digest_only): (Vec<&ApiKey>, Vec<&ApiKey>) = self
            .inbound
            .api_keys
            .iter()
            .partition(|k| k.token_key.is_some());
        let names = |keys: &[&ApiKey]| {
            keys.iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let who = match (callers.is_empty(), digest_only.is_empty()) {
            (false, _) => format!("callers {}", names(&callers)),
            (true, true) => "no caller (no inbound.api_keys: every login is refused)".to_owned(),
            (true, false) => "no caller (every login is refused)".to_owned(),
        };
        let cannot = if digest_only.is_empty() {
            String::new()
        } else {
            format!(
                "; {} cannot log in (key_sha256 only: give key or key_file)",
                names(&digest_only)
            )
        };
        let api = if gateway.api_path.is_empty() {
            "API calls at /api/v2/...".to_owned()
        } else {
            format!(
                "API calls at {}/api/v2/... and /api/v2/...",
                gateway.api_path
            )
        };
        Some(format!(
            "gateway: POST {}/oauth/token answers tokens valid {} to {who} (client id: the \
             caller's name, secret: its key){cannot}; {api}",
            gateway.login_path,
            format_duration(gateway.token_lifetime),
        ))
    }
}
