//! `RedisStore`: the budgets and cool-downs of a whole fleet, kept in Redis (SPEC §8).
//!
//! One admission is one round trip: `EVALSHA` of `admit.lua`, which runs the rule of
//! [`window`](super::window) over the keys the request touches, picks the candidate and
//! reserves its instant in all its budgets or none. The budgets every candidate starts with
//! are sent once, and the script reads a candidate only when an earlier one may be beaten. Time is Redis `TIME`, so replicas'
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
//! | `{P}:sync` | hash | `epoch` (id of this state), `settle` (no admission before, µs), `seen` (last probe) |
//!
//! Budget keys live as long as one of their instants can share a window with the future
//! (plus a margin); the cool-down hash as long as its longest cool-down; learned limits an
//! hour after the last lowering; the sync hash (three fields) never expires, since its
//! disappearance is how a flush or a restart without persistence is noticed. Nothing grows
//! without bound.
//!
//! The connection is redis-rs's [`ConnectionManager`]: one multiplexed connection (every
//! request pipelined on it, no pool to size) that reconnects by itself, with backoff, after
//! an I/O error. The store therefore has no reconnect loop of its own; each call is bounded
//! by `shared_state.timeout` and [`RedisStore::is_up`](BudgetStore::is_up) tells whether the
//! last one succeeded. Through [`SharedStore`] the admission also checks the state's epoch
//! and returns fleet-wide counts, and `sync.lua` writes admissions back and probes. Not owned
//! here: when to use Redis, the local share and the journal (`budget::fallback`).

use std::fmt;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, ErrorKind, RedisError, Script, Value};
use arc_swap::ArcSwap;
use tracing::debug;

use super::fallback::{SharedAdmit, SharedStore, SyncReply, SyncRequest, SyncStatus, Usage};
use super::journal::Admission;
use super::window::Micros;
use super::{
    AdmitRequest, Binding, BoxFuture, BudgetDef, BudgetError, BudgetId, BudgetStore, Candidate,
    CoolDown, Decision, Refusal, Reservation, Share, Slot, Snapshot,
};
use crate::config::SharedStateConfig;
use crate::secret::Secret;

/// How long a learned lower limit is kept after it was last lowered.
const LIMITS_TTL_MS: u64 = 3600 * 1000;

/// Admissions written back per `sync.lua` call: one call stays well under a millisecond.
const WRITE_BACK_CHUNK: usize = 256;

/// The epoch a store used on its own passes: no epoch check, no settle pause.
const NO_EPOCH: &str = "*";

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
    sync_key: String,
    admit: Script,
    sync: Script,
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
    /// `admit.lua`'s argument for it: `"<limit> <window µs> <1 if a lane's share applies,
    /// else 0> <name>"`.
    admit_arg: String,
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
    /// Redis' clock when it decided.
    now: Micros,
    /// Status 1 and 0: (count, latest instant) per budget of the chosen candidate. Status
    /// -2: the state's epoch (empty when none).
    usage: Vec<(u32, Micros)>,
    epoch: String,
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
                    admit_arg: format!(
                        "{} {} {} {}",
                        d.limit,
                        micros(d.window),
                        u8::from(Share::applies_to(d.kind)),
                        d.name
                    ),
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
    /// Every call is bounded by `config.timeout`.
    ///
    /// # Errors
    /// [`BudgetError::InvalidUrl`] when the URL is not a `redis://` or `rediss://` URL;
    /// [`BudgetError::Unavailable`] or [`BudgetError::Timeout`] when Redis does not answer.
    /// No message contains the URL or its password.
    pub async fn connect(
        config: &SharedStateConfig,
        defs: &[BudgetDef],
        clients: &[String],
    ) -> Result<RedisStore, BudgetError> {
        let store = Self::lazy(config, defs, clients)?;
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
    ) -> Result<RedisStore, BudgetError> {
        let timeout = config.timeout;
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
        // One connection attempt per reconnection: the fallback's health loop is the retry
        // loop (every `fallback::TICK` at most), so a Redis that comes back is used at once
        // rather than after the manager's own backoff.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_number_of_retries(0);
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
                sync_key: format!("{{{prefix}}}:sync"),
                admit: Script::new(include_str!("admit.lua")),
                sync: Script::new(include_str!("sync.lua")),
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

    /// The key of the epoch and settle pause (`{P}:sync`), written only by a store behind a
    /// fallback; it never expires (its loss is how a flush or a restart is noticed).
    pub fn sync_key(&self) -> &str {
        &self.shared.sync_key
    }

    async fn admit_inner(
        &self,
        request: AdmitRequest<'_>,
        epoch: &str,
    ) -> Result<SharedAdmit, BudgetError> {
        let s = &self.shared;
        let layout = s.layout.load_full();
        let (touched, pos) = touched_budgets(request.candidates, layout.budgets.len());
        let mut invocation = s.admit.prepare_invoke();
        invocation
            .key(&s.cool_key)
            .key(&s.limits_key)
            .key(&s.seq_key)
            .key(&s.sync_key);
        for &b in &touched {
            invocation.key(&layout.budgets[b].key);
        }
        invocation
            .arg(epoch)
            .arg(micros(request.max_wait))
            .arg(request.share.permille())
            .arg(
                request
                    .route
                    .map(|r| format!("route:{}", r.index()))
                    .unwrap_or_default(),
            )
            .arg(touched.len());
        for &b in &touched {
            invocation.arg(&layout.budgets[b].admit_arg);
        }
        // Each candidate's list as the script numbers budgets (unknown ids are ignored, as
        // in memory); the start all lists share goes once, then each candidate's rest with
        // its cool-down field, one argument per candidate.
        let lists: Vec<Vec<usize>> = request
            .candidates
            .iter()
            .map(|c| {
                c.budgets
                    .iter()
                    .filter_map(|&b| pos.get(b).copied())
                    .collect()
            })
            .collect();
        let shared = common_start(&lists);
        let mut arg = String::new();
        push_positions(&mut arg, shared);
        invocation.arg(&arg).arg(request.candidates.len());
        for (candidate, list) in request.candidates.iter().zip(&lists) {
            let field = layout
                .client_fields
                .get(candidate.client)
                .map_or("", String::as_str);
            arg.clear();
            push_positions(&mut arg, &list[shared.len()..]);
            arg.push(' ');
            arg.push_str(field);
            invocation.arg(&arg);
        }
        let mut con = s.con.clone();
        let value: Value = s
            .call(async { invocation.invoke_async(&mut con).await })
            .await?;
        let reply = match AdmitReply::parse(&value) {
            Ok(reply) => reply,
            Err(e) => return s.fail(e),
        };
        reply.answer(request, layout.budgets.len())
    }

    /// Writes `request.admissions` back in chunks; the first call adopts (or creates) the
    /// state, the later ones write only into the state it found.
    async fn sync_inner(&self, request: SyncRequest) -> Result<SyncReply, BudgetError> {
        let chunks: Vec<&[Admission]> = if request.admissions.is_empty() {
            vec![&[]]
        } else {
            request.admissions.chunks(WRITE_BACK_CHUNK).collect()
        };
        let mut total: Option<SyncReply> = None;
        for chunk in chunks {
            let reply = match &total {
                None => {
                    self.sync_call(
                        &request,
                        request.adopt,
                        request.epoch.as_deref(),
                        chunk,
                        &request.usage,
                    )
                    .await?
                }
                Some(first) => {
                    self.sync_call(&request, false, Some(&first.epoch), chunk, &[])
                        .await?
                }
            };
            if reply.status == SyncStatus::Stale {
                // Another state (or none) than expected: nothing written; the caller starts
                // over from this answer.
                return Ok(reply);
            }
            match &mut total {
                None => total = Some(reply),
                Some(t) => {
                    t.written += reply.written;
                    t.now = reply.now;
                }
            }
        }
        total.ok_or_else(|| BudgetError::Protocol("a write-back made no call".into()))
    }

    /// One `sync.lua` call: `adopt` or probe `epoch`, write `admissions`, read `usage`.
    async fn sync_call(
        &self,
        request: &SyncRequest,
        adopt: bool,
        epoch: Option<&str>,
        admissions: &[Admission],
        usage: &[BudgetId],
    ) -> Result<SyncReply, BudgetError> {
        let s = &self.shared;
        let layout = s.layout.load_full();
        // Budgets named, each once; `pos[b]` is its 1-based position among the keys.
        let mut pos = vec![0usize; layout.budgets.len()];
        let mut keys: Vec<BudgetId> = Vec::new();
        let mut touch = |b: BudgetId| -> Option<usize> {
            let p = pos.get_mut(b)?;
            if *p == 0 {
                keys.push(b);
                *p = keys.len();
            }
            Some(*p)
        };
        let usage_pos: Vec<(BudgetId, usize)> = usage
            .iter()
            .filter_map(|&b| touch(b).map(|p| (b, p)))
            .collect();
        let entries: Vec<(&Admission, Vec<usize>)> = admissions
            .iter()
            .map(|a| (a, a.budgets.iter().filter_map(|&b| touch(b)).collect()))
            .collect();
        let mut invocation = s.sync.prepare_invoke();
        invocation.key(&s.sync_key);
        for &b in &keys {
            invocation.key(&layout.budgets[b].key);
        }
        invocation
            .arg(if adopt { "sync" } else { "probe" })
            .arg(epoch.unwrap_or(""))
            .arg(&request.new_epoch)
            .arg(micros(request.settle))
            .arg(if request.set_settle { "1" } else { "0" })
            .arg(keys.len());
        for &b in &keys {
            invocation.arg(layout.budgets[b].window);
        }
        invocation.arg(usage_pos.len());
        for &(_, p) in &usage_pos {
            invocation.arg(p);
        }
        for (admission, positions) in &entries {
            invocation
                .arg(&admission.member)
                .arg(admission.at)
                .arg(positions.len());
            for p in positions {
                invocation.arg(*p);
            }
        }
        let mut con = s.con.clone();
        let value: Value = s
            .call(async { invocation.invoke_async(&mut con).await })
            .await?;
        match parse_sync(&value, &usage_pos) {
            Ok(reply) => Ok(reply),
            Err(e) => s.fail(e),
        }
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
    /// Used on its own (no fallback), the store checks no epoch and never pauses.
    fn admit<'a>(
        &'a self,
        request: AdmitRequest<'a>,
    ) -> BoxFuture<'a, Result<Decision, BudgetError>> {
        Box::pin(async move {
            match self.admit_inner(request, NO_EPOCH).await? {
                SharedAdmit::Decided { decision, .. } => Ok(decision),
                other => self.shared.fail(BudgetError::Protocol(format!(
                    "admission without an epoch answered {other:?}"
                ))),
            }
        })
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
            // The connection's own response timeout is the same deadline.
            Ok(Err(e)) if e.is_timeout() => self.fail(BudgetError::Timeout(self.timeout)),
            Ok(Err(e)) => self.fail(BudgetError::Unavailable(cause(&e, self.password.as_ref()))),
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
        let [
            status,
            candidate,
            wait,
            kind,
            pos,
            member,
            at,
            now,
            rest @ ..,
        ] = items.as_slice()
        else {
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
        let now = u64::try_from(int(now)?).map_err(|_| bad_reply(value))?;
        let (usage, epoch) = match status {
            -2 => (
                Vec::new(),
                rest.first()
                    .and_then(as_string)
                    .ok_or_else(|| bad_reply(value))?,
            ),
            0 | 1 => (
                usage_pairs(rest).ok_or_else(|| bad_reply(value))?,
                String::new(),
            ),
            _ => (Vec::new(), String::new()),
        };
        Ok(Self {
            status,
            candidate,
            wait,
            binding_kind,
            binding_pos,
            member,
            at,
            now,
            usage,
            epoch,
        })
    }

    /// The answer in the request's terms (`budgets`: how many the store knows); a reply
    /// that names no candidate of the request is a protocol error.
    fn answer(self, request: AdmitRequest<'_>, budgets: usize) -> Result<SharedAdmit, BudgetError> {
        let now = self.now;
        let decision = match self.status {
            -3 => {
                return Ok(SharedAdmit::Settling {
                    wait: Duration::from_micros(self.wait),
                });
            }
            -2 => {
                return Ok(SharedAdmit::Stale {
                    epoch: (!self.epoch.is_empty()).then_some(self.epoch),
                });
            }
            status if status < 0 => {
                return Ok(SharedAdmit::Decided {
                    decision: Decision::Refused(Refusal {
                        wait: None,
                        binding: None,
                    }),
                    now,
                    usage: Vec::new(),
                });
            }
            _ => self,
        };
        let Some(candidate) = request.candidates.get(decision.candidate) else {
            return Err(BudgetError::Protocol(format!(
                "admission named candidate {} of {}",
                decision.candidate,
                request.candidates.len()
            )));
        };
        Ok(decision.decided(candidate, budgets))
    }

    /// The store's decision for `candidate` (the one the script named), whose budgets with
    /// an id below `budgets` the script knew.
    fn decided(self, candidate: &Candidate, budgets: usize) -> SharedAdmit {
        // The script's list for a candidate is its budgets the store knows, in order.
        let known = candidate.budgets.iter().copied().filter(|&b| b < budgets);
        let usage = known
            .clone()
            .zip(&self.usage)
            .map(|(budget, &(count, last))| Usage {
                budget,
                count,
                last,
            })
            .collect();
        let binding = match self.binding_kind {
            1 => known.clone().nth(self.binding_pos).map(Binding::Budget),
            2 => Some(Binding::ClientCoolDown),
            3 => Some(Binding::RouteCoolDown),
            4 => Some(Binding::PoolCoolDown),
            _ => None,
        };
        let wait = Duration::from_micros(self.wait);
        let decision = if self.status == 0 {
            Decision::Refused(Refusal {
                wait: Some(wait),
                binding,
            })
        } else {
            Decision::Admitted(Reservation {
                candidate: self.candidate,
                wait,
                binding: if self.wait > 0 { binding } else { None },
                slot: Slot {
                    at: self.at,
                    budgets: candidate.budgets.clone(),
                    member: Some(self.member),
                    shared: true,
                },
            })
        };
        SharedAdmit::Decided {
            decision,
            now: self.now,
            usage,
        }
    }
}

/// The budgets `candidates` touch, each once, in first-seen order, and by budget id its
/// 1-based position among them (0: not touched, or not one of the `known` first ids).
fn touched_budgets(candidates: &[Candidate], known: usize) -> (Vec<BudgetId>, Vec<usize>) {
    let mut pos = vec![0usize; known];
    let mut touched: Vec<BudgetId> = Vec::new();
    for candidate in candidates {
        for &b in &candidate.budgets {
            if b < pos.len() && pos[b] == 0 {
                touched.push(b);
                pos[b] = touched.len();
            }
        }
    }
    (touched, pos)
}

/// The longest start every list shares (empty when there is no list).
fn common_start(lists: &[Vec<usize>]) -> &[usize] {
    let Some((first, rest)) = lists.split_first() else {
        return &[];
    };
    let len = rest.iter().fold(first.len(), |len, list| {
        first[..len]
            .iter()
            .zip(list)
            .take_while(|(a, b)| a == b)
            .count()
    });
    &first[..len]
}

/// Appends `positions` joined by `,` (as `admit.lua` reads lists).
fn push_positions(out: &mut String, positions: &[usize]) {
    for (j, p) in positions.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "{p}");
    }
}

/// `sync.lua`'s answer; `usage` names the budgets its trailing pairs belong to.
fn parse_sync(value: &Value, usage: &[(BudgetId, usize)]) -> Result<SyncReply, BudgetError> {
    let bad = || BudgetError::Protocol(format!("write-back script answered {}", describe(value)));
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let [status, epoch, now, written, _settle, rest @ ..] = items.as_slice() else {
        return Err(bad());
    };
    let status = match as_int(status) {
        Some(0) => SyncStatus::Stale,
        Some(1) => SyncStatus::InSync,
        Some(2) => SyncStatus::Created,
        _ => return Err(bad()),
    };
    let epoch = as_string(epoch).ok_or_else(bad)?;
    let now = as_int(now)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(bad)?;
    let written = as_int(written)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(bad)?;
    let pairs = if status == SyncStatus::Stale {
        Vec::new()
    } else {
        usage_pairs(rest).ok_or_else(bad)?
    };
    if pairs.len()
        != if status == SyncStatus::Stale {
            0
        } else {
            usage.len()
        }
    {
        return Err(bad());
    }
    Ok(SyncReply {
        status,
        epoch,
        now,
        written,
        usage: usage
            .iter()
            .zip(pairs)
            .map(|(&(budget, _), (count, last))| Usage {
                budget,
                count,
                last,
            })
            .collect(),
    })
}

/// `(count, latest instant)` pairs.
fn usage_pairs(values: &[Value]) -> Option<Vec<(u32, Micros)>> {
    if !values.len().is_multiple_of(2) {
        return None;
    }
    values
        .chunks(2)
        .map(|pair| {
            let count = to_u32(as_int(&pair[0])?);
            let last = as_score(&pair[1])?;
            Some((count, last))
        })
        .collect()
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

/// A sorted-set score as Redis prints it (`1700000000000000`, or `1.7e+15` for some
/// builds), as whole µs.
fn as_score(value: &Value) -> Option<Micros> {
    if let Some(i) = as_int(value) {
        return u64::try_from(i).ok();
    }
    let text = as_string(value)?;
    let f: f64 = text.parse().ok()?;
    (f.is_finite() && f >= 0.0).then(|| f.round() as Micros)
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

/// What went wrong, for a log line: a refused or missing password said as such, with the
/// key to fix (redis-rs says "Password authentication failed - AuthenticationFailed", and
/// an unauthenticated script call "Protocol error: unauthenticated multibulk length");
/// anything else as redis-rs words it, scrubbed.
fn cause(error: &RedisError, password: Option<&Secret>) -> String {
    if error.kind() == ErrorKind::AuthenticationFailed || error.code() == Some("WRONGPASS") {
        return "Redis refused the password in shared_state.redis_url (authentication failed)"
            .into();
    }
    let text = scrub(error, password);
    if error.code() == Some("NOAUTH") || text.contains("NOAUTH") || text.contains("unauthenticated")
    {
        return "Redis requires a password and shared_state.redis_url gives none (NOAUTH)".into();
    }
    text
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

impl SharedStore for RedisStore {
    fn admit_shared<'a>(
        &'a self,
        request: AdmitRequest<'a>,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<SharedAdmit, BudgetError>> {
        Box::pin(self.admit_inner(request, epoch))
    }

    fn sync(&self, request: SyncRequest) -> BoxFuture<'static, Result<SyncReply, BudgetError>> {
        let store = self.clone();
        Box::pin(async move { store.sync_inner(request).await })
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
            bulk("1699999999999750"),
            Value::Int(3),
            bulk("1700000000000000"),
            Value::Int(1),
            bulk("1.7e+15"),
        ]);
        let reply = AdmitReply::parse(&ok).unwrap();
        assert_eq!(reply.wait, 250);
        assert_eq!(reply.at, 1_700_000_000_000_000);
        assert_eq!(reply.now, 1_699_999_999_999_750);
        assert_eq!(
            reply.usage,
            [(3, 1_700_000_000_000_000), (1, 1_700_000_000_000_000)]
        );
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
            bulk("1"),
        ]);
        assert!(AdmitReply::parse(&negative_wait).is_err());
        let odd_usage = Value::Array(vec![
            Value::Int(0),
            Value::Int(0),
            Value::Int(5),
            Value::Int(0),
            Value::Int(0),
            bulk(""),
            bulk("1"),
            bulk("1"),
            Value::Int(3),
        ]);
        assert!(AdmitReply::parse(&odd_usage).is_err());
        let stale = Value::Array(vec![
            Value::Int(-2),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            bulk(""),
            bulk("0"),
            bulk("5"),
            bulk(""),
        ]);
        assert_eq!(AdmitReply::parse(&stale).unwrap().epoch, "");
    }

    #[test]
    fn shared_budgets_are_the_start_every_list_has() {
        let lists = |v: &[&[usize]]| v.iter().map(|l| l.to_vec()).collect::<Vec<_>>();
        assert_eq!(common_start(&[]), [] as [usize; 0]);
        assert_eq!(common_start(&lists(&[&[1, 2, 3]])), [1, 2, 3]);
        assert_eq!(
            common_start(&lists(&[&[1, 2, 3], &[1, 2, 4], &[1, 2]])),
            [1, 2]
        );
        assert_eq!(
            common_start(&lists(&[&[1, 2, 3], &[2, 1, 4]])),
            [] as [usize; 0],
            "the same budgets in another order are not a shared start"
        );
        assert_eq!(common_start(&lists(&[&[1, 2], &[]])), [] as [usize; 0]);
        let mut arg = String::new();
        push_positions(&mut arg, &[3, 17, 2]);
        assert_eq!(arg, "3,17,2");
    }

    #[test]
    fn sync_replies_name_their_budgets() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            Value::Int(2),
            bulk("00ff"),
            bulk("1700000000000000"),
            Value::Int(4),
            bulk("1700000000950000"),
            Value::Int(2),
            bulk("1700000000000000"),
        ]);
        let parsed = parse_sync(&reply, &[(7, 1)]).unwrap();
        assert_eq!(parsed.status, SyncStatus::Created);
        assert_eq!(parsed.epoch, "00ff");
        assert_eq!(parsed.written, 4);
        assert_eq!(
            parsed.usage,
            [Usage {
                budget: 7,
                count: 2,
                last: 1_700_000_000_000_000
            }]
        );
        assert!(parse_sync(&reply, &[]).is_err(), "usage must match the ask");
    }
}
