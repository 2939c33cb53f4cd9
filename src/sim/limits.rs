//! Sliding windows over instants: "at most N in any window of length W".
//!
//! Pure arithmetic over instants passed in by the caller (no clock, no locks). The simulator
//! uses one [`SlidingWindow`] per limit for admissions and one per stats key for arrivals.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Instants of the events inside the last `window`, oldest first.
///
/// An event at `t` is inside the window ending at `now` while `now - t < window`.
/// Instants must be pushed in non-decreasing order.
#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow {
    window: Duration,
    events: VecDeque<Instant>,
}

/// Arrival counter that remembers the most events ever seen inside one window.
#[derive(Debug, Clone)]
pub(crate) struct ArrivalWindow {
    events: SlidingWindow,
    max_in_window: u64,
}

// === impl SlidingWindow ===

impl SlidingWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            events: VecDeque::new(),
        }
    }

    /// Drops the events that left the window ending at `now`.
    fn prune(&mut self, now: Instant) {
        while let Some(&oldest) = self.events.front() {
            if now.saturating_duration_since(oldest) >= self.window {
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Number of events inside the window ending at `now`.
    pub(crate) fn count(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.events.len()
    }

    /// Records an event at `now` and returns the count inside the window ending at `now`.
    pub(crate) fn push(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.events.push_back(now);
        self.events.len()
    }

    /// How long after `now` one more event fits under `limit`; zero if it fits now.
    pub(crate) fn wait_for_slot(&mut self, now: Instant, limit: u32) -> Duration {
        let count = self.count(now);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if count < limit {
            return Duration::ZERO;
        }
        if limit == 0 {
            // Nothing ever fits; answer a full window so callers back off.
            return self.window;
        }
        // With `count - limit + 1` events gone the count is `limit - 1`: the event at index
        // `count - limit` is the last one that has to leave.
        let binding = self.events[count - limit];
        (binding + self.window).saturating_duration_since(now)
    }

    pub(crate) fn clear(&mut self) {
        self.events.clear();
    }
}

// === impl ArrivalWindow ===

impl ArrivalWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            events: SlidingWindow::new(window),
            max_in_window: 0,
        }
    }

    /// Records an arrival at `now`; the count after it is the largest of the windows ending
    /// at `now`, so the running maximum over arrivals is the exact maximum over all windows.
    pub(crate) fn arrive(&mut self, now: Instant) {
        let count = u64::try_from(self.events.push(now)).unwrap_or(u64::MAX);
        self.max_in_window = self.max_in_window.max(count);
    }

    pub(crate) fn max_in_window(&self) -> u64 {
        self.max_in_window
    }

    pub(crate) fn reset(&mut self) {
        self.events.clear();
        self.max_in_window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn event_leaves_exactly_one_window_later() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(W);
        assert_eq!(w.push(t0), 1);
        assert_eq!(w.count(t0 + W - ms(1)), 1, "still inside just before W");
        assert_eq!(w.count(t0 + W), 0, "gone at exactly W");
    }

    #[test]
    fn wait_for_slot_is_zero_below_limit() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(W);
        w.push(t0);
        w.push(t0 + ms(100));
        assert_eq!(w.wait_for_slot(t0 + ms(200), 3), Duration::ZERO);
    }

    #[test]
    fn wait_for_slot_points_at_the_oldest_binding_event() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(W);
        w.push(t0);
        w.push(t0 + ms(1_000));
        w.push(t0 + ms(2_000));
        let now = t0 + ms(3_000);
        assert_eq!(w.wait_for_slot(now, 3), ms(7_000), "t0 frees at t0+W");
        assert_eq!(
            w.wait_for_slot(now, 2),
            ms(8_000),
            "second event must leave too"
        );
        assert_eq!(w.wait_for_slot(now, 1), ms(9_000));
    }

    #[test]
    fn wait_for_slot_with_zero_limit_never_frees_below_full_window() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(W);
        // limit 0: nothing fits; with no events the index would underflow if done naively.
        assert_eq!(w.wait_for_slot(t0, 0), W);
        w.push(t0);
        assert_eq!(w.wait_for_slot(t0 + ms(1), 0), W);
    }

    #[test]
    fn arrival_max_is_the_busiest_window() {
        let t0 = Instant::now();
        let mut a = ArrivalWindow::new(W);
        // 3 at the start, then 4 around the moment the first one leaves.
        for t in [0, 1_000, 2_000] {
            a.arrive(t0 + ms(t));
        }
        assert_eq!(a.max_in_window(), 3);
        for t in [9_000, 9_999, 10_000, 10_500] {
            a.arrive(t0 + ms(t));
        }
        // Window (0.5s, 10.5s] holds 1s, 2s, 9s, 9.999s, 10s, 10.5s = 6.
        assert_eq!(a.max_in_window(), 6);
        a.arrive(t0 + ms(30_000));
        assert_eq!(
            a.max_in_window(),
            6,
            "a later quiet arrival keeps the maximum"
        );
        a.reset();
        assert_eq!(a.max_in_window(), 0);
        a.arrive(t0 + ms(30_001));
        assert_eq!(a.max_in_window(), 1, "reset forgets earlier arrivals");
    }

    #[test]
    fn arrival_max_matches_brute_force() {
        let t0 = Instant::now();
        let window = ms(1_000);
        // Deterministic pseudo-random gaps in 0..400 ms.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut times = Vec::new();
        let mut t = 0u64;
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            t += seed % 400;
            times.push(t);
        }
        let mut a = ArrivalWindow::new(window);
        for &t in &times {
            a.arrive(t0 + ms(t));
        }
        let brute = times
            .iter()
            .map(|&end| {
                times
                    .iter()
                    .filter(|&&x| x <= end && end - x < 1_000)
                    .count()
            })
            .max()
            .unwrap();
        assert_eq!(a.max_in_window(), brute as u64);
        assert!(brute > 3, "the test data must actually exercise windows");
    }
}
