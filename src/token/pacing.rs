//! The re-mint rule of one client: at most one grant per interval, a sit-out when a fresh
//! token is refused, and failure with backoff when fresh tokens are refused again and again.
//!
//! Pure bookkeeping: every instant is passed in and nothing here sleeps, locks or logs.
//! [`TokenSlot`](super::TokenSlot) holds one `Pacing` behind a lock; its refresher waits for
//! [`Pacing::earliest_grant`] before every grant, whoever asked for it.

use std::time::Duration;

use tokio::time::Instant;

/// Fresh tokens refused in a row (no successful use in between) that mark a client failed.
pub const FAIL_AFTER: u32 = 3;

/// Longest pause between grants of a failed client.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// When a client may be granted a token next, and how its fresh tokens have fared.
#[derive(Debug)]
pub struct Pacing {
    /// Shortest time between two grants (`genesys.token_remint_interval`).
    interval: Duration,
    /// When the last grant was started (any result).
    last_grant: Option<Instant>,
    /// No grant before this: the rest of an interval after a fresh refusal, or a backoff.
    not_before: Option<Instant>,
    /// Highest token generation the upstream refused (each token counts once).
    refused: u64,
    /// Fresh tokens refused since the last successful use.
    streak: u32,
}

/// What one upstream 401 means for the client whose token it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// That token was already replaced or already reported: nothing changes.
    Superseded,
    /// The token was older than the interval: drop it and re-mint at `remint_at` (now,
    /// unless the last grant is less than an interval old).
    Stale { remint_at: Instant },
    /// The token was younger than the interval: a real rejection. The client sits out
    /// until `remint_at` (the end of that interval), then re-mints.
    Fresh { remint_at: Instant, streak: u32 },
    /// The [`FAIL_AFTER`]th (or later) fresh token refused in a row: the client is failed
    /// and re-mints at `remint_at`, after an exponential backoff.
    Failed { remint_at: Instant, streak: u32 },
}

// === impl Pacing ===

impl Pacing {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_grant: None,
            not_before: None,
            refused: 0,
            streak: 0,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// The earliest instant the next grant may start; `None`: at once.
    pub fn earliest_grant(&self) -> Option<Instant> {
        let after_last = self.last_grant.map(|at| at + self.interval);
        after_last.max(self.not_before)
    }

    /// Records that a grant starts at `now`.
    pub fn granting(&mut self, now: Instant) {
        self.last_grant = Some(now);
    }

    /// Fresh tokens refused in a row.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Whether fresh tokens were refused often enough to call the client failed.
    pub fn is_failed(&self) -> bool {
        self.streak >= FAIL_AFTER
    }

    /// A token was used successfully: the streak of refusals ends. Returns the streak
    /// that ended (0 when there was none).
    pub fn accepted(&mut self) -> u32 {
        std::mem::take(&mut self.streak)
    }

    /// The upstream answered 401 at `now` to the token of `generation` minted at
    /// `minted_at`; `latest` is the generation of the client's last grant. `jitter` in
    /// `[0.5, 1.0)` scales a failed client's backoff.
    pub fn refused(
        &mut self,
        generation: u64,
        minted_at: Instant,
        latest: u64,
        now: Instant,
        jitter: f64,
    ) -> Verdict {
        if generation <= self.refused || generation < latest {
            return Verdict::Superseded;
        }
        self.refused = generation;
        if now >= minted_at + self.interval {
            let remint_at = self.earliest_grant().map_or(now, |at| at.max(now));
            return Verdict::Stale { remint_at };
        }
        self.streak = self.streak.saturating_add(1);
        let rest_of_interval = minted_at + self.interval;
        if self.streak < FAIL_AFTER {
            self.not_before = Some(rest_of_interval);
            return Verdict::Fresh {
                remint_at: rest_of_interval,
                streak: self.streak,
            };
        }
        // 2, 4, 8 … intervals (jittered in their upper half), capped.
        let doublings = (self.streak - FAIL_AFTER + 1).min(16);
        let backoff = self
            .interval
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX)
            .mul_f64(jitter.clamp(0.5, 1.0));
        let remint_at = rest_of_interval.max(now + backoff);
        self.not_before = Some(remint_at);
        Verdict::Failed {
            remint_at,
            streak: self.streak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn at_most_one_grant_per_interval() {
        let t0 = Instant::now();
        let mut p = Pacing::new(SEC);
        assert_eq!(p.earliest_grant(), None, "the first grant goes at once");
        p.granting(t0);
        assert_eq!(p.earliest_grant(), Some(t0 + SEC));
        // A stale token refused 100 ms after that grant: re-minted only once the interval
        // since the last grant is over.
        let v = p.refused(1, t0 - 10 * SEC, 1, t0 + SEC / 10, 1.0);
        assert_eq!(
            v,
            Verdict::Stale {
                remint_at: t0 + SEC
            }
        );
        // Later 401s on the same token change nothing.
        assert_eq!(
            p.refused(1, t0 - 10 * SEC, 1, t0 + SEC / 5, 1.0),
            Verdict::Superseded
        );
        // Nor do 401s on a token already replaced.
        assert_eq!(p.refused(0, t0, 2, t0 + SEC, 1.0), Verdict::Superseded);
    }

    #[test]
    fn fresh_refusals_sit_out_then_fail_with_backoff() {
        let t0 = Instant::now();
        let mut p = Pacing::new(SEC);
        p.granting(t0);
        let minted = t0 + SEC / 10;
        // Refused 200 ms after it was minted: sit out the rest of the interval.
        let v = p.refused(1, minted, 1, minted + SEC / 5, 1.0);
        assert_eq!(
            v,
            Verdict::Fresh {
                remint_at: minted + SEC,
                streak: 1
            }
        );
        assert_eq!(p.earliest_grant(), Some(minted + SEC));
        assert!(!p.is_failed());

        let t1 = minted + SEC;
        p.granting(t1);
        let v = p.refused(2, t1, 2, t1 + SEC / 10, 1.0);
        assert_eq!(
            v,
            Verdict::Fresh {
                remint_at: t1 + SEC,
                streak: 2
            }
        );

        let t2 = t1 + SEC;
        p.granting(t2);
        let v = p.refused(3, t2, 3, t2, 1.0);
        assert_eq!(
            v,
            Verdict::Failed {
                remint_at: t2 + 2 * SEC,
                streak: 3
            }
        );
        assert!(p.is_failed());
        assert_eq!(p.earliest_grant(), Some(t2 + 2 * SEC));

        let t3 = t2 + 2 * SEC;
        p.granting(t3);
        let Verdict::Failed { remint_at, streak } = p.refused(4, t3, 4, t3, 0.5) else {
            panic!("still failed");
        };
        assert_eq!(streak, 4);
        assert_eq!(remint_at, t3 + 2 * SEC, "4 intervals, jittered by half");

        // A token that works ends the streak; the next fresh refusal sits out again.
        assert_eq!(p.accepted(), 4);
        assert!(!p.is_failed());
        let t4 = t3 + 5 * SEC;
        p.granting(t4);
        assert!(matches!(
            p.refused(5, t4, 5, t4, 1.0),
            Verdict::Fresh { streak: 1, .. }
        ));
    }

    #[test]
    fn backoff_is_capped() {
        let t0 = Instant::now();
        let mut p = Pacing::new(SEC);
        for generation in 1..=40 {
            p.refused(generation, t0, generation, t0, 1.0);
        }
        assert_eq!(p.earliest_grant(), Some(t0 + BACKOFF_MAX));
    }
}
