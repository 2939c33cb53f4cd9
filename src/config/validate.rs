//! Turns the YAML mirror into a typed [`Config`], collecting every error with its key path.
//!
//! Each value is expanded (`${VAR}`), read from its `*_file` where one is given, parsed and
//! checked here; a problem is recorded with its key path and validation goes on with the
//! default, so one run reports every error. Also prints the resolved config, redacted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use http::{Method, Uri};
use sha2::{Digest, Sha256};

use super::duration::{format_duration, parse_duration};
use super::expand::{expand, lower_first, read_secret_file, resolve_path};
use super::file::{self, FILE_PATH};
use super::{
    ANONYMOUS_CALLER, ApiKey, BudgetScope, BudgetsConfig, CacheConfig, CacheRoute, CallerPolicy,
    ClientConfig, Config, ConfigError, ConfigErrors, DEFAULT_GATEWAY_LOGIN_PATH,
    DEFAULT_GATEWAY_TOKEN_LIFETIME, EndpointBudget, Env, GatewayConfig, GenesysConfig,
    InboundConfig, Lane, LaneShares, MAX_GATEWAY_TOKEN_LIFETIME, QueueConfig, RouteRule,
    ServerConfig, SharedStateConfig, TlsConfig, TokenKey, UNKNOWN_CALLER, format_share, per_window,
    share_of,
};
use crate::routes::{RouteId, RouteTable};
use crate::secret::Secret;

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
const DEFAULT_MAX_BODY_BYTES: u64 = 512_000;
const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;
const DEFAULT_MAX_CONNECTIONS: u64 = 20_000;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_REGION: &str = "mypurecloud.com";
const DEFAULT_TOKEN_REMINT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `genesys.token_remint_interval`: a client sits out at most this long after a
/// fresh token is refused (tokens revoked just after a grant).
const MAX_TOKEN_REMINT_INTERVAL: Duration = Duration::from_secs(60);
const MAX_CLIENTS: usize = 50;
const MAX_CLIENT_NAME: usize = 64;
const DEFAULT_TOKEN_PER_MINUTE: NonZeroU32 = NonZeroU32::new(300).expect("300 is not zero");
const DEFAULT_ORG_PER_MINUTE: NonZeroU32 = NonZeroU32::new(3000).expect("3000 is not zero");
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
const DEFAULT_GUARD: Duration = Duration::from_millis(50);
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_PENDING: usize = 10_000;
const DEFAULT_CACHE_MAX_ENTRIES: u64 = 10_000;
const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_KEY_PREFIX: &str = "gcpool";
const DEFAULT_REPLICAS_HINT: NonZeroU32 = NonZeroU32::MIN;
/// A loopback or same-zone round trip is well under a millisecond (p99 of one admission
/// through Redis: `benches/redis_admission.rs`); 50 ms is SPEC §9's longest decision while
/// Redis hangs.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// A deadline past this is no longer "before the local fallback" for any caller.
const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const ROUTE_METHODS: [Method; 6] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
];
/// What `redacted_yaml` prints in place of a secret.
const REDACTED: &str = "<redacted>";

pub(super) fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigErrors(vec![ConfigError {
            path: FILE_PATH.into(),
            line: None,
            message: format!(
                "cannot read {}: {}",
                path.display(),
                lower_first(&err.to_string())
            ),
        }])
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut config = from_yaml(&text, base_dir, env)?;
    config.files.insert(0, path.to_owned());
    config.source = Some(path.to_owned());
    Ok(config)
}

pub(super) fn from_yaml(
    text: &str,
    base_dir: &Path,
    env: &dyn Env,
) -> Result<Config, ConfigErrors> {
    let file = file::parse(text).map_err(|err| ConfigErrors(vec![err]))?;
    let mut v = Validator {
        env,
        base_dir,
        errors: Vec::new(),
        files: Vec::new(),
    };
    let config = v.config(file);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        // Report in the order of the file's sections (budgets are checked before clients).
        v.errors.sort_by_key(|e| section_rank(&e.path));
        Err(ConfigErrors(v.errors))
    }
}

/// Position of an error's top-level section in the documented order of the file.
fn section_rank(path: &str) -> usize {
    const SECTIONS: [&str; 7] = [
        "server",
        "genesys",
        "clients",
        "budgets",
        "inbound",
        "shared_state",
        "cache",
    ];
    let top = path.split(['.', '[']).next().unwrap_or_default();
    SECTIONS
        .iter()
        .position(|s| *s == top)
        .unwrap_or(SECTIONS.len())
}

pub(super) fn redacted_yaml(config: &Config) -> String {
    let c = config;
    let resolved = file::Resolved {
        server: file::ResolvedServer {
            listen: c.server.listen.to_string(),
            admin_listen: c.server.admin_listen.to_string(),
            tls: c.server.tls.as_ref().map(|t| file::ResolvedTls {
                cert_file: t.cert_file.display().to_string(),
                key_file: t.key_file.display().to_string(),
            }),
            max_body_bytes: c.server.max_body_bytes,
            max_body_bytes_in_flight: c.server.max_body_bytes_in_flight,
            max_connections: c.server.max_connections as u64,
            request_timeout: format_duration(c.server.request_timeout),
            idle_timeout: format_duration(c.server.idle_timeout),
            header_read_timeout: format_duration(c.server.header_read_timeout),
            shutdown_grace: format_duration(c.server.shutdown_grace),
        },
        genesys: file::ResolvedGenesys {
            region: c.genesys.region.clone(),
            api_base: base_url(&c.genesys.api_base),
            login_base: base_url(&c.genesys.login_base),
            token_remint_interval: format_duration(c.genesys.token_remint_interval),
        },
        clients: c
            .clients
            .iter()
            .map(|cl| file::ResolvedClient {
                name: cl.name.clone(),
                client_id: cl.client_id.clone(),
                client_secret: REDACTED,
                requests_per_minute: cl.requests_per_minute.get(),
            })
            .collect(),
        budgets: file::ResolvedBudgets {
            token_per_minute: c.budgets.token_per_minute.get(),
            org_per_minute: c.budgets.org_per_minute.get(),
            window: format_duration(c.budgets.window),
            guard: format_duration(c.budgets.guard),
            endpoints: c
                .budgets
                .endpoints
                .iter()
                .map(|e| file::ResolvedEndpoint {
                    route: format!("{} {}", e.method, e.path),
                    per_minute: e.per_minute.get(),
                    scope: match e.scope {
                        BudgetScope::Org => "org",
                        BudgetScope::Token => "token",
                    },
                })
                .collect(),
            queue: file::ResolvedQueue {
                max_wait: format_duration(c.budgets.queue.max_wait),
                max_pending: c.budgets.queue.max_pending,
            },
        },
        inbound: file::ResolvedInbound {
            api_keys: c
                .inbound
                .api_keys
                .iter()
                .map(|k| file::ResolvedApiKey {
                    name: k.name.clone(),
                    key_sha256: REDACTED,
                    caller: resolved_caller(&k.caller),
                })
                .collect(),
            allow_anonymous: c.inbound.allow_anonymous,
            allow_routes: route_texts(&c.inbound.allow_routes),
            anonymous_caller: resolved_caller(&c.inbound.anonymous_caller),
            lanes: file::ResolvedLanes {
                realtime: format_share(c.inbound.lanes.realtime),
                standard: format_share(c.inbound.lanes.standard),
                batch: format_share(c.inbound.lanes.batch),
            },
            gateway: c.inbound.gateway.as_ref().map(|g| file::ResolvedGateway {
                login_path: g.login_path.clone(),
                api_path: g.api_path.clone(),
                token_lifetime: format_duration(g.token_lifetime),
            }),
        },
        shared_state: c.shared_state.as_ref().map(|s| file::ResolvedSharedState {
            redis_url: redact_redis_url(s.redis_url.expose()),
            key_prefix: s.key_prefix.clone(),
            replicas_hint: s.replicas_hint.get(),
            timeout: format_duration(s.timeout),
        }),
        cache: file::ResolvedCache {
            max_entries: c.cache.max_entries,
            max_bytes: c.cache.max_bytes,
            routes: c
                .cache
                .routes
                .iter()
                .map(|r| file::ResolvedCacheRoute {
                    route: format!("{} {}", r.method, r.path),
                    ttl: format_duration(r.ttl),
                    stale_if_limited: format_duration(r.stale_if_limited),
                    ignore_upstream_cache_headers: r.ignore_upstream_cache_headers,
                })
                .collect(),
        },
    };
    file::print(&resolved)
}

/// Marks a value whose error has already been recorded, so callers add no second error.
#[derive(Debug, Clone, Copy)]
struct Reported;

/// An optional config value after expansion and parsing.
type Field<T> = Result<Option<T>, Reported>;

/// Collects errors while turning the mirror into a [`Config`].
struct Validator<'a> {
    env: &'a dyn Env,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    /// Secret files read.
    files: Vec<std::path::PathBuf>,
}

// === impl Validator ===

impl Validator<'_> {
    fn config(&mut self, f: file::File) -> Config {
        let (server, listen_ok) = self.server(f.server.unwrap_or_default());
        let genesys = self.genesys(f.genesys.unwrap_or_default());
        // Budgets come before clients: a client's budget defaults to `token_per_minute`.
        let budgets = self.budgets(f.budgets.unwrap_or_default());
        let clients = self.clients(f.clients.unwrap_or_default(), budgets.token_per_minute);
        let client_names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
        let inbound = self.inbound(
            f.inbound.unwrap_or_default(),
            listen_ok.then_some(server.listen),
            budgets.queue.max_wait,
            &client_names,
        );
        let shared_state = f.shared_state.map(|s| self.shared_state(s));
        let cache = self.cache(f.cache.unwrap_or_default());

        let mut warnings = Vec::new();
        let pool: u64 = clients
            .iter()
            .map(|c| u64::from(c.requests_per_minute.get()))
            .sum();
        let org = budgets.org_per_minute.get();
        if pool > u64::from(org) {
            warnings.push(format!(
                "the clients' requests_per_minute add up to {pool} per minute, more than \
                 budgets.org_per_minute ({org}): the org cap binds"
            ));
        }

        // A caller's route off the global list can never be called.
        if !inbound.allow_routes.is_empty() {
            let callers = inbound
                .api_keys
                .iter()
                .map(|k| (format!("caller {:?}", k.name), &k.caller))
                .chain(std::iter::once((
                    "inbound.anonymous_caller".to_owned(),
                    &inbound.anonymous_caller,
                )));
            for (who, caller) in callers {
                for r in &caller.allow_routes {
                    if !inbound.allow_routes.iter().any(|g| g.route == r.route) {
                        warnings.push(format!(
                            "{who}: allow_routes has \"{} {}\", which inbound.allow_routes does \
                             not allow: that caller can never call it",
                            r.method, r.path
                        ));
                    }
                }
            }
        }

        warnings.extend(empty_lanes(&budgets, &clients, &inbound));
        if inbound.gateway.is_some() && inbound.api_keys.is_empty() {
            warnings.push(
                "inbound.gateway is on but there are no inbound.api_keys: the SDKs' login \
                 (client id: a caller's name, secret: its key) refuses everyone"
                    .to_owned(),
            );
        }
        if inbound.gateway.is_some() && server.tls.is_none() && !server.listen.ip().is_loopback() {
            warnings.push(format!(
                "inbound.gateway is on and server.listen ({}) is not loopback, without \
                 server.tls: callers' keys and tokens cross the network in clear unless TLS ends \
                 in front of gcpool (an ingress or a load balancer)",
                server.listen
            ));
        }
        if inbound.gateway.is_some() {
            for (n, k) in inbound.api_keys.iter().enumerate() {
                if k.token_key.is_none() {
                    warnings.push(format!(
                        "inbound.api_keys[{n}] ({}) is given as key_sha256, so it cannot log in \
                         through inbound.gateway: caller tokens are signed with a key derived \
                         from the key itself, never from its digest (which a config may show); \
                         give key or key_file for it to log in",
                        k.name
                    ));
                }
            }
        }

        if !cache.routes.is_empty() && cache.max_bytes / 16 < 4096 {
            warnings.push(format!(
                "cache.max_bytes is {}: no answer over {} bytes (a sixteenth of it) is kept",
                cache.max_bytes,
                cache.max_bytes / 16
            ));
        }
        for route in &cache.routes {
            if route.ttl.is_zero() && !route.stale_if_limited.is_zero() {
                warnings.push(format!(
                    "cache route \"{} {}\" has ttl: 0s, so it keeps no answer and its \
                     stale_if_limited never applies",
                    route.method, route.path
                ));
            }
            if !route.ttl.is_zero() && !route.ignore_upstream_cache_headers {
                warnings.push(format!(
                    "cache route \"{} {}\" keeps nothing from Genesys, which marks its answers \
                     Cache-Control: no-store; it only coalesces concurrent requests unless \
                     ignore_upstream_cache_headers: true",
                    route.method, route.path
                ));
            }
        }

        Config {
            server,
            genesys,
            clients,
            budgets,
            inbound,
            shared_state,
            cache,
            warnings,
            source: None,
            files: std::mem::take(&mut self.files),
        }
    }

    /// The server section, and whether `server.listen` was valid (for the anonymous check).
    fn server(&mut self, s: file::Server) -> (ServerConfig, bool) {
        let listen = self.parse("server.listen", s.listen, parse_socket_addr);
        let admin = self.parse("server.admin_listen", s.admin_listen, parse_socket_addr);
        let (listen_ok, admin_ok) = (listen.is_ok(), admin.is_ok());
        let listen = or_default(listen, DEFAULT_LISTEN);
        let admin_listen = or_default(admin, DEFAULT_ADMIN_LISTEN);
        if listen_ok && admin_ok && collide(listen, admin_listen) {
            self.error(
                "server.admin_listen",
                format!(
                    "{admin_listen} collides with server.listen ({listen}): the admin endpoints \
                     must never be on the public listener"
                ),
            );
        }
        let max_body_bytes = self.parse(
            "server.max_body_bytes",
            s.max_body_bytes,
            parse_positive_u64,
        );
        let max_body_bytes = or_default(max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let in_flight_given = s.max_body_bytes_in_flight.is_some();
        let max_body_bytes_in_flight = or_default(
            self.parse(
                "server.max_body_bytes_in_flight",
                s.max_body_bytes_in_flight,
                parse_positive_u64,
            ),
            DEFAULT_MAX_BODY_BYTES_IN_FLIGHT.max(max_body_bytes),
        );
        if in_flight_given && max_body_bytes_in_flight < max_body_bytes {
            self.error(
                "server.max_body_bytes_in_flight",
                format!(
                    "{max_body_bytes_in_flight} is less than server.max_body_bytes \
                     ({max_body_bytes}): a body of the largest size allowed could never be read"
                ),
            );
        }
        let max_connections = self.parse(
            "server.max_connections",
            s.max_connections,
            parse_positive_u64,
        );
        let tls = s.tls.map(|t| self.tls(t));
        let config = ServerConfig {
            max_connections: usize::try_from(or_default(max_connections, DEFAULT_MAX_CONNECTIONS))
                .unwrap_or(usize::MAX),
            listen,
            admin_listen,
            tls: tls.flatten(),
            max_body_bytes,
            max_body_bytes_in_flight,
            request_timeout: self.positive_duration(
                "server.request_timeout",
                s.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            ),
            idle_timeout: self.positive_duration(
                "server.idle_timeout",
                s.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            ),
            header_read_timeout: self.positive_duration(
                "server.header_read_timeout",
                s.header_read_timeout,
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            shutdown_grace: self.positive_duration(
                "server.shutdown_grace",
                s.shutdown_grace,
                DEFAULT_SHUTDOWN_GRACE,
            ),
        };
        (config, listen_ok)
    }

    fn tls(&mut self, t: file::Tls) -> Option<TlsConfig> {
        let cert_file = self.existing_file("server.tls.cert_file", t.cert_file);
        let key_file = self.existing_file("server.tls.key_file", t.key_file);
        Some(TlsConfig {
            cert_file: cert_file?,
            key_file: key_file?,
        })
    }

    /// A required path that must name an existing file; relative to the config's directory.
    fn existing_file(&mut self, path: &str, raw: Option<String>) -> Option<std::path::PathBuf> {
        let value = match self.text(path, raw) {
            Ok(Some(v)) if !v.is_empty() => v,
            Ok(_) => {
                self.error(path, "is required");
                return None;
            }
            Err(Reported) => return None,
        };
        let file = resolve_path(self.base_dir, &value);
        match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => Some(file),
            Ok(_) => {
                self.error(path, format!("{} is not a file", file.display()));
                None
            }
            Err(_) => {
                self.error(path, format!("file {} does not exist", file.display()));
                None
            }
        }
    }

    fn genesys(&mut self, g: file::Genesys) -> GenesysConfig {
        let api_base = self.given_base("genesys.api_base", g.api_base);
        let login_base = self.given_base("genesys.login_base", g.login_base);
        // With both hosts given the region derives nothing: any domain will do (the way to
        // use a region gcpool does not know yet).
        let both_given = !matches!(api_base, Ok(None)) && !matches!(login_base, Ok(None));
        let region = self.parse("genesys.region", g.region, |s| {
            let region = parse_region(s)?;
            if both_given {
                Ok(region)
            } else {
                known_region(region)
            }
        });
        let region = or_default(region, DEFAULT_REGION.to_owned());
        let api_base = self.base("genesys.api_base", api_base, "api", &region);
        let login_base = self.base("genesys.login_base", login_base, "login", &region);
        let key = "genesys.token_remint_interval";
        let mut token_remint_interval =
            self.positive_duration(key, g.token_remint_interval, DEFAULT_TOKEN_REMINT_INTERVAL);
        if token_remint_interval > MAX_TOKEN_REMINT_INTERVAL {
            self.error(
                key,
                format!(
                    "{} is longer than the maximum of {} (a client whose fresh token is \
                     refused sits out this long)",
                    format_duration(token_remint_interval),
                    format_duration(MAX_TOKEN_REMINT_INTERVAL)
                ),
            );
            token_remint_interval = DEFAULT_TOKEN_REMINT_INTERVAL;
        }
        GenesysConfig {
            region,
            api_base,
            login_base,
            token_remint_interval,
        }
    }

    /// `api_base` / `login_base` as given; absent or empty after expansion (as
    /// `${GCPOOL_API_BASE:-}` with the variable unset) is `Ok(None)`.
    fn given_base(&mut self, path: &str, raw: Option<String>) -> Field<Uri> {
        let Some(text) = self.text(path, raw)? else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        match parse_base_url(&text) {
            Ok(uri) => Ok(Some(uri)),
            Err(message) => {
                self.error(path, message);
                Err(Reported)
            }
        }
    }

    /// `api_base` / `login_base`: given, or `https://{host}.{region}`.
    fn base(&mut self, path: &str, given: Field<Uri>, host: &str, region: &str) -> Uri {
        let fallback = || Uri::from_static("https://api.mypurecloud.com");
        match given {
            Ok(Some(uri)) => uri,
            Err(Reported) => fallback(),
            Ok(None) => match parse_base_url(&format!("https://{host}.{region}")) {
                Ok(uri) => uri,
                Err(message) => {
                    self.error(path, message);
                    fallback()
                }
            },
        }
    }

    fn clients(&mut self, raw: Vec<file::Client>, default_rpm: NonZeroU32) -> Vec<ClientConfig> {
        if raw.is_empty() {
            self.error(
                "clients",
                "at least one client is required (the pool holds 1 to 50 OAuth clients)",
            );
        } else if raw.len() > MAX_CLIENTS {
            self.error(
                "clients",
                format!(
                    "{} clients given; the pool holds at most {MAX_CLIENTS}",
                    raw.len()
                ),
            );
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut clients = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            let p = format!("clients[{i}]");
            let name_path = format!("{p}.name");
            let name = self.required(&name_path, c.name, parse_client_name);
            if let Some(name) = &name {
                if let Some(first) = names.get(name) {
                    self.error(
                        &name_path,
                        format!("duplicate client name {name:?} (also clients[{first}].name)"),
                    );
                } else {
                    names.insert(name.clone(), i);
                }
            }
            let id_path = format!("{p}.client_id");
            let client_id = self.required(&id_path, c.client_id, non_empty);
            if let Some(id) = &client_id {
                if let Some(first) = ids.get(id) {
                    self.error(
                        &id_path,
                        format!("duplicate client_id (also clients[{first}].client_id)"),
                    );
                } else {
                    ids.insert(id.clone(), i);
                }
            }
            let secret = self.secret(&p, "client_secret", c.client_secret, c.client_secret_file);
            let rpm = self.parse(
                &format!("{p}.requests_per_minute"),
                c.requests_per_minute,
                parse_positive_u32,
            );
            clients.push(ClientConfig {
                name: name.unwrap_or_default(),
                client_id: client_id.unwrap_or_default(),
                client_secret: secret.unwrap_or_else(|| Secret::new("")),
                requests_per_minute: or_default(rpm, default_rpm),
            });
        }
        clients
    }

    /// A secret given inline (`{key}`) or read from a file (`{key}_file`); exactly one is
    /// required. Error messages never contain the value.
    fn secret(
        &mut self,
        parent: &str,
        key: &str,
        value: Option<String>,
        file: Option<String>,
    ) -> Option<Secret> {
        let value_path = format!("{parent}.{key}");
        let file_path = format!("{parent}.{key}_file");
        match (value, file) {
            (Some(_), Some(_)) => {
                self.error(
                    &value_path,
                    format!("give either {key} or {key}_file, not both"),
                );
                None
            }
            (None, None) => {
                self.error(&value_path, format!("is required (or {key}_file)"));
                None
            }
            (Some(raw), None) => match self.text(&value_path, Some(raw)) {
                Ok(Some(v)) if !v.is_empty() => Some(Secret::new(v)),
                Ok(_) => {
                    self.error(&value_path, "is empty");
                    None
                }
                Err(Reported) => None,
            },
            (None, Some(raw)) => self.secret_file(&file_path, raw).map(Secret::new),
        }
    }

    /// Reads the secret named by a `*_file` key.
    fn secret_file(&mut self, path: &str, raw: String) -> Option<String> {
        let file = match self.text(path, Some(raw)) {
            Ok(Some(v)) if !v.is_empty() => resolve_path(self.base_dir, &v),
            Ok(_) => {
                self.error(path, "is empty");
                return None;
            }
            Err(Reported) => return None,
        };
        let read = read_secret_file(&file);
        self.files.push(file);
        match read {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    fn budgets(&mut self, b: file::Budgets) -> BudgetsConfig {
        let token = self.parse(
            "budgets.token_per_minute",
            b.token_per_minute,
            parse_positive_u32,
        );
        let org = self.parse(
            "budgets.org_per_minute",
            b.org_per_minute,
            parse_positive_u32,
        );
        let window = self.positive_duration("budgets.window", b.window, DEFAULT_WINDOW);
        if window > MAX_WINDOW {
            self.error(
                "budgets.window",
                format!(
                    "{} is longer than the maximum of 1h",
                    format_duration(window)
                ),
            );
        }
        let guard = self.parse("budgets.guard", b.guard, parse_duration);
        let guard_ok = guard.is_ok();
        let guard = or_default(guard, DEFAULT_GUARD);
        if guard_ok && guard >= window {
            self.error(
                "budgets.guard",
                format!(
                    "{} must be shorter than budgets.window ({})",
                    format_duration(guard),
                    format_duration(window)
                ),
            );
        }

        let mut endpoints = Vec::new();
        let mut seen: HashMap<RouteId, usize> = HashMap::new();
        for (i, e) in b.endpoints.unwrap_or_default().into_iter().enumerate() {
            let p = format!("budgets.endpoints[{i}]");
            let route_path = format!("{p}.route");
            let route = self.required(&route_path, e.route, parse_route);
            if let Some(r) = &route {
                if let Some(first) = seen.get(&r.route) {
                    self.error(
                        &route_path,
                        format!(
                            "duplicate route {} {} (also budgets.endpoints[{first}].route)",
                            r.method, r.path
                        ),
                    );
                } else {
                    seen.insert(r.route, i);
                }
            }
            let per_minute =
                self.required(&format!("{p}.per_minute"), e.per_minute, parse_positive_u32);
            let scope = self.parse(&format!("{p}.scope"), e.scope, parse_scope);
            if let (Some(route), Some(per_minute)) = (route, per_minute) {
                endpoints.push(EndpointBudget {
                    method: route.method,
                    path: route.path,
                    route: route.route,
                    per_minute,
                    scope: or_default(scope, BudgetScope::Org),
                });
            }
        }

        let q = b.queue.unwrap_or_default();
        let max_wait = self.parse("budgets.queue.max_wait", q.max_wait, parse_duration);
        let max_pending = self.parse(
            "budgets.queue.max_pending",
            q.max_pending,
            parse_positive_usize,
        );
        BudgetsConfig {
            token_per_minute: or_default(token, DEFAULT_TOKEN_PER_MINUTE),
            org_per_minute: or_default(org, DEFAULT_ORG_PER_MINUTE),
            window,
            guard,
            endpoints,
            queue: QueueConfig {
                max_wait: or_default(max_wait, DEFAULT_MAX_WAIT),
                max_pending: or_default(max_pending, DEFAULT_MAX_PENDING),
            },
        }
    }

    fn cache(&mut self, c: file::Cache) -> CacheConfig {
        let max_entries = self.parse("cache.max_entries", c.max_entries, parse_positive_u64);
        let max_bytes = self.parse("cache.max_bytes", c.max_bytes, parse_positive_u64);
        let mut routes = Vec::new();
        let mut seen: HashMap<RouteId, usize> = HashMap::new();
        for (i, r) in c.routes.unwrap_or_default().into_iter().enumerate() {
            let p = format!("cache.routes[{i}]");
            let route_path = format!("{p}.route");
            let route = self.required(&route_path, r.route, parse_cache_route);
            if let Some(rule) = &route {
                if let Some(first) = seen.get(&rule.route) {
                    self.error(
                        &route_path,
                        format!(
                            "duplicate route {} {} (also cache.routes[{first}].route)",
                            rule.method, rule.path
                        ),
                    );
                } else {
                    seen.insert(rule.route, i);
                }
            }
            let ttl = self.required(&format!("{p}.ttl"), r.ttl, parse_duration);
            let stale = self.parse(
                &format!("{p}.stale_if_limited"),
                r.stale_if_limited,
                parse_duration,
            );
            let ignore = self.parse(
                &format!("{p}.ignore_upstream_cache_headers"),
                r.ignore_upstream_cache_headers,
                parse_bool,
            );
            if let (Some(rule), Some(ttl)) = (route, ttl) {
                routes.push(CacheRoute {
                    method: rule.method,
                    path: rule.path,
                    route: rule.route,
                    ttl,
                    stale_if_limited: or_default(stale, Duration::ZERO),
                    ignore_upstream_cache_headers: or_default(ignore, false),
                });
            }
        }
        CacheConfig {
            max_entries: or_default(max_entries, DEFAULT_CACHE_MAX_ENTRIES),
            max_bytes: or_default(max_bytes, DEFAULT_CACHE_MAX_BYTES),
            routes,
        }
    }

    /// `listen` is `server.listen` when it was valid; `queue_max_wait` bounds a caller's
    /// `max_wait`; a caller's `clients` are among `client_names`.
    fn inbound(
        &mut self,
        i: file::Inbound,
        listen: Option<SocketAddr>,
        queue_max_wait: Duration,
        client_names: &[&str],
    ) -> InboundConfig {
        let limits = CallerLimits {
            queue_max_wait,
            client_names,
        };
        let raw_keys = i.api_keys.unwrap_or_default();
        let key_count = raw_keys.len();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut api_keys = Vec::new();
        // Each key's digest, in order (a repeated key is refused).
        let mut key_digests: Vec<(usize, [u8; 32])> = Vec::new();
        for (n, k) in raw_keys.into_iter().enumerate() {
            let p = format!("inbound.api_keys[{n}]");
            let name_path = format!("{p}.name");
            let name = self.required(&name_path, k.name, non_empty);
            if let Some(name) = &name {
                if !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                {
                    self.error(
                        &name_path,
                        format!(
                            "{name:?}: a caller's name is its metrics label; use letters, \
                             digits, '.', '_' and '-' only"
                        ),
                    );
                } else if [ANONYMOUS_CALLER, UNKNOWN_CALLER]
                    .iter()
                    .any(|taken| name.eq_ignore_ascii_case(taken))
                {
                    self.error(
                        &name_path,
                        format!(
                            "{name:?} is the caller label of requests without a key; name the \
                             key otherwise"
                        ),
                    );
                } else if let Some(first) = names.get(name) {
                    self.error(
                        &name_path,
                        format!(
                            "duplicate api key name {name:?} (also inbound.api_keys[{first}].name)"
                        ),
                    );
                } else {
                    names.insert(name.clone(), n);
                }
            }
            let digests = self.api_key_digest(&p, k.key_sha256, k.key, k.key_file);
            if let Some((digest, _)) = &digests {
                if let Some(&(first, _)) = key_digests.iter().find(|(_, d)| d == digest) {
                    self.error(
                        &p,
                        format!(
                            "has the same key as inbound.api_keys[{first}]: a key says who calls, \
                             so each caller needs its own"
                        ),
                    );
                }
                key_digests.push((n, *digest));
            }
            let caller = self.caller_policy(
                &p,
                file::AnonymousCaller {
                    max_wait: k.max_wait,
                    allow_routes: k.allow_routes,
                    clients: k.clients,
                    per_minute: k.per_minute,
                    lane: k.lane,
                },
                &limits,
            );
            if let (Some(name), Some((sha256, token_key))) = (name, digests) {
                api_keys.push(ApiKey {
                    name,
                    sha256,
                    token_key,
                    caller,
                });
            }
        }

        let anonymous = self.parse("inbound.allow_anonymous", i.allow_anonymous, parse_bool);
        match (anonymous, listen) {
            (Ok(Some(true)), Some(listen)) if !listen.ip().is_loopback() => self.error(
                "inbound.allow_anonymous",
                format!(
                    "anonymous callers are allowed only when server.listen is a loopback address \
                     (127.0.0.0/8 or ::1), and {listen} is not: anyone who reaches it could spend \
                     the pool's quota; add inbound.api_keys instead"
                ),
            ),
            (Ok(None | Some(false)), _) if key_count == 0 => self.error(
                "inbound",
                "no caller could be authenticated: add inbound.api_keys or allow_anonymous on a \
                 loopback listener",
            ),
            _ => {}
        }

        let allow_routes = self.routes("inbound.allow_routes", i.allow_routes);
        let anonymous_caller = match i.anonymous_caller {
            Some(a) => self.caller_policy("inbound.anonymous_caller", a, &limits),
            None => CallerPolicy::default(),
        };
        let lanes = self.lanes(i.lanes);
        let gateway = i.gateway.map(|g| self.gateway(g));
        InboundConfig {
            api_keys,
            allow_anonymous: or_default(anonymous, false),
            allow_routes,
            anonymous_caller,
            lanes,
            gateway,
        }
    }

    /// `inbound.gateway`: the SDKs' login and API path prefixes and the caller tokens'
    /// lifetime, each defaulted when left out.
    fn gateway(&mut self, g: file::Gateway) -> GatewayConfig {
        let login_path = self.parse(
            "inbound.gateway.login_path",
            g.login_path,
            parse_path_prefix,
        );
        let api_path = self.parse("inbound.gateway.api_path", g.api_path, parse_path_prefix);
        let path = "inbound.gateway.token_lifetime";
        let token_lifetime = match self.parse(path, g.token_lifetime, parse_duration) {
            Ok(Some(d)) if d < Duration::from_secs(1) || d.subsec_nanos() != 0 => {
                self.error(
                    path,
                    format!("{}: give whole seconds, at least 1s", format_duration(d)),
                );
                DEFAULT_GATEWAY_TOKEN_LIFETIME
            }
            Ok(Some(d)) if d > MAX_GATEWAY_TOKEN_LIFETIME => {
                self.error(
                    path,
                    format!(
                        "{} is longer than {} (Genesys' own longest token lifetime)",
                        format_duration(d),
                        format_duration(MAX_GATEWAY_TOKEN_LIFETIME)
                    ),
                );
                DEFAULT_GATEWAY_TOKEN_LIFETIME
            }
            other => or_default(other, DEFAULT_GATEWAY_TOKEN_LIFETIME),
        };
        let parsed = login_path.is_ok() && api_path.is_ok();
        let login_path = or_default(login_path, DEFAULT_GATEWAY_LOGIN_PATH.to_owned());
        let api_path = or_default(api_path, String::new());
        // The login must not shadow an API path (`/api/v2/...`, `{api_path}/api/v2/...`).
        let login = format!("{login_path}/oauth/token");
        if parsed
            && (login.starts_with("/api/v2/") || login.starts_with(&format!("{api_path}/api/v2/")))
        {
            self.error(
                "inbound.gateway.login_path",
                format!(
                    "{login:?} lies where API calls go ({api_path}/api/v2/...): give the login a \
                     path of its own, e.g. /login"
                ),
            );
        }
        GatewayConfig {
            login_path,
            api_path,
            token_lifetime,
        }
    }

    /// A list of routes (`"GET /api/v2/..."` each) at `path`.
    fn routes(&mut self, path: &str, raw: Option<Vec<String>>) -> Vec<RouteRule> {
        let mut routes = Vec::new();
        for (n, raw) in raw.unwrap_or_default().into_iter().enumerate() {
            if let Some(route) = self.required(&format!("{path}[{n}]"), Some(raw), parse_route) {
                routes.push(route);
            }
        }
        routes
    }

    /// A caller's own rules at `parent` (`max_wait`, `allow_routes`, `clients`; an api key
    /// entry's are read into the anonymous caller's shape).
    fn caller_policy(
        &mut self,
        parent: &str,
        raw: file::AnonymousCaller,
        limits: &CallerLimits<'_>,
    ) -> CallerPolicy {
        let queue_max_wait = limits.queue_max_wait;
        let path = format!("{parent}.max_wait");
        let max_wait = match self.parse(&path, raw.max_wait, parse_duration) {
            Ok(Some(wait)) if wait > queue_max_wait => {
                self.error(
                    &path,
                    format!(
                        "{} is longer than budgets.queue.max_wait ({}): no request waits longer \
                         than that",
                        format_duration(wait),
                        format_duration(queue_max_wait)
                    ),
                );
                None
            }
            Ok(wait) => wait,
            Err(Reported) => None,
        };
        let mut clients: Vec<String> = Vec::new();
        if let Some(raw) = &raw.clients
            && raw.is_empty()
        {
            self.error(
                format!("{parent}.clients"),
                "is empty: name at least one client of the pool, or leave the key out (all of them)",
            );
        }
        for (n, name) in raw.clients.unwrap_or_default().into_iter().enumerate() {
            let path = format!("{parent}.clients[{n}]");
            if !limits.client_names.contains(&name.as_str()) {
                self.error(
                    &path,
                    format!(
                        "{name:?} is not a client of the pool (clients: {})",
                        limits.client_names.join(", ")
                    ),
                );
            } else if clients.contains(&name) {
                self.error(&path, format!("{name:?} is listed twice"));
            } else {
                clients.push(name);
            }
        }
        let per_minute = self
            .parse(
                &format!("{parent}.per_minute"),
                raw.per_minute,
                parse_positive_u32,
            )
            .ok()
            .flatten();
        let lane = self
            .parse(&format!("{parent}.lane"), raw.lane, parse_lane)
            .ok()
            .flatten()
            .unwrap_or_default();
        CallerPolicy {
            max_wait,
            allow_routes: self.routes(&format!("{parent}.allow_routes"), raw.allow_routes),
            clients,
            per_minute,
            lane,
        }
    }

    /// `inbound.lanes`: each lane's share in `(0, 1]`, none above a higher lane's.
    fn lanes(&mut self, raw: Option<file::Lanes>) -> LaneShares {
        let Some(raw) = raw else {
            return LaneShares::default();
        };
        // Each lane's share and whether the config wrote it (`None`: refused above).
        let mut share = |path: &str, raw: Option<String>| match self.parse(path, raw, parse_share) {
            Ok(share) => Some((share.unwrap_or(1000), share.is_some())),
            Err(Reported) => None,
        };
        let given = [
            share("inbound.lanes.realtime", raw.realtime),
            share("inbound.lanes.standard", raw.standard),
            share("inbound.lanes.batch", raw.batch),
        ];
        // Lanes whose share was refused above are not compared: one error each.
        for pair in [(0, 1), (1, 2), (0, 2)] {
            let (Some((high, high_written)), Some((low, low_written))) =
                (given[pair.0], given[pair.1])
            else {
                continue;
            };
            let (higher, lower) = (Lane::ALL[pair.0], Lane::ALL[pair.1]);
            if low > high && (pair != (0, 2) || given[1].is_none()) {
                let default = |written: bool| if written { "" } else { " (its default)" };
                self.error(
                    format!("inbound.lanes.{}", lower.name()),
                    format!(
                        "{}{} is more than {}'s {}{}: a lane may fill no more of a budget than \
                         the lanes above it",
                        format_share(low),
                        default(low_written),
                        higher.name(),
                        format_share(high),
                        default(high_written)
                    ),
                );
            }
        }
        let parsed = given.map(|g| g.map(|(share, _)| share));
        let [realtime, standard, batch] = parsed.map(|p| p.unwrap_or(1000));
        LaneShares {
            realtime,
            standard,
            batch,
        }
    }

    /// Exactly one of `key_sha256`, `key` (hashed here) or `key_file` (read, then hashed):
    /// the key's digest, and its gateway token key when the key itself was given.
    fn api_key_digest(
        &mut self,
        parent: &str,
        key_sha256: Option<String>,
        key: Option<String>,
        key_file: Option<String>,
    ) -> Option<([u8; 32], Option<TokenKey>)> {
        let given = [key_sha256.is_some(), key.is_some(), key_file.is_some()];
        match given.iter().filter(|g| **g).count() {
            0 => {
                self.error(
                    format!("{parent}.key_sha256"),
                    "is required (or key, or key_file)",
                );
                return None;
            }
            1 => {}
            _ => {
                self.error(parent, "give exactly one of key_sha256, key or key_file");
                return None;
            }
        }
        if let Some(raw) = key_sha256 {
            let path = format!("{parent}.key_sha256");
            return self
                .required(&path, Some(raw), parse_sha256_hex)
                .map(|digest| (digest, None));
        }
        if let Some(raw) = key {
            let path = format!("{parent}.key");
            return match self.text(&path, Some(raw)) {
                Ok(Some(v)) if !v.is_empty() => Some((
                    Sha256::digest(v.as_bytes()).into(),
                    Some(TokenKey::derive(&v)),
                )),
                Ok(_) => {
                    self.error(&path, "is empty");
                    None
                }
                Err(Reported) => None,
            };
        }
        let raw = key_file?;
        let value = self.secret_file(&format!("{parent}.key_file"), raw)?;
        Some((
            Sha256::digest(value.as_bytes()).into(),
            Some(TokenKey::derive(&value)),
        ))
    }

    fn shared_state(&mut self, s: file::SharedState) -> SharedStateConfig {
        let from_file = s.redis_url_file.is_some();
        let url = self.secret("shared_state", "redis_url", s.redis_url, s.redis_url_file);
        if let Some(url) = &url {
            let path = if from_file {
                "shared_state.redis_url_file"
            } else {
                "shared_state.redis_url"
            };
            if let Err(message) = check_redis_url(url.expose()) {
                self.error(path, message);
            }
        }
        let prefix = self.parse("shared_state.key_prefix", s.key_prefix, parse_key_prefix);
        let replicas = self.parse(
            "shared_state.replicas_hint",
            s.replicas_hint,
            parse_positive_u32,
        );
        let timeout = self.parse("shared_state.timeout", s.timeout, parse_redis_timeout);
        SharedStateConfig {
            redis_url: url.unwrap_or_else(|| Secret::new("")),
            key_prefix: or_default(prefix, DEFAULT_KEY_PREFIX.to_owned()),
            replicas_hint: or_default(replicas, DEFAULT_REPLICAS_HINT),
            timeout: or_default(timeout, DEFAULT_REDIS_TIMEOUT),
        }
    }

    // --- helpers ---

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    /// The value with `${VAR}` expanded; `Ok(None)` when the key is absent.
    fn text(&mut self, path: &str, raw: Option<String>) -> Field<String> {
        let Some(raw) = raw else { return Ok(None) };
        match expand(&raw, self.env) {
            Ok(value) => Ok(Some(value)),
            Err(err) => {
                self.error(path, err.message(is_credential(path)));
                Err(Reported)
            }
        }
    }

    /// The value expanded and parsed; `Ok(None)` when the key is absent.
    fn parse<T>(
        &mut self,
        path: &str,
        raw: Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Field<T> {
        let Some(text) = self.text(path, raw)? else {
            return Ok(None);
        };
        match parse(&text) {
            Ok(value) => Ok(Some(value)),
            Err(message) => {
                self.error(path, message);
                Err(Reported)
            }
        }
    }

    /// Like [`Validator::parse`] for a key that must be present.
    fn required<T>(
        &mut self,
        path: &str,
        raw: Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.parse(path, raw, parse) {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                self.error(path, "is required");
                None
            }
            Err(Reported) => None,
        }
    }

    /// A duration greater than zero, or `default` when absent.
    fn positive_duration(
        &mut self,
        path: &str,
        raw: Option<String>,
        default: Duration,
    ) -> Duration {
        match self.parse(path, raw, parse_duration) {
            Ok(Some(d)) if d.is_zero() => {
                self.error(path, "must be greater than 0");
                default
            }
            other => or_default(other, default),
        }
    }
}

/// The value, or `default` when absent or invalid (an invalid value's error is recorded).
fn or_default<T>(field: Field<T>, default: T) -> T {
    match field {
        Ok(Some(value)) => value,
        Ok(None) | Err(Reported) => default,
    }
}

/// True when two listeners would fight over one port. Port 0 picks a free port, so never.
fn collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

// === value parsers: each returns a lower-case message naming what is wrong ===

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "{s:?} is not an address such as 127.0.0.1:8080 or [::1]:8080 (IP and port; host \
             names are not resolved)"
        )
    })
}

fn parse_whole(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!(
            "{s:?} is negative; expected a whole number greater than 0"
        ));
    }
    t.parse::<u64>()
        .map_err(|_| format!("expected a whole number greater than 0, found {s:?}"))
}

fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match parse_whole(s)? {
        0 => Err("must be greater than 0".into()),
        n => Ok(n),
    }
}

/// `shared_state.timeout`: between 1 ms and [`MAX_REDIS_TIMEOUT`].
fn parse_redis_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) || d > MAX_REDIS_TIMEOUT {
        return Err(format!(
            "must be between 1ms and {} (got {s}): it is how long a request waits for Redis \
             before this replica decides on its local share",
            format_duration(MAX_REDIS_TIMEOUT)
        ));
    }
    Ok(d)
}

fn parse_positive_u32(s: &str) -> Result<NonZeroU32, String> {
    let n = parse_positive_u64(s)?;
    u32::try_from(n)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("{n} is too large (at most {})", u32::MAX))
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    let n = parse_positive_u64(s)?;
    usize::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// Lanes in use whose share rounds some budget down to nothing: their callers can never be
/// admitted where that budget applies. A budget counts only for the callers it can apply to:
/// a client's token budget for those whose sub-pool holds that client, a route's budget for
/// those the route is allowed to (globally and by their own list).
fn empty_lanes(
    budgets: &BudgetsConfig,
    clients: &[ClientConfig],
    inbound: &InboundConfig,
) -> Vec<String> {
    /// Whom a budget applies to: every caller, those who may use a client, those who may
    /// call a route.
    enum Applies<'a> {
        All,
        Client(&'a str),
        Route(RouteId),
    }
    let allowed = |rules: &[RouteRule], route: RouteId| {
        rules.is_empty() || rules.iter().any(|r| r.route == route)
    };
    let applies = |to: &Applies<'_>, caller: &CallerPolicy| match *to {
        Applies::All => true,
        Applies::Client(name) => {
            caller.clients.is_empty() || caller.clients.iter().any(|c| c == name)
        }
        Applies::Route(route) => {
            allowed(&inbound.allow_routes, route) && allowed(&caller.allow_routes, route)
        }
    };
    let window = budgets.window;
    let mut limits: Vec<(String, u32, Applies<'_>)> = clients
        .iter()
        .map(|c| {
            (
                format!("the token budget of client {}", c.name),
                per_window(c.requests_per_minute.get(), window),
                Applies::Client(&c.name),
            )
        })
        .collect();
    limits.push((
        "budgets.org_per_minute".to_owned(),
        per_window(budgets.org_per_minute.get(), window),
        Applies::All,
    ));
    for e in &budgets.endpoints {
        limits.push((
            format!("the budget of \"{} {}\"", e.method, e.path),
            per_window(e.per_minute.get(), window),
            Applies::Route(e.route),
        ));
    }
    let mut warnings = Vec::new();
    for lane in Lane::ALL {
        let share = inbound.lanes.permille(lane);
        if share == 1000 {
            continue;
        }
        let in_lane: Vec<(&str, &CallerPolicy)> = inbound
            .callers()
            .filter(|&(name, c)| {
                c.lane == lane && (name != ANONYMOUS_CALLER || inbound.allow_anonymous)
            })
            .collect();
        for (budget, limit, to) in &limits {
            if share_of(share, *limit) != 0 {
                continue;
            }
            let callers: Vec<&str> = in_lane
                .iter()
                .filter(|&&(_, c)| applies(to, c))
                .map(|&(name, _)| name)
                .collect();
            if callers.is_empty() {
                continue;
            }
            warnings.push(format!(
                "inbound.lanes.{} is {}: of {budget} ({limit} per {} window) it fills \
                 nothing, so its callers ({}) can never be admitted where it applies",
                lane.name(),
                format_share(share),
                format_duration(window),
                callers.join(", ")
            ));
        }
    }
    warnings
}

/// A lane's name: `realtime`, `standard` or `batch`.
fn parse_lane(s: &str) -> Result<Lane, String> {
    Lane::ALL
        .into_iter()
        .find(|lane| lane.name() == s.trim())
        .ok_or_else(|| format!("{s:?} is not a lane: use realtime, standard or batch"))
}

/// A share of a budget: a number in `(0, 1]` (`0.5`) or a percentage (`50%`), kept in
/// thousandths.
fn parse_share(s: &str) -> Result<u16, String> {
    let text = s.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent.trim(), 10.0),
        None => (text, 1000.0),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("{s:?} is not a share such as 0.5 or 50%"))?;
    let permille = value * scale;
    if permille <= 0.0 || permille > 1000.0 {
        return Err(format!(
            "{s:?} is not in (0, 1]: a lane fills part of a budget, or all of it (1.0)"
        ));
    }
    if (permille - permille.round()).abs() > 1e-6 {
        return Err(format!(
            "{s:?}: a share is kept to a thousandth (e.g. 0.125)"
        ));
    }
    // In 1..=1000 after the checks above.
    Ok(permille.round() as u16)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected true or false, found {s:?}")),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// `[a-z0-9][a-z0-9._-]*`, at most 64 characters: safe as a metric label and in logs.
/// A path prefix of `inbound.gateway`: empty, or `/` and segments of unreserved characters
/// (letters, digits, `-`, `.`, `_`, `~`) that are not `.` or `..`; no trailing `/`. Compared
/// with the request's raw path bytes, so no percent-encoded form can match it.
fn parse_path_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!(
            "{s:?}: a path starts with / (e.g. /login), or is empty"
        ));
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err(format!(
            "{s:?}: no trailing / (the root is the empty path \"\")"
        ));
    }
    for segment in rest.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!("{s:?}: an empty, . or .. segment"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(format!(
                "{s:?}: use letters, digits, '-', '.', '_' and '~' between the slashes"
            ));
        }
    }
    Ok(s.to_owned())
}

fn parse_client_name(s: &str) -> Result<String, String> {
    let valid_first = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid_rest = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if s.is_empty() {
        Err("must not be empty".into())
    } else if s.len() > MAX_CLIENT_NAME {
        Err(format!("is longer than {MAX_CLIENT_NAME} characters"))
    } else if !valid_first || !valid_rest {
        Err(format!(
            "{s:?} is not a valid name: use lower-case letters, digits, `.`, `_` and `-`, \
             starting with a letter or digit (e.g. pool-01)"
        ))
    } else {
        Ok(s.to_owned())
    }
}

/// A plain domain such as `mypurecloud.com` or `euw2.pure.cloud`.
fn parse_region(s: &str) -> Result<String, String> {
    let hint = "expected a Genesys Cloud region domain such as mypurecloud.com or euw2.pure.cloud";
    if s.contains("://") || s.contains('/') {
        return Err(format!(
            "{s:?} is not a plain domain (no scheme, no path); {hint}"
        ));
    }
    let labels_ok = s.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if !labels_ok || !s.contains('.') {
        return Err(format!("{s:?} is not a domain; {hint}"));
    }
    Ok(s.to_ascii_lowercase())
}

/// Whether the key at `path` holds a credential (an id, a secret, a URL with a password).
fn is_credential(path: &str) -> bool {
    let key = path.rsplit('.').next().unwrap_or_default();
    matches!(
        key,
        "client_id" | "client_secret" | "key" | "key_sha256" | "redis_url"
    )
}

/// The Genesys Cloud region domains (API host `api.{domain}`, login host `login.{domain}`):
/// the 18 regions of the Python and JS SDK enums (PureCloudRegionHosts, 2025).
const KNOWN_REGIONS: [&str; 18] = [
    "mypurecloud.com",
    "use2.us-gov-pure.cloud",
    "usw2.pure.cloud",
    "cac1.pure.cloud",
    "sae1.pure.cloud",
    "mxc1.pure.cloud",
    "mypurecloud.ie",
    "euw2.pure.cloud",
    "mypurecloud.de",
    "euc2.pure.cloud",
    "edee1.eusc-pure.cloud",
    "mec1.pure.cloud",
    "aps1.pure.cloud",
    "apse1.pure.cloud",
    "mypurecloud.com.au",
    "mypurecloud.jp",
    "apne2.pure.cloud",
    "apne3.pure.cloud",
];

/// `region` (a syntactically valid domain, lower case) if it is a known Genesys Cloud
/// region; else an error with the nearest known one, or the list.
fn known_region(region: String) -> Result<String, String> {
    if KNOWN_REGIONS.contains(&region.as_str()) {
        return Ok(region);
    }
    let escape = "for a region gcpool does not know yet, set genesys.api_base and \
                  genesys.login_base: the region is then not used";
    // `api.mypurecloud.com`, `login.euw2.pure.cloud`: a host where the domain belongs.
    let host_of = ["api.", "login.", "apps."]
        .iter()
        .find_map(|p| region.strip_prefix(p))
        .filter(|rest| KNOWN_REGIONS.contains(rest));
    if let Some(domain) = host_of {
        return Err(format!(
            "{region:?} is a host name, not a region domain; did you mean {domain}?"
        ));
    }
    let nearest = KNOWN_REGIONS
        .iter()
        .map(|known| (crate::routes::edit_distance(&region, known), *known))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match nearest {
        Some((_, known)) => Err(format!(
            "{region:?} is not a Genesys Cloud region; did you mean {known}? Or, {escape}"
        )),
        None => Err(format!(
            "{region:?} is not a Genesys Cloud region (they are {}); {escape}",
            KNOWN_REGIONS.join(", ")
        )),
    }
}

/// An `http`/`https` URL with a host and no path, query or credentials; stored without a path.
fn parse_base_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a URL such as https://api.mypurecloud.com"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        Some(other) => return Err(format!("{s:?} has scheme {other:?}; use http or https")),
        None => {
            return Err(format!(
                "{s:?} has no scheme; write e.g. https://api.mypurecloud.com"
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{s:?} has no host"));
    };
    if authority.host().is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("{s:?} must not contain credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?} must not have a path or query: gcpool appends /api/v2/... itself"
        ));
    }
    format!("{scheme}://{authority}")
        .parse()
        .map_err(|_| format!("{s:?} is not a URL such as https://api.mypurecloud.com"))
}

/// `"METHOD /api/v2/..."` naming an operation of the Genesys route table, exactly
/// (parameter names included).
/// Routes as the config writes them (`"GET /api/v2/..."`).
fn route_texts(routes: &[RouteRule]) -> Vec<String> {
    routes
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn resolved_caller(caller: &CallerPolicy) -> file::ResolvedCaller {
    file::ResolvedCaller {
        max_wait: caller.max_wait.map(format_duration),
        allow_routes: route_texts(&caller.allow_routes),
        clients: caller.clients.clone(),
        per_minute: caller.per_minute.map(NonZeroU32::get),
        lane: caller.lane.name(),
    }
}

/// What bounds a caller's own rules: the queue's wait, the pool's clients.
struct CallerLimits<'a> {
    queue_max_wait: Duration,
    client_names: &'a [&'a str],
}

fn parse_route(s: &str) -> Result<RouteRule, String> {
    let (method, path) = parse_route_text(s)?;
    let table = RouteTable::genesys();
    match table.find_template(&method, &path) {
        Some(route) => Ok(RouteRule {
            method,
            path,
            route,
        }),
        None => Err(unknown_route(table, &method, &path)),
    }
}

/// A route the cache may keep answers of: a `GET` or `HEAD` operation whose answer does not
/// depend on which pool client asks (SPEC §11).
fn parse_cache_route(s: &str) -> Result<RouteRule, String> {
    let rule = parse_route(s)?;
    if rule.method != Method::GET && rule.method != Method::HEAD {
        return Err(format!(
            "{} {} cannot be cached: only GET and HEAD answers are",
            rule.method, rule.path
        ));
    }
    if rule.path.split('/').any(|segment| segment == "me") {
        return Err(format!(
            "{} {} answers about the calling token's own identity (its `me` segment): each \
             pool client gets its own answer, so one cannot stand in for another",
            rule.method, rule.path
        ));
    }
    Ok(rule)
}

/// Why `method path` is not a route, with the operation it probably means.
fn unknown_route(table: &RouteTable, method: &Method, path: &str) -> String {
    let mut message =
        format!("unknown route \"{method} {path}\" (not a Genesys Platform API operation)");
    if let Some(op) = table.suggest(method, path) {
        message.push_str(&format!("; did you mean \"{op}\"?"));
    } else {
        let methods = table.methods_at(path);
        if !methods.is_empty() {
            let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            message.push_str(&format!("; that path has {}", names.join(", ")));
        }
    }
    message
}

/// The form of a route: `"METHOD /api/v2/..."` with literal segments and whole-segment
/// `{param}`s. Whether it exists is [`parse_route`]'s question.
fn parse_route_text(s: &str) -> Result<(Method, String), String> {
    let example = "e.g. \"GET /api/v2/users/{userId}\"";
    let mut parts = s.split_whitespace();
    let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "route {s:?} is not \"METHOD /api/v2/...\"; {example}"
        ));
    };
    let Some(method) = ROUTE_METHODS.iter().find(|m| m.as_str() == method) else {
        return Err(format!(
            "method {method:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"
        ));
    };
    let Some(rest) = path.strip_prefix("/api/v2/") else {
        return Err(format!(
            "path {path:?} does not start with /api/v2/; {example}"
        ));
    };
    let mut params: Vec<&str> = Vec::new();
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(format!(
                "path {path:?} has an empty segment (a double or trailing slash)"
            ));
        }
        if let Some(inner) = segment.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(format!(
                    "segment {segment:?} of {path:?} must be a whole {{param}} or a literal"
                ));
            };
            let name_ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(format!(
                    "parameter {segment:?} of {path:?} must be a name of letters, digits and `_`"
                ));
            }
            if params.contains(&name) {
                return Err(format!("parameter {segment:?} appears twice in {path:?}"));
            }
            params.push(name);
        } else if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~' | ':'))
        {
            return Err(format!(
                "segment {segment:?} of {path:?} must be a whole {{param}} or a literal of \
                 letters, digits, `.`, `_` and `-`"
            ));
        }
    }
    Ok((method.clone(), path.to_owned()))
}

fn parse_scope(s: &str) -> Result<BudgetScope, String> {
    match s.trim() {
        "org" => Ok(BudgetScope::Org),
        "token" => Ok(BudgetScope::Token),
        _ => Err(format!("scope {s:?} is not org or token")),
    }
}

/// 64 hex characters. The message does not echo the value.
fn parse_sha256_hex(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    let bytes = s.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "must be 64 hex characters (the sha256 of the key, e.g. from `sha256sum`), found {} characters",
            s.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).map_err(|_| "must be 64 hex characters".to_owned())?;
        *byte = u8::from_str_radix(hex, 16).map_err(|_| "must be 64 hex characters".to_owned())?;
    }
    Ok(out)
}

/// `redis://` or `rediss://` with a host. The message does not echo the URL (it may hold a
/// password).
fn check_redis_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err("must start with redis:// or rediss://".into());
    };
    let after_userinfo = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = after_userinfo
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    if host.is_empty() {
        return Err("has no host (expected e.g. redis://redis:6379/0)".into());
    }
    Ok(())
}

fn parse_key_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else if s.chars().any(char::is_whitespace) {
        Err(format!("{s:?} must not contain whitespace"))
    } else {
        Ok(s.to_owned())
    }
}

/// `scheme://authority`, without the `/` that `Uri`'s `Display` adds.
fn base_url(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => uri.to_string(),
    }
}

/// The Redis URL with any user info (password) and query replaced, so it can be printed.
fn redact_redis_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.into();
    };
    // The last `@` ends the user info; a password may itself contain `/`, `?` or `#`.
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_owned(),
    };
    match rest.find(['?', '#']) {
        Some(i) => format!("{scheme}://{}?{REDACTED}", &rest[..i]),
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CLIENT: &str =
        "clients:\n  - name: pool-01\n    client_id: id-01\n    client_secret: s3cret-01\n";
    const ANON: &str = "inbound:\n  allow_anonymous: true\n";

    fn no_env() -> HashMap<String, String> {
        HashMap::new()
    }

    fn ok_in(text: &str, dir: &Path, env: &HashMap<String, String>) -> Config {
        match from_yaml(text, dir, env) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    fn ok(text: &str) -> Config {
        ok_in(text, Path::new("."), &no_env())
    }

    fn errors_in(text: &str, dir: &Path, env: &HashMap<String, String>) -> Vec<ConfigError> {
        match from_yaml(text, dir, env) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(e) => e.0,
        }
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        errors_in(text, Path::new("."), &no_env())
    }

    /// The one error at `path`; fails when there is none or more than one.
    fn error_at<'a>(errs: &'a [ConfigError], path: &str) -> &'a str {
        let found: Vec<_> = errs.iter().filter(|e| e.path == path).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one error at {path}, got: {errs:#?}"
        );
        &found[0].message
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let c = ok(&format!("{CLIENT}{ANON}"));
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.admin_listen, "127.0.0.1:9464".parse().unwrap());
        assert!(c.server.tls.is_none());
        assert_eq!(c.server.max_body_bytes, 512_000);
        assert_eq!(c.server.request_timeout, Duration::from_secs(30));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.genesys.region, "mypurecloud.com");
        assert_eq!(base_url(&c.genesys.api_base), "https://api.mypurecloud.com");
        assert_eq!(
            base_url(&c.genesys.login_base),
            "https://login.mypurecloud.com"
        );
        assert_eq!(c.clients.len(), 1);
        assert_eq!(c.clients[0].name, "pool-01");
        assert_eq!(c.clients[0].client_id, "id-01");
        assert_eq!(c.clients[0].client_secret.expose(), "s3cret-01");
        assert_eq!(c.clients[0].requests_per_minute.get(), 300);
        assert_eq!(c.budgets.token_per_minute.get(), 300);
        assert_eq!(c.budgets.org_per_minute.get(), 3000);
        assert_eq!(c.budgets.window, Duration::from_secs(60));
        assert_eq!(c.budgets.guard, Duration::from_millis(50));
        assert!(c.budgets.endpoints.is_empty());
        assert_eq!(c.budgets.queue.max_wait, Duration::from_secs(10));
        assert_eq!(c.budgets.queue.max_pending, 10_000);
        assert!(c.inbound.allow_anonymous);
        assert!(c.inbound.api_keys.is_empty() && c.inbound.allow_routes.is_empty());
        assert!(c.shared_state.is_none());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let text = "\
server:
  listen: nowhere
  request_timeout: 0s
clients:
  - name: Pool_01
    client_id: a
    client_secret: ''
  - name: pool-02
    client_id: a
    client_secret: x
budgets:
  window: 2h
  endpoints:
    - route: GET /users
      per_minute: 0
";
        let errs = errors(text);
        assert!(error_at(&errs, "server.listen").contains("\"nowhere\" is not an address"));
        assert!(error_at(&errs, "server.request_timeout").contains("greater than 0"));
        assert!(error_at(&errs, "clients[0].name").contains("not a valid name"));
        assert!(error_at(&errs, "clients[0].client_secret").contains("empty"));
        assert!(error_at(&errs, "clients[1].client_id").contains("duplicate client_id"));
        assert!(error_at(&errs, "budgets.window").contains("1h"));
        assert!(error_at(&errs, "budgets.endpoints[0].route").contains("/api/v2/"));
        assert!(error_at(&errs, "budgets.endpoints[0].per_minute").contains("greater than 0"));
        assert!(error_at(&errs, "inbound").contains("no caller could be authenticated"));
        assert_eq!(errs.len(), 9, "{errs:#?}");
    }

    #[test]
    fn missing_variable_names_it_and_the_key_path() {
        let text = format!(
            "{ANON}clients:\n  - name: a\n    client_id: x\n    client_secret: ${{GC_CLIENT_04_SECRET}}\n"
        );
        let errs = errors(&text);
        let msg = error_at(&errs, "clients[0].client_secret");
        assert!(msg.contains("GC_CLIENT_04_SECRET is not set"), "{msg}");
        assert_eq!(errs.len(), 1, "no second 'is empty' error: {errs:#?}");
    }

    #[test]
    fn variables_expand_in_every_value_but_not_in_keys() {
        let env: HashMap<String, String> = [
            ("ID", "id-from-env"),
            ("SECRET", "secret-from-env"),
            ("RPM", "120"),
            ("ANON", "true"),
            ("PORT", "18080"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let text = "\
server:
  listen: 127.0.0.1:${PORT}
clients:
  - name: pool-01
    client_id: ${ID}
    client_secret: ${SECRET}
    requests_per_minute: ${RPM}
inbound:
  allow_anonymous: ${ANON}
";
        let c = ok_in(text, Path::new("."), &env);
        assert_eq!(c.server.listen.port(), 18080);
        assert_eq!(c.clients[0].client_id, "id-from-env");
        assert_eq!(c.clients[0].client_secret.expose(), "secret-from-env");
        assert_eq!(c.clients[0].requests_per_minute.get(), 120);
        assert!(c.inbound.allow_anonymous);

        let errs = errors_in(
            &format!("{CLIENT}{ANON}${{KEY}}: 1\n"),
            Path::new("."),
            &env,
        );
        assert!(errs[0].message.contains("unknown key"), "{errs:#?}");
    }

    #[test]
    fn a_variable_cannot_inject_yaml() {
        let env: HashMap<String, String> = [("ID", "x\nserver:\n  listen: 0.0.0.0:1".to_owned())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let text =
            format!("{ANON}clients:\n  - name: a\n    client_id: ${{ID}}\n    client_secret: s\n");
        let c = ok_in(&text, Path::new("."), &env);
        assert_eq!(c.clients[0].client_id, "x\nserver:\n  listen: 0.0.0.0:1");
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
    }

    #[test]
    fn secrets_come_from_exactly_one_of_value_or_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/gc01"), "from-file\n").unwrap();
        let text = format!(
            "{ANON}clients:\n  - name: a\n    client_id: x\n    client_secret_file: secrets/gc01\n"
        );
        let c = ok_in(&text, dir.path(), &no_env());
        assert_eq!(c.clients[0].client_secret.expose(), "from-file");

        let text = format!(
            "{ANON}clients:\n  - name: a\n    client_id: x\n    client_secret: y\n    client_secret_file: secrets/gc01\n"
        );
        let errs = errors_in(&text, dir.path(), &no_env());
        assert!(error_at(&errs, "clients[0].client_secret").contains("not both"));

        let errs = errors(&format!("{ANON}clients:\n  - name: a\n    client_id: x\n"));
        assert!(error_at(&errs, "clients[0].client_secret").contains("is required"));
    }

    #[test]
    fn missing_secret_file_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{ANON}clients:\n  - name: a\n    client_id: x\n    client_secret_file: gone/gc01\n"
        );
        let errs = errors_in(&text, dir.path(), &no_env());
        let msg = error_at(&errs, "clients[0].client_secret_file");
        assert!(
            msg.contains("gone/gc01") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn client_rules() {
        let errs = errors(&format!("{ANON}clients: []\n"));
        assert!(error_at(&errs, "clients").contains("at least one client"));

        let many: String = (0..51)
            .map(|i| format!("  - {{name: c{i}, client_id: id{i}, client_secret: s}}\n"))
            .collect();
        let errs = errors(&format!("{ANON}clients:\n{many}"));
        assert!(error_at(&errs, "clients").contains("at most 50"));

        let fifty: String = (0..50)
            .map(|i| format!("  - {{name: c{i}, client_id: id{i}, client_secret: s}}\n"))
            .collect();
        assert_eq!(ok(&format!("{ANON}clients:\n{fifty}")).clients.len(), 50);

        let text = format!(
            "{ANON}clients:\n  - {{name: a, client_id: x, client_secret: s}}\n  - {{name: a, client_id: y, client_secret: s}}\n  - {{name: '{}', client_id: z, client_secret: s}}\n  - {{name: '-a', client_id: w, client_secret: s}}\n",
            "b".repeat(65)
        );
        let errs = errors(&text);
        assert!(error_at(&errs, "clients[1].name").contains("duplicate client name \"a\""));
        assert!(error_at(&errs, "clients[2].name").contains("longer than 64"));
        assert!(error_at(&errs, "clients[3].name").contains("not a valid name"));
        for name in ["pool-01", "0", "a.b_c-d"] {
            assert!(parse_client_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn client_budget_defaults_to_token_budget_and_sum_over_org_cap_warns() {
        let text = format!(
            "{ANON}budgets:\n  token_per_minute: 100\n  org_per_minute: 150\nclients:\n  - {{name: a, client_id: x, client_secret: s}}\n  - {{name: b, client_id: y, client_secret: s, requests_per_minute: 60}}\n"
        );
        let c = ok(&text);
        assert_eq!(c.clients[0].requests_per_minute.get(), 100);
        assert_eq!(c.clients[1].requests_per_minute.get(), 60);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("160") && c.warnings[0].contains("the org cap binds"));
    }

    #[test]
    fn budget_rules() {
        let text = format!(
            "{CLIENT}{ANON}budgets:
  token_per_minute: 0
  org_per_minute: many
  window: 1s
  guard: 1s
  endpoints:
    - {{route: 'PUT /api/v2/architect/ivrs/{{ivrId}}', per_minute: 100}}
    - {{route: 'PUT  /api/v2/architect/ivrs/{{ivrId}}', per_minute: 50, scope: token}}
    - {{route: 'FETCH /api/v2/users', per_minute: 1}}
    - {{route: 'GET /api/v2/users', per_minute: 1, scope: user}}
    - {{per_minute: 1}}
  queue:
    max_wait: soon
    max_pending: 0
"
        );
        let errs = errors(&text);
        assert!(error_at(&errs, "budgets.token_per_minute").contains("greater than 0"));
        assert!(error_at(&errs, "budgets.org_per_minute").contains("\"many\""));
        assert!(error_at(&errs, "budgets.guard").contains("shorter than budgets.window"));
        assert!(error_at(&errs, "budgets.endpoints[1].route").contains("duplicate route"));
        assert!(error_at(&errs, "budgets.endpoints[2].route").contains("\"FETCH\""));
        assert!(error_at(&errs, "budgets.endpoints[3].scope").contains("org or token"));
        assert!(error_at(&errs, "budgets.endpoints[4].route").contains("is required"));
        assert!(error_at(&errs, "budgets.queue.max_wait").contains("\"soon\""));
        assert!(error_at(&errs, "budgets.queue.max_pending").contains("greater than 0"));
        assert_eq!(errs.len(), 9, "{errs:#?}");

        let c = ok(&format!(
            "{CLIENT}{ANON}budgets:\n  window: 10s\n  guard: 0s\n  endpoints:\n    - {{route: 'PUT /api/v2/architect/ivrs/{{ivrId}}', per_minute: 100, scope: token}}\n    - {{route: 'GET /api/v2/architect/ivrs/{{ivrId}}', per_minute: 100}}\n  queue: {{max_wait: 0s}}\n"
        ));
        assert_eq!(c.budgets.window, Duration::from_secs(10));
        assert_eq!(c.budgets.guard, Duration::ZERO);
        assert_eq!(c.budgets.queue.max_wait, Duration::ZERO);
        let e = &c.budgets.endpoints[0];
        assert_eq!(
            (e.method.clone(), e.path.as_str()),
            (Method::PUT, "/api/v2/architect/ivrs/{ivrId}")
        );
        assert_eq!((e.per_minute.get(), e.scope), (100, BudgetScope::Token));
        assert_eq!(
            RouteTable::genesys().operation(e.route).to_string(),
            "PUT /api/v2/architect/ivrs/{ivrId}"
        );
        assert_eq!(c.budgets.endpoints[1].scope, BudgetScope::Org);
        assert_ne!(c.budgets.endpoints[1].route, e.route);
    }

    /// A caller's own rules (SPEC §12): `max_wait` within the queue's, `allow_routes`
    /// checked like the global list, a route off the global list warned about, and both in
    /// the redacted config.
    #[test]
    fn callers_have_their_own_max_wait_and_routes() {
        let text = format!(
            "{CLIENT}budgets:\n  queue:\n    max_wait: 3s\n\
inbound:
  allow_anonymous: true
  api_keys:
    - {{name: ivr, key: k1, max_wait: 5s, allow_routes: ['GET /api/v2/users/{{id}}']}}
    - {{name: batch, key: k2, max_wait: soon}}
  anonymous_caller:
    max_wait: 4s
"
        );
        let errs = errors(&text);
        assert!(
            error_at(&errs, "inbound.api_keys[0].max_wait")
                .contains("5s is longer than budgets.queue.max_wait (3s)")
        );
        assert!(
            error_at(&errs, "inbound.api_keys[0].allow_routes[0]")
                .contains("GET /api/v2/users/{userId}")
        );
        assert!(error_at(&errs, "inbound.api_keys[1].max_wait").contains("\"soon\""));
        assert!(
            error_at(&errs, "inbound.anonymous_caller.max_wait")
                .contains("4s is longer than budgets.queue.max_wait (3s)")
        );
        let pools = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1, clients: [pool-9]}}\n    - {{name: b, key: k2, clients: []}}\n"
        ));
        assert!(
            error_at(&pools, "inbound.api_keys[0].clients[0]")
                .contains("\"pool-9\" is not a client of the pool"),
            "{pools:#?}"
        );
        assert!(error_at(&pools, "inbound.api_keys[1].clients").contains("is empty"));
        let quota = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1, per_minute: 0}}\n"
        ));
        assert!(
            error_at(&quota, "inbound.api_keys[0].per_minute").contains("greater than 0"),
            "{quota:#?}"
        );
        let reserved = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: anonymous, key: k1}}\n    - {{name: unknown, key: k2}}\n"
        ));
        assert!(error_at(&reserved, "inbound.api_keys[0].name").contains("caller label"));
        assert!(error_at(&reserved, "inbound.api_keys[1].name").contains("caller label"));
        let odd = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: 'ivr flows', key: k1}}\n    - {{name: Anonymous, key: k2}}\n"
        ));
        assert!(error_at(&odd, "inbound.api_keys[0].name").contains("letters, digits"));
        let hex = format!("{:x}", Sha256::digest("k1"));
        let twice = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1}}\n    - {{name: b, key: k2}}\n    - {{name: c, key_sha256: {hex}}}\n"
        ));
        assert!(
            error_at(&twice, "inbound.api_keys[2]").contains("the same key as inbound.api_keys[0]"),
            "{twice:#?}"
        );
        assert!(error_at(&odd, "inbound.api_keys[1].name").contains("caller label"));
        let unknown = errors(&format!(
            "{CLIENT}inbound:\n  allow_anonymous: true\n  anonymous_caller:\n    lanes: fast\n"
        ));
        assert!(
            error_at(&unknown, "inbound.anonymous_caller.lanes").contains("unknown"),
            "{unknown:#?}"
        );

        let c = ok(&format!(
            "{CLIENT}budgets:\n  queue:\n    max_wait: 3s\n\
inbound:
  allow_anonymous: true
  allow_routes: ['GET /api/v2/users/{{userId}}', 'GET /api/v2/routing/queues/{{queueId}}']
  api_keys:
    - {{name: ivr, key: k1, max_wait: 1500ms, allow_routes: ['GET /api/v2/users/{{userId}}', 'GET /api/v2/groups/{{groupId}}']}}
    - {{name: batch, key: k2}}
  anonymous_caller:
    max_wait: 3s
"
        ));
        let ivr = &c.inbound.api_keys[0].caller;
        assert_eq!(ivr.max_wait, Some(Duration::from_millis(1500)));
        assert_eq!(ivr.allow_routes.len(), 2);
        let batch = &c.inbound.api_keys[1].caller;
        assert!(batch.max_wait.is_none() && batch.allow_routes.is_empty());
        assert_eq!(
            c.inbound.anonymous_caller.max_wait,
            Some(Duration::from_secs(3))
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("caller \"ivr\"")
                && c.warnings[0].contains("GET /api/v2/groups/{groupId}"),
            "{}",
            c.warnings[0]
        );
        let yaml = c.redacted_yaml();
        assert!(yaml.contains("max_wait: 1s500ms"), "{yaml}");
        assert!(yaml.contains("- GET /api/v2/groups/{groupId}"), "{yaml}");
        let again = ok(&with_keys(&yaml));
        assert_eq!(again.inbound.api_keys[0].caller.max_wait, ivr.max_wait);
    }

    /// `yaml` (a redacted config) with each redacted key replaced by a key of its own.
    fn with_keys(yaml: &str) -> String {
        let mut parts = yaml.split("key_sha256: <redacted>");
        let mut out = parts.next().unwrap_or_default().to_owned();
        for (n, part) in parts.enumerate() {
            out.push_str(&format!("key: k{n}"));
            out.push_str(part);
        }
        out
    }

    /// Lanes (SPEC §12): a caller's `lane`, each lane's share in `(0, 1]` (or a percentage),
    /// none above a higher lane's, whole budgets when `inbound.lanes` is absent, a warning
    /// when a share rounds a budget down to nothing, and both in the redacted config.
    #[test]
    fn lanes_share_every_budget() {
        let errs = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1, lane: urgent}}\n  lanes:\n    realtime: 0.8\n    standard: 0.9\n    batch: 0\n"
        ));
        assert!(
            error_at(&errs, "inbound.api_keys[0].lane").contains("\"urgent\" is not a lane"),
            "{errs:#?}"
        );
        assert!(
            error_at(&errs, "inbound.lanes.standard").contains("more than realtime's 0.8"),
            "{errs:#?}"
        );
        assert!(error_at(&errs, "inbound.lanes.batch").contains("not in (0, 1]"));
        let fine = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1}}\n  lanes:\n    batch: 0.0001\n    standard: 1.5\n"
        ));
        assert!(error_at(&fine, "inbound.lanes.batch").contains("thousandth"));
        assert!(error_at(&fine, "inbound.lanes.standard").contains("not in (0, 1]"));
        let unwritten = errors(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1}}\n  lanes:\n    realtime: 0.5\n"
        ));
        assert!(
            error_at(&unwritten, "inbound.lanes.standard")
                .contains("1.0 (its default) is more than realtime's 0.5:"),
            "{unwritten:#?}"
        );

        let absent = ok(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key: k1, lane: batch}}\n"
        ));
        assert_eq!(absent.inbound.lanes, LaneShares::default());
        assert_eq!(absent.inbound.api_keys[0].caller.lane, Lane::Batch);

        let c = ok(&format!(
            "{CLIENT}budgets:\n  window: 10s\n  endpoints:\n    - {{route: 'PUT /api/v2/architect/ivrs/{{ivrId}}', per_minute: 6}}\n\
inbound:
  allow_anonymous: true
  api_keys:
    - {{name: ivr, key: k1, lane: realtime}}
    - {{name: export, key: k2, lane: batch}}
  lanes:
    standard: 90%
    batch: 0.5
"
        ));
        let lanes = c.inbound.lanes;
        assert_eq!(
            (lanes.realtime, lanes.standard, lanes.batch),
            (1000, 900, 500)
        );
        assert_eq!(c.inbound.anonymous_caller.lane, Lane::Standard);
        // The IVR route's budget is 1 per 10 s window: 90 % and half of it are nothing.
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("inbound.lanes.standard is 0.9")
                && c.warnings[0].contains("its callers (anonymous) can never"),
            "{}",
            c.warnings[0]
        );
        assert!(
            c.warnings[1].contains("inbound.lanes.batch is 0.5")
                && c.warnings[1]
                    .contains("PUT /api/v2/architect/ivrs/{ivrId}\" (1 per 10s window)")
                && c.warnings[1].contains("its callers (export) can never"),
            "{}",
            c.warnings[1]
        );
        let yaml = c.redacted_yaml();
        assert!(yaml.contains("lane: realtime"), "{yaml}");
        let again = ok(&with_keys(&yaml));
        assert_eq!(again.inbound.lanes, lanes);
        assert_eq!(again.inbound.api_keys[1].caller.lane, Lane::Batch);
        let explained = c.callers_explained().join("\n");
        assert!(
            explained.contains(
                "export: all 1 clients; lane batch (fills 0.5 of each token, route and org budget)"
            ),
            "{explained}"
        );
        assert!(
            explained.contains("ivr: all 1 clients; lane realtime (fills whole budgets)"),
            "{explained}"
        );
    }

    /// The warning that a lane's share leaves it nothing of a budget names only the callers
    /// that budget can apply to: not a caller confined to a sub-pool without that client,
    /// nor one whose routes leave out that route budget's route. Found: `check` warned that
    /// `export` "can never be admitted" because of pool-01's budget, which it never uses.
    #[test]
    fn an_empty_lane_warns_only_for_the_callers_a_budget_applies_to() {
        let with_export_on = |client: &str| {
            format!(
                "clients:
  - {{name: pool-01, client_id: id-01, client_secret: s-01, requests_per_minute: 1}}
  - {{name: pool-02, client_id: id-02, client_secret: s-02}}
budgets:
  endpoints:
    - {{route: 'PUT /api/v2/architect/ivrs/{{ivrId}}', per_minute: 1}}
inbound:
  api_keys:
    - {{name: ivr, key: k1, lane: realtime, clients: [pool-01]}}
    - {{name: export, key: k2, lane: batch, clients: [{client}], allow_routes: ['GET /api/v2/users']}}
    - {{name: sync, key: k3, lane: batch}}
  lanes:
    batch: 0.5
"
            )
        };
        let c = ok(&with_export_on("pool-02"));
        assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);
        assert!(
            c.warnings[0].contains("token budget of client pool-01")
                && c.warnings[0].contains("its callers (sync) can never"),
            "{}",
            c.warnings[0]
        );
        assert!(
            c.warnings[1].contains("PUT /api/v2/architect/ivrs/{ivrId}")
                && c.warnings[1].contains("its callers (sync) can never"),
            "{}",
            c.warnings[1]
        );
        // Confined to pool-01, export is warned about with it.
        let confined = ok(&with_export_on("pool-01"));
        assert!(
            confined.warnings[0].contains("token budget of client pool-01")
                && confined.warnings[0].contains("its callers (export, sync) can never"),
            "{:#?}",
            confined.warnings
        );
    }

    /// Budget and allow-list routes must be operations of the route table, exactly.
    #[test]
    fn routes_must_be_genesys_operations() {
        let text = format!(
            "{CLIENT}budgets:
  endpoints:
    - {{route: 'PUT /api/v2/architect/ivr/{{ivrId}}', per_minute: 1}}
    - {{route: 'PUT /api/v2/architect/ivrs/{{id}}', per_minute: 1}}
    - {{route: 'PATCH /api/v2/architect/ivrs/{{ivrId}}', per_minute: 1}}
    - {{route: 'GET /api/v2/nothing/like/this', per_minute: 1}}
    - {{route: 'GET /api/v2/users/me', per_minute: 1}}
inbound:
  allow_anonymous: true
  allow_routes:
    - 'GET /api/v2/users/{{id}}'
    - 'GET /api/v2/users/{{userId}}'
    - 'HEAD /api/v2/tokens/me'
"
        );
        let errs = errors(&text);
        let e0 = error_at(&errs, "budgets.endpoints[0].route");
        assert!(
            e0.contains(
                "unknown route \"PUT /api/v2/architect/ivr/{ivrId}\" (not a Genesys Platform API operation); did you mean \"PUT /api/v2/architect/ivrs/{ivrId}\"?"
            ),
            "{e0}"
        );
        let e1 = error_at(&errs, "budgets.endpoints[1].route");
        assert!(
            e1.contains("did you mean \"PUT /api/v2/architect/ivrs/{ivrId}\""),
            "{e1}"
        );
        let e2 = error_at(&errs, "budgets.endpoints[2].route");
        assert!(e2.contains("that path has GET, PUT, DELETE"), "{e2}");
        let e3 = error_at(&errs, "budgets.endpoints[3].route");
        assert!(
            e3.ends_with("(not a Genesys Platform API operation)"),
            "{e3}"
        );
        let a0 = error_at(&errs, "inbound.allow_routes[0]");
        assert!(
            a0.contains("did you mean \"GET /api/v2/users/{userId}\""),
            "{a0}"
        );
        assert_eq!(errs.len(), 5, "{errs:#?}");
    }

    #[test]
    fn route_format() {
        for ok in [
            "GET /api/v2/users/{userId}",
            "POST /api/v2/analytics/conversations/details/query",
            "HEAD /api/v2/a",
            "DELETE  /api/v2/x/{a}/y/{b_2}",
        ] {
            assert!(parse_route_text(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "is not \"METHOD"),
            ("GET", "is not \"METHOD"),
            ("GET /api/v2/a extra", "is not \"METHOD"),
            ("get /api/v2/a", "method \"get\""),
            ("GET /api/v1/a", "does not start with /api/v2/"),
            ("GET /api/v2/", "empty segment"),
            ("GET /api/v2/a/", "empty segment"),
            ("GET /api/v2/a//b", "empty segment"),
            ("GET /api/v2/a{id}", "literal"),
            ("GET /api/v2/{id}x", "whole {param}"),
            ("GET /api/v2/{}", "must be a name"),
            ("GET /api/v2/{a-b}", "must be a name"),
            ("GET /api/v2/{a}/{a}", "twice"),
            ("GET /api/v2/a?b=c", "literal"),
        ] {
            let err = parse_route_text(bad).map(|_| ()).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn server_rules() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), "x").unwrap();
        let text = format!(
            "{CLIENT}{ANON}server:\n  listen: 127.0.0.1:80\n  admin_listen: 127.0.0.1:80\n  max_body_bytes: -1\n  idle_timeout: 5d\n  shutdown_grace: ''\n  tls:\n    cert_file: tls.crt\n    key_file: tls.key\n"
        );
        let errs = errors_in(&text, dir.path(), &no_env());
        assert!(error_at(&errs, "server.admin_listen").contains("never be on the public listener"));
        assert!(error_at(&errs, "server.max_body_bytes").contains("negative"));
        assert!(error_at(&errs, "server.idle_timeout").contains("unknown unit"));
        assert!(error_at(&errs, "server.shutdown_grace").contains("empty"));
        assert!(error_at(&errs, "server.tls.key_file").contains("tls.key does not exist"));
        assert_eq!(errs.len(), 5, "{errs:#?}");

        assert!(collide(
            "0.0.0.0:8080".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        ));
        assert!(!collide(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap()
        ));
        assert!(!collide(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.2:1".parse().unwrap()
        ));

        let text = format!(
            "{CLIENT}{ANON}server:\n  tls: {{cert_file: tls.crt, key_file: tls.crt}}\n  listen: '[::1]:0'\n  admin_listen: '[::1]:0'\n"
        );
        let c = ok_in(&text, dir.path(), &no_env());
        assert_eq!(c.server.tls.unwrap().cert_file, dir.path().join("tls.crt"));

        let errs = errors(&format!("{CLIENT}{ANON}server:\n  tls: {{}}\n"));
        assert!(error_at(&errs, "server.tls.cert_file").contains("is required"));
        assert!(error_at(&errs, "server.tls.key_file").contains("is required"));
    }

    #[test]
    fn token_remint_interval_rules() {
        let c = ok(&format!("{CLIENT}{ANON}"));
        assert_eq!(c.genesys.token_remint_interval, Duration::from_secs(1));
        let c = ok(&format!(
            "{CLIENT}{ANON}genesys:\n  token_remint_interval: 250ms\n"
        ));
        assert_eq!(c.genesys.token_remint_interval, Duration::from_millis(250));
        assert!(redacted_yaml(&c).contains("token_remint_interval: 250ms"));
        for (value, message) in [
            ("0s", "must be greater than 0"),
            ("2m", "2m is longer than the maximum of 1m"),
            ("soon", "soon"),
        ] {
            let errs = errors(&format!(
                "{CLIENT}{ANON}genesys:\n  token_remint_interval: {value}\n"
            ));
            assert!(
                error_at(&errs, "genesys.token_remint_interval").contains(message),
                "{value}: {errs:#?}"
            );
            assert_eq!(errs.len(), 1, "{errs:#?}");
        }
    }

    #[test]
    fn genesys_rules() {
        let c = ok(&format!(
            "{CLIENT}{ANON}genesys:\n  region: euw2.pure.cloud\n  login_base: http://127.0.0.1:9000/\n"
        ));
        assert_eq!(c.genesys.region, "euw2.pure.cloud");
        assert_eq!(base_url(&c.genesys.api_base), "https://api.euw2.pure.cloud");
        assert_eq!(base_url(&c.genesys.login_base), "http://127.0.0.1:9000");
        assert_eq!(
            c.genesys.login_base.authority().unwrap().as_str(),
            "127.0.0.1:9000"
        );

        let errs = errors(&format!(
            "{CLIENT}{ANON}genesys:\n  region: https://mypurecloud.com\n  api_base: ftp://x\n  login_base: http://h/oauth\n"
        ));
        assert!(error_at(&errs, "genesys.region").contains("plain domain"));
        assert!(error_at(&errs, "genesys.api_base").contains("http or https"));
        assert!(error_at(&errs, "genesys.login_base").contains("path"));
        for bad in ["localhost", "a..b", "-a.com", "a_b.com", ""] {
            assert!(parse_region(bad).is_err(), "{bad}");
        }
        for known in KNOWN_REGIONS {
            assert_eq!(known_region(known.to_owned()).as_deref(), Ok(known));
        }
        let err = known_region("mypurecloud.comm".into()).unwrap_err();
        assert!(err.contains("did you mean mypurecloud.com?"), "{err}");
        let err = known_region("api.euw2.pure.cloud".into()).unwrap_err();
        assert!(
            err.contains("host name") && err.contains("euw2.pure.cloud?"),
            "{err}"
        );
        let err = known_region("example.org".into()).unwrap_err();
        assert!(
            err.contains("mypurecloud.de") && err.contains("api_base"),
            "{err}"
        );

        // Unknown region: an error unless both hosts are given.
        let errs = errors(&format!(
            "{CLIENT}{ANON}genesys:\n  region: xyz1.pure.cloud\n"
        ));
        assert!(error_at(&errs, "genesys.region").contains("not a Genesys Cloud region"));
        let c = ok(&format!(
            "{CLIENT}{ANON}genesys:\n  region: xyz1.pure.cloud\n  api_base: https://api.xyz1.pure.cloud\n  login_base: https://login.xyz1.pure.cloud\n"
        ));
        assert_eq!(c.genesys.region, "xyz1.pure.cloud");

        // An empty base (a `${VAR:-}` whose variable is unset) is derived from the region.
        let c = ok(&format!(
            "{CLIENT}{ANON}genesys:\n  region: mypurecloud.de\n  api_base: ${{GCPOOL_TEST_UNSET_BASE:-}}\n  login_base: ''\n"
        ));
        assert_eq!(base_url(&c.genesys.api_base), "https://api.mypurecloud.de");
        assert_eq!(
            base_url(&c.genesys.login_base),
            "https://login.mypurecloud.de"
        );
        for bad in [
            "api.mypurecloud.com",
            "http://",
            "https://u:p@h",
            "http://h?x=1",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn anonymous_needs_a_loopback_listener() {
        for listen in ["127.0.0.1:8080", "127.9.9.9:8080", "'[::1]:8080'"] {
            let text = format!("{CLIENT}{ANON}server:\n  listen: {listen}\n");
            assert!(ok(&text).inbound.allow_anonymous, "{listen}");
        }
        for listen in ["0.0.0.0:8080", "10.0.0.1:8080", "'[::]:8080'"] {
            let errs = errors(&format!("{CLIENT}{ANON}server:\n  listen: {listen}\n"));
            let msg = error_at(&errs, "inbound.allow_anonymous");
            assert!(
                msg.contains("loopback") && msg.contains("api_keys"),
                "{msg}"
            );
            assert_eq!(errs.len(), 1, "{errs:#?}");
        }
        let errs = errors(&format!("{CLIENT}inbound:\n  allow_anonymous: false\n"));
        assert!(error_at(&errs, "inbound").contains("no caller could be authenticated"));
        let errs = errors(&format!("{CLIENT}inbound:\n  allow_anonymous: yes\n"));
        assert!(error_at(&errs, "inbound.allow_anonymous").contains("true or false"));
    }

    #[test]
    fn api_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "file-key\n").unwrap();
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let text = format!(
            "{CLIENT}server: {{listen: 0.0.0.0:8080}}\ninbound:\n  api_keys:\n    - {{name: a, key_sha256: {hex}}}\n    - {{name: b, key: test2}}\n    - {{name: c, key_file: k}}\n  allow_routes: ['GET /api/v2/users/{{userId}}']\n"
        );
        let c = ok_in(&text, dir.path(), &no_env());
        let keys = &c.inbound.api_keys;
        assert_eq!(keys.len(), 3);
        let test_digest: [u8; 32] = Sha256::digest(b"test").into();
        assert_eq!(keys[0].sha256, test_digest, "hex is case-insensitive");
        assert_eq!(
            keys[1].sha256,
            <[u8; 32]>::from(Sha256::digest(b"test2")),
            "`key` is hashed at load"
        );
        assert_eq!(
            keys[2].sha256,
            <[u8; 32]>::from(Sha256::digest(b"file-key"))
        );
        assert_eq!(c.inbound.allow_routes[0].method, Method::GET);
        assert_eq!(c.inbound.allow_routes[0].path, "/api/v2/users/{userId}");
        assert_eq!(
            RouteTable::genesys().template(c.inbound.allow_routes[0].route),
            "/api/v2/users/{userId}"
        );

        let text = format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: a, key_sha256: abc}}\n    - {{name: a, key: ''}}\n    - {{name: c, key: x, key_file: k}}\n    - {{name: d}}\n    - {{key: x}}\n  allow_routes: ['GET /users']\n"
        );
        let errs = errors_in(&text, dir.path(), &no_env());
        assert!(error_at(&errs, "inbound.api_keys[0].key_sha256").contains("64 hex"));
        assert!(error_at(&errs, "inbound.api_keys[1].name").contains("duplicate"));
        assert!(error_at(&errs, "inbound.api_keys[1].key").contains("empty"));
        assert!(error_at(&errs, "inbound.api_keys[2]").contains("exactly one"));
        assert!(error_at(&errs, "inbound.api_keys[3].key_sha256").contains("is required"));
        assert!(error_at(&errs, "inbound.api_keys[4].name").contains("is required"));
        assert!(error_at(&errs, "inbound.allow_routes[0]").contains("/api/v2/"));
        assert_eq!(errs.len(), 7, "{errs:#?}");
    }

    #[test]
    fn shared_state_rules() {
        let c = ok(&format!(
            "{CLIENT}{ANON}shared_state:\n  redis_url: redis://:pw@redis:6379/0\n"
        ));
        let s = c.shared_state.unwrap();
        assert_eq!(s.redis_url.expose(), "redis://:pw@redis:6379/0");
        assert_eq!(s.key_prefix, "gcpool");
        assert_eq!(s.replicas_hint.get(), 1);
        assert_eq!(
            s.timeout,
            Duration::from_millis(50),
            "default store deadline"
        );
        let c = ok(&format!(
            "{CLIENT}{ANON}shared_state:\n  redis_url: redis://redis/0\n  timeout: 20ms\n"
        ));
        assert_eq!(c.shared_state.unwrap().timeout, Duration::from_millis(20));
        for bad in ["0", "0ms", "2s", "1h", "fast"] {
            let errs = errors(&format!(
                "{CLIENT}{ANON}shared_state:\n  redis_url: redis://redis/0\n  timeout: {bad}\n"
            ));
            let msg = error_at(&errs, "shared_state.timeout");
            assert!(
                msg.contains("between 1ms and 1s") || msg.contains("duration"),
                "{bad}: {msg}"
            );
        }

        let errs = errors(&format!(
            "{CLIENT}{ANON}shared_state:\n  redis_url: http://:topsecret@redis\n  key_prefix: ''\n  replicas_hint: 0\n"
        ));
        let msg = error_at(&errs, "shared_state.redis_url");
        assert!(
            msg.contains("redis://") && !msg.contains("topsecret"),
            "{msg}"
        );
        assert!(error_at(&errs, "shared_state.key_prefix").contains("empty"));
        assert!(error_at(&errs, "shared_state.replicas_hint").contains("greater than 0"));

        let errs = errors(&format!("{CLIENT}{ANON}shared_state: {{key_prefix: x}}\n"));
        assert!(error_at(&errs, "shared_state.redis_url").contains("is required"));
        assert!(check_redis_url("rediss://u:p@/0").is_err());
    }

    #[test]
    fn redacted_yaml_shows_no_secret_and_reparses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("redis"),
            "rediss://user:redispw@redis:6380/2?password=qpw\n",
        )
        .unwrap();
        let text = "clients:\n  - {name: a, client_id: id-a, client_secret: clientpw}\ninbound:\n  api_keys: [{name: k, key: apikeyvalue}]\nshared_state:\n  redis_url_file: redis\n  replicas_hint: 3\nbudgets:\n  endpoints: [{route: 'PUT /api/v2/architect/ivrs/{ivrId}', per_minute: 100}]\n  guard: 250ms\n";
        let c = ok_in(text, dir.path(), &no_env());
        let out = redacted_yaml(&c);
        for secret in ["clientpw", "apikeyvalue", "redispw", "qpw", "user"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        let digest = format!("{:x}", Sha256::digest(b"apikeyvalue"));
        assert!(!out.contains(&digest[..16]), "digest leaked:\n{out}");
        assert!(out.contains("client_secret: <redacted>"), "{out}");
        assert!(out.contains("key_sha256: <redacted>"), "{out}");
        assert!(
            out.contains("redis_url: rediss://***@redis:6380/2?<redacted>"),
            "{out}"
        );
        assert!(
            out.contains("route: PUT /api/v2/architect/ivrs/{ivrId}"),
            "{out}"
        );
        assert!(
            out.contains("guard: 250ms") && out.contains("request_timeout: 30s"),
            "{out}"
        );
        assert!(
            out.contains("replicas_hint: 3")
                && out.contains("timeout: 50ms")
                && out.contains("client_id: id-a"),
            "{out}"
        );
        file::parse(&out).expect("the printed config uses only known keys");
    }

    #[test]
    fn redis_url_redaction() {
        assert_eq!(
            redact_redis_url("redis://redis:6379/0"),
            "redis://redis:6379/0"
        );
        assert_eq!(
            redact_redis_url("redis://:p/w?#@h:1/0"),
            "redis://***@h:1/0"
        );
        assert_eq!(redact_redis_url("nonsense"), "<redacted>");
    }

    #[test]
    fn load_reads_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "pw").unwrap();
        let path = dir.path().join("gcpool.yaml");
        std::fs::write(
            &path,
            format!("{ANON}clients:\n  - {{name: a, client_id: x, client_secret_file: secret}}\n"),
        )
        .unwrap();
        let c = load(&path, &no_env()).unwrap();
        assert_eq!(c.clients[0].client_secret.expose(), "pw");

        let errs = load(&dir.path().join("missing.yaml"), &no_env())
            .unwrap_err()
            .0;
        assert!(errs[0].message.contains("missing.yaml"), "{errs:#?}");
    }

    #[test]
    fn errors_display_path_line_and_message() {
        let errs = from_yaml("clients:\n  - nme: a\n", Path::new("."), &no_env()).unwrap_err();
        let shown = errs.to_string();
        assert!(
            shown.starts_with("clients[0].nme (line 2): unknown key `nme`"),
            "{shown}"
        );
    }

    /// Every truncation and every single-character deletion of a full config either loads
    /// or reports errors: nothing panics.
    #[test]
    fn never_panics_on_damaged_input() {
        let text = include_str!("../../tests/fixtures/config/valid.yaml");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
        let env: HashMap<String, String> =
            [("GCPOOL_TEST_CLIENT_SECRET".to_owned(), "s".to_owned())].into();
        assert!(from_yaml(text, &dir, &env).is_ok());
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for &i in &boundaries {
            let _ = from_yaml(&text[..i], &dir, &env);
            let next = text[i..].chars().next().map_or(0, char::len_utf8);
            let damaged = format!("{}{}", &text[..i], &text[i + next..]);
            let _ = from_yaml(&damaged, &dir, &env);
        }
    }

    #[test]
    fn the_cache_is_off_by_default_and_its_routes_are_read() {
        let c = ok(&format!("{CLIENT}{ANON}"));
        assert!(c.cache.routes.is_empty());
        assert_eq!(c.cache.max_entries, 10_000);
        assert_eq!(c.cache.max_bytes, 64 * 1024 * 1024);

        let c = ok(&format!(
            "{CLIENT}{ANON}cache:\n  max_entries: 50\n  max_bytes: 1048576\n  routes:\n    \
             - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      ttl: 30s\n      \
             stale_if_limited: 5m\n      ignore_upstream_cache_headers: true\n    \
             - route: \"GET /api/v2/users/{{userId}}\"\n      ttl: 0s\n"
        ));
        assert_eq!(c.cache.max_entries, 50);
        assert_eq!(c.cache.max_bytes, 1_048_576);
        let [queues, users] = &c.cache.routes[..] else {
            panic!("two routes, got {:?}", c.cache.routes);
        };
        assert_eq!(queues.path, "/api/v2/routing/queues/{queueId}");
        assert_eq!(queues.ttl, Duration::from_secs(30));
        assert_eq!(queues.stale_if_limited, Duration::from_secs(300));
        assert!(queues.ignore_upstream_cache_headers);
        assert_eq!(users.ttl, Duration::ZERO, "coalesce only");
        assert_eq!(users.stale_if_limited, Duration::ZERO, "off");
        assert!(!users.ignore_upstream_cache_headers);
        // A coalesce-only route keeps nothing anyway: no warning for it.
        assert!(
            c.warnings.iter().all(|w| !w.contains("cache route")),
            "{:?}",
            c.warnings
        );
        let printed = redacted_yaml(&c);
        assert!(printed.contains("stale_if_limited: 5m"), "{printed}");
    }

    #[test]
    fn a_cache_route_that_would_keep_nothing_from_genesys_is_warned_about() {
        let c = ok(&format!(
            "{CLIENT}{ANON}cache:\n  routes:\n    \
             - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      ttl: 30s\n"
        ));
        let warning = c
            .warnings
            .iter()
            .find(|w| w.contains("cache route"))
            .expect("a warning");
        assert!(
            warning.contains("ignore_upstream_cache_headers"),
            "{warning}"
        );
    }

    #[test]
    fn cache_routes_must_be_reads_that_do_not_depend_on_the_token() {
        let errs = errors(&format!(
            "{CLIENT}{ANON}cache:\n  max_entries: 0\n  max_bytes: lots\n  routes:\n    \
             - route: \"POST /api/v2/routing/queues\"\n      ttl: 1s\n    \
             - route: \"GET /api/v2/users/me\"\n      ttl: 1s\n    \
             - route: \"GET /api/v2/tokens/me\"\n      ttl: 1s\n    \
             - route: \"GET /api/v2/routing/queue/{{queueId}}\"\n      ttl: 1s\n    \
             - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n    \
             - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      ttl: 1s\n      \
             ignore_upstream_cache_headers: maybe\n      stale_if_limited: soon\n"
        ));
        assert!(
            error_at(&errs, "cache.max_entries").contains("greater than 0")
                || error_at(&errs, "cache.max_entries").contains("positive"),
            "{errs:#?}"
        );
        error_at(&errs, "cache.max_bytes");
        assert!(error_at(&errs, "cache.routes[0].route").contains("only GET and HEAD"));
        assert!(error_at(&errs, "cache.routes[1].route").contains("`me` segment"));
        assert!(error_at(&errs, "cache.routes[2].route").contains("`me` segment"));
        assert!(
            error_at(&errs, "cache.routes[3].route")
                .contains("did you mean \"GET /api/v2/routing/queues/{queueId}\""),
            "{errs:#?}"
        );
        assert!(error_at(&errs, "cache.routes[4].ttl").contains("required"));
        assert!(error_at(&errs, "cache.routes[5].route").contains("duplicate"));
        error_at(&errs, "cache.routes[5].ignore_upstream_cache_headers");
        error_at(&errs, "cache.routes[5].stale_if_limited");
    }

    #[test]
    fn cache_settings_that_can_never_act_are_warned_about() {
        let c = ok(&format!(
            "{CLIENT}{ANON}cache:\n  max_bytes: 32768\n  routes:\n    \
             - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      ttl: 0s\n      \
             stale_if_limited: 5m\n"
        ));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("no answer over 2048 bytes")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("stale_if_limited never applies")),
            "{:?}",
            c.warnings
        );
        // The defaults warn about neither.
        let c = ok(&format!(
            "{CLIENT}{ANON}cache:\n  routes:\n    \
             - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      ttl: 1s\n      \
             ignore_upstream_cache_headers: true\n"
        ));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn gateway_defaults_and_rules() {
        let keys = "inbound:\n  api_keys:\n    - {name: ivr, key: k1}\n";
        let c = ok(&format!("{CLIENT}{keys}  gateway: {{}}\n"));
        let g = c
            .inbound
            .gateway
            .as_ref()
            .expect("an empty section turns it on");
        assert_eq!(g.login_path, "/login");
        assert_eq!(g.api_path, "");
        assert_eq!(g.token_lifetime, Duration::from_secs(24 * 3600));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(ok(&format!("{CLIENT}{keys}")).inbound.gateway.is_none());
        let hex = "ab".repeat(32);
        let digest_only = ok(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: ivr, key: k1}}\n    - {{name: old, key_sha256: {hex}}}\n  gateway: {{}}\n"
        ));
        assert_eq!(digest_only.warnings.len(), 1, "{:?}", digest_only.warnings);
        assert!(
            digest_only.warnings[0].contains("inbound.api_keys[1] (old) is given as key_sha256")
                && digest_only.warnings[0].contains("give key or key_file"),
            "{}",
            digest_only.warnings[0]
        );
        assert!(digest_only.inbound.api_keys[0].token_key.is_some());
        let public = ok(&format!(
            "{CLIENT}server: {{listen: 0.0.0.0:8080}}\n{keys}  gateway: {{}}\n"
        ));
        assert_eq!(public.warnings.len(), 1, "{:?}", public.warnings);
        assert!(
            public.warnings[0].contains("cross the network in clear"),
            "{}",
            public.warnings[0]
        );
        // `check` names only the callers that can log in (before, "to callers ivr, old").
        let explained = digest_only.gateway_explained().expect("on");
        assert!(
            explained.contains("to callers ivr (client id")
                && explained.contains("old cannot log in (key_sha256 only"),
            "{explained}"
        );
        let none = ok(&format!(
            "{CLIENT}inbound:\n  api_keys:\n    - {{name: old, key_sha256: {hex}}}\n  gateway: {{}}\n"
        ));
        let explained = none.gateway_explained().expect("on");
        assert!(
            explained.contains("to no caller") && explained.contains("old cannot log in"),
            "{explained}"
        );
        let explained = c.gateway_explained().expect("explained when on");
        assert!(explained.contains("POST /login/oauth/token"), "{explained}");
        assert!(
            explained.contains("24h") && explained.contains("ivr"),
            "{explained}"
        );
        // The resolved config prints it, and parses back to the same settings.
        let printed = c.redacted_yaml();
        assert!(printed.contains("gateway:"), "{printed}");

        let c = ok(&format!(
            "{CLIENT}{keys}  gateway:\n    login_path: /auth/v1\n    api_path: /genesys\n    \
             token_lifetime: 90s\n"
        ));
        let g = c.inbound.gateway.as_ref().expect("on");
        assert_eq!(
            (g.login_path.as_str(), g.api_path.as_str(), g.token_lifetime),
            ("/auth/v1", "/genesys", Duration::from_secs(90))
        );
        let c = ok(&format!("{CLIENT}{keys}  gateway:\n    login_path: \"\"\n"));
        assert_eq!(c.inbound.gateway.expect("on").login_path, "");

        for (value, says) in [
            ("login", "starts with /"),
            ("/login/", "no trailing /"),
            ("/", "no trailing /"),
            ("/a//b", "empty, . or .."),
            ("/a/../b", "empty, . or .."),
            ("/%2e%2e", "letters, digits"),
            ("/lo gin", "letters, digits"),
        ] {
            let errs = errors(&format!(
                "{CLIENT}{keys}  gateway:\n    login_path: \"{value}\"\n"
            ));
            let msg = error_at(&errs, "inbound.gateway.login_path");
            assert!(msg.contains(says), "{value}: {msg}");
            let errs = errors(&format!(
                "{CLIENT}{keys}  gateway:\n    api_path: \"{value}\"\n"
            ));
            let msg = error_at(&errs, "inbound.gateway.api_path");
            assert!(msg.contains(says), "{value}: {msg}");
        }
        for (value, says) in [
            ("500ms", "at least 1s"),
            ("1500ms", "whole seconds"),
            ("49h", "longer than 48h"),
            ("soon", "soon"),
        ] {
            let errs = errors(&format!(
                "{CLIENT}{keys}  gateway:\n    token_lifetime: {value}\n"
            ));
            let msg = error_at(&errs, "inbound.gateway.token_lifetime");
            assert!(msg.contains(says), "{value}: {msg}");
        }
        // A login that an API path would shadow.
        for gateway in [
            "login_path: /api/v2",
            "{login_path: /gc/api/v2, api_path: /gc}",
        ] {
            let text = if gateway.starts_with('{') {
                format!("{CLIENT}{keys}  gateway: {gateway}\n")
            } else {
                format!("{CLIENT}{keys}  gateway:\n    {gateway}\n")
            };
            let errs = errors(&text);
            let msg = error_at(&errs, "inbound.gateway.login_path");
            assert!(msg.contains("where API calls go"), "{gateway}: {msg}");
        }
        let errs = errors(&format!("{CLIENT}{keys}  gateway:\n    login: /x\n"));
        assert!(error_at(&errs, "inbound.gateway.login").contains("unknown key"));
        // On, but nobody can log in.
        let c = ok(&format!("{CLIENT}{ANON}  gateway: {{}}\n"));
        assert!(
            c.warnings.iter().any(|w| w.contains("refuses everyone")),
            "{:?}",
            c.warnings
        );
    }
}
