use proptest::prelude::*;

use super::*;

/// Every window `(s - W, s]` holds at most `n` of `times`: any `n + 1` consecutive span ≥ W.
fn naive_valid(times: &[Micros], n: u32, w: Micros) -> bool {
    let mut v = times.to_vec();
    v.sort_unstable();
    let n = n as usize;
    v.windows(n + 1).all(|g| g[n] - g[0] >= w)
}

fn with(times: &[Micros], t: Micros) -> Vec<Micros> {
    let mut v = times.to_vec();
    v.push(t);
    v
}

#[test]
fn fills_the_window_then_waits_for_the_oldest_to_leave() {
    let mut w = Window::new(3, 1000);
    for now in [0, 10, 20] {
        assert_eq!(w.earliest(now), Some(now));
        w.reserve(now);
    }
    assert_eq!(
        w.earliest(30),
        Some(1000),
        "4th waits until the 1st leaves the window"
    );
    w.reserve(1000);
    assert_eq!(w.earliest(30), Some(1010));
    assert_eq!(w.used(20), 3);
    assert_eq!(w.used(1000), 3, "(0, 1000] holds 10, 20, 1000");
}

#[test]
fn gaps_between_future_reservations_are_used() {
    // limit 1 per 10: a reservation at 30 (queued) leaves room at 0..=20.
    let mut w = Window::new(1, 10);
    w.reserve(30);
    assert_eq!(w.earliest(0), Some(0));
    assert_eq!(
        w.earliest(21),
        Some(40),
        "(21..40) would share a window with 30"
    );
    assert_eq!(w.earliest(20), Some(20));
    w.reserve(20);
    assert_eq!(w.earliest(0), Some(0));
    assert_eq!(w.earliest(11), Some(40));
}

#[test]
fn zero_limit_never_admits_and_release_frees() {
    let mut w = Window::new(0, 10);
    assert_eq!(w.earliest(5), None);
    w.set_limit(1);
    w.reserve(5);
    assert_eq!(w.earliest(5), Some(15));
    assert!(w.release(5));
    assert!(!w.release(5));
    assert_eq!(w.earliest(5), Some(5));
}

#[test]
fn prune_keeps_what_can_still_share_a_window() {
    let mut w = Window::new(2, 10);
    for t in [0, 5, 9] {
        w.reserve(t);
    }
    w.prune(10);
    assert_eq!(w.times().collect::<Vec<_>>(), [5, 9]);
    assert_eq!(w.earliest(10), Some(15));
}

/// A window asked under its own limit.
fn whole(w: &Window) -> Within<'_> {
    (w, w.limit())
}

#[test]
fn joint_earliest_names_the_binding_window() {
    let mut token = Window::new(1, 100);
    let org = Window::new(10, 100);
    token.reserve(0);
    let (t, binding) = joint_earliest([&token, &org].into_iter().map(whole), 1).unwrap();
    assert_eq!((t, binding), (100, Some(0)));
    let (t, binding) = joint_earliest([&org].into_iter().map(whole), 1).unwrap();
    assert_eq!((t, binding), (1, None));
}

#[derive(Debug, Clone)]
struct Op {
    dt: Micros,
    /// Which budgets the request needs (bit mask, at least one bit).
    mask: u8,
    /// Give back a pending reservation instead of asking (index into pending ones).
    release: Option<usize>,
}

fn op() -> impl Strategy<Value = Op> {
    (0u64..30, 1u8..16, prop::option::weighted(0.15, 0usize..8))
        .prop_map(|(dt, mask, release)| Op { dt, mask, release })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random arrivals over 1–4 budgets with random limits and lengths, multi-budget
    /// requests, and releases: no window of any budget ever holds more than its limit,
    /// and no request is admitted later than the earliest instant all its budgets allowed.
    #[test]
    fn never_over_budget_and_never_later_than_needed(
        budgets in prop::collection::vec((1u32..5, 1u64..60), 1..=4),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut windows: Vec<Window> = budgets.iter().map(|&(n, w)| Window::new(n, w)).collect();
        // Full history (never pruned) for the exact checks.
        let mut history: Vec<Vec<Micros>> = vec![Vec::new(); budgets.len()];
        let mut pending: Vec<(Micros, Vec<usize>)> = Vec::new();
        let mut now: Micros = 0;
        for op in ops {
            now += op.dt;
            pending.retain(|(t, _)| *t > now);
            if let Some(k) = op.release
                && !pending.is_empty()
            {
                let (t, used) = pending.remove(k % pending.len());
                for &b in &used {
                    prop_assert!(windows[b].release(t));
                    let i = history[b].iter().position(|&x| x == t).unwrap();
                    history[b].remove(i);
                }
                continue;
            }
            let used: Vec<usize> = (0..budgets.len()).filter(|b| op.mask & (1 << b) != 0).collect();
            if used.is_empty() {
                continue;
            }
            for w in &mut windows {
                w.prune(now);
            }
            let (t, _) = joint_earliest(used.iter().map(|&b| whole(&windows[b])), now).unwrap();
            prop_assert!(t >= now);
            let feasible = |c: Micros| {
                used.iter().all(|&b| naive_valid(&with(&history[b], c), budgets[b].0, budgets[b].1))
            };
            prop_assert!(feasible(t), "chosen instant {} must keep every window within its limit", t);
            // The feasible set's left edges are `now` and `x + W` for admissions x.
            let mut candidates = vec![now];
            for &b in &used {
                candidates.extend(history[b].iter().map(|x| x + budgets[b].1));
            }
            for c in candidates.into_iter().filter(|&c| c >= now && c < t) {
                prop_assert!(!feasible(c), "{} was free for budgets {:?} but the request got {}", c, used, t);
            }
            for &b in &used {
                windows[b].reserve(t);
                history[b].push(t);
            }
            if t > now {
                pending.push((t, used));
            }
        }
        for (b, &(n, w)) in budgets.iter().enumerate() {
            prop_assert!(naive_valid(&history[b], n, w), "budget {} overrun: {:?}", b, history[b]);
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    /// Asked from an instant, within a limit.
    Ask(Micros, u32),
    Reserve(Micros, u32),
    Release(usize),
    Prune(Micros),
    SetLimit(u32),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0u64..200, 0u32..5).prop_map(|(t, n)| Change::Ask(t, n)),
        3 => (0u64..200, 0u32..5).prop_map(|(t, n)| Change::Reserve(t, n)),
        1 => (0usize..16).prop_map(Change::Release),
        1 => (0u64..200).prop_map(Change::Prune),
        1 => (0u32..5).prop_map(Change::SetLimit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The remembered answer never differs from a fresh walk, whatever changed in between.
    #[test]
    fn remembered_answers_match_a_fresh_walk(
        limit in 0u32..5,
        length in 1u64..60,
        changes in prop::collection::vec(change(), 1..150),
    ) {
        let mut w = Window::new(limit, length);
        let mut pruned_to = 0;
        for change in changes {
            match change {
                Change::Ask(t, within) | Change::Reserve(t, within) => {
                    // Callers ask from the last prune's instant on (memory.rs prunes at `now`).
                    let t = t.max(pruned_to);
                    let fresh = Window {
                        last_answer: Cell::new(None),
                        ..w.clone()
                    };
                    prop_assert_eq!(
                        w.earliest_within(t, within),
                        fresh.earliest_within(t, within),
                        "asked from {} within {}", t, within
                    );
                    prop_assert_eq!(w.earliest(t), fresh.earliest(t), "asked from {}", t);
                    if let (Change::Reserve(..), Some(at)) = (&change, w.earliest_within(t, within)) {
                        w.reserve(at);
                    }
                }
                Change::Release(k) => {
                    let times: Vec<Micros> = w.times().collect();
                    if !times.is_empty() {
                        prop_assert!(w.release(times[k % times.len()]));
                    }
                }
                Change::Prune(t) => {
                    pruned_to = pruned_to.max(t);
                    w.prune(pruned_to);
                }
                Change::SetLimit(n) => w.set_limit(n),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The lane rule (SPEC §12): admissions asked within `k` never hold more than `k` of any
    /// window, whatever was admitted within larger limits around them, and the whole never
    /// exceeds the limit. So a lane's share leaves the room above it to the lanes above.
    #[test]
    fn admissions_within_a_share_never_fill_more_than_it(
        limit in 1u32..6,
        length in 1u64..60,
        asks in prop::collection::vec((0u64..8, 0u32..7, any::<bool>()), 1..120),
    ) {
        let mut w = Window::new(limit, length);
        let mut admitted: Vec<(Micros, u32)> = Vec::new();
        let mut now = 0;
        for (dt, within, queue) in asks {
            now += dt;
            let Some(at) = w.earliest_within(now, within) else {
                prop_assert_eq!(within.min(limit), 0);
                continue;
            };
            if at > now && !queue {
                continue;
            }
            w.reserve(at);
            admitted.push((at, within.min(limit)));
        }
        if let Some(overrun) = share_overrun(&admitted, length) {
            prop_assert!(false, "{}", overrun);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `earliest_within(from, k)` against brute force, on windows holding far more than `k`
    /// (every lane's admissions, queued ones included): the first instant from `from` on
    /// such that every window holding it has fewer than `k` admissions, `None` for `k = 0`.
    #[test]
    fn earliest_within_a_share_is_the_first_free_instant(
        limit in 1u32..12,
        length in 1u64..40,
        times in prop::collection::vec(0u64..160, 0..40),
        within in 0u32..12,
        from in 0u64..160,
    ) {
        let mut w = Window::new(limit, length);
        for &t in &times {
            w.reserve(t);
        }
        w.prune(from);
        let k = within.min(limit);
        let free = |c: Micros| {
            (c..c + length).all(|s| {
                let held = times.iter().filter(|&&x| x + length > s && x <= s).count();
                held < k as usize
            })
        };
        let expected = (k > 0).then(|| (from..).find(|&c| free(c)).expect("free past the last"));
        prop_assert_eq!(w.earliest_within(from, within), expected, "times {:?}", times);
    }
}
