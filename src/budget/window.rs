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
}

impl Window {
    /// A budget of `limit` admissions per `length` microseconds. A `limit` of 0 admits nothing.
    pub fn new(limit: u32, length: Micros) -> Self {
        Self {
            limit,
            length: length.max(1),
            times: VecDeque::new(),
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
    }

    /// Forgets admissions that can share no window with an instant `>= now`.
    pub fn prune(&mut self, now: Micros) {
        while self
            .times
            .front()
            .is_some_and(|&t| t.saturating_add(self.length) <= now)
        {
            self.times.pop_front();
        }
    }

    /// Earliest instant `>= from` at which one more admission keeps every window within
    /// the limit. `None` when the limit is 0 (never).
    pub fn earliest(&self, from: Micros) -> Option<Micros> {
        let n = self.limit as usize;
        if n == 0 {
            return None;
        }
        if self.times.len() < n {
            return Some(from);
        }
        let w = self.length;
        let mut t = from;
        // The first group whose forbidden interval can still reach past `from`: lo + W > from.
        let start = self
            .times
            .partition_point(|&lo| lo.saturating_add(w) <= from);
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
        Some(t)
    }

    /// Forgets every admission (the limit stays).
    pub fn clear(&mut self) {
        self.times.clear();
    }

    /// Records an admission at `at` (which [`Window::earliest`] allowed).
    pub fn reserve(&mut self, at: Micros) {
        let i = self.times.partition_point(|&t| t <= at);
        self.times.insert(i, at);
    }

    /// Gives back one admission at `at`; false when there was none.
    pub fn release(&mut self, at: Micros) -> bool {
        let i = self.times.partition_point(|&t| t < at);
        if self.times.get(i) == Some(&at) {
            self.times.remove(i);
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

/// The earliest instant `>= from` that every window in `windows` admits, and the index of
/// the window that set it (the binding one; `None` when `from` itself was free).
/// `None` overall when some window never admits (limit 0).
pub fn joint_earliest<'a>(
    windows: impl Iterator<Item = &'a Window> + Clone,
    from: Micros,
) -> Option<(Micros, Option<usize>)> {
    let mut t = from;
    let mut binding = None;
    loop {
        let mut moved = false;
        for (k, window) in windows.clone().enumerate() {
            let e = window.earliest(t)?;
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

#[cfg(test)]
mod tests;
