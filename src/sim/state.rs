//! The simulated org: clients, issued tokens, limits and counters behind one lock.
//!
//! Every decision (grant, admit or reject) is one short critical section that reads the
//! clock inside the lock, so instants enter each window in order. No HTTP here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use http::Method;
use tokio::time::Instant;

use super::limits::{ArrivalWindow, SlidingWindow};
use super::stats::{ClientStats, OrgStats, RouteStats, SimStats};
use super::{SimOptions, SimRouteLimit};

/// Limit key of the per-token limit in 429 bodies.
pub(crate) const TOKEN_LIMIT_KEY: &str = "client.credentials.token.rate.per.minute";
/// Limit key of a route limit in 429 bodies.
pub(crate) const ROUTE_LIMIT_KEY: &str = "route.rate.per.minute";
/// Limit key of the org limit in 429 bodies.
pub(crate) const ORG_LIMIT_KEY: &str = "org.rate.per.minute";

/// Shared simulator state.
#[derive(Debug)]
pub(crate) struct State {
    window: Duration,
    token_lifetime: Duration,
    pub(crate) latency: Duration,
    pub(crate) limit_in_body: bool,
    inner: Mutex<Inner>,
}

/// Answer of the token endpoint's decision.
#[derive(Debug)]
pub(crate) enum Grant {
    Granted {
        access_token: String,
        expires_in: u64,
    },
    InvalidClient,
    UnsupportedGrantType,
}

/// Answer of the `/api/v2` admission decision.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted {
        client: String,
    },
    /// No bearer token in `Authorization`.
    NoToken,
    /// Token never issued or revoked.
    BadCredentials,
    /// Token past its lifetime.
    Expired,
    RateLimited {
        retry_after_secs: u64,
        limit: LimitInfo,
    },
}

/// The `limit` object of a 429 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitInfo {
    pub(crate) key: &'static str,
    pub(crate) namespace: String,
    pub(crate) value: u32,
}

#[derive(Debug)]
struct Inner {
    clients: BTreeMap<String, ClientEntry>,
    tokens: HashMap<String, TokenEntry>,
    routes: Vec<RouteEntry>,
    org: OrgEntry,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: u64,
    rejected_429: u64,
    rejected_401: u64,
    token_grants: u64,
    token_grant_failures: u64,
}

#[derive(Debug)]
struct ClientEntry {
    secret: String,
    rejected: bool,
    /// Every `/api/v2` request with one of this client's tokens answers 401.
    tokens_refused: bool,
    token_grants: u64,
    token_limit: u32,
    accepted: u64,
    rejected_429: u64,
    rejected_401: u64,
    arrivals: ArrivalWindow,
}

#[derive(Debug)]
struct TokenEntry {
    client: String,
    expires_at: Instant,
    revoked: bool,
    admitted: SlidingWindow,
}

#[derive(Debug)]
struct RouteEntry {
    method: Method,
    segments: Vec<Segment>,
    key: String,
    namespace: String,
    limit: u32,
    accepted: u64,
    rejected_429: u64,
    admitted: SlidingWindow,
    arrivals: ArrivalWindow,
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug)]
struct OrgEntry {
    limit: Option<u32>,
    admitted: SlidingWindow,
    arrivals: ArrivalWindow,
}

// === impl State ===

impl State {
    /// Builds the org from `opts`.
    ///
    /// # Errors
    /// `InvalidInput` for a zero window, duplicate client ids or a route template outside
    /// `/api/v2/`.
    pub(crate) fn new(opts: &SimOptions) -> std::io::Result<Self> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        if opts.window.is_zero() {
            return Err(invalid("simulator window must be longer than zero".into()));
        }
        // Instants plus these must not overflow; a century is plenty for any test.
        const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
        if opts.window > MAX || opts.token_lifetime > MAX {
            return Err(invalid(
                "simulator window and token lifetime must be at most 100 years".into(),
            ));
        }
        let mut clients = BTreeMap::new();
        for c in &opts.clients {
            let token_limit = opts
                .token_limit_overrides
                .get(&c.id)
                .copied()
                .unwrap_or(opts.token_limit);
            let entry = ClientEntry {
                secret: c.secret.clone(),
                rejected: false,
                tokens_refused: false,
                token_grants: 0,
                token_limit,
                accepted: 0,
                rejected_429: 0,
                rejected_401: 0,
                arrivals: ArrivalWindow::new(opts.window),
            };
            if clients.insert(c.id.clone(), entry).is_some() {
                return Err(invalid(format!("duplicate simulator client id {}", c.id)));
            }
        }
        for id in opts.token_limit_overrides.keys() {
            if !clients.contains_key(id) {
                return Err(invalid(format!(
                    "token limit override for unknown client id {id}"
                )));
            }
        }
        let routes = opts
            .route_limits
            .iter()
            .map(|r| RouteEntry::new(r, opts.window))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let org = OrgEntry {
            limit: opts.org_limit,
            admitted: SlidingWindow::new(opts.window),
            arrivals: ArrivalWindow::new(opts.window),
        };
        Ok(Self {
            window: opts.window,
            token_lifetime: opts.token_lifetime,
            latency: opts.latency,
            limit_in_body: opts.limit_in_body,
            inner: Mutex::new(Inner {
                clients,
                tokens: HashMap::new(),
                routes,
                org,
                counters: Counters::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves counters at worst slightly off; keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Client-credentials grant: `credentials` from HTTP Basic (None when missing or garbled).
    pub(crate) fn grant(&self, credentials: Option<(&str, &str)>, grant_type_ok: bool) -> Grant {
        self.grant_with_clock(Instant::now, credentials, grant_type_ok)
    }

    fn grant_with_clock(
        &self,
        clock: impl FnOnce() -> Instant,
        credentials: Option<(&str, &str)>,
        grant_type_ok: bool,
    ) -> Grant {
        let mut inner = self.lock();
        let now = clock();
        let Inner {
            clients,
            tokens,
            counters,
            ..
        } = &mut *inner;
        let authenticated = credentials.is_some_and(|(id, secret)| {
            clients
                .get(id)
                .is_some_and(|c| !c.rejected && c.secret == secret)
        });
        let Some((id, _)) = credentials.filter(|_| authenticated) else {
            counters.token_grant_failures += 1;
            return Grant::InvalidClient;
        };
        if !grant_type_ok {
            counters.token_grant_failures += 1;
            return Grant::UnsupportedGrantType;
        }
        let access_token = new_token();
        tokens.retain(|_, t| !t.is_stale(now, self.token_lifetime));
        tokens.insert(
            access_token.clone(),
            TokenEntry {
                client: id.to_owned(),
                expires_at: now + self.token_lifetime,
                revoked: false,
                admitted: SlidingWindow::new(self.window),
            },
        );
        counters.token_grants += 1;
        if let Some(client) = clients.get_mut(id) {
            client.token_grants += 1;
        }
        Grant::Granted {
            access_token,
            expires_in: self.token_lifetime.as_secs(),
        }
    }

    /// Decides one `/api/v2` request at its arrival and records it.
    pub(crate) fn admit(&self, bearer: Option<&str>, method: &Method, path: &str) -> Admission {
        self.admit_with_clock(Instant::now, bearer, method, path)
    }

    /// [`State::admit`] with the clock passed in; it is read under the lock so instants
    /// enter every window in order.
    fn admit_with_clock(
        &self,
        clock: impl FnOnce() -> Instant,
        bearer: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Admission {
        let mut inner = self.lock();
        let now = clock();
        let Inner {
            clients,
            tokens,
            routes,
            org,
            counters,
        } = &mut *inner;

        let Some(bearer) = bearer else {
            counters.rejected_401 += 1;
            return Admission::NoToken;
        };
        let Some(token) = tokens.get_mut(bearer) else {
            counters.rejected_401 += 1;
            return Admission::BadCredentials;
        };
        let client_id = token.client.clone();
        let Some(client) = clients.get_mut(&client_id) else {
            // Tokens are only minted for configured clients; treat a stray one as unknown.
            counters.rejected_401 += 1;
            return Admission::BadCredentials;
        };
        if token.revoked || client.tokens_refused || now >= token.expires_at {
            counters.rejected_401 += 1;
            client.rejected_401 += 1;
            return if token.revoked || client.tokens_refused {
                Admission::BadCredentials
            } else {
                Admission::Expired
            };
        }

        // Arrivals: every request with a valid token, admitted or not.
        client.arrivals.arrive(now);
        org.arrivals.arrive(now);
        let mut matching: Vec<&mut RouteEntry> = routes
            .iter_mut()
            .filter(|r| r.matches(method, path))
            .collect();
        for r in &mut matching {
            r.arrivals.arrive(now);
        }

        // Genesys names its limits per minute (`….rate.per.minute`), so the `value` a 429
        // reports is the limit per minute, whatever window the simulator runs.
        let window_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let per_minute =
            |n: u32| u32::try_from(u64::from(n) * 60_000 / window_ms).unwrap_or(u32::MAX);
        // The binding limit is the one that frees a slot last; ties go to token, route, org.
        let mut binding: Option<(Duration, LimitInfo)> = None;
        let mut consider = |wait: Duration, info: &dyn Fn() -> LimitInfo| {
            if !wait.is_zero() && binding.as_ref().is_none_or(|(w, _)| wait > *w) {
                binding = Some((wait, info()));
            }
        };
        let token_limit = client.token_limit;
        consider(token.admitted.wait_for_slot(now, token_limit), &|| {
            LimitInfo {
                key: TOKEN_LIMIT_KEY,
                namespace: "oauth.client".into(),
                value: per_minute(token_limit),
            }
        });
        for r in &mut matching {
            let wait = r.admitted.wait_for_slot(now, r.limit);
            consider(wait, &|| LimitInfo {
                key: ROUTE_LIMIT_KEY,
                namespace: r.namespace.clone(),
                value: per_minute(r.limit),
            });
        }
        if let Some(limit) = org.limit {
            consider(org.admitted.wait_for_slot(now, limit), &|| LimitInfo {
                key: ORG_LIMIT_KEY,
                namespace: "organization".into(),
                value: per_minute(limit),
            });
        }

        if let Some((wait, limit)) = binding {
            tracing::debug!(client = %client_id, limit = limit.key, "simulator answered 429");
            counters.rejected_429 += 1;
            client.rejected_429 += 1;
            for r in &mut matching {
                r.rejected_429 += 1;
            }
            return Admission::RateLimited {
                retry_after_secs: whole_seconds_up(wait),
                limit,
            };
        }

        token.admitted.push(now);
        for r in &mut matching {
            r.admitted.push(now);
            r.accepted += 1;
        }
        if org.limit.is_some() {
            org.admitted.push(now);
        }
        counters.accepted += 1;
        client.accepted += 1;
        Admission::Admitted { client: client_id }
    }

    /// Every issued token answers 401 `bad.credentials` from now on.
    pub(crate) fn revoke_tokens(&self) {
        let mut inner = self.lock();
        for t in inner.tokens.values_mut() {
            t.revoked = true;
            t.admitted.clear();
        }
    }

    /// Makes the grant answer 401 for `client_id` (or accept it again).
    pub(crate) fn set_credentials_rejected(&self, client_id: &str, rejected: bool) {
        let mut inner = self.lock();
        match inner.clients.get_mut(client_id) {
            Some(c) => c.rejected = rejected,
            None => tracing::warn!(client_id, "set_credentials_rejected: unknown client id"),
        }
    }

    /// While `refused`, every `/api/v2` request carrying a token of `client_id` answers
    /// 401 `bad.credentials`, fresh tokens included (grants still succeed): a 401 storm.
    pub(crate) fn set_tokens_refused(&self, client_id: &str, refused: bool) {
        let mut inner = self.lock();
        match inner.clients.get_mut(client_id) {
            Some(c) => c.tokens_refused = refused,
            None => tracing::warn!(client_id, "set_tokens_refused: unknown client id"),
        }
    }

    /// Zeroes counters and forgets arrivals; admissions (the limits' state) are kept.
    pub(crate) fn reset_stats(&self) {
        let mut inner = self.lock();
        inner.counters = Counters::default();
        for c in inner.clients.values_mut() {
            c.accepted = 0;
            c.rejected_429 = 0;
            c.rejected_401 = 0;
            c.token_grants = 0;
            c.arrivals.reset();
        }
        for r in &mut inner.routes {
            r.accepted = 0;
            r.rejected_429 = 0;
            r.arrivals.reset();
        }
        inner.org.arrivals.reset();
    }

    pub(crate) fn stats(&self) -> SimStats {
        let inner = self.lock();
        let c = &inner.counters;
        SimStats {
            accepted: c.accepted,
            rejected_429: c.rejected_429,
            rejected_401: c.rejected_401,
            token_grants: c.token_grants,
            token_grant_failures: c.token_grant_failures,
            clients: inner
                .clients
                .iter()
                .map(|(id, c)| {
                    let stats = ClientStats {
                        accepted: c.accepted,
                        rejected_429: c.rejected_429,
                        rejected_401: c.rejected_401,
                        token_grants: c.token_grants,
                        max_in_window: c.arrivals.max_in_window(),
                        limit: c.token_limit,
                    };
                    (id.clone(), stats)
                })
                .collect(),
            routes: inner
                .routes
                .iter()
                .map(|r| {
                    let stats = RouteStats {
                        accepted: r.accepted,
                        rejected_429: r.rejected_429,
                        max_in_window: r.arrivals.max_in_window(),
                        limit: r.limit,
                    };
                    (r.key.clone(), stats)
                })
                .collect(),
            org: OrgStats {
                max_in_window: inner.org.arrivals.max_in_window(),
                limit: inner.org.limit,
            },
        }
    }
}

// === impl TokenEntry ===

impl TokenEntry {
    /// Expired for a whole extra lifetime: nobody will present it any more, forget it.
    fn is_stale(&self, now: Instant, lifetime: Duration) -> bool {
        now.saturating_duration_since(self.expires_at) > lifetime.max(Duration::from_secs(60))
    }
}

// === impl RouteEntry ===

impl RouteEntry {
    fn new(r: &SimRouteLimit, window: Duration) -> Result<Self, String> {
        let Some(rest) = r.template.strip_prefix("/api/v2/") else {
            return Err(format!(
                "route limit template {} does not start with /api/v2/",
                r.template
            ));
        };
        let namespace = rest.split('/').next().unwrap_or_default().to_owned();
        if namespace.is_empty() || namespace.starts_with('{') {
            return Err(format!(
                "route limit template {} has no namespace after /api/v2/",
                r.template
            ));
        }
        let segments = r
            .template
            .split('/')
            .map(|s| {
                if s.len() >= 2 && s.starts_with('{') && s.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_owned())
                }
            })
            .collect();
        Ok(Self {
            method: r.method.clone(),
            segments,
            key: r.key(),
            namespace,
            limit: r.limit,
            accepted: 0,
            rejected_429: 0,
            admitted: SlidingWindow::new(window),
            arrivals: ArrivalWindow::new(window),
        })
    }

    /// Same method, same number of segments; `{x}` matches any one non-empty segment.
    fn matches(&self, method: &Method, path: &str) -> bool {
        if *method != self.method {
            return false;
        }
        let mut parts = path.split('/');
        for seg in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match seg {
                Segment::Param => !part.is_empty(),
                Segment::Literal(lit) => lit == part,
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// Whole seconds, rounded up, at least 1.
fn whole_seconds_up(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// A random opaque access token.
fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, template: &str) -> RouteEntry {
        RouteEntry::new(
            &SimRouteLimit::new(method, template, 1),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn route_template_matching() {
        let r = route(Method::PUT, "/api/v2/architect/ivrs/{ivrId}");
        assert_eq!(r.namespace, "architect");
        assert_eq!(r.key, "PUT /api/v2/architect/ivrs/{ivrId}");
        assert!(r.matches(&Method::PUT, "/api/v2/architect/ivrs/abc-1"));
        assert!(
            !r.matches(&Method::GET, "/api/v2/architect/ivrs/abc-1"),
            "method"
        );
        assert!(
            !r.matches(&Method::PUT, "/api/v2/architect/ivrs/"),
            "empty param"
        );
        assert!(
            !r.matches(&Method::PUT, "/api/v2/architect/ivrs"),
            "too short"
        );
        assert!(
            !r.matches(&Method::PUT, "/api/v2/architect/ivrs/a/b"),
            "too long"
        );
        assert!(
            !r.matches(&Method::PUT, "/api/v2/architect/ivrz/a"),
            "literal"
        );
    }

    #[test]
    fn route_template_outside_api_v2_is_refused() {
        assert!(
            RouteEntry::new(
                &SimRouteLimit::new(Method::GET, "/users", 1),
                Duration::from_secs(1)
            )
            .is_err()
        );
        assert!(
            RouteEntry::new(
                &SimRouteLimit::new(Method::GET, "/api/v2/{x}", 1),
                Duration::from_secs(1)
            )
            .is_err()
        );
    }

    #[test]
    fn whole_seconds_round_up_and_never_zero() {
        assert_eq!(whole_seconds_up(Duration::ZERO), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1_000)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1_001)), 2);
        assert_eq!(whole_seconds_up(Duration::from_secs(59)), 59);
    }

    #[test]
    fn binding_limit_is_the_one_that_frees_last() {
        let opts = SimOptions::with_clients(1)
            .window(Duration::from_secs(10))
            .token_limit(5)
            .org_limit(2);
        let state = State::new(&opts).unwrap();
        let t0 = Instant::now();
        let at = |secs: u64| move || t0 + Duration::from_secs(secs);
        let Grant::Granted { access_token, .. } =
            state.grant_with_clock(at(0), Some(("sim-client-01", "sim-secret-01")), true)
        else {
            panic!("grant must succeed");
        };
        let get = |secs: u64| {
            state.admit_with_clock(at(secs), Some(&access_token), &Method::GET, "/api/v2/users")
        };
        assert!(matches!(get(0), Admission::Admitted { .. }));
        assert!(matches!(get(3), Admission::Admitted { .. }));
        match get(3) {
            Admission::RateLimited {
                retry_after_secs,
                limit,
            } => {
                assert_eq!(limit.key, ORG_LIMIT_KEY);
                assert_eq!(limit.namespace, "organization");
                assert_eq!(retry_after_secs, 7, "first admission leaves at t=10s");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(matches!(get(10), Admission::Admitted { .. }), "slot freed");
        let stats = state.stats();
        assert_eq!(stats.accepted, 3);
        assert_eq!(stats.rejected_429, 1);
        assert_eq!(
            stats.org.max_in_window, 3,
            "arrivals at 0, 3, 3 share a window"
        );
        assert_eq!(stats.client("sim-client-01").max_in_window, 3);
    }

    #[test]
    fn expired_token_is_told_apart_from_an_unknown_one() {
        let opts = SimOptions::with_clients(1).token_lifetime(Duration::from_secs(5));
        let state = State::new(&opts).unwrap();
        let t0 = Instant::now();
        let Grant::Granted {
            access_token,
            expires_in,
        } = state.grant_with_clock(|| t0, Some(("sim-client-01", "sim-secret-01")), true)
        else {
            panic!("grant must succeed");
        };
        assert_eq!(expires_in, 5);
        let get = |at: Instant, token: &str| {
            state.admit_with_clock(|| at, Some(token), &Method::GET, "/api/v2/users")
        };
        let just_before = t0 + Duration::from_millis(4_999);
        assert!(matches!(
            get(just_before, &access_token),
            Admission::Admitted { .. }
        ));
        assert_eq!(
            get(t0 + Duration::from_secs(5), &access_token),
            Admission::Expired
        );
        assert_eq!(get(t0, "never-issued"), Admission::BadCredentials);
        assert_eq!(
            state.admit(None, &Method::GET, "/api/v2/users"),
            Admission::NoToken
        );
        assert_eq!(state.stats().rejected_401, 3);
    }

    #[test]
    fn rejected_and_revoked_credentials() {
        let state = State::new(&SimOptions::with_clients(2)).unwrap();
        assert!(matches!(
            state.grant(Some(("sim-client-01", "wrong")), true),
            Grant::InvalidClient
        ));
        assert!(matches!(
            state.grant(Some(("sim-client-01", "sim-secret-01")), false),
            Grant::UnsupportedGrantType
        ));
        state.set_credentials_rejected("sim-client-02", true);
        assert!(matches!(
            state.grant(Some(("sim-client-02", "sim-secret-02")), true),
            Grant::InvalidClient
        ));
        let Grant::Granted { access_token, .. } =
            state.grant(Some(("sim-client-01", "sim-secret-01")), true)
        else {
            panic!("grant must succeed");
        };
        state.revoke_tokens();
        assert_eq!(
            state.admit(Some(&access_token), &Method::GET, "/api/v2/users"),
            Admission::BadCredentials
        );
        let stats = state.stats();
        assert_eq!(stats.token_grant_failures, 3);
        assert_eq!(stats.client("sim-client-01").rejected_401, 1);
        assert_eq!(stats.client("sim-client-01").token_grants, 1);
        assert_eq!(stats.client("sim-client-02").token_grants, 0);
    }

    #[test]
    fn refused_tokens_answer_401_until_the_storm_ends() {
        let state = State::new(&SimOptions::with_clients(2)).unwrap();
        let grant = |id: &str, secret: &str| match state.grant(Some((id, secret)), true) {
            Grant::Granted { access_token, .. } => access_token,
            other => panic!("grant must succeed: {other:?}"),
        };
        let get = |token: &str| state.admit(Some(token), &Method::GET, "/api/v2/users");
        let one = grant("sim-client-01", "sim-secret-01");
        let two = grant("sim-client-02", "sim-secret-02");
        state.set_tokens_refused("sim-client-02", true);
        let fresh = grant("sim-client-02", "sim-secret-02");
        assert!(matches!(get(&one), Admission::Admitted { .. }));
        assert_eq!(get(&two), Admission::BadCredentials);
        assert_eq!(get(&fresh), Admission::BadCredentials, "fresh ones too");
        state.set_tokens_refused("sim-client-02", false);
        assert!(matches!(get(&fresh), Admission::Admitted { .. }));
        let stats = state.stats();
        assert_eq!(stats.client("sim-client-02").rejected_401, 2);
        assert_eq!(stats.client("sim-client-02").token_grants, 2);
    }
}
