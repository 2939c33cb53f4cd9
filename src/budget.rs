//! Budgets: what a budget is, the store that keeps them, and the admission decision.
//!
//! A budget is "at most N admissions in any window of length W" ([`window`]). A request
//! names its candidates (one per healthy client, each with the budgets that apply to it:
//! the client's token budget, the route's budget, the org cap); the store finds, for each
//! candidate, the earliest instant every one of its budgets admits the request, picks the
//! soonest candidate (ties: the first, i.e. the fewest in flight), and reserves that instant
//! in all its budgets at once, or refuses when it lies past the request's `max_wait`.
//!
//! The store is a trait so a Redis implementation can replace the in-memory one without
//! touching the request path. Knows nothing of HTTP. [`window`]: the rule; [`memory`] and
//! [`redis`]: the stores; [`fallback`]: Redis with a local share while it fails, and the
//! write-back after an outage, flush or restart, from this replica's [`journal`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod fallback;
pub mod journal;
pub mod memory;
pub mod redis;
pub mod window;

pub use fallback::{FallbackStore, SharedStore};
pub use memory::MemoryStore;
pub use redis::RedisStore;

pub use crate::config::per_window;

/// Index of a budget in the store's table.
pub type BudgetId = usize;

/// Dense id of a route template (see `routes`), used for route cool-downs.
pub type RouteKey = crate::routes::RouteId;

/// Which limit a budget stands for; also the `x-gcpool-reason` of a local 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    Token,
    Endpoint,
    Org,
    /// A caller's own quota (`inbound.api_keys[].per_minute`), over every client.
    Caller,
}

/// One budget as configured.
#[derive(Debug, Clone)]
pub struct BudgetDef {
    pub kind: BudgetKind,
    /// Stable name, e.g. `token:pool-01`, `endpoint:PUT /api/v2/architect/ivrs/{ivrId}`, `org`.
    pub name: String,
    /// Admissions allowed per window.
    pub limit: u32,
    /// The window, guard time included.
    pub window: Duration,
}

/// One way to serve a request: a client and the budgets that apply if it is used.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub client: usize,
    /// Shared budgets (org, route in org scope) first: when several bind at the same
    /// instant, the first is named, and a shared one says more ("no client would help").
    pub budgets: Vec<BudgetId>,
}

/// What to admit: candidates in order of preference, the route, how long it may wait, and
/// how much of each budget it may fill.
#[derive(Debug, Clone, Copy)]
pub struct AdmitRequest<'a> {
    pub candidates: &'a [Candidate],
    pub route: Option<RouteKey>,
    pub max_wait: Duration,
    /// The request's lane's share: it is admitted only where every token, route and org
    /// budget it reserves in stays within this share of its limit (a caller's own quota is
    /// its own and not shared: it always counts whole).
    pub share: Share,
}

/// The part of a budget's limit a request may fill (its caller's lane, SPEC §12), in
/// thousandths: `Share::WHOLE` fills it all. A budget of limit `N` admits a request of share
/// `s` only while each window holding it stays within `floor(N × s)`, counting every
/// admission whatever its share: the lanes below never take the room above them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u16);

/// Something that cools down after an upstream 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoolDown {
    Client(usize),
    Route(RouteKey),
    Pool,
}

/// What held a request back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Budget(BudgetId),
    ClientCoolDown,
    RouteCoolDown,
    PoolCoolDown,
}

/// A reserved instant in a set of budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Index into [`AdmitRequest::candidates`].
    pub candidate: usize,
    /// How long until the reserved instant.
    pub wait: Duration,
    /// What made it wait (if it waits).
    pub binding: Option<Binding>,
    pub(crate) slot: Slot,
}

/// Where a reservation sits, to give it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The reserved instant on the store's clock (µs).
    pub(crate) at: window::Micros,
    pub(crate) budgets: Vec<BudgetId>,
    /// The reservation's member name: the Redis store's, or the one the fallback gives a
    /// local admission so it can be written back (`None` for a plain memory store).
    pub(crate) member: Option<String>,
    /// Reserved in the shared store (give it back there), not in a local one.
    pub(crate) shared: bool,
}

/// Why no slot was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Wait until the earliest instant a candidate would be admitted; `None` if never.
    pub wait: Option<Duration>,
    pub binding: Option<Binding>,
}

/// The store's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admitted(Reservation),
    Refused(Refusal),
}

/// The store could not decide (the Redis store's connection failed). Messages never
/// carry the Redis URL or its password.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget store unavailable: {0}")]
    Unavailable(String),
    #[error("budget store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("shared_state.redis_url: {0}")]
    InvalidUrl(String),
    #[error("budget store gave an unexpected answer: {0}")]
    Protocol(String),
}

/// A boxed future, for dyn-compatible async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `/status` and the gauges show of the store, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `(admissions in the current window, limit)` of each budget asked for, in order.
    pub usage: Vec<(u32, u32)>,
    /// How long each client (by index) still cools down, pool cool-down included.
    pub cooling: Vec<Duration>,
}

/// Keeps every budget's admissions and the cool-downs.
///
/// Methods other than `admit` return `'static` futures so they can be spawned (a reservation
/// given back from a `Drop`); the in-memory store does the work at once and returns a ready
/// future.
pub trait BudgetStore: Send + Sync + fmt::Debug {
    /// Finds the soonest candidate and reserves its instant in all its budgets, or refuses.
    fn admit<'a>(
        &'a self,
        request: AdmitRequest<'a>,
    ) -> BoxFuture<'a, Result<Decision, BudgetError>>;

    /// Gives a reservation back (the caller left before its instant).
    fn release(&self, reservation: Reservation) -> BoxFuture<'static, ()>;

    /// No admission for `target` before `duration` from now.
    fn cool_down(&self, target: CoolDown, duration: Duration) -> BoxFuture<'static, ()>;

    /// Lowers a budget's limit (learned from an upstream 429); false if not lower.
    fn lower_limit(&self, budget: BudgetId, limit: u32) -> BoxFuture<'static, bool>;

    /// Usage of `budgets` and the cool-downs of `clients` clients.
    fn snapshot(&self, budgets: Vec<BudgetId>, clients: usize) -> BoxFuture<'static, Snapshot>;

    /// Takes the budgets and clients of a reloaded config. Ids are stable across reloads:
    /// a budget (client) keeps its id while its name stays, new ones are appended, and
    /// removed ones keep theirs unused. Admissions, cool-downs and learned lower limits
    /// carry over; requests admitted under the old config keep valid ids.
    fn reconfigure(&self, defs: &[BudgetDef], clients: &[String]);

    /// `memory` or `redis`, as `/status` names it.
    fn backend(&self) -> &'static str;

    /// Whether the store in use answers (always true in memory).
    fn is_up(&self) -> bool;
}

// === impl Share ===

impl Share {
    /// All of every budget.
    pub const WHOLE: Share = Share(1000);

    /// `permille` thousandths (at most 1000).
    pub fn from_permille(permille: u16) -> Self {
        Share(permille.min(1000))
    }

    /// In thousandths, `0..=1000`.
    pub fn permille(self) -> u16 {
        self.0
    }

    /// The admissions per window this share may fill of a budget of `limit`: rounded down,
    /// so a share never exceeds its part.
    pub fn of(self, limit: u32) -> u32 {
        crate::config::share_of(self.0, limit)
    }

    /// Whether the share of a budget of `kind` applies: every budget but a caller's own.
    pub fn applies_to(kind: BudgetKind) -> bool {
        kind != BudgetKind::Caller
    }
}

impl Default for Share {
    fn default() -> Self {
        Share::WHOLE
    }
}

// === impl BudgetKind ===

impl BudgetKind {
    /// The `x-gcpool-reason` of a local 429 this budget caused.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Token => "token_budget",
            Self::Endpoint => "endpoint_budget",
            Self::Org => "org_budget",
            Self::Caller => "caller_budget",
        }
    }
}

// === impl Reservation ===

impl Reservation {
    /// The reserved instant in µs on the store's clock (Redis `TIME` since the Unix epoch,
    /// or the memory store's own epoch): `at - wait` is the store's "now" of the decision.
    /// For diagnostics and the property tests.
    pub fn at_micros(&self) -> window::Micros {
        self.slot.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_scale_with_the_window() {
        assert_eq!(per_window(300, Duration::from_secs(60)), 300);
        assert_eq!(per_window(300, Duration::from_secs(2)), 10);
        assert_eq!(
            per_window(100, Duration::from_millis(100)),
            1,
            "never below 1"
        );
    }
}
