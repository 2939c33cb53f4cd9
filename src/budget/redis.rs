//! `RedisStore`: the budgets and cool-downs of a whole fleet, kept in Redis (SPEC §8).
//!
//! One admission is one round trip: `EVALSHA` of `admit.lua`, which runs the rule of
//! [`window`](super::window) over every key the request touches, picks the candidate and
//! reserves its instant in all its budgets or none. Time is Redis `TIME`, so replicas'
//! clocks do not matter. Every key of a request carries the hash tag `{key_prefix}`, so the
//! script also runs on Redis Cluster.
//!
//! Key layout (`P` = `key_prefix`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `{P}:b:<budget name>` | sorted set | one member `<µs>-<seq>` per reservation, score = instant (µs) |
//! | `{P}:cool` | hash | `client:<name>`, `route:<index>`, `pool` → "not before" (µs) |
//! | `{P}:limits` | hash | budget name → learned lower limit |
//! | `{P}:seq` | counter | makes members unique |
//!
//! Budget keys live as long as one of their instants can share a window with the future
//! (plus a margin); the cool-down hash as long as its longest cool-down; learned limits a
//! week after the last lowering. Nothing grows without bound.
//!
//! The connection is redis-rs's [`ConnectionManager`]: one multiplexed connection (every
//! request pipelined on it, no pool to size) that reconnects by itself, with backoff, after
//! an I/O error. The store therefore has no reconnect loop of its own; each call is bounded
//! by a timeout and [`RedisStore::is_up`](BudgetStore::is_up) tells whether the last one
//! succeeded, which is what `budget::fallback` watches. Not owned here: the in-memory
//! fallback while Redis is down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script, Value};
use arc_swap::ArcSwap;
use tracing::debug;

use super::window::Micros;
use super::{
    AdmitRequest, Binding, BoxFuture, BudgetDef, BudgetError, BudgetId, BudgetStore, CoolDown,
    Decision, Refusal, Reservation, Slot, Snapshot,
};
use crate::config::SharedStateConfig;
use crate::secret::Secret;

/// How long a learned lower limit is kept after it was last lowered.
const LIMITS_TTL_MS: u64 = 3600 * 1000;

const COOL_DOWN_LUA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local d = tonumber(ARGV[2])
local untl = now + d
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if untl > old then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', untl))
end
local ttl = math.ceil(d / 1000) + 10000
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

const LOWER_LIMIT_LUA: &str = r"
local current = tonumber(ARGV[2])
local learned = redis.call('HGET', KEYS[1], ARGV[1])
if learned and tonumber(learned) and tonumber(learned) < current then
  current = tonumber(learned)
end
local new = tonumber(ARGV[3])
if new < current then
  redis.call('HSET', KEYS[1], ARGV[1], new)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
";

/// KEYS: cool, limits, then one budget key per budget asked for.
/// ARGV: B, then B triples (name, configured limit, window µs), then client fields.
/// Returns B pairs (used, effective limit), then the cool-down left of each client (µs).
const SNAPSHOT_LUA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local b = tonumber(ARGV[1])
local out = {}
local p = 2
for i = 1, b do
  local name, limit, w = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  p = p + 3
  local learned = redis.call('HGET', KEYS[2], name)
  if learned and tonumber(learned) and tonumber(learned) < limit then
    limit = tonumber(learned)
  end
  local lo = string.format('(%.0f', now - w)
  out[#out + 1] = redis.call('ZCOUNT', KEYS[2 + i], lo, string.format('%.0f', now))
  out[#out + 1] = limit
end
local pool = tonumber(redis.call('HGET', KEYS[1], 'pool') or '0') or 0
for j = p, #ARGV do
  local c = tonumber(redis.call('HGET', KEYS[1], ARGV[j]) or '0') or 0
  if pool > c then
    c = pool
  end
  local left = c - now
  if left < 0 then
    left = 0
  end
  out[#out + 1] = left
end
return out
";

/// Budgets and cool-downs shared through Redis.
///
/// Cheap to clone: every clone shares the connection and the health flag.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    con: ConnectionManager,
    timeout: Duration,
    up: AtomicBool,
    /// Budgets and clients by id; replaced whole by a config reload.
    layout: ArcSwap<Layout>,
    prefix: String,
    cool_key: String,
    limits_key: String,
    seq_key: String,
    admit: Script,
    cool_down: Script,
    lower_limit: Script,
    snapshot: Script,
    /// The URL's password, to scrub from error messages that might echo it.
    password: Option<Secret>,
}

/// What the ids of the request path name in Redis.
struct Layout {
    /// By [`BudgetId`].
    budgets: Vec<BudgetMeta>,
    /// `client:<name>` of each client, by index.
    client_fields: Vec<String>,
}

/// One budget as the store addresses it.
struct BudgetMeta {
    key: String,
    name: String,
    limit: u32,
    window: Micros,
}

/// The script's answer to one admission.
#[derive(Debug, PartialEq, Eq)]
struct AdmitReply {
    status: i64,
    candidate: usize,
    wait: Micros,
    binding_kind: i64,
    binding_pos: usize,
    member: String,
    at: Micros,
}

// === impl Layout ===

impl Layout {
    fn new(prefix: &str, defs: &[BudgetDef], clients: &[String]) -> Self {
        Self {
            budgets: defs
                .iter()
                .map(|d| BudgetMeta {
                    key: budget_key(prefix, &d.name),
                    name: d.name.clone(),
                    limit: d.limit,
                    window: micros(d.window),
                })
                .collect(),
            client_fields: clients.iter().map(|c| format!("client:{c}")).collect(),
        }
    }
}

// === impl RedisStore ===

impl RedisStore {
    /// A store for `defs` (indexed by [`BudgetId`]) and `clients` (client names, indexed by
    /// client), connected to `config.redis_url` and checked with a `PING`.
    ///
    /// Every call is bounded by `timeout`.
    ///
    /// # Errors
    /// [`BudgetError::InvalidUrl`] when the URL is not a `redis://` or `rediss://` URL;
    /// [`BudgetError::Unavailable`] or [`BudgetError::Timeout`] when Redis does not answer.
    /// No message contains the URL or its password.
    pub async fn connect(
        config: &SharedStateConfig,
        defs: &[BudgetDef],
        clients: &[String],
        timeout: Duration,
    ) -> Result<RedisStore, BudgetError> {
        let store = Self::lazy(config, defs, clients, timeout)?;
        store.ping().await?;
        Ok(store)
    }

    /// Like [`RedisStore::connect`], without connecting: the first call connects. For a
    /// replica that must start while Redis is down ([`RedisStore::is_up`](BudgetStore::is_up)
    /// is false until a call succeeds).
    ///
    /// # Errors
    /// [`BudgetError::InvalidUrl`] when the URL is not a `redis://` or `rediss://` URL.
    pub fn lazy(
        config: &SharedStateConfig,
        defs: &[BudgetDef],
        clients: &[String],
        timeout: Duration,
    ) -> Result<RedisStore, BudgetError> {
        let url = config.redis_url.expose();
        let scheme = url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err(BudgetError::InvalidUrl(
                "expected a redis:// or rediss:// URL".into(),
            ));
        }
        let client = Client::open(url).map_err(|e| {
            BudgetError::InvalidUrl(format!("not a valid Redis URL ({:?})", e.kind()))
        })?;
        let password = client
            .get_connection_info()
            .redis_settings()
            .password()
            .map(|p| Secret::new(p.to_owned()));
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let con = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| BudgetError::Unavailable(scrub(&e, password.as_ref())))?;
        let prefix = &config.key_prefix;
        Ok(Self {
            shared: Arc::new(Shared {
                con,
                timeout,
                up: AtomicBool::new(false),
                layout: ArcSwap::from_pointee(Layout::new(prefix, defs, clients)),
                prefix: prefix.clone(),
                cool_key: format!("{{{prefix}}}:cool"),
                limits_key: format!("{{{prefix}}}:limits"),
                seq_key: format!("{{{prefix}}}:seq"),
                admit: Script::new(include_str!("admit.lua")),
                cool_down: Script::new(COOL_DOWN_LUA),
                lower_limit: Script::new(LOWER_LIMIT_LUA),
                snapshot: Script::new(SNAPSHOT_LUA),
                password,
            }),
        })
    }

    /// One `PING`.
    ///
    /// # Errors
    /// [`BudgetError::Unavailable`] or [`BudgetError::Timeout`] when Redis does not answer.
    pub async fn ping(&self) -> Result<(), BudgetError> {
        let s = &self.shared;
        let mut con = s.con.clone();
        let reply: Value = s
            .call(async move { ::redis::cmd("PING").query_async(&mut con).await })
            .await?;
        match reply {
            Value::SimpleString(ref pong) if pong == "PONG" => Ok(()),
            Value::BulkString(ref pong) if pong == b"PONG" => Ok(()),
            other => s.fail(BudgetError::Protocol(format!(
                "PING answered {}",
                describe(&other)
            ))),
        }
    }

    /// The Redis key of a budget (for tests and diagnostics).
    pub fn budget_key(&self, budget: BudgetId) -> Option<String> {
        self.shared
            .layout
            .load()
            .budgets
            .get(budget)
            .map(|b| b.key.clone())
    }

    /// The keys of the cool-down hash, learned-limit hash and member counter.
    pub fn shared_keys(&self) -> [&str; 3] {
        let s = &self.shared;
        [&s.cool_key, &s.limits_key, &s.seq_key]
    }

    async fn admit_inner(&self, request: AdmitRequest<'_>) -> Result<Decision, BudgetError> {
        let s = &self.shared;
        let layout = s.layout.load_full();
        // Budgets touched, each once, in first-seen order; `pos[b]` is its 1-based position.
        let mut pos = vec![0usize; layout.budgets.len()];
        let mut touched: Vec<BudgetId> = Vec::new();
        for candidate in request.candidates {
            for &b in &candidate.budgets {
                if b < pos.len() && pos[b] == 0 {
                    touched.push(b);
                    pos[b] = touched.len();
                }
            }
        }
        let mut invocation = s.admit.prepare_invoke();
        invocation
            .key(&s.cool_key)
            .key(&s.limits_key)
            .key(&s.seq_key);
        for &b in &touched {
            invocation.key(&layout.budgets[b].key);
        }
        invocation
            .arg(micros(request.max_wait))
            .arg(
                request
                    .route
                    .map(|r| format!("route:{}", r.index()))
                    .unwrap_or_default(),
            )
            .arg(touched.len());
        for &b in &touched {
            let meta = &layout.budgets[b];
            invocation.arg(&meta.name).arg(meta.limit).arg(meta.window);
        }
        invocation.arg(request.candidates.len());
        for candidate in request.candidates {
            let field = layout
                .client_fields
                .get(candidate.client)
                .map_or("", String::as_str);
            // Unknown budget ids are ignored, as in memory.
            let known: Vec<usize> = candidate
                .budgets
                .iter()
                .filter_map(|&b| pos.get(b).copied())
                .collect();
            invocation.arg(field).arg(known.len());
            for p in known {
                invocation.arg(p);
            }
        }
        let mut con = s.con.clone();
        let value: Value = s
            .call(async { invocation.invoke_async(&mut con).await })
            .await?;
        let reply = match AdmitReply::parse(&value) {
            Ok(reply) => reply,
            Err(e) => return s.fail(e),
        };
        reply.decision(request, layout.budgets.len())
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL or the connection (it holds the password).
        let layout = self.shared.layout.load();
        f.debug_struct("RedisStore")
            .field("budgets", &layout.budgets.len())
            .field("clients", &layout.client_fields.len())
            .field("timeout", &self.shared.timeout)
            .field("up", &self.shared.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl BudgetStore for RedisStore {
    fn admit<'a>(
        &'a self,
        request: AdmitRequest<'a>,
    ) -> BoxFuture<'a, Result<Decision, BudgetError>> {
        Box::pin(self.admit_inner(request))
    }

    fn release(&self, reservation: Reservation) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(member) = reservation.slot.member else {
                return;
            };
            let layout = shared.layout.load_full();
            let mut pipe = ::redis::pipe();
            for &b in &reservation.slot.budgets {
                if let Some(meta) = layout.budgets.get(b) {
                    pipe.zrem(&meta.key, &member).ignore();
                }
            }
            let mut con = shared.con.clone();
            let result: Result<(), _> = shared
                .call(async move { pipe.exec_async(&mut con).await })
                .await;
            if let Err(e) = result {
                debug!(error = %e, "giving back a reservation failed");
            }
        })
    }

    fn cool_down(&self, target: CoolDown, duration: Duration) -> BoxFuture<'static, ()> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let field = match target {
                CoolDown::Client(c) => match shared.layout.load().client_fields.get(c) {
                    Some(field) => field.clone(),
                    None => return,
                },
                CoolDown::Route(r) => format!("route:{}", r.index()),
                CoolDown::Pool => "pool".to_owned(),
            };
            let mut con = shared.con.clone();
            let script = &shared.cool_down;
            let mut invocation = script.key(&shared.cool_key);
            invocation.arg(field).arg(micros(duration));
            let result: Result<Value, _> = shared
                .call(async { invocation.invoke_async(&mut con).await })
                .await;
            if let Err(e) = result {
                debug!(error = %e, "recording a cool-down failed");
            }
        })
    }

    fn lower_limit(&self, budget: BudgetId, limit: u32) -> BoxFuture<'static, bool> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let layout = shared.layout.load_full();
            let Some(meta) = layout.budgets.get(budget) else {
                return false;
            };
            let mut con = shared.con.clone();
            let mut invocation = shared.lower_limit.key(&shared.limits_key);
            invocation
                .arg(&meta.name)
                .arg(meta.limit)
                .arg(limit)
                .arg(LIMITS_TTL_MS);
            let result: Result<Value, _> = shared
                .call(async { invocation.invoke_async(&mut con).await })
                .await;
            match result {
                Ok(Value::Int(lowered)) => lowered == 1,
                Ok(other) => {
                    debug!(
                        reply = describe(&other),
                        "unexpected reply to a lower limit"
                    );
                    false
                }
                Err(e) => {
                    debug!(error = %e, "recording a learned limit failed");
                    false
                }
            }
        })
    }

    fn snapshot(&self, budgets: Vec<BudgetId>, clients: usize) -> BoxFuture<'static, Snapshot> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let layout = shared.layout.load_full();
            let known: Vec<&BudgetMeta> = budgets
                .iter()
                .filter_map(|&b| layout.budgets.get(b))
                .collect();
            let fields: Vec<&str> = (0..clients)
                .map(|c| layout.client_fields.get(c).map_or("", String::as_str))
                .collect();
            let mut invocation = shared.snapshot.prepare_invoke();
            invocation.key(&shared.cool_key).key(&shared.limits_key);
            for meta in &known {
                invocation.key(&meta.key);
            }
            invocation.arg(known.len());
            for meta in &known {
                invocation.arg(&meta.name).arg(meta.limit).arg(meta.window);
            }
            for field in &fields {
                invocation.arg(*field);
            }
            let mut con = shared.con.clone();
            let result: Result<Value, _> = shared
                .call(async { invocation.invoke_async(&mut con).await })
                .await;
            let ints = result.and_then(|v| ints(&v).ok_or_else(|| bad_reply(&v)));
            let ints = match ints {
                Ok(ints) if ints.len() == 2 * known.len() + clients => ints,
                Ok(_) | Err(_) => {
                    debug!("reading the shared budgets failed; showing configured limits");
                    shared.up.store(false, Ordering::Relaxed);
                    return fallback_snapshot(&layout, &budgets, clients);
                }
            };
            // Unknown budget ids show as (0, 0), as in memory.
            let mut usage = Vec::with_capacity(budgets.len());
            let mut k = 0;
            for &b in &budgets {
                if b < layout.budgets.len() {
                    usage.push((to_u32(ints[2 * k]), to_u32(ints[2 * k + 1])));
                    k += 1;
                } else {
                    usage.push((0, 0));
                }
            }
            let cooling = ints[2 * known.len()..]
                .iter()
                .map(|&us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
                .collect();
            Snapshot { usage, cooling }
        })
    }

    fn reconfigure(&self, defs: &[BudgetDef], clients: &[String]) {
        // Keys are names: reservations, cool-downs and learned limits carry over as they are.
        let layout = Layout::new(&self.shared.prefix, defs, clients);
        self.shared.layout.store(Arc::new(layout));
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }
}

// === impl Shared ===

impl Shared {
    /// Runs one Redis call within the timeout and records whether Redis answered.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BudgetError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.up.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(e)) => self.fail(BudgetError::Unavailable(scrub(&e, self.password.as_ref()))),
            Err(_) => self.fail(BudgetError::Timeout(self.timeout)),
        }
    }

    fn fail<T>(&self, error: BudgetError) -> Result<T, BudgetError> {
        self.up.store(false, Ordering::Relaxed);
        Err(error)
    }
}

// === impl AdmitReply ===

impl AdmitReply {
    fn parse(value: &Value) -> Result<Self, BudgetError> {
        let Value::Array(items) = value else {
            return Err(bad_reply(value));
        };
        let [status, candidate, wait, kind, pos, member, at] = items.as_slice() else {
            return Err(bad_reply(value));
        };
        let int = |v: &Value| as_int(v).ok_or_else(|| bad_reply(value));
        let status = int(status)?;
        let candidate = usize::try_from(int(candidate)?).map_err(|_| bad_reply(value))?;
        let wait = u64::try_from(int(wait)?).map_err(|_| bad_reply(value))?;
        let binding_kind = int(kind)?;
        let binding_pos = usize::try_from(int(pos)?).map_err(|_| bad_reply(value))?;
        let member = as_string(member).ok_or_else(|| bad_reply(value))?;
        let at = u64::try_from(int(at)?).map_err(|_| bad_reply(value))?;
        Ok(Self {
            status,
            candidate,
            wait,
            binding_kind,
            binding_pos,
            member,
            at,
        })
    }

    /// The decision in the request's terms (`budgets`: how many the store knows); a reply
    /// that names no candidate of the request is a protocol error.
    fn decision(self, request: AdmitRequest<'_>, budgets: usize) -> Result<Decision, BudgetError> {
        if self.status < 0 {
            return Ok(Decision::Refused(Refusal {
                wait: None,
                binding: None,
            }));
        }
        let Some(candidate) = request.candidates.get(self.candidate) else {
            return Err(BudgetError::Protocol(format!(
                "admission named candidate {} of {}",
                self.candidate,
                request.candidates.len()
            )));
        };
        let binding = match self.binding_kind {
            1 => candidate
                .budgets
                .iter()
                .filter(|&&b| b < budgets)
                .nth(self.binding_pos)
                .map(|&b| Binding::Budget(b)),
            2 => Some(Binding::ClientCoolDown),
            3 => Some(Binding::RouteCoolDown),
            4 => Some(Binding::PoolCoolDown),
            _ => None,
        };
        let wait = Duration::from_micros(self.wait);
        if self.status == 0 {
            return Ok(Decision::Refused(Refusal {
                wait: Some(wait),
                binding,
            }));
        }
        Ok(Decision::Admitted(Reservation {
            candidate: self.candidate,
            wait,
            binding: if self.wait > 0 { binding } else { None },
            slot: Slot {
                at: self.at,
                budgets: candidate.budgets.clone(),
                member: Some(self.member),
            },
        }))
    }
}

// === helpers ===

/// `{prefix}:b:<name>`: the hash tag keeps every key of a request in one Cluster slot.
fn budget_key(prefix: &str, name: &str) -> String {
    format!("{{{prefix}}}:b:{name}")
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn ints(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Array(items) => items.iter().map(as_int).collect(),
        _ => None,
    }
}

/// The kind of a reply, for error messages (never its content).
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a status",
        Value::Okay => "OK",
        _ => "an unexpected type",
    }
}

fn bad_reply(value: &Value) -> BudgetError {
    BudgetError::Protocol(format!("admission script answered {}", describe(value)))
}

/// The error's text, without the password should a layer below have echoed it.
fn scrub(error: &RedisError, password: Option<&Secret>) -> String {
    let text = error.to_string();
    match password {
        Some(p) if !p.is_empty() => text.replace(p.expose(), "***"),
        _ => text,
    }
}

fn fallback_snapshot(layout: &Layout, budgets: &[BudgetId], clients: usize) -> Snapshot {
    Snapshot {
        usage: budgets
            .iter()
            .map(|&b| layout.budgets.get(b).map_or((0, 0), |m| (0, m.limit)))
            .collect(),
        cooling: vec![Duration::ZERO; clients],
    }
}

impl super::SharedStore for RedisStore {
    fn ping(&self) -> BoxFuture<'static, Result<(), BudgetError>> {
        let store = self.clone();
        Box::pin(async move { RedisStore::ping(&store).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_prefix_hash_tag() {
        assert_eq!(budget_key("gcpool", "org"), "{gcpool}:b:org");
        assert_eq!(
            budget_key("gcpool", "endpoint:PUT /api/v2/architect/ivrs/{ivrId}"),
            "{gcpool}:b:endpoint:PUT /api/v2/architect/ivrs/{ivrId}",
            "the first {{…}} is the tag, so the route's braces do not change the slot"
        );
    }

    #[test]
    fn replies_are_parsed_defensively() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Value::Array(vec![
            Value::Int(1),
            Value::Int(0),
            Value::Int(250),
            Value::Int(1),
            Value::Int(0),
            bulk("1700000000000000-7"),
            bulk("1700000000000000"),
        ]);
        let reply = AdmitReply::parse(&ok).unwrap();
        assert_eq!(reply.wait, 250);
        assert_eq!(reply.at, 1_700_000_000_000_000);
        assert!(AdmitReply::parse(&Value::Nil).is_err());
        assert!(AdmitReply::parse(&Value::Array(vec![Value::Int(1)])).is_err());
        let negative_wait = Value::Array(vec![
            Value::Int(1),
            Value::Int(0),
            Value::Int(-5),
            Value::Int(0),
            Value::Int(0),
            bulk("m"),
            bulk("1"),
        ]);
        assert!(AdmitReply::parse(&negative_wait).is_err());
    }
}
