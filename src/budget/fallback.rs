//! Shared budgets with a local fallback.
//!
//! While the shared store (Redis) answers, every decision is its own. When it does not (a
//! call fails or times out), this replica switches at once to a [`MemoryStore`] holding
//! `1 / replicas_hint` of every budget, logs the transition once, and a background task
//! reconnects with backoff; when the shared store answers again, decisions go back to it.
//! The fleet then never exceeds a budget as long as `replicas_hint` is at least the number
//! of replicas, and callers never see a 5xx because Redis went away.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    AdmitRequest, BoxFuture, BudgetDef, BudgetError, BudgetId, BudgetStore, CoolDown, Decision,
    MemoryStore, Reservation, Snapshot,
};

/// A budget store other replicas share, which can tell whether it is reachable.
pub trait SharedStore: BudgetStore {
    /// One cheap round trip; `Ok` when the store answers.
    fn ping(&self) -> BoxFuture<'static, Result<(), BudgetError>>;
}

/// The shared store while it answers, a local share of every budget while it does not.
pub struct FallbackStore {
    /// Connects by itself (lazily, and again after failures); `up` says whether to use it.
    shared: Arc<dyn SharedStore>,
    local: MemoryStore,
    up: AtomicBool,
    replicas: u32,
}

impl fmt::Debug for FallbackStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackStore")
            .field("up", &self.up.load(Ordering::Relaxed))
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// First and longest pause between reconnection attempts.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl FallbackStore {
    /// Starts in fallback mode; [`FallbackStore::run_recovery`] pings `shared` at once.
    pub fn new(
        defs: &[BudgetDef],
        clients: usize,
        replicas_hint: u32,
        shared: Arc<dyn SharedStore>,
    ) -> Self {
        let replicas = replicas_hint.max(1);
        Self {
            shared,
            local: MemoryStore::new(&local_shares(defs, replicas), clients),
            up: AtomicBool::new(false),
            replicas,
        }
    }

    fn shared(&self) -> Option<&Arc<dyn SharedStore>> {
        self.up.load(Ordering::Relaxed).then_some(&self.shared)
    }

    /// The shared store failed: serve locally until the recovery task brings it back.
    fn mark_down(&self, error: &BudgetError) {
        if self.up.swap(false, Ordering::Relaxed) {
            warn!(
                %error,
                share = format!("1/{}", self.replicas),
                "shared state unreachable; serving on a local share of every budget until it is back"
            );
        }
    }

    /// Reconnects (with backoff and jitter) whenever the shared store is down, until `stop`.
    pub async fn run_recovery(self: Arc<Self>, stop: CancellationToken) {
        let mut delay = RETRY_MIN;
        let mut first = true;
        loop {
            // A failed snapshot (scrape) also counts: the shared store said it is down.
            if let Some(shared) = self.shared()
                && !shared.is_up()
            {
                self.mark_down(&BudgetError::Unavailable("the last call failed".into()));
            }
            if !self.up.load(Ordering::Relaxed) {
                match self.shared.ping().await {
                    Ok(()) => {
                        self.up.store(true, Ordering::Relaxed);
                        if first {
                            info!("shared state connected; budgets are shared");
                        } else {
                            info!("shared state reachable again; budgets are shared");
                        }
                        delay = RETRY_MIN;
                    }
                    Err(error) => {
                        if first {
                            warn!(%error, share = format!("1/{}", self.replicas), "shared state unreachable at start; serving on a local share of every budget");
                        }
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
                first = false;
            }
            let pause = if self.up.load(Ordering::Relaxed) {
                RETRY_MIN
            } else {
                delay.mul_f64(rand::rng().random_range(0.5..1.0))
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

impl BudgetStore for FallbackStore {
    fn admit<'a>(
        &'a self,
        request: AdmitRequest<'a>,
    ) -> BoxFuture<'a, Result<Decision, BudgetError>> {
        Box::pin(async move {
            if let Some(shared) = self.shared() {
                match shared.admit(request).await {
                    Ok(decision) => {
                        if let Decision::Admitted(r) = &decision {
                            // Mirrored locally: a fallback share then starts from what this
                            // replica already sent, not from empty windows.
                            self.local.record(&r.slot.budgets, r.wait);
                        }
                        return Ok(decision);
                    }
                    Err(error) => self.mark_down(&error),
                }
            }
            Ok(self.local.admit_now(request))
        })
    }

    fn release(&self, reservation: Reservation) -> BoxFuture<'static, ()> {
        if reservation.slot.member.is_some() {
            match self.shared() {
                Some(shared) => shared.release(reservation),
                // Its key expires with the window; nothing to give back locally.
                None => Box::pin(std::future::ready(())),
            }
        } else {
            self.local.release(reservation)
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
        let local_limit = (limit / self.replicas).max(1);
        let lowered_locally = self.local.lower_limit_now(budget, local_limit);
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
        self.local
            .reconfigure_now(&local_shares(defs, self.replicas), clients.len());
        self.shared.reconfigure(defs, clients);
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn is_up(&self) -> bool {
        self.shared().is_some_and(|s| s.is_up())
    }
}

/// This replica's share of every budget while the shared store is down.
fn local_shares(defs: &[BudgetDef], replicas: u32) -> Vec<BudgetDef> {
    defs.iter()
        .map(|d| BudgetDef {
            limit: (d.limit / replicas).max(1),
            ..d.clone()
        })
        .collect()
}
