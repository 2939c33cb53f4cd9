//! `MemoryStore`: the budgets of one process, [`Window`]s behind one lock.
//!
//! Admission is a short critical section (no await inside), so one mutex over all budgets
//! keeps "reserve in all or in none" trivially atomic. Time comes from `tokio::time`, so
//! paused-time tests drive it.
//!
//! Choosing the candidate does not compute every candidate's instant. The budgets all
//! candidates list first (the org cap, a route budget in org scope) are searched once: their
//! joint instant is a floor under every candidate's. Candidates are then taken in order of
//! preference, and a candidate's search stops as soon as it cannot beat the best so far
//! (ties go to the earlier candidate); the first to reach the floor ends the choice. The
//! chosen candidate's instant and binding are then computed exactly as for a lone candidate,
//! so the decision is the full scan's (`tests::same_choice_as_the_full_scan`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Micros, Window, Within, joint_earliest, joint_earliest_before};
use super::{
    AdmitRequest, Binding, BoxFuture, BudgetDef, BudgetError, BudgetId, BudgetStore, Candidate,
    CoolDown, Decision, Refusal, Reservation, RouteKey, Share, Slot, Snapshot,
};

/// Budgets and cool-downs of this process.
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Clone)]
struct State {
    windows: Vec<Window>,
    /// Each budget's configured limit (its window's may be lower: learned from a 429).
    configured: Vec<u32>,
    /// Whether a lane's share applies to each budget ([`Share::applies_to`]).
    shared_by_lanes: Vec<bool>,
    /// Instant (µs since epoch) before which each client admits nothing.
    client_cool: Vec<Micros>,
    route_cool: HashMap<RouteKey, Micros>,
    pool_cool: Micros,
}

impl State {
    /// The earliest instant from `now` at which `candidate` is out of every cool-down and
    /// all its budgets admit one more, with what binds it there; `None` when never.
    fn earliest(
        &mut self,
        candidate: &Candidate,
        now: Micros,
        route_cool: Micros,
        share: Share,
    ) -> Option<(Micros, Option<Binding>)> {
        let client_cool = self.client_cool.get(candidate.client).copied().unwrap_or(0);
        let (from, mut binding) = [
            (now, None),
            (client_cool, Some(Binding::ClientCoolDown)),
            (route_cool, Some(Binding::RouteCoolDown)),
            (self.pool_cool, Some(Binding::PoolCoolDown)),
        ]
        .into_iter()
        .fold((now, None), |acc, x| if x.0 > acc.0 { x } else { acc });
        for &b in &candidate.budgets {
            if let Some(w) = self.windows.get_mut(b) {
                w.prune(now);
            }
        }
        let (at, moved_by) = joint_earliest(self.windows_of(&candidate.budgets, share), from)?;
        if let Some(k) = moved_by {
            binding = Some(Binding::Budget(candidate.budgets[k]));
        }
        Some((at, binding))
    }

    /// The candidate with the soonest joint instant (the first of them on ties), as a scan
    /// of every candidate with [`State::earliest`] would choose; `None` when none ever admits.
    fn soonest(
        &mut self,
        candidates: &[Candidate],
        now: Micros,
        route_cool: Micros,
        share: Share,
    ) -> Option<usize> {
        let (first, rest) = candidates.split_first()?;
        if rest.is_empty() {
            // A lone candidate is the choice; whether it ever admits is the caller's search.
            return Some(0);
        }
        // Budgets every candidate lists first are the same for all: search them once.
        let mut shared_len = first.budgets.len();
        for candidate in rest {
            if shared_len == 0 {
                break;
            }
            shared_len = common_prefix_len(&first.budgets[..shared_len], &candidate.budgets);
        }
        let shared = &first.budgets[..shared_len];
        let from = now.max(route_cool).max(self.pool_cool);
        self.prune(shared, now);
        // No candidate admits before the shared budgets do (or ever, if they never do).
        let (floor, _) = joint_earliest(self.windows_of(shared, share), from)?;
        let mut best: Option<(Micros, usize)> = None;
        for (index, candidate) in candidates.iter().enumerate() {
            let client_cool = self.client_cool.get(candidate.client).copied().unwrap_or(0);
            let start = floor.max(client_cool);
            let bound = best.map_or(Micros::MAX, |(at, _)| at);
            if start >= bound {
                continue;
            }
            let own = &candidate.budgets[shared_len..];
            self.prune(own, now);
            let windows = self
                .windows_of(own, share)
                .chain(self.windows_of(shared, share));
            let Some(at) = joint_earliest_before(windows, start, bound) else {
                continue;
            };
            best = Some((at, index));
            if at == floor {
                break;
            }
        }
        best.map(|(_, index)| index)
    }

    /// Forgets, in `budgets`, admissions that can share no window with `now` or later.
    fn prune(&mut self, budgets: &[BudgetId], now: Micros) {
        for &b in budgets {
            if let Some(w) = self.windows.get_mut(b) {
                w.prune(now);
            }
        }
    }

    /// The windows of `budgets` (unknown ids skipped), each with the limit `share` may fill.
    fn windows_of<'a>(
        &'a self,
        budgets: &'a [BudgetId],
        share: Share,
    ) -> impl Iterator<Item = Within<'a>> + Clone + 'a {
        budgets.iter().filter_map(move |&b| {
            let window = self.windows.get(b)?;
            let laned = self.shared_by_lanes.get(b).copied().unwrap_or(true);
            let limit = if laned {
                share.of(window.limit())
            } else {
                window.limit()
            };
            Some((window, limit))
        })
    }
}

impl MemoryStore {
    /// A store for `budgets` (indexed by position) and `clients` clients.
    pub fn new(budgets: &[BudgetDef], clients: usize) -> Self {
        let windows = budgets
            .iter()
            .map(|b| Window::new(b.limit, micros(b.window)))
            .collect();
        Self {
            epoch: Instant::now(),
            state: Mutex::new(State {
                windows,
                configured: budgets.iter().map(|b| b.limit).collect(),
                shared_by_lanes: budgets.iter().map(|b| Share::applies_to(b.kind)).collect(),
                client_cool: vec![0; clients],
                route_cool: HashMap::new(),
                pool_cool: 0,
            }),
        }
    }

    fn now(&self) -> Micros {
        micros(self.epoch.elapsed())
    }

    /// Now on this store's clock (µs since it was created).
    pub fn now_micros(&self) -> Micros {
        self.now()
    }

    /// `instant` on this store's clock (0 for instants before it was created).
    pub fn micros_at(&self, instant: Instant) -> Micros {
        micros(instant.saturating_duration_since(self.epoch))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave windows half-updated in a way that
        // breaks the rule (each step keeps them sorted), so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision, taken under the lock.
    pub fn admit_now(&self, request: AdmitRequest<'_>) -> Decision {
        let now = self.now();
        let max_wait = micros(request.max_wait);
        let mut state = self.lock();
        let state = &mut *state;
        let route_cool = request
            .route
            .and_then(|r| state.route_cool.get(&r).copied())
            .unwrap_or(0);
        let share = request.share;
        let chosen = state
            .soonest(request.candidates, now, route_cool, share)
            .and_then(|index| {
                let candidate = request.candidates.get(index)?;
                // The chosen one's instant and binding, computed as for a lone candidate.
                let (at, binding) = state.earliest(candidate, now, route_cool, share)?;
                Some((at, index, binding))
            });
        let Some((at, index, binding)) = chosen else {
            return Decision::Refused(Refusal {
                wait: None,
                binding: None,
            });
        };
        let wait = at - now;
        if wait > max_wait {
            return Decision::Refused(Refusal {
                wait: Some(Duration::from_micros(wait)),
                binding,
            });
        }
        let budgets = request.candidates[index].budgets.clone();
        for &b in &budgets {
            if let Some(w) = state.windows.get_mut(b) {
                w.reserve(at);
            }
        }
        Decision::Admitted(Reservation {
            candidate: index,
            wait: Duration::from_micros(wait),
            binding: if wait > 0 { binding } else { None },
            slot: Slot {
                at,
                budgets,
                member: None,
                shared: false,
            },
        })
    }
}

impl MemoryStore {
    /// Gives a reservation back.
    pub fn release_now(&self, reservation: &Reservation) {
        let mut state = self.lock();
        for &b in &reservation.slot.budgets {
            if let Some(w) = state.windows.get_mut(b) {
                w.release(reservation.slot.at);
            }
        }
    }

    /// Records an admission decided elsewhere (the shared store) at `wait` from now in
    /// `budgets`, without checking: so that this replica's local share, should it have to
    /// take over, counts what it already sent.
    pub fn record(&self, budgets: &[BudgetId], wait: Duration) {
        let now = self.now();
        let at = now.saturating_add(micros(wait));
        let mut state = self.lock();
        for &b in budgets {
            if let Some(w) = state.windows.get_mut(b) {
                w.prune(now);
                w.reserve(at);
            }
        }
    }

    /// Records an admission decided elsewhere at `at` (this store's clock) in `budgets`,
    /// without checking.
    pub fn record_at(&self, budgets: &[BudgetId], at: Micros) {
        let now = self.now();
        let mut state = self.lock();
        for &b in budgets {
            if let Some(w) = state.windows.get_mut(b) {
                w.prune(now);
                w.reserve(at);
            }
        }
    }

    /// Replaces every window's admissions with `seeds[budget]` (instants on this store's
    /// clock, any order); budgets past the end of `seeds` are left empty. Limits,
    /// cool-downs and learned limits stay.
    pub fn reseed(&self, seeds: &[Vec<Micros>]) {
        let mut state = self.lock();
        for (b, window) in state.windows.iter_mut().enumerate() {
            window.clear();
            for &at in seeds.get(b).map_or(&[][..], Vec::as_slice) {
                window.reserve(at);
            }
        }
    }

    /// No admission for `target` before `duration` from now.
    pub fn cool_down_now(&self, target: CoolDown, duration: Duration) {
        let until = self.now().saturating_add(micros(duration));
        let mut state = self.lock();
        let slot = match target {
            CoolDown::Client(c) => match state.client_cool.get_mut(c) {
                Some(slot) => slot,
                None => return,
            },
            CoolDown::Route(r) => state.route_cool.entry(r).or_insert(0),
            CoolDown::Pool => &mut state.pool_cool,
        };
        *slot = (*slot).max(until);
    }

    /// Lowers a budget's limit; false if not lower.
    pub fn lower_limit_now(&self, budget: BudgetId, limit: u32) -> bool {
        let mut state = self.lock();
        match state.windows.get_mut(budget) {
            Some(w) if limit < w.limit() => {
                w.set_limit(limit);
                true
            }
            _ => false,
        }
    }

    /// Takes a reloaded config's budgets and client count (see
    /// [`BudgetStore::reconfigure`]): windows keep their admissions and a learned lower
    /// limit stays while it is below the new configured one.
    pub fn reconfigure_now(&self, budgets: &[BudgetDef], clients: usize) {
        let mut state = self.lock();
        let state = &mut *state;
        for (id, def) in budgets.iter().enumerate() {
            match state.shared_by_lanes.get_mut(id) {
                Some(laned) => *laned = Share::applies_to(def.kind),
                None => state.shared_by_lanes.push(Share::applies_to(def.kind)),
            }
            match (state.windows.get_mut(id), state.configured.get_mut(id)) {
                (Some(window), Some(configured)) => {
                    let learned = window.limit() < *configured;
                    let limit = if learned {
                        window.limit().min(def.limit)
                    } else {
                        def.limit
                    };
                    window.set_limit(limit);
                    *configured = def.limit;
                }
                _ => {
                    state
                        .windows
                        .push(Window::new(def.limit, micros(def.window)));
                    state.configured.push(def.limit);
                }
            }
        }
        if state.client_cool.len() < clients {
            state.client_cool.resize(clients, 0);
        }
    }

    /// Usage of `budgets` and cool-downs of the first `clients` clients.
    pub fn snapshot_now(&self, budgets: &[BudgetId], clients: usize) -> Snapshot {
        let now = self.now();
        let state = self.lock();
        let usage = budgets
            .iter()
            .map(|&b| {
                state
                    .windows
                    .get(b)
                    .map(|w| (w.used(now), w.limit()))
                    .unwrap_or_default()
            })
            .collect();
        let cooling = (0..clients)
            .map(|c| {
                let until = state
                    .client_cool
                    .get(c)
                    .copied()
                    .unwrap_or(0)
                    .max(state.pool_cool);
                Duration::from_micros(until.saturating_sub(now))
            })
            .collect();
        Snapshot { usage, cooling }
    }
}

impl BudgetStore for MemoryStore {
    fn admit<'a>(
        &'a self,
        request: AdmitRequest<'a>,
    ) -> BoxFuture<'a, Result<Decision, BudgetError>> {
        let decision = self.admit_now(request);
        Box::pin(std::future::ready(Ok(decision)))
    }

    fn release(&self, reservation: Reservation) -> BoxFuture<'static, ()> {
        self.release_now(&reservation);
        Box::pin(std::future::ready(()))
    }

    fn cool_down(&self, target: CoolDown, duration: Duration) -> BoxFuture<'static, ()> {
        self.cool_down_now(target, duration);
        Box::pin(std::future::ready(()))
    }

    fn lower_limit(&self, budget: BudgetId, limit: u32) -> BoxFuture<'static, bool> {
        Box::pin(std::future::ready(self.lower_limit_now(budget, limit)))
    }

    fn snapshot(&self, budgets: Vec<BudgetId>, clients: usize) -> BoxFuture<'static, Snapshot> {
        Box::pin(std::future::ready(self.snapshot_now(&budgets, clients)))
    }

    fn reconfigure(&self, defs: &[BudgetDef], clients: &[String]) {
        self.reconfigure_now(defs, clients.len());
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn is_up(&self) -> bool {
        true
    }
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How many leading ids `a` and `b` have in common.
fn common_prefix_len(a: &[BudgetId], b: &[BudgetId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::prop;
    use proptest::strategy::Strategy;

    use super::*;
    use crate::budget::BudgetKind;

    fn defs() -> Vec<BudgetDef> {
        let def = |kind, name: &str, limit| BudgetDef {
            kind,
            name: name.into(),
            limit,
            window: Duration::from_secs(1),
        };
        vec![
            def(BudgetKind::Token, "token:a", 2),
            def(BudgetKind::Token, "token:b", 2),
            def(BudgetKind::Org, "org", 3),
        ]
    }

    fn candidates() -> Vec<Candidate> {
        vec![
            Candidate {
                client: 0,
                budgets: vec![2, 0],
            },
            Candidate {
                client: 1,
                budgets: vec![2, 1],
            },
        ]
    }

    fn ivr_route() -> RouteKey {
        crate::routes::RouteTable::genesys()
            .find_template(&http::Method::PUT, "/api/v2/architect/ivrs/{ivrId}")
            .unwrap()
    }

    fn admit(store: &MemoryStore, cands: &[Candidate], max_wait: Duration) -> Decision {
        store.admit_now(AdmitRequest {
            candidates: cands,
            route: Some(ivr_route()),
            max_wait,
            share: Share::WHOLE,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn spreads_over_clients_then_queues_under_the_org_cap() {
        let store = MemoryStore::new(&defs(), 2);
        let c = candidates();
        let mut chosen = Vec::new();
        for _ in 0..3 {
            match admit(&store, &c, Duration::ZERO) {
                Decision::Admitted(r) => {
                    assert_eq!(r.wait, Duration::ZERO);
                    chosen.push(c[r.candidate].client);
                }
                other => panic!("must admit at once: {other:?}"),
            }
        }
        assert_eq!(
            chosen,
            [0, 0, 1],
            "first candidate until its token budget is full"
        );
        // Org cap (3) binds now: the 4th waits a whole window.
        match admit(&store, &c, Duration::ZERO) {
            Decision::Refused(r) => {
                assert_eq!(r.wait, Some(Duration::from_secs(1)));
                assert_eq!(r.binding, Some(Binding::Budget(2)));
            }
            other => panic!("must refuse: {other:?}"),
        }
        let Decision::Admitted(r) = admit(&store, &c, Duration::from_secs(2)) else {
            panic!("must queue within max_wait");
        };
        assert_eq!(r.wait, Duration::from_secs(1));
        assert_eq!(store.snapshot_now(&[2], 0).usage[0], (3, 3));
        store.release_now(&r);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            store.snapshot_now(&[2], 0).usage[0],
            (0, 3),
            "released slot and past window both gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cool_downs_push_admission_back() {
        let store = MemoryStore::new(&defs(), 2);
        let c = candidates();
        store.cool_down_now(CoolDown::Client(0), Duration::from_secs(3));
        let Decision::Admitted(r) = admit(&store, &c, Duration::ZERO) else {
            panic!()
        };
        assert_eq!(c[r.candidate].client, 1, "the cooling client is avoided");
        assert_eq!(
            store.snapshot_now(&[], 1).cooling[0],
            Duration::from_secs(3)
        );
        store.cool_down_now(CoolDown::Route(ivr_route()), Duration::from_secs(2));
        match admit(&store, &c, Duration::ZERO) {
            Decision::Refused(r) => {
                assert_eq!(r.wait, Some(Duration::from_secs(2)));
                assert_eq!(r.binding, Some(Binding::RouteCoolDown));
            }
            other => panic!("route cool-down must hold it back: {other:?}"),
        }
        store.cool_down_now(CoolDown::Pool, Duration::from_secs(5));
        let Decision::Refused(r) = admit(&store, &c, Duration::ZERO) else {
            panic!()
        };
        assert_eq!(r.binding, Some(Binding::PoolCoolDown));
        assert!(store.lower_limit_now(0, 1));
        assert!(!store.lower_limit_now(0, 5), "only ever lowered");
        assert_eq!(store.snapshot_now(&[0], 0).usage[0].1, 1);
    }

    /// The choice as it was made before the shared budgets were searched once: every
    /// candidate's instant, the soonest, the first on ties.
    fn full_scan(
        state: &mut State,
        candidates: &[Candidate],
        now: Micros,
        route_cool: Micros,
        share: Share,
    ) -> Option<(Micros, usize, Option<Binding>)> {
        let mut best: Option<(Micros, usize, Option<Binding>)> = None;
        for (index, candidate) in candidates.iter().enumerate() {
            let Some((at, binding)) = state.earliest(candidate, now, route_cool, share) else {
                continue;
            };
            if best.as_ref().is_none_or(|(t, _, _)| at < *t) {
                best = Some((at, index, binding));
            }
        }
        best
    }

    /// `state` with windows rebuilt from their admissions (no remembered answers).
    fn rebuilt(state: &State) -> State {
        let mut fresh = state.clone();
        for w in &mut fresh.windows {
            let mut rebuilt = Window::new(w.limit(), w.length());
            for t in w.times() {
                rebuilt.reserve(t);
            }
            *w = rebuilt;
        }
        fresh
    }

    #[derive(Debug, Clone)]
    struct Step {
        dt: Micros,
        /// Clients asked, in order of preference (indices into the pool, repeats dropped).
        order: Vec<usize>,
        /// Shared budgets (bits over the shared ids) listed first by every candidate.
        shared: u8,
        /// Each client's own budgets (bits over its own ids), by client.
        own: Vec<u8>,
        /// Lists with no common shape: each candidate's budgets are these bits over all ids.
        arbitrary: Option<Vec<u16>>,
        cool: Option<(u8, Micros)>,
        route_cool: Micros,
        /// Give back this earlier reservation instead (index into the live ones).
        release: Option<usize>,
        /// The request's lane's share.
        share: Share,
    }

    const SHARED: usize = 3;
    const OWN: usize = 2;
    const CLIENTS: usize = 5;

    fn step() -> impl Strategy<Value = Step> {
        (
            0u64..15,
            prop::collection::vec(0..CLIENTS, 1..=CLIENTS),
            0u8..8,
            prop::collection::vec(0u8..4, CLIENTS),
            prop::option::weighted(0.2, prop::collection::vec(0u16..=u16::MAX, CLIENTS)),
            prop::option::weighted(0.2, (0u8..7, 0u64..80)),
            prop::sample::select(vec![0u64, 0, 0, 20, 60]),
            prop::option::weighted(0.1, 0usize..8),
            prop::sample::select(vec![1000u16, 1000, 900, 500, 334]),
        )
            .prop_map(
                |(dt, order, shared, own, arbitrary, cool, route_cool, release, share)| Step {
                    dt,
                    order,
                    shared,
                    own,
                    arbitrary,
                    cool,
                    route_cool,
                    release,
                    share: Share::from_permille(share),
                },
            )
    }

    /// A state of empty windows of `limits` (limit, length), the lanes' share applying to
    /// the budgets `laned` marks, no cool-down.
    fn fresh_state(limits: &[(u32, Micros)], laned: Vec<bool>) -> State {
        State {
            windows: limits.iter().map(|&(n, w)| Window::new(n, w)).collect(),
            configured: limits.iter().map(|&(n, _)| n).collect(),
            shared_by_lanes: laned,
            client_cool: vec![0; CLIENTS],
            route_cool: HashMap::new(),
            pool_cool: 0,
        }
    }

    fn bits(mask: u16, ids: impl Iterator<Item = BudgetId>) -> Vec<BudgetId> {
        ids.enumerate()
            .filter(|&(k, _)| k < 16 && mask & (1 << k) != 0)
            .map(|(_, id)| id)
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// On random windows (future reservations, gaps, releases, limit 0), cool-downs and
        /// candidate lists, the choice is the full scan's: same candidate, instant, binding.
        #[test]
        fn same_choice_as_the_full_scan(
            limits in prop::collection::vec(
                (prop::sample::select(vec![0u32, 1, 1, 2, 2, 3, 3]), 5u64..60),
                SHARED + CLIENTS * OWN,
            ),
            steps in prop::collection::vec(step(), 1..60),
            laned in prop::collection::vec(proptest::bool::weighted(0.8), SHARED + CLIENTS * OWN),
        ) {
            let mut state = fresh_state(&limits, laned);
            let own_ids = |c: usize| SHARED + c * OWN..SHARED + (c + 1) * OWN;
            let mut live: Vec<(Micros, Vec<BudgetId>)> = Vec::new();
            let mut now: Micros = 0;
            for step in steps {
                now += step.dt;
                if let Some(k) = step.release
                    && !live.is_empty()
                {
                    let (at, budgets) = live.remove(k % live.len());
                    for b in budgets {
                        state.windows[b].release(at);
                    }
                    continue;
                }
                match step.cool {
                    Some((c, d)) if usize::from(c) < CLIENTS => state.client_cool[usize::from(c)] = now + d,
                    Some((_, d)) if d > 60 => state.pool_cool = now + d,
                    _ => {}
                }
                let mut order = step.order.clone();
                order.dedup();
                let candidates: Vec<Candidate> = order
                    .iter()
                    .enumerate()
                    .map(|(i, &client)| {
                        let budgets = match &step.arbitrary {
                            Some(masks) => bits(masks[i], 0..limits.len()),
                            None => {
                                let mut ids = bits(step.shared.into(), 0..SHARED);
                                ids.extend(bits(step.own[client].into(), own_ids(client)));
                                ids
                            }
                        };
                        Candidate { client, budgets }
                    })
                    .collect();
                let route_cool = now + step.route_cool;
                let share = step.share;
                let expected = full_scan(&mut rebuilt(&state), &candidates, now, route_cool, share);
                let chosen = state.soonest(&candidates, now, route_cool, share).and_then(|index| {
                    let (at, binding) = state.earliest(&candidates[index], now, route_cool, share)?;
                    Some((at, index, binding))
                });
                proptest::prop_assert_eq!(chosen, expected, "candidates {:?} at {}", candidates, now);
                if let Some((at, index, _)) = chosen {
                    let budgets = candidates[index].budgets.clone();
                    for &b in &budgets {
                        state.windows[b].reserve(at);
                    }
                    live.push((at, budgets));
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The lane rule on the store's own decisions (random candidates, shares, queued
        /// reservations, releases, cool-downs): in every window of every budget, requests
        /// of a lane whose share fills `k` of it never hold more than `k`, whatever the lanes
        /// above them took; a caller's quota (no share applies) never holds more than its
        /// limit.
        #[test]
        fn no_lane_fills_more_than_its_share(
            limits in prop::collection::vec(
                (prop::sample::select(vec![1u32, 2, 3, 4, 6, 10]), 5u64..60),
                SHARED + CLIENTS * OWN,
            ),
            steps in prop::collection::vec(step(), 1..80),
            laned in prop::collection::vec(proptest::bool::weighted(0.8), SHARED + CLIENTS * OWN),
        ) {
            let mut state = fresh_state(&limits, laned.clone());
            let own_ids = |c: usize| SHARED + c * OWN..SHARED + (c + 1) * OWN;
            // Per budget: (instant, what the request could fill of it) of each admission.
            let mut admitted: Vec<Vec<(Micros, u32)>> = vec![Vec::new(); limits.len()];
            let mut live: Vec<(Micros, Vec<BudgetId>)> = Vec::new();
            let mut now: Micros = 0;
            for step in steps {
                now += step.dt;
                if let Some(k) = step.release
                    && !live.is_empty()
                {
                    let (at, budgets) = live.remove(k % live.len());
                    for b in budgets {
                        state.windows[b].release(at);
                        let i = admitted[b].iter().position(|&(t, _)| t == at).expect("admitted");
                        admitted[b].remove(i);
                    }
                    continue;
                }
                if let Some((c, d)) = step.cool && usize::from(c) < CLIENTS {
                    state.client_cool[usize::from(c)] = now + d;
                }
                let mut order = step.order.clone();
                order.dedup();
                let candidates: Vec<Candidate> = order
                    .iter()
                    .map(|&client| {
                        let mut budgets = bits(step.shared.into(), 0..SHARED);
                        budgets.extend(bits(step.own[client].into(), own_ids(client)));
                        Candidate { client, budgets }
                    })
                    .collect();
                let share = step.share;
                let chosen = state.soonest(&candidates, now, 0, share).and_then(|index| {
                    let (at, _) = state.earliest(&candidates[index], now, 0, share)?;
                    Some((at, index))
                });
                if let Some((at, index)) = chosen {
                    let budgets = candidates[index].budgets.clone();
                    for &b in &budgets {
                        state.windows[b].reserve(at);
                        let fill = if laned[b] { share.of(limits[b].0) } else { limits[b].0 };
                        admitted[b].push((at, fill));
                    }
                    live.push((at, budgets));
                }
            }
            for (b, admissions) in admitted.iter().enumerate() {
                if let Some(overrun) = super::super::window::share_overrun(admissions, limits[b].1) {
                    proptest::prop_assert!(false, "budget {}: {}", b, overrun);
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recorded_admissions_count_against_the_local_share() {
        let store = MemoryStore::new(&defs(), 2);
        // Two admissions the shared store made for client 0: its local token budget (2) is
        // full, so a fallback decision moves to client 1.
        store.record(&[2, 0], Duration::ZERO);
        store.record(&[2, 0], Duration::ZERO);
        let c = candidates();
        let Decision::Admitted(r) = admit(&store, &c, Duration::ZERO) else {
            panic!()
        };
        assert_eq!(c[r.candidate].client, 1);
        assert_eq!(store.snapshot_now(&[2], 0).usage[0], (3, 3));
    }
}
