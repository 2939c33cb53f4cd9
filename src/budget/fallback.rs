//! Shared budgets with a local fallback, and the write-back that keeps the fleet within every
//! budget through a Redis outage, flush or restart (SPEC §8, §13).
//!
//! **Modes.** *Up*: every decision is Redis'. *Down*: a call failed or took longer than
//! `shared_state.timeout`; this replica decides on a [`MemoryStore`] holding `1 /
//! replicas_hint` of every budget. *Stale*: Redis answers but no longer holds the state this
//! replica wrote into (its epoch differs: flushed, restarted without persistence); decided
//! locally too, for the few milliseconds until the write-back is done. Each change of mode is
//! logged once. Health follows admissions, not `PING`: an admission that fails takes the
//! replica down, and only a write that succeeds (the probe is `sync.lua`, which writes as
//! an admission does; Redis 7 refuses such writes when out of memory while `PING` still
//! answers) brings it back.
//!
//! **Journal.** Each replica keeps the admissions it made that can still share a window with
//! the future ([`Journal`]): those Redis admitted (instant and member from the script) and
//! those it admitted locally, put on Redis' clock with the offset learned from the last
//! answer and named `<instant>-<replica id>-<n>`, unique in the fleet. Writing one back twice
//! is a no-op (`ZADD NX`).
//!
//! **Epoch.** `{P}:sync` holds a random epoch. The admission script refuses (status -2, not
//! an error) when the epoch a replica passes is not the one Redis holds: the key is gone after
//! a `FLUSHALL` or a restart without persistence, or another replica already wrote back into
//! a new one. The replica then serves locally, writes its journal back (`sync.lua`, which
//! creates the epoch if there is none), adopts the epoch and returns to Redis. An idle
//! replica notices within [`TICK`]: the health loop probes every tick with the same script.
//!
//! **Write-back before anyone admits again.** Whoever writes back after an outage or into an
//! emptied state (it knew an epoch), or has anything to write, sets `{P}:sync.settle =
//! max(settle, now + settle)`; the admission script makes every replica *wait* (status -3:
//! sleep, then ask again within the request's `max_wait`), not fail, until then. The pause
//! ([`FallbackStore::settle`], `3 × TICK + 4 × timeout`: 500 ms at the default 50 ms) is
//! longer than the slowest other replica takes to write back: a down replica re-probes at
//! most every `TICK` (its backoff is capped there; probing a dead Redis is cheap), and an up
//! one probes every `TICK`, each call bounded by the timeout. Admissions whose answer was in
//! flight during a write-back are written once more at the next tick (no pause then). A
//! fresh replica with an empty journal sets no pause: a fleet's cold start does not wait. (So
//! a replica that starts in the ~300 ms between a flush and the others noticing it can admit
//! into the emptied state before they write back; the pause starts when they do.)
//!
//! **An exact local share.** Each admission's answer carries, per budget of the chosen
//! client, the fleet-wide count from now − window on (queued reservations included) and the
//! latest instant; the probe refreshes them for idle budgets. When a replica leaves Redis, each
//! local window starts with `ceil(count / replicas_hint)` phantom admissions (capped at the
//! share) at the latest instant and again every window before it back to now, plus its own
//! admissions newer than the count. Every window that can hold a local admission then holds
//! one such group, so the replicas' local admissions add up to at most `budget − count`
//! (Σ ceil(count / N) ≥ count), even when the replicas used a budget unevenly before the
//! outage. This is exact when each replica's count is current; a replica that had not touched
//! a budget (nor probed it) since another replica last admitted on it sees a lower count, and
//! the fleet can then exceed that budget by at most what the others admitted in that gap.
//!
//! **A replica that starts while the shared store is unreachable** knows no count at all:
//! the others may have used every budget up. With `replicas_hint` above 1 it therefore
//! starts each local window full (its whole share spent "now") and admits nothing locally
//! until a window has passed or the shared store answers; admissions that arrive before
//! its first attempt to reach the store has ended wait for it (at most [`FIRST_TRY`]).
//! A lone replica (`replicas_hint: 1`) serves its budgets from empty windows, as the
//! in-memory store does after a restart.
//!
//! **Not exact: partial partitions.** A replica cut off from Redis while the others reach it
//! serves its share while the others use the whole budget; no fixed local share can be exact
//! then (see the README).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::journal::{Admission, Clock, Journal};
use super::window::Micros;
use super::{
    AdmitRequest, Binding, BoxFuture, BudgetDef, BudgetError, BudgetId, BudgetStore, CoolDown,
    Decision, MemoryStore, Refusal, Reservation, Snapshot,
};

/// How often an up replica probes (and checks the epoch), and the longest pause between two
/// attempts of a down one.
pub const TICK: Duration = Duration::from_millis(100);

/// Longest an admission waits, at start, for the first attempt to reach the shared store.
pub const FIRST_TRY: Duration = Duration::from_millis(500);

/// First pause between attempts to reach a down store (doubles up to [`TICK`]).
const RETRY_MIN: Duration = Duration::from_millis(25);

/// Budgets whose fleet-wide count one probe refreshes (round robin over the table).
const VIEWS_PER_PROBE: usize = 128;

/// A budget store other replicas share, with what the fallback needs to write back.
pub trait SharedStore: BudgetStore {
    /// One admission, if `epoch` is still the state's.
    fn admit_shared<'a>(
        &'a self,
        request: AdmitRequest<'a>,
        epoch: &'a str,
    ) -> BoxFuture<'a, Result<SharedAdmit, BudgetError>>;

    /// Writes admissions back and checks the state's epoch; with no admissions, a probe.
    fn sync(&self, request: SyncRequest) -> BoxFuture<'static, Result<SyncReply, BudgetError>>;
}

/// The shared store's answer to an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedAdmit {
    /// Decided; `now` is the store's clock (µs) when it decided, `usage` the fleet-wide count
    /// of each budget of the candidate it chose.
    Decided {
        decision: Decision,
        now: Micros,
        usage: Vec<Usage>,
    },
    /// The store does not hold the epoch given (`None`: it holds none; it lost its state).
    Stale { epoch: Option<String> },
    /// Replicas are writing back: ask again after `wait`.
    Settling { wait: Duration },
}

/// A budget's admissions in the shared store from `now − window` on (reservations included),
/// and the latest of them (µs, 0 if none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub budget: BudgetId,
    pub count: u32,
    pub last: Micros,
}

/// A write-back, or (`adopt: false`, no admissions) a probe.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// `false`: write only if the store holds `epoch`, else answer [`SyncStatus::Stale`].
    /// `true`: adopt the store's epoch, or create `new_epoch` when it has none.
    pub adopt: bool,
    pub epoch: Option<String>,
    pub new_epoch: String,
    /// The pause after a write-back, and whether to set it.
    pub settle: Duration,
    pub set_settle: bool,
    pub admissions: Vec<Admission>,
    /// Budgets whose fleet-wide usage to return.
    pub usage: Vec<BudgetId>,
}

/// What a write-back or probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReply {
    pub status: SyncStatus,
    /// The store's epoch after the call ("" when it has none).
    pub epoch: String,
    /// The store's clock (µs).
    pub now: Micros,
    /// Instants written that were not there.
    pub written: u64,
    pub usage: Vec<Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    /// Written into the known (or adopted) state.
    InSync,
    /// The store had no state: this call created it.
    Created,
    /// A probe found another state (or none); nothing was written.
    Stale,
}

/// The shared store while it answers, a local share of every budget while it does not.
pub struct FallbackStore {
    shared: Arc<dyn SharedStore>,
    local: MemoryStore,
    replicas: u32,
    settle: Duration,
    mode: AtomicU8,
    /// Journal, epoch, counts and clock; also taken around every local decision, so a change
    /// of mode and a local admission never interleave.
    ledger: Mutex<Ledger>,
    /// Wakes the health loop when an admission found the state stale.
    wake: Notify,
    /// Set once the first attempt to reach the shared store has ended (either way);
    /// `tried_now` wakes the admissions that waited for it.
    tried: AtomicBool,
    tried_now: Notify,
    /// Random; names this replica's local admissions.
    replica: String,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const STALE: u8 = 2;

#[derive(Debug)]
struct Ledger {
    epoch: Option<String>,
    journal: Journal,
    /// Fleet-wide count of each budget, as last seen.
    views: Vec<Option<View>>,
    clock: Clock,
    /// Budgets as configured, by id (windows for expiry and phantom spacing, limits).
    defs: Vec<BudgetDef>,
    /// Write the whole journal back once more at the next probe.
    again: bool,
    /// The store was up at least once (logs say "connected" the first time).
    ever_up: bool,
    /// "unreachable" was logged for the current outage.
    announced: bool,
    /// Next budget whose count a probe refreshes.
    probe_from: usize,
    /// Local admissions named so far.
    named: u64,
}

/// A budget's fleet-wide count as one answer gave it.
#[derive(Debug, Clone, Copy)]
struct View {
    count: u32,
    /// Latest instant, and the store's clock when it answered (µs).
    last: Micros,
    now: Micros,
    /// The local clock when the answer arrived.
    received: Micros,
    /// Journal entries up to this sequence number are included in `count`.
    seq: u64,
}

impl fmt::Debug for FallbackStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackStore")
            .field("mode", &self.mode.load(Ordering::Relaxed))
            .field("replicas", &self.replicas)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

// === impl FallbackStore ===

impl FallbackStore {
    /// Starts on the local share; [`FallbackStore::run_recovery`] connects at once.
    /// `timeout` is the shared store's deadline per call (it sizes the settle pause).
    pub fn new(
        defs: &[BudgetDef],
        clients: usize,
        replicas_hint: u32,
        shared: Arc<dyn SharedStore>,
        timeout: Duration,
    ) -> Self {
        let replicas = replicas_hint.max(1);
        let local = MemoryStore::new(&local_shares(defs, replicas), clients);
        // Until Redis answers once, the system clock stands in for Redis' (both are Unix time).
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, micros);
        let clock = Clock::new(unix, local.now_micros());
        Self {
            shared,
            local,
            replicas,
            settle: TICK * 3 + timeout * 4,
            mode: AtomicU8::new(DOWN),
            ledger: Mutex::new(Ledger {
                epoch: None,
                journal: Journal::default(),
                views: vec![None; defs.len()],
                clock,
                defs: defs.to_vec(),
                again: false,
                ever_up: false,
                announced: false,
                probe_from: 0,
                named: 0,
            }),
            wake: Notify::new(),
            tried: AtomicBool::new(false),
            tried_now: Notify::new(),
            replica: format!("{:08x}", rand::rng().random::<u32>()),
        }
    }

    /// How long every replica waits after a write-back before admitting through the shared
    /// store again.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    fn mode(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Every step leaves the ledger consistent; keep serving after a panic elsewhere.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shared(&self) -> Option<&Arc<dyn SharedStore>> {
        (self.mode() == UP).then_some(&self.shared)
    }

    /// A local decision, journaled; under the ledger lock, so it cannot straddle a change of
    /// mode.
    fn admit_locally(&self, ledger: &mut Ledger, request: AdmitRequest<'_>) -> Decision {
        let mut decision = self.local.admit_now(request);
        if let Decision::Admitted(r) = &mut decision {
            let at = ledger.clock.to_redis(r.slot.at);
            ledger.named += 1;
            let member = format!("{at}-{}-{}", self.replica, ledger.named);
            let until = at.saturating_add(longest_window(&ledger.defs, &r.slot.budgets));
            ledger
                .journal
                .insert(member.clone(), at, r.slot.budgets.clone(), until);
            r.slot.member = Some(member);
        }
        decision
    }

    /// Takes in what an answer of the shared store taught: clock, counts, the admission.
    fn learn(&self, sent: Instant, now: Micros, usage: &[Usage], decision: &Decision) {
        let received = self.local.now_micros();
        let mut ledger = self.lock();
        ledger.clock = Clock::new(now, self.local.micros_at(sent));
        if let Decision::Admitted(r) = decision
            && let Some(member) = &r.slot.member
        {
            let until = r
                .slot
                .at
                .saturating_add(longest_window(&ledger.defs, &r.slot.budgets));
            ledger
                .journal
                .insert(member.clone(), r.slot.at, r.slot.budgets.clone(), until);
            if self.mode() != UP {
                // This replica went local while the answer was on its way: its share counts it.
                let at = received.saturating_add(micros(r.wait));
                self.local.record_at(&r.slot.budgets, at);
            }
        }
        let seq = ledger.journal.last_seq();
        ledger.see(usage, now, received, seq);
    }

    /// Leaves the shared store for the local share; `None` if it had already left (only
    /// the first failure of an outage reseeds and logs).
    fn leave(&self, to: u8) -> Option<MutexGuard<'_, Ledger>> {
        let ledger = self.lock();
        if self
            .mode
            .compare_exchange(UP, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            if to == DOWN && self.mode() == STALE {
                self.mode.store(DOWN, Ordering::Release);
            }
            return None;
        }
        self.reseed(&ledger);
        self.wake.notify_one();
        Some(ledger)
    }

    /// An admission or probe failed: serve locally until a write-back succeeds.
    fn go_down(&self, error: &BudgetError) {
        let Some(mut ledger) = self.leave(DOWN) else {
            return;
        };
        ledger.announced = true;
        drop(ledger);
        warn!(
            %error,
            share = format!("1/{}", self.replicas),
            "shared state unreachable; serving on a local share of every budget until it is back"
        );
    }

    /// Redis no longer holds our epoch: serve locally until the journal is written back.
    fn go_stale(&self) {
        let Some(ledger) = self.leave(STALE) else {
            return;
        };
        let journal = ledger.journal.len();
        drop(ledger);
        warn!(
            journal,
            "shared state was emptied (Redis flushed, or restarted without persistence); \
             writing this replica's admissions back before admitting through it again"
        );
    }

    /// Starts every local window from what the fleet had admitted (see the module doc).
    fn reseed(&self, ledger: &Ledger) {
        let now = self.local.now_micros();
        let mut seeds: Vec<Vec<Micros>> = vec![Vec::new(); ledger.defs.len()];
        for (b, def) in ledger.defs.iter().enumerate() {
            let Some(view) = ledger.views.get(b).copied().flatten() else {
                continue;
            };
            let share = def.limit / self.replicas;
            let phantoms = view.count.div_ceil(self.replicas).min(share);
            if phantoms == 0 {
                continue;
            }
            let window = micros(def.window).max(1);
            let ahead = i128::from(view.last) - i128::from(view.now);
            let mut at = i128::from(view.received) + ahead;
            while at + i128::from(window) > i128::from(now) && at >= 0 {
                let instant = Micros::try_from(at).unwrap_or(0);
                seeds[b].extend(std::iter::repeat_n(instant, phantoms as usize));
                at -= i128::from(window);
            }
        }
        let views = &ledger.views;
        let counted = |b: BudgetId| views.get(b).copied().flatten().map(|v| v.seq);
        for (b, at) in ledger.journal.newer_than(counted) {
            if let Some(seed) = seeds.get_mut(b) {
                seed.push(ledger.clock.to_local(at));
            }
        }
        self.local.reseed(&seeds);
    }

    /// Starts every local window with this replica's whole share spent now: at start
    /// with the shared store unreachable, the fleet's use is unknown (see the module doc).
    fn seed_unknown(&self) {
        let now = self.local.now_micros();
        let ledger = self.lock();
        let seeds: Vec<Vec<Micros>> = ledger
            .defs
            .iter()
            .map(|def| vec![now; (def.limit / self.replicas) as usize])
            .collect();
        self.local.reseed(&seeds);
    }

    /// The first attempt to reach the shared store has ended: with no count known, a
    /// replica of a fleet spends no share it cannot account for.
    fn first_try_over(&self) {
        if self.tried.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.mode() != UP && self.replicas > 1 {
            self.seed_unknown();
        }
        self.tried_now.notify_waiters();
    }

    /// Keeps the shared store healthy while up (probe, epoch check, second write-back) and
    /// writes back and returns to it while down, until `stop`.
    pub async fn run_recovery(self: Arc<Self>, stop: CancellationToken) {
        let mut delay = RETRY_MIN;
        loop {
            let pause = if self.mode() == UP {
                self.probe().await;
                delay = RETRY_MIN;
                TICK
            } else {
                match self.recover().await {
                    Ok(()) => {
                        self.first_try_over();
                        delay = RETRY_MIN;
                        TICK
                    }
                    Err(error) => {
                        self.first_try_over();
                        self.still_down(&error);
                        let pause = delay.mul_f64(rand::rng().random_range(0.5..1.0));
                        delay = (delay * 2).min(TICK);
                        pause
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// A write-back or recovery attempt failed: stay local, and say so once.
    fn still_down(&self, error: &BudgetError) {
        let mut ledger = self.lock();
        if self.mode() == STALE {
            self.mode.store(DOWN, Ordering::Release);
        }
        if !ledger.announced {
            ledger.announced = true;
            let share = format!("1/{}", self.replicas);
            if ledger.ever_up {
                warn!(%error, share, "shared state unreachable; serving on a local share of every budget until it is back");
            } else {
                if self.replicas > 1 {
                    warn!(%error, share, "shared state unreachable at start; the fleet's use of each budget is unknown, so this replica admits nothing locally until a window has passed or the shared state answers");
                } else {
                    warn!(%error, share, "shared state unreachable at start; serving on a local share of every budget");
                }
            }
        }
    }

    /// One probe while up: Redis takes a write, still holds our epoch, and gives fresh counts.
    /// The first probe after a write-back writes the whole journal again (answers that were
    /// in flight during it).
    async fn probe(&self) {
        let (request, seq) = {
            let mut ledger = self.lock();
            let now = ledger.clock.to_redis(self.local.now_micros());
            ledger.journal.prune(now);
            let admissions = if std::mem::take(&mut ledger.again) {
                ledger.journal.since(0)
            } else {
                Vec::new()
            };
            let usage = ledger.next_views();
            let request = SyncRequest {
                adopt: false,
                epoch: ledger.epoch.clone(),
                new_epoch: String::new(),
                settle: self.settle,
                set_settle: false,
                admissions,
                usage,
            };
            (request, ledger.journal.last_seq())
        };
        let sent = Instant::now();
        match self.shared.sync(request).await {
            Ok(reply) if reply.status == SyncStatus::Stale => self.go_stale(),
            Ok(reply) => {
                let received = self.local.now_micros();
                let mut ledger = self.lock();
                ledger.clock = Clock::new(reply.now, self.local.micros_at(sent));
                ledger.see(&reply.usage, reply.now, received, seq);
            }
            Err(error) => self.go_down(&error),
        }
    }

    /// Writes the journal back (adopting or creating the state's epoch) and returns to the
    /// shared store, atomically with local admissions: any made during the write are written
    /// in another round before the mode changes.
    async fn recover(&self) -> Result<(), BudgetError> {
        let mut mark = 0;
        let mut written = 0;
        let mut created = false;
        for round in 0..4 {
            let (request, sent) = {
                let mut ledger = self.lock();
                let now = ledger.clock.to_redis(self.local.now_micros());
                ledger.journal.prune(now);
                let admissions = ledger.journal.since(mark);
                if round > 0 && admissions.is_empty() {
                    self.come_back(&mut ledger, written, created);
                    return Ok(());
                }
                mark = ledger.journal.last_seq();
                // After an outage or a loss (this replica knew a state), or with anything to
                // write, everyone must write back before anyone admits. A fresh replica with
                // nothing to write, joining a live state or starting an empty one (a cold start),
                // need not pause the fleet.
                let set_settle = ledger.epoch.is_some() || !admissions.is_empty();
                let request = SyncRequest {
                    adopt: true,
                    epoch: ledger.epoch.clone(),
                    new_epoch: format!("{:016x}", rand::rng().random::<u64>()),
                    settle: self.settle,
                    set_settle,
                    admissions,
                    usage: if round == 0 {
                        (0..ledger.defs.len()).take(VIEWS_PER_PROBE).collect()
                    } else {
                        Vec::new()
                    },
                };
                (request, Instant::now())
            };
            let reply = self.shared.sync(request).await?;
            if reply.status == SyncStatus::Stale {
                // The state changed between two chunks (flushed again): write it all again.
                mark = 0;
                continue;
            }
            created |= reply.status == SyncStatus::Created;
            written += reply.written;
            let received = self.local.now_micros();
            let mut ledger = self.lock();
            ledger.epoch = Some(reply.epoch);
            ledger.clock = Clock::new(reply.now, self.local.micros_at(sent));
            ledger.see(&reply.usage, reply.now, received, mark);
        }
        Err(BudgetError::Protocol(
            "local admissions kept arriving during the write-back".into(),
        ))
    }

    /// Back on the shared store (under the ledger lock), logged once.
    fn come_back(&self, ledger: &mut Ledger, written: u64, created: bool) {
        let previous = self.mode.swap(UP, Ordering::AcqRel);
        ledger.again = true;
        ledger.announced = false;
        let settle = format!("{:?}", self.settle);
        if !ledger.ever_up {
            ledger.ever_up = true;
            info!(written, "shared state connected; budgets are shared");
        } else if previous == STALE {
            info!(
                written,
                created,
                settle,
                "shared state restored: this replica's admissions written back; budgets are shared again after the settle pause"
            );
        } else {
            info!(
                written,
                created,
                settle,
                "shared state reachable again: this replica's admissions written back; budgets are shared again after the settle pause"
            );
        }
    }
}

impl BudgetStore for FallbackStore {
    fn admit<'a>(
        &'a self,
        request: AdmitRequest<'a>,
    ) -> BoxFuture<'a, Result<Decision, BudgetError>> {
        Box::pin(async move {
            let mut request = request;
            loop {
                if !self.tried.load(Ordering::Acquire) {
                    // At start: the first attempt to reach the store decides whether this
                    // replica knows anything of the fleet's use (see `first_try_over`).
                    let tried = self.tried_now.notified();
                    if !self.tried.load(Ordering::Acquire) {
                        let _ = tokio::time::timeout(FIRST_TRY, tried).await;
                    }
                }
                let epoch = {
                    let mut ledger = self.lock();
                    if self.mode() != UP {
                        return Ok(self.admit_locally(&mut ledger, request));
                    }
                    ledger.epoch.clone().unwrap_or_default()
                };
                let sent = Instant::now();
                match self.shared.admit_shared(request, &epoch).await {
                    Ok(SharedAdmit::Decided {
                        decision,
                        now,
                        usage,
                    }) => {
                        self.learn(sent, now, &usage, &decision);
                        return Ok(decision);
                    }
                    Ok(SharedAdmit::Stale { .. }) => self.go_stale(),
                    Ok(SharedAdmit::Settling { wait }) => {
                        if wait > request.max_wait {
                            return Ok(Decision::Refused(Refusal {
                                wait: Some(wait),
                                binding: Some(Binding::PoolCoolDown),
                            }));
                        }
                        tokio::time::sleep(wait).await;
                        request.max_wait = request.max_wait.saturating_sub(sent.elapsed());
                    }
                    Err(error) => self.go_down(&error),
                }
            }
        })
    }

    fn release(&self, reservation: Reservation) -> BoxFuture<'static, ()> {
        if let Some(member) = &reservation.slot.member {
            self.lock().journal.remove(member);
        }
        if !reservation.slot.shared {
            return self.local.release(reservation);
        }
        match self.shared() {
            Some(shared) => shared.release(reservation),
            // Its key expires with the window; nothing to give back locally.
            None => Box::pin(std::future::ready(())),
        }
    }

    fn cool_down(&self, target: CoolDown, duration: Duration) -> BoxFuture<'static, ()> {
        self.local.cool_down_now(target, duration);
        match self.shared() {
            Some(shared) => shared.cool_down(target, duration),
            None => Box::pin(std::future::ready(())),
        }
    }

    fn lower_limit(&self, budget: BudgetId, limit: u32) -> BoxFuture<'static, bool> {
        let lowered_locally = self.local.lower_limit_now(budget, limit / self.replicas);
        match self.shared() {
            Some(shared) => shared.lower_limit(budget, limit),
            None => Box::pin(std::future::ready(lowered_locally)),
        }
    }

    fn snapshot(&self, budgets: Vec<BudgetId>, clients: usize) -> BoxFuture<'static, Snapshot> {
        match self.shared() {
            Some(shared) => shared.snapshot(budgets, clients),
            None => Box::pin(std::future::ready(
                self.local.snapshot_now(&budgets, clients),
            )),
        }
    }

    fn reconfigure(&self, defs: &[BudgetDef], clients: &[String]) {
        {
            let mut ledger = self.lock();
            ledger.defs = defs.to_vec();
            ledger.views.resize(defs.len(), None);
        }
        self.local
            .reconfigure_now(&local_shares(defs, self.replicas), clients.len());
        self.shared.reconfigure(defs, clients);
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    /// Up while admissions go through the shared store: a failed admission or probe makes
    /// it false, only a successful write-back makes it true again.
    fn is_up(&self) -> bool {
        self.mode() == UP
    }
}

// === impl Ledger ===

impl Ledger {
    /// Records fleet-wide counts from an answer (never replacing a newer one).
    fn see(&mut self, usage: &[Usage], now: Micros, received: Micros, seq: u64) {
        for u in usage {
            let Some(slot) = self.views.get_mut(u.budget) else {
                continue;
            };
            if slot.is_some_and(|v| v.now > now) {
                continue;
            }
            *slot = Some(View {
                count: u.count,
                last: u.last.max(now),
                now,
                received,
                seq,
            });
        }
    }

    /// The next budgets whose counts a probe refreshes.
    fn next_views(&mut self) -> Vec<BudgetId> {
        let n = self.defs.len();
        if n <= VIEWS_PER_PROBE {
            return (0..n).collect();
        }
        let from = self.probe_from % n;
        self.probe_from = (from + VIEWS_PER_PROBE) % n;
        (0..VIEWS_PER_PROBE).map(|i| (from + i) % n).collect()
    }
}

/// This replica's share of every budget while the shared store is down: `limit /
/// replicas`, rounded down, so the shares never add up to more than the budget (a budget
/// smaller than the replica count admits nothing locally).
fn local_shares(defs: &[BudgetDef], replicas: u32) -> Vec<BudgetDef> {
    defs.iter()
        .map(|d| BudgetDef {
            limit: d.limit / replicas,
            ..d.clone()
        })
        .collect()
}

/// The longest window among `budgets` (µs): how long an admission in all of them matters.
fn longest_window(defs: &[BudgetDef], budgets: &[BudgetId]) -> Micros {
    budgets
        .iter()
        .filter_map(|&b| defs.get(b))
        .map(|d| micros(d.window))
        .max()
        .unwrap_or(0)
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::budget::{BudgetKind, Candidate, RedisStore, Share};
    use crate::config::SharedStateConfig;
    use crate::secret::Secret;

    const W: Duration = Duration::from_secs(2);

    /// One token budget of `limit` per 2 s, `replicas` as `replicas_hint`, and a Redis
    /// store that is never reached (nothing listens on port 1): every decision here is the
    /// local share's. Its first attempt to reach Redis is not over yet.
    fn starting_replica(limit: u32, replicas: u32) -> FallbackStore {
        let defs = vec![BudgetDef {
            kind: BudgetKind::Token,
            name: "token:a".into(),
            limit,
            window: W,
        }];
        let config = SharedStateConfig {
            redis_url: Secret::new("redis://127.0.0.1:1/"),
            key_prefix: "unit".into(),
            replicas_hint: NonZeroU32::MIN,
            timeout: Duration::from_millis(50),
        };
        let redis = RedisStore::lazy(&config, &defs, &["a".into()]).unwrap();
        FallbackStore::new(&defs, 1, replicas, Arc::new(redis), config.timeout)
    }

    /// As [`starting_replica`] with `replicas_hint` 2, past start: what these tests seed
    /// stands for answers the store has given.
    fn replica(limit: u32) -> FallbackStore {
        let store = starting_replica(limit, 2);
        store.tried.store(true, Ordering::Release);
        store
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_never_reached_the_store_spends_no_unknown_share() {
        let fleet = starting_replica(10, 2);
        fleet.first_try_over();
        let (admitted, wait) = admit_all(&fleet).await;
        assert_eq!(
            admitted, 0,
            "a fleet replica knows no count: its share is spent"
        );
        assert_eq!(wait, Some(W));
        tokio::time::advance(W).await;
        assert_eq!(admit_all(&fleet).await.0, 5, "a window later, its share");

        let alone = starting_replica(10, 1);
        alone.first_try_over();
        assert_eq!(
            admit_all(&alone).await.0,
            10,
            "a lone replica serves its budget"
        );
    }

    /// As if an answer had just said: `count` admissions in budget 0, the latest `ahead`
    /// from now; then the replica goes local.
    fn seen(store: &FallbackStore, count: u32, ahead: Duration) {
        let now = store.local.now_micros();
        let mut ledger = store.lock();
        ledger.clock = Clock::new(now, now);
        let usage = Usage {
            budget: 0,
            count,
            last: now + micros(ahead),
        };
        let seq = ledger.journal.last_seq();
        ledger.see(&[usage], now, now, seq);
        store.reseed(&ledger);
    }

    /// Local admissions with no wait, until one is refused; and the refusal's wait.
    async fn admit_all(store: &FallbackStore) -> (u32, Option<Duration>) {
        let candidates = [Candidate {
            client: 0,
            budgets: vec![0],
        }];
        let request = AdmitRequest {
            candidates: &candidates,
            route: None,
            max_wait: Duration::ZERO,
            share: Share::WHOLE,
        };
        let mut admitted = 0;
        loop {
            match store.admit(request).await.unwrap() {
                Decision::Admitted(_) => admitted += 1,
                Decision::Refused(r) => return (admitted, r.wait),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleet_count_comes_off_the_share() {
        let store = replica(10);
        seen(&store, 6, Duration::ZERO);
        let (admitted, wait) = admit_all(&store).await;
        assert_eq!(admitted, 2, "share 5, minus ceil(6 / 2) = 3 phantoms");
        assert_eq!(wait, Some(W), "the phantoms leave a window after the count");
    }

    #[tokio::test(start_paused = true)]
    async fn uneven_use_adds_up_to_the_budget() {
        // A sent 4 of 5 and last saw 4; B sent the 5th and saw 5. Each share is 2.
        let (a, b) = (replica(5), replica(5));
        seen(&a, 4, Duration::ZERO);
        seen(&b, 5, Duration::ZERO);
        assert_eq!(admit_all(&a).await.0 + admit_all(&b).await.0, 0);
        tokio::time::advance(W).await;
        assert_eq!(
            admit_all(&a).await.0 + admit_all(&b).await.0,
            4,
            "2 + 2 ≤ 5"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queued_reservations_cover_every_window_back_to_now() {
        // 4 admissions, the latest 3 s ahead (queued): groups of 2 at +3 s, +1 s and -1 s,
        // so every window that can hold a local admission holds one group.
        let store = replica(4);
        seen(&store, 4, Duration::from_secs(3));
        let (admitted, wait) = admit_all(&store).await;
        assert_eq!(admitted, 0);
        assert_eq!(
            wait,
            Some(Duration::from_secs(5)),
            "after the +3 s group leaves"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn own_admissions_newer_than_the_count_still_count() {
        let store = replica(10);
        seen(&store, 0, Duration::ZERO);
        {
            let mut ledger = store.lock();
            let now = ledger.clock.to_redis(store.local.now_micros());
            for i in 0..3 {
                ledger
                    .journal
                    .insert(format!("own-{i}"), now, vec![0], now + micros(W));
            }
            store.reseed(&ledger);
        }
        assert_eq!(admit_all(&store).await.0, 2, "share 5 minus 3 of its own");
    }
}
