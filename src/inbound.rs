//! Every check on the caller's request before anything is spent, behind one [`Policy`]
//! per config generation: the request target, the caller's key, the route (allow-list,
//! methods) and the body.
//!
//! `CONNECT` is refused, absolute-form targets must name the configured API host, paths
//! must stay under `/api/v2/` (also once percent-decoded), methods must be ones the
//! Platform API has for the path, callers authenticate with an API key unless anonymous
//! access is allowed (loopback sidecars only; enforced by config validation), only routes
//! on the allow-list (when there is one) pass, and the body is read within its size limit,
//! the bytes all bodies in flight may hold, and the request deadline.
//!
//! With `inbound.gateway` on (the SDKs' gateway mode, [`gateway`]), a login at
//! `{login_path}/oauth/token` is answered here too (after the same target and body checks,
//! before anything is spent), a caller token authenticates like a key, and API paths may
//! carry the `{api_path}` prefix, stripped before every check of the path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Uri, header, request};
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use crate::config::{ANONYMOUS_CALLER, UNKNOWN_CALLER};
use crate::config::{CallerPolicy, Config, InboundConfig, Lane, LaneShares, parse_duration};
use crate::routes::{Operation, Route, RouteId, RouteMethod, RouteTable};

pub mod gateway;

pub use gateway::{Gateway, IssuedToken, LOGIN_ROUTE, LoginError};

/// The header callers may carry their key in.
pub const API_KEY_HEADER: &str = "x-api-key";
/// [`API_KEY_HEADER`] as a header name (a lookup by `&str` parses the name every time).
pub const API_KEY: http::HeaderName = http::HeaderName::from_static(API_KEY_HEADER);

/// Request header capping one request's wait for a slot (SPEC §12), e.g. `1500ms`, `2s`:
/// below the config's `budgets.queue.max_wait`, never above it.
pub const MAX_WAIT_HEADER: &str = "x-gcpool-max-wait";
/// [`MAX_WAIT_HEADER`] as a header name.
pub const MAX_WAIT: http::HeaderName = http::HeaderName::from_static(MAX_WAIT_HEADER);

/// Why a caller's request is refused before anything is spent on it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("CONNECT is not supported: gcpool is an API gateway, not a tunnel")]
    ConnectRefused,
    #[error("absolute-form requests are forwarded only to the configured Genesys API host")]
    ForeignHost,
    #[error("only /api/v2/ paths are forwarded")]
    NotApiPath,
    #[error("the path contains dot segments (also percent-encoded, or made by %2F or %5C)")]
    BadPath,
    #[error("the Platform API has no {method} operation for this path; allowed: {}", allow_list(.allowed))]
    MethodNotAllowed {
        method: String,
        allowed: Vec<RouteMethod>,
    },
    #[error(
        "the caller is not authenticated: send X-API-Key, HTTP Basic with the key as password, \
         or a caller token from the gateway login as Bearer"
    )]
    Unauthorized,
    #[error("route {0} is not on this gcpool's allow-list")]
    RouteNotAllowed(String),
    #[error("route {route} is not on the allow_routes of caller {caller}")]
    RouteNotAllowedForCaller { route: String, caller: String },
    #[error("the request body could not be read")]
    BadBody,
    #[error("the request body did not arrive before the request deadline")]
    BodyTimeout,
    #[error("the request is over the size limit. Maximum bytes: {0}")]
    BodyTooLarge(u64),
    #[error("too many request bodies are in flight; retry shortly")]
    BodyMemory,
    #[error("x-gcpool-max-wait: {0}")]
    BadMaxWait(String),
    /// A gateway login refused (OAuth's error shape, not Genesys' API one).
    #[error(transparent)]
    Login(#[from] LoginError),
}

/// A refusal, with the route label of the request as far as it was matched (`other` when
/// refused before the route was looked up).
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub route: &'static str,
    /// The caller's label, when it was known (`None`: `unknown`).
    pub caller: Option<Arc<str>>,
}

/// Who may call, which routes, with how large a body: one config generation's caller checks.
#[derive(Debug)]
pub struct Policy {
    /// Scheme-less host and port of `genesys.api_base` (absolute-form targets must name it).
    api_authority: Authority,
    auth: Authenticator,
    /// `None`: every route; else only these.
    allow_routes: Option<HashSet<RouteId>>,
    /// Each api key's caller's own rules, in `inbound.api_keys` order, and the anonymous
    /// caller's.
    callers: Vec<CallerRules>,
    anonymous: CallerRules,
    max_body_bytes: u64,
    /// The memory request bodies may hold (restart-only: shared by every generation).
    body_memory: BodyMemory,
}

/// The memory request bodies may hold in flight, one permit per byte, process-wide: what
/// callers' bodies share (`server.max_body_bytes_in_flight`), and the gateway logins' own
/// allowance ([`gateway::LOGIN_BODIES_IN_FLIGHT`]) for a body read before any credential
/// was checked (credentials in the form, or none), so that unauthenticated logins can
/// never take the room of authenticated callers' bodies.
#[derive(Debug, Clone)]
pub struct BodyMemory {
    callers: Arc<Semaphore>,
    logins: Arc<Semaphore>,
}

/// One caller's own checks (SPEC §12), from its [`CallerPolicy`].
#[derive(Debug)]
struct CallerRules {
    /// Its `caller` label: the api key's name, or `anonymous`.
    name: Arc<str>,
    /// Its sub-pool (admission confines it; kept here for `/status`).
    clients: Vec<String>,
    max_wait: Option<Duration>,
    /// `None`: no route list of its own.
    allow_routes: Option<HashSet<RouteId>>,
    /// Its lane and that lane's share of every budget, in thousandths (admission applies
    /// it; kept here for `/status`).
    lane: Lane,
    share_permille: u16,
}

impl CallerRules {
    fn new(name: &str, policy: &CallerPolicy, lanes: &LaneShares) -> Self {
        let allowed = &policy.allow_routes;
        Self {
            name: name.into(),
            clients: policy.clients.clone(),
            max_wait: policy.max_wait,
            lane: policy.lane,
            share_permille: lanes.permille(policy.lane),
            allow_routes: (!allowed.is_empty()).then(|| allowed.iter().map(|r| r.route).collect()),
        }
    }
}

/// One caller as `/status` shows it: its label and its own rules.
#[derive(Debug, Clone)]
pub struct CallerInfo {
    pub name: Arc<str>,
    pub max_wait: Option<Duration>,
    /// Its own route list, sorted (`"GET /api/v2/..."`); empty: none of its own.
    pub allow_routes: Vec<String>,
    /// Its sub-pool's clients; empty: all of them.
    pub clients: Vec<String>,
    pub lane: Lane,
    /// Its lane's share of every token, route and org budget, in thousandths.
    pub share_permille: u16,
}

impl CallerRules {
    fn info(&self) -> CallerInfo {
        let table = RouteTable::genesys();
        let mut allow_routes: Vec<String> = self
            .allow_routes
            .iter()
            .flatten()
            .map(|&id| table.operation(id).to_string())
            .collect();
        allow_routes.sort();
        CallerInfo {
            name: self.name.clone(),
            max_wait: self.max_wait,
            allow_routes,
            clients: self.clients.clone(),
            lane: self.lane,
            share_permille: self.share_permille,
        }
    }
}

/// What a request that passed the checks is: an API call to forward, or a gateway login
/// answered with a caller token.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every request is an API call: boxing it would cost each an allocation"
)]
pub enum Checked {
    Api(CallerRequest),
    Login(Login),
}

/// A gateway login that succeeded: who logged in and the token it gets.
#[derive(Debug)]
pub struct Login {
    /// The caller's label (its api key's name).
    pub caller: Arc<str>,
    pub token: IssuedToken,
}

/// A request that passed every check: its head, its route and its whole body.
#[derive(Debug)]
pub struct CallerRequest {
    pub parts: request::Parts,
    pub route: Route,
    pub body: Bytes,
    /// Who asked: the caller's label (its api key's name, or `anonymous`).
    pub caller: Arc<str>,
    /// The cap on this request's wait for a slot: the caller's `max_wait` and the request's
    /// `x-gcpool-max-wait`, whichever is shorter.
    pub max_wait: Option<Duration>,
    /// Holds the body's bytes against the in-flight cap until the request ends.
    _body_memory: Option<OwnedSemaphorePermit>,
}

// === impl Policy ===

impl Policy {
    /// The checks `config` asks for; bodies count against `body_memory`.
    pub fn new(config: &Config, body_memory: BodyMemory) -> Self {
        let allowed = &config.inbound.allow_routes;
        Self {
            api_authority: config
                .genesys
                .api_base
                .authority()
                .cloned()
                .expect("config validation guarantees api_base has a host"),
            auth: Authenticator::new(&config.inbound),
            allow_routes: (!allowed.is_empty()).then(|| allowed.iter().map(|r| r.route).collect()),
            callers: config
                .inbound
                .api_keys
                .iter()
                .map(|k| CallerRules::new(&k.name, &k.caller, &config.inbound.lanes))
                .collect(),
            anonymous: CallerRules::new(
                ANONYMOUS_CALLER,
                &config.inbound.anonymous_caller,
                &config.inbound.lanes,
            ),
            max_body_bytes: config.server.max_body_bytes,
            body_memory,
        }
    }

    /// Whether `caller` (a label) is a caller of this generation.
    pub fn knows(&self, caller: &str) -> bool {
        (self.auth.anonymous && caller == ANONYMOUS_CALLER)
            || self.callers.iter().any(|c| &*c.name == caller)
    }

    /// Every caller this generation knows: the api keys' in config order, then the
    /// anonymous caller when anonymous access is on.
    pub fn callers(&self) -> Vec<CallerInfo> {
        let mut callers: Vec<CallerInfo> = self.callers.iter().map(CallerRules::info).collect();
        if self.auth.anonymous {
            callers.push(self.anonymous.info());
        }
        callers
    }

    /// The semaphores counting the body bytes in flight, sized by `config` (one per process).
    pub fn body_memory(config: &Config) -> BodyMemory {
        BodyMemory {
            callers: Arc::new(Semaphore::new(
                usize::try_from(config.server.max_body_bytes_in_flight)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
            logins: Arc::new(Semaphore::new(gateway::LOGIN_BODIES_IN_FLIGHT)),
        }
    }

    /// Checks `request` in order (target, key, method, allow-list) and reads its body by
    /// `deadline`; a gateway login is checked and answered instead ([`Checked::Login`]).
    ///
    /// # Errors
    /// The first check that fails, with the route label as far as it was matched.
    pub async fn check<B>(
        &self,
        mut request: Request<B>,
        deadline: Instant,
    ) -> Result<Checked, Refused>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let early = |refusal| Refused {
            refusal,
            route: Route::Other.label(),
            caller: None,
        };
        let (method, uri) = (request.method(), request.uri());
        check_request_line(method, uri, request.version(), &self.api_authority).map_err(early)?;
        if let Some(gateway) = &self.auth.gateway {
            if gateway.is_login(uri.path()) {
                // Boxed: a rare request's future stays out of every request's.
                return Box::pin(self.login(gateway, request, deadline))
                    .await
                    .map(Checked::Login);
            }
            if let Some(stripped) = gateway.strip_api_path(uri) {
                *request.uri_mut() = stripped;
            }
        }
        let (method, uri) = (request.method(), request.uri());
        let caller = check_api_path(uri.path())
            .and_then(|()| self.auth.identify(request.headers()))
            .map_err(early)?;
        let rules = caller
            .and_then(|i| self.callers.get(i))
            .unwrap_or(&self.anonymous);
        let refused = |route: &Route| {
            let route = route.label();
            let caller = Some(rules.name.clone());
            move |refusal| Refused {
                refusal,
                route,
                caller,
            }
        };
        let table = RouteTable::genesys();
        let route = table.lookup(method, uri.path());
        check_method(method, uri.path(), &route, table).map_err(refused(&route))?;
        if let Some(allowed) = &self.allow_routes
            && !route.id().is_some_and(|id| allowed.contains(&id))
        {
            return Err(refused(&route)(Refusal::RouteNotAllowed(route_text(
                route.operation(),
            ))));
        }
        if let Some(allowed) = &rules.allow_routes
            && !route.id().is_some_and(|id| allowed.contains(&id))
        {
            return Err(refused(&route)(Refusal::RouteNotAllowedForCaller {
                route: route_text(route.operation()),
                caller: rules.name.to_string(),
            }));
        }
        let asked = max_wait(request.headers()).map_err(refused(&route))?;
        let max_wait = match (asked, rules.max_wait) {
            (Some(asked), Some(own)) => Some(asked.min(own)),
            (asked, own) => asked.or(own),
        };
        let (parts, body) = request.into_parts();
        let (body, held) = read_body(
            &parts.headers,
            body,
            self.max_body_bytes,
            deadline,
            &self.body_memory.callers,
        )
        .await
        .map_err(refused(&route))?;
        Ok(Checked::Api(CallerRequest {
            parts,
            route,
            body,
            caller: rules.name.clone(),
            max_wait,
            _body_memory: held,
        }))
    }

    /// A gateway login: `POST`, a body within [`gateway::LOGIN_MAX_BODY`] (and the other body
    /// limits) by `deadline`, a caller's name and key, the client-credentials grant. Spends
    /// nothing and reaches no upstream.
    async fn login<B>(
        &self,
        gateway: &Gateway,
        request: Request<B>,
        deadline: Instant,
    ) -> Result<Login, Refused>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let refused = |caller: Option<&CallerRules>| {
            let caller = caller.map(|c| c.name.clone());
            move |refusal| Refused {
                refusal,
                route: LOGIN_ROUTE,
                caller,
            }
        };
        if request.method() != Method::POST {
            return Err(refused(None)(Refusal::MethodNotAllowed {
                method: request.method().as_str().chars().take(32).collect(),
                allowed: vec![RouteMethod::Post],
            }));
        }
        let (parts, body) = request.into_parts();
        // Credentials in `Authorization` (what the SDKs send) are checked before the body is
        // read: a wrong one holds no memory. A body read before any credential was checked
        // (credentials in the form, or none) draws on the logins' own allowance, never on
        // the memory that authenticated callers' bodies share.
        let memory = match gateway::basic_client_credentials(&parts.headers) {
            Some(credentials) if self.auth.login(&credentials).is_some() => {
                &self.body_memory.callers
            }
            Some(_) => return Err(refused(None)(LoginError::InvalidClient.into())),
            None => &self.body_memory.logins,
        };
        let max = self.max_body_bytes.min(gateway::LOGIN_MAX_BODY);
        let (body, _held) = read_body(&parts.headers, body, max, deadline, memory)
            .await
            .map_err(refused(None))?;
        let asked = gateway::TokenRequest::parse(&parts.headers, &body)
            .map_err(|e| refused(None)(e.into()))?;
        let index = asked
            .credentials
            .as_ref()
            .and_then(|c| self.auth.login(c))
            .ok_or_else(|| refused(None)(LoginError::InvalidClient.into()))?;
        // `identify`'s indices are `self.callers`' (both in `inbound.api_keys` order).
        let (Some(rules), Some(token)) = (
            self.callers.get(index),
            gateway.mint(index, gateway::unix_now()),
        ) else {
            return Err(refused(None)(LoginError::InvalidClient.into()));
        };
        asked
            .client_credentials_grant()
            .map_err(|e| refused(Some(rules))(e.into()))?;
        Ok(Login {
            caller: rules.name.clone(),
            token,
        })
    }
}

/// The request's `x-gcpool-max-wait`, if it sent one.
fn max_wait(headers: &HeaderMap) -> Result<Option<Duration>, Refusal> {
    let Some(value) = headers.get(MAX_WAIT) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Refusal::BadMaxWait("not text; expected e.g. 1500ms or 2s".into()))?;
    parse_duration(text)
        .map(Some)
        .map_err(|e| Refusal::BadMaxWait(format!("{text:?}: {e}")))
}

/// Reads the caller's body by `deadline`, refusing it past `max` bytes (also for chunked
/// bodies) and when its bytes would take the bodies in flight past the cap (`memory`:
/// one permit per byte). Bytes are counted as they arrive, so a body that announces
/// 500 KB and stalls holds what it sent, not what it announced. The permit returned holds
/// them until dropped.
async fn read_body<B>(
    headers: &HeaderMap,
    mut body: B,
    max: u64,
    deadline: Instant,
    memory: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Refusal>
where
    B: Body<Data = Bytes> + Unpin,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Refusal::BodyTooLarge(max));
    }
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Refusal::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Refusal::BadBody),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len() as u64);
        if total > max {
            return Err(Refusal::BodyTooLarge(max));
        }
        let bytes = u32::try_from(data.len()).map_err(|_| Refusal::BodyTooLarge(max))?;
        let permit = memory
            .clone()
            .try_acquire_many_owned(bytes)
            .map_err(|_| Refusal::BodyMemory)?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        chunks.push(data);
    }
    Ok((join(chunks, total), held))
}

/// The chunks of a body as one buffer (no copy for a body of one chunk).
fn join(mut chunks: Vec<Bytes>, total: u64) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(usize::try_from(total).unwrap_or(0));
            for chunk in chunks {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    }
}

/// The route as the allow-list refusal names it (never the raw path a caller sent).
fn route_text(operation: Option<Operation>) -> String {
    operation.map_or_else(
        || "(not a known Genesys operation)".to_owned(),
        |op| op.to_string(),
    )
}

/// `GET, POST, HEAD`: the value of an `Allow` header.
pub fn allow_list(methods: &[RouteMethod]) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the request line: method, target host, path. For HTTP/1.x an authority in the
/// target means absolute form (HTTP_PROXY style) and must name the API host; HTTP/2 always
/// carries `:authority`, which is only the caller's Host and never chooses the upstream.
///
/// # Errors
/// [`Refusal::ConnectRefused`], [`Refusal::ForeignHost`], [`Refusal::NotApiPath`] or
/// [`Refusal::BadPath`].
pub fn check_target(
    method: &Method,
    uri: &Uri,
    version: http::Version,
    api_authority: &http::uri::Authority,
) -> Result<(), Refusal> {
    check_request_line(method, uri, version, api_authority)?;
    check_api_path(uri.path())
}

/// The method and target host of [`check_target`]: `CONNECT` and absolute-form targets for
/// another host are refused whatever the path.
fn check_request_line(
    method: &Method,
    uri: &Uri,
    version: http::Version,
    api_authority: &http::uri::Authority,
) -> Result<(), Refusal> {
    if method == Method::CONNECT {
        return Err(Refusal::ConnectRefused);
    }
    let absolute_form = version < http::Version::HTTP_2;
    if let Some(authority) = uri.authority().filter(|_| absolute_form) {
        let same_host = authority.host().eq_ignore_ascii_case(api_authority.host());
        let same_port = authority.port_u16().or(default_port(uri))
            == api_authority.port_u16().or(default_port(uri));
        if !same_host || !same_port {
            return Err(Refusal::ForeignHost);
        }
    }
    Ok(())
}

/// The path of [`check_target`]: under `/api/v2/`, no dot segment.
fn check_api_path(path: &str) -> Result<(), Refusal> {
    if !path.starts_with("/api/v2/") {
        return Err(Refusal::NotApiPath);
    }
    if has_dot_segment(path) {
        return Err(Refusal::BadPath);
    }
    Ok(())
}

/// Checks the method against the operations the route table has for the path: a method no
/// operation has there gets 405 (HEAD is allowed wherever GET is). A path the table does
/// not know is forwarded with any method the Platform API uses (the table may be older
/// than the API), and refused with any other (`TRACE`, `OPTIONS`, extension methods).
///
/// # Errors
/// [`Refusal::MethodNotAllowed`] naming the methods that are allowed.
fn check_method(
    method: &Method,
    path: &str,
    route: &Route,
    table: &RouteTable,
) -> Result<(), Refusal> {
    if matches!(route, Route::Known(_)) {
        return Ok(());
    }
    let mut allowed = table.methods_for(path);
    if allowed.is_empty() {
        if RouteMethod::from_http(method).is_some() {
            return Ok(());
        }
        allowed = RouteMethod::ALL.to_vec();
    } else if allowed.contains(&RouteMethod::Get) && !allowed.contains(&RouteMethod::Head) {
        // HEAD goes wherever GET does (`RouteTable::lookup` made it the GET operation).
        allowed.push(RouteMethod::Head);
    }
    Err(Refusal::MethodNotAllowed {
        method: method.as_str().chars().take(32).collect(),
        allowed,
    })
}

fn default_port(uri: &Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// Whether the path, percent-decoded as a hop that decodes it would read it, has a `.` or
/// `..` segment: `/`, a backslash, `%2F` and `%5C` (any case) separate segments and `%2E` is a
/// dot. So `/api/v2/users/x%2F..%2F..%2Fauthorization` is caught, while a `%2F` inside an
/// ordinary segment (`rows/key%2Fwith%2Fslashes`) is not a traversal. A dot segment with
/// path parameters (`..;`, `..%3Bx`) counts too: servers that read `;` parameters
/// (Tomcat, Jetty) treat it as `..`.
fn has_dot_segment(path: &str) -> bool {
    #[derive(PartialEq)]
    enum Token {
        Separator,
        Dot,
        /// `;` (or `%3B`): path parameters follow.
        Params,
        Other,
    }
    let bytes = path.as_bytes();
    let (mut at, mut dots, mut only_dots) = (0, 0usize, true);
    loop {
        let (token, width) = match bytes.get(at) {
            None => (Token::Separator, 1),
            Some(b'/' | b'\\') => (Token::Separator, 1),
            Some(b'.') => (Token::Dot, 1),
            Some(b';') => (Token::Params, 1),
            Some(b'%') => match (bytes.get(at + 1), bytes.get(at + 2)) {
                (Some(b'2'), Some(b'f' | b'F')) | (Some(b'5'), Some(b'c' | b'C')) => {
                    (Token::Separator, 3)
                }
                (Some(b'2'), Some(b'e' | b'E')) => (Token::Dot, 3),
                (Some(b'3'), Some(b'b' | b'B')) => (Token::Params, 3),
                _ => (Token::Other, 1),
            },
            Some(_) => (Token::Other, 1),
        };
        match token {
            Token::Separator => {
                if only_dots && (dots == 1 || dots == 2) {
                    return true;
                }
                if at >= bytes.len() {
                    return false;
                }
                (dots, only_dots) = (0, true);
            }
            Token::Dot => dots += 1,
            Token::Params => {
                if only_dots && (dots == 1 || dots == 2) {
                    return true;
                }
                only_dots = false;
            }
            Token::Other => only_dots = false,
        }
        at += width;
    }
}

/// Who may call: API key digests, caller tokens when the gateway is on, or anyone when
/// anonymous access is on.
#[derive(Debug, Clone)]
pub struct Authenticator {
    digests: Vec<(String, [u8; 32])>,
    anonymous: bool,
    /// `inbound.gateway`: its login, and the caller tokens it verifies.
    gateway: Option<Arc<Gateway>>,
}

impl Authenticator {
    pub fn new(config: &InboundConfig) -> Self {
        Self {
            digests: config
                .api_keys
                .iter()
                .map(|k| (k.name.clone(), k.sha256))
                .collect(),
            anonymous: config.allow_anonymous,
            gateway: config
                .gateway
                .as_ref()
                .map(|g| Arc::new(Gateway::new(g, &config.api_keys))),
        }
    }

    /// The index in `inbound.api_keys` of the caller whose name and key `credentials`
    /// are (a gateway login), or `None`. The key is compared in constant time, with every
    /// caller's.
    pub fn login(&self, credentials: &gateway::ClientCredentials) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(credentials.client_secret.expose().as_bytes()).into();
        let mut found = None;
        for (index, (name, known)) in self.digests.iter().enumerate() {
            // Both compared every time: how long it takes says nothing of the key.
            let name_matches = *name == credentials.client_id;
            let key_matches = bool::from(known.ct_eq(&digest));
            if name_matches & key_matches && found.is_none() {
                found = Some(index);
            }
        }
        found
    }

    /// The name of the key the caller presented, or `None` for an anonymous caller.
    ///
    /// # Errors
    /// [`Refusal::Unauthorized`] when a key is required and none matches.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
        Ok(self.identify(headers)?.and_then(|i| self.name(i)))
    }

    /// The name of the `index`th key of `inbound.api_keys`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.digests.get(index).map(|(name, _)| name.as_str())
    }

    /// The index in `inbound.api_keys` of the key the caller presented, or `None` for an
    /// anonymous caller.
    ///
    /// # Errors
    /// [`Refusal::Unauthorized`] when a key is required and none matches.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Option<usize>, Refusal> {
        if self.digests.is_empty() && self.anonymous {
            // No key to recognise: every caller is anonymous (no header lookups).
            return Ok(None);
        }
        for candidate in presented_keys(headers) {
            let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
            // Compare with every key, without an early exit, so timing says nothing.
            let mut found = None;
            for (index, (_, known)) in self.digests.iter().enumerate() {
                if bool::from(known.ct_eq(&digest)) && found.is_none() {
                    found = Some(index);
                }
            }
            if found.is_some() {
                return Ok(found);
            }
        }
        if let Some(gateway) = &self.gateway {
            let now = gateway::unix_now();
            if let Some(index) =
                gateway::bearer_tokens(headers).find_map(|token| gateway.verify(token, now).ok())
            {
                return Ok(Some(index));
            }
        }
        if self.anonymous {
            Ok(None)
        } else {
            Err(Refusal::Unauthorized)
        }
    }
}

/// Keys from `X-API-Key` and from the password of HTTP Basic (Data Actions send either).
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    let api_keys = headers
        .get_all(&API_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    let basic = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(basic_password);
    api_keys.chain(basic)
}

fn basic_password(value: &str) -> Option<String> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn authority() -> http::uri::Authority {
        "api.mypurecloud.com".parse().unwrap()
    }

    #[test]
    fn target_checks() {
        let a = authority();
        let ok =
            |m: Method, u: &str| check_target(&m, &u.parse().unwrap(), http::Version::HTTP_11, &a);
        assert!(ok(Method::GET, "/api/v2/users?pageSize=1").is_ok());
        assert!(ok(Method::GET, "https://api.mypurecloud.com/api/v2/users").is_ok());
        assert!(ok(Method::GET, "http://API.mypurecloud.com:80/api/v2/users").is_ok());
        assert!(matches!(
            ok(Method::GET, "http://evil.example/api/v2/users"),
            Err(Refusal::ForeignHost)
        ));
        assert!(matches!(
            ok(Method::GET, "https://api.mypurecloud.com:8443/api/v2/users"),
            Err(Refusal::ForeignHost)
        ));
        assert!(matches!(
            ok(Method::CONNECT, "api.mypurecloud.com:443"),
            Err(Refusal::ConnectRefused)
        ));
        assert!(matches!(
            ok(Method::GET, "/metrics"),
            Err(Refusal::NotApiPath)
        ));
        assert!(matches!(
            ok(Method::GET, "/api/v2"),
            Err(Refusal::NotApiPath)
        ));
        assert!(matches!(
            ok(Method::GET, "/api/v2/../../x"),
            Err(Refusal::BadPath)
        ));
        assert!(matches!(
            ok(Method::GET, "/api/v2/%2e%2E/x"),
            Err(Refusal::BadPath)
        ));
        assert!(ok(Method::GET, "/api/v2/users/a.b").is_ok());
        for traversal in [
            "/api/v2/..%2f..%2fetc/passwd",
            "/api/v2/users/x%2F..%2F..%2Fauthorization%2Froles",
            "/api/v2/users/x%5c..%5Cy",
            "/api/v2/users/.%2E",
            "/api/v2/users/x%2f.",
            "/api/v2/users/%2e",
            "/api/v2/users/..;/..;/authorization/roles",
            "/api/v2/users/%2e%2e;x=1",
            "/api/v2/users/..%3b",
            "/api/v2/users/.;",
        ] {
            assert!(
                matches!(ok(Method::GET, traversal), Err(Refusal::BadPath)),
                "{traversal}"
            );
        }
        for fine in [
            "/api/v2/flows/datatables/d/rows/a%2Fb%2Fc",
            "/api/v2/users/...",
            "/api/v2/users/.x",
            "/api/v2/users/x%2F...%2Fy",
            "/api/v2/users/%2e%2e%2e",
            "/api/v2/users/%2",
            "/api/v2/users/x%",
            "/api/v2/users/a;b",
            "/api/v2/users/x..;",
        ] {
            assert!(ok(Method::GET, fine).is_ok(), "{fine}");
        }
        let h2 = check_target(
            &Method::GET,
            &"https://gcpool.example:8443/api/v2/users".parse().unwrap(),
            http::Version::HTTP_2,
            &a,
        );
        assert!(
            h2.is_ok(),
            "an HTTP/2 :authority is the caller's Host, not a target"
        );
    }

    #[test]
    fn methods_the_table_has_for_the_path() {
        let table = RouteTable::genesys();
        let check = |m: &str, path: &str| {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            let route = table.lookup(&method, path);
            check_method(&method, path, &route, table)
        };
        assert!(check("GET", "/api/v2/users").is_ok());
        assert!(
            check("HEAD", "/api/v2/users").is_ok(),
            "HEAD wherever GET is"
        );
        assert!(check("GET", "/api/v2/not/in/the/table").is_ok());
        assert!(check("DELETE", "/api/v2/not/in/the/table").is_ok());
        let Err(Refusal::MethodNotAllowed { allowed, .. }) = check("DELETE", "/api/v2/users")
        else {
            panic!("DELETE /api/v2/users has no operation");
        };
        assert_eq!(
            allowed,
            [RouteMethod::Get, RouteMethod::Post, RouteMethod::Head]
        );
        assert!(matches!(
            check("FOO", "/api/v2/not/in/the/table"),
            Err(Refusal::MethodNotAllowed { allowed, .. }) if allowed.len() == RouteMethod::ALL.len()
        ));
        assert!(check("TRACE", "/api/v2/users/me").is_err());
        assert!(check("OPTIONS", "/api/v2/users/me").is_err());
    }

    #[test]
    fn api_key_from_header_or_basic_password() {
        let key = "s3cret-key";
        let config = InboundConfig {
            api_keys: vec![ApiKey {
                name: "data-actions".into(),
                sha256: Sha256::digest(key).into(),
                token_key: None,
                caller: CallerPolicy::default(),
            }],
            allow_anonymous: false,
            allow_routes: vec![],
            anonymous_caller: CallerPolicy::default(),
            lanes: Default::default(),
            gateway: None,
        };
        let auth = Authenticator::new(&config);
        let mut h = HeaderMap::new();
        assert!(matches!(auth.authenticate(&h), Err(Refusal::Unauthorized)));
        h.insert(API_KEY_HEADER, key.parse().unwrap());
        assert_eq!(auth.authenticate(&h).unwrap(), Some("data-actions"));
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{key}"));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(auth.authenticate(&h).unwrap(), Some("data-actions"));
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, "wrong".parse().unwrap());
        assert!(matches!(auth.authenticate(&h), Err(Refusal::Unauthorized)));
    }
}
