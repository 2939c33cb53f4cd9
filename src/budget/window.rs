//! Sliding-window budgets: "at most `limit` admissions in any window of `length`".
//!
//! Pure arithmetic over instants given as microseconds by the caller: no I/O, no clock, no
//! locks. `memory.rs` adds a lock and a clock; the Redis store runs the same rule in Lua.
//!
//! Admissions are kept sorted. With `limit = N` and length `W`, a set of admissions is
//! valid when every window `(s - W, s]` holds at most `N` of them, i.e. any `N + 1`
//! consecutive admissions span at least `W`. One more admission at `t` breaks that exactly
//! when some `N` consecutive admissions `lo ..= hi` with `hi - lo < W` lie together with `t`
//! in a span shorter than `W`, i.e. when `hi - W < t < lo + W`. [`Window::earliest`] walks
//! those forbidden intervals in order, so reservations may sit in the future (queued
//! requests) and gaps between them are used, not wasted.
//!
//! A window remembers its last answer: `earliest(q) = r` means every instant of `[q, r)` is
//! forbidden and `r` is free, so any later question `t` in `[q, r]` has the answer `r` until
//! the admissions or the limit change. A pool whose budgets are spent asks the same windows
//! again and again with a `now` that barely moves; they answer without a walk.

use std::cell::Cell;
use std::collections::VecDeque;

/// Microseconds on the store's clock.
pub type Micros = u64;

/// One budget's admissions (past and reserved future ones) and its rule.
#[derive(Debug, Clone)]
pub struct Window {
    limit: u32,
    length: Micros,
    /// Sorted ascending; may hold future instants (reservations of queued requests).
    times: VecDeque<Micros>,
    /// The last walk's limit, question and answer `(n, q, r)`: `earliest_within(t, n) = r`
    /// for every `t` in `[q, r]`. Forgotten whenever `times` or `limit` change.
    last_answer: Cell<Option<(u32, Micros, Micros)>>,
}

impl Window {
    /// A budget of `limit` admissions per `length` microseconds. A `limit` of 0 admits nothing.
    pub fn new(limit: u32, length: Micros) -> Self {
        Self {
            limit,
            length: length.max(1),
            times: VecDeque::new(),
            last_answer: Cell::new(None),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn length(&self) -> Micros {
        self.length
    }

    /// Changes the limit (a learned lower limit, or a reload). Reservations already made stay.
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit;
        self.last_answer.set(None);
    }

    /// Forgets admissions that can share no window with an instant `>= now`.
    pub fn prune(&mut self, now: Micros) {
        while self
            .times
            .front()
            .is_some_and(|&t| t.saturating_add(self.length) <= now)
        {
            self.times.pop_front();
            self.last_answer.set(None);
        }
    }

    /// Earliest instant `>= from` at which one more admission keeps every window within
    /// the limit. `None` when the limit is 0 (never).
    pub fn earliest(&self, from: Micros) -> Option<Micros> {
        self.earliest_within(from, self.limit)
    }

    /// Earliest instant `>= from` at which one more admission keeps every window that holds
    /// it within `limit` (a lane's share of this budget: at most [`Window::limit`]). Every
    /// admission counts, whoever made it: a request under a smaller limit cannot take the
    /// room above it. `None` when `limit` is 0 (never).
    pub fn earliest_within(&self, from: Micros, limit: u32) -> Option<Micros> {
        let limit = limit.min(self.limit);
        let n = limit as usize;
        if n == 0 {
            return None;
        }
        if self.times.len() < n {
            return Some(from);
        }
        if let Some((memo_limit, asked, answer)) = self.last_answer.get()
            && memo_limit == limit
            && (asked..=answer).contains(&from)
        {
            return Some(answer);
        }
        let t = self.walk(from, n);
        self.last_answer.set(Some((limit, from, t)));
        Some(t)
    }

    /// The walk over forbidden intervals behind [`Window::earliest`], for a window holding
    /// at least `n = limit > 0` admissions.
    fn walk(&self, from: Micros, n: usize) -> Micros {
        let w = self.length;
        let mut t = from;
        // The first group whose forbidden interval can still reach past `from`: lo + W > from.
        // Of the groups that lie wholly at or before `from`, only the last can move `t`: an
        // earlier one has a lower `lo` (so a forbidden interval ending no later), and when
        // the last spans W or more, its `lo` and every earlier one are at or before
        // `from - W`. So the walk starts there: with a share below the limit (n smaller than
        // the window holds), it would otherwise step through every past group, one by one.
        let past = self.times.partition_point(|&x| x <= from);
        let start = self
            .times
            .partition_point(|&lo| lo.saturating_add(w) <= from)
            .max(past.saturating_sub(n));
        for i in start..=(self.times.len() - n) {
            let lo = self.times[i];
            let hi = self.times[i + n - 1];
            if hi >= t.saturating_add(w) {
                // This and every later interval start at or after `t`: `t` is free.
                break;
            }
            if lo.saturating_add(w) <= t || hi - lo >= w {
                continue;
            }
            t = lo + w;
        }
        t
    }

    /// Forgets every admission (the limit stays).
    pub fn clear(&mut self) {
        self.times.clear();
        self.last_answer.set(None);
    }

    /// Records an admission at `at` (which [`Window::earliest`] allowed).
    pub fn reserve(&mut self, at: Micros) {
        self.last_answer.set(None);
        // Admissions mostly come in time order: appending needs no search.
        if self.times.back().is_none_or(|&last| last <= at) {
            self.times.push_back(at);
            return;
        }
        let i = self.times.partition_point(|&t| t <= at);
        self.times.insert(i, at);
    }

    /// Gives back one admission at `at`; false when there was none.
    pub fn release(&mut self, at: Micros) -> bool {
        let i = self.times.partition_point(|&t| t < at);
        if self.times.get(i) == Some(&at) {
            self.times.remove(i);
            self.last_answer.set(None);
            true
        } else {
            false
        }
    }

    /// Admissions in the window ending at `now`: `(now - W, now]`.
    pub fn used(&self, now: Micros) -> u32 {
        let from = self
            .times
            .partition_point(|&t| t.saturating_add(self.length) <= now);
        let to = self.times.partition_point(|&t| t <= now);
        u32::try_from(to - from).unwrap_or(u32::MAX)
    }

    /// Every admission, sorted (for tests and diagnostics).
    pub fn times(&self) -> impl Iterator<Item = Micros> + '_ {
        self.times.iter().copied()
    }
}

/// A window asked under a limit of its own ([`Window::earliest_within`]).
pub type Within<'a> = (&'a Window, u32);

/// The earliest instant `>= from` that every window in `windows` admits (each within its
/// limit), and the index of the window that set it (the binding one; `None` when `from`
/// itself was free). `None` overall when some window never admits (limit 0).
pub fn joint_earliest<'a>(
    windows: impl Iterator<Item = Within<'a>> + Clone,
    from: Micros,
) -> Option<(Micros, Option<usize>)> {
    let mut t = from;
    let mut binding = None;
    loop {
        let mut moved = false;
        for (k, (window, limit)) in windows.clone().enumerate() {
            let e = window.earliest_within(t, limit)?;
            if e > t {
                t = e;
                binding = Some(k);
                moved = true;
            }
        }
        if !moved {
            return Some((t, binding));
        }
    }
}

/// [`joint_earliest`]'s instant when it lies before `bound`; `None` when it does not, or
/// when some window never admits. Gives up as soon as the search reaches `bound`, so a
/// caller looking for an instant sooner than one it has can skip a hopeless search cheaply.
pub fn joint_earliest_before<'a>(
    windows: impl Iterator<Item = Within<'a>> + Clone,
    from: Micros,
    bound: Micros,
) -> Option<Micros> {
    let mut t = from;
    loop {
        if t >= bound {
            return None;
        }
        let mut moved = false;
        for (window, limit) in windows.clone() {
            let e = window.earliest_within(t, limit)?;
            if e > t {
                if e >= bound {
                    return None;
                }
                t = e;
                moved = true;
            }
        }
        if !moved {
            return Some(t);
        }
    }
}

/// The lane rule checked after the fact, for tests and diagnostics: `admissions` are one
/// budget's `(instant, limit it was admitted within)`; the answer names a window of
/// `length` where more than `k` of those admitted within `k` or less lie together (`None`
/// when there is none). Admissions within the whole limit included, this also finds a
/// window over the limit.
pub fn share_overrun(admissions: &[(Micros, u32)], length: Micros) -> Option<String> {
    let mut sorted = admissions.to_vec();
    sorted.sort_unstable();
    // The fullest windows end at an admission: `(end - length, end]`.
    for &(end, _) in &sorted {
        let mut within: Vec<u32> = sorted
            .iter()
            .filter(|&&(t, _)| t <= end && t.saturating_add(length) > end)
            .map(|&(_, k)| k)
            .collect();
        within.sort_unstable();
        // The i-th smallest limit (0-based) is one of i + 1 admissions within it or less.
        if let Some((i, &k)) = within
            .iter()
            .enumerate()
            .find(|&(i, &k)| i + 1 > k as usize)
        {
            return Some(format!(
                "{} admissions within a limit of {k} or less share the window ending at {end} \
                 (length {length}): {sorted:?}",
                i + 1
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
