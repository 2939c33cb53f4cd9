//! One attempt budget per request, and what each attempt's outcome means for the next:
//! pass the answer on, try again (at once, or after a backoff), or fail.
//!
//! An attempt is one admission and, when admitted, one upstream exchange. Retried: a 429
//! (elsewhere, any method: it was not processed), a 401 (after the token is dropped), a
//! 502/503/504 or a lost connection (idempotent methods only, or any method when the
//! request never reached the upstream), and an admission whose client was lost or whose
//! budgets a reload changed while it waited. A 401 on a token minted before the request
//! began, and a client losing its token while the request waited for it, are free, each
//! once per client: every token dying at once costs a caller nothing, and the loop stays
//! finite (at most `MAX_ATTEMPTS` + two per client).

use std::time::Duration;

use http::Method;
use rand::Rng;
use tokio::time::Instant;

use crate::admission::Refusal;
use crate::upstream::OutcomeKind;

/// Attempts per request at most.
pub(super) const MAX_ATTEMPTS: u32 = 4;

/// The attempts of one request.
#[derive(Debug)]
pub(super) struct Attempts {
    idempotent: bool,
    started: Instant,
    deadline: Instant,
    spent: u32,
    /// Clients whose token, minted before the request began, the upstream refused.
    stale_refused: Vec<usize>,
    /// Clients that lost their token while the request waited for them.
    lost: Vec<usize>,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Answer the caller from this outcome: the upstream's answer, or the failure.
    Done,
    /// Try again: at once, or after [`Attempts::back_off`].
    Retry { back_off: bool },
}

impl Attempts {
    pub(super) fn new(method: &Method, started: Instant, deadline: Instant) -> Self {
        Self {
            idempotent: matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            ),
            started,
            deadline,
            spent: 0,
            stale_refused: Vec::new(),
            lost: Vec::new(),
        }
    }

    /// Spends one attempt; `false` when none is left.
    pub(super) fn begin(&mut self) -> bool {
        if self.spent >= MAX_ATTEMPTS {
            return false;
        }
        self.spent += 1;
        true
    }

    fn last(&self) -> bool {
        self.spent >= MAX_ATTEMPTS
    }

    /// What `outcome` of the attempt on `client`, with a token minted at `minted_at`,
    /// means for the next one.
    pub(super) fn judge(
        &mut self,
        outcome: OutcomeKind,
        client: usize,
        minted_at: Instant,
    ) -> Verdict {
        let time_left = Instant::now() < self.deadline;
        let retry = |allowed: bool, back_off: bool| {
            if allowed {
                Verdict::Retry { back_off }
            } else {
                Verdict::Done
            }
        };
        match outcome {
            OutcomeKind::Answered | OutcomeKind::TimedOut => Verdict::Done,
            OutcomeKind::RateLimited => retry(!self.last() && time_left, false),
            OutcomeKind::Unauthorized => {
                // A token minted before this request began says nothing about whether the
                // pool can serve it: free, once per client.
                if minted_at < self.started && !self.stale_refused.contains(&client) {
                    self.stale_refused.push(client);
                    self.spent -= 1;
                    return Verdict::Retry { back_off: false };
                }
                retry(!self.last() && time_left, false)
            }
            OutcomeKind::Transient => retry(!self.last() && self.idempotent, true),
            OutcomeKind::Unreached => retry(!self.last(), true),
            OutcomeKind::Failed => retry(!self.last() && self.idempotent, true),
        }
    }

    /// What an admission's `refusal` means for the next attempt. A client that lost its
    /// token while the request waited for it costs nothing, once per client (as a stale
    /// token refused does); budgets a reload changed cost an attempt; any other refusal is
    /// the answer.
    pub(super) fn refused(&mut self, refusal: &Refusal) -> Verdict {
        match *refusal {
            Refusal::ClientLost { client, .. } if !self.lost.contains(&client) => {
                self.lost.push(client);
                self.spent -= 1;
                Verdict::Retry { back_off: false }
            }
            Refusal::ClientLost { .. } | Refusal::Reconfigured { .. } => {
                Verdict::Retry { back_off: false }
            }
            _ => Verdict::Done,
        }
    }

    /// Sleeps the backoff after the current attempt, but not past the deadline.
    pub(super) async fn back_off(&self) {
        let until = (Instant::now() + backoff(self.spent)).min(self.deadline);
        tokio::time::sleep_until(until).await;
    }
}

/// Capped exponential backoff with jitter for the `attempt`-th retry (1-based): half to all
/// of 50 ms × 2^(attempt − 1), at most 1 s.
fn backoff(attempt: u32) -> Duration {
    backoff_base(attempt).mul_f64(rand::rng().random_range(0.5..1.0))
}

fn backoff_base(attempt: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutcomeKind::*;

    /// Runs the attempt loop of one request over scripted outcomes (client, token minted
    /// at) on paused time: how many attempts were made, the last verdict, and the time
    /// the loop took.
    async fn run(
        method: Method,
        timeout: Duration,
        script: &[(OutcomeKind, usize, bool)],
    ) -> (usize, Verdict, Duration) {
        let started = Instant::now();
        let before = started - Duration::from_secs(1);
        let mut attempts = Attempts::new(&method, started, started + timeout);
        let (mut made, mut last) = (0, Verdict::Retry { back_off: false });
        let mut script = script.iter().copied().cycle();
        while attempts.begin() {
            let (outcome, client, stale) = script.next().expect("a cycle never ends");
            made += 1;
            last = attempts.judge(outcome, client, if stale { before } else { started });
            match last {
                Verdict::Done => break,
                Verdict::Retry { back_off } if back_off => attempts.back_off().await,
                Verdict::Retry { .. } => {}
            }
        }
        (made, last, started.elapsed())
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_doubles_from_50ms_to_at_most_a_second_with_jitter_of_half() {
        let bases = [50, 100, 200, 400, 800, 1000, 1000, 1000];
        for (attempt, base) in (1..).zip(bases) {
            let base = Duration::from_millis(base);
            assert_eq!(backoff_base(attempt), base, "attempt {attempt}");
            for _ in 0..50 {
                let d = backoff(attempt);
                assert!(
                    d >= base / 2 && d < base,
                    "attempt {attempt}: {d:?} ∉ [{:?}, {base:?})",
                    base / 2
                );
            }
        }
        assert_eq!(backoff_base(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ends_the_loop_at_once() {
        assert_eq!(
            run(Method::POST, MINUTE, &[(Answered, 0, false)]).await,
            (1, Verdict::Done, Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_of_idempotent_requests_back_off_until_attempts_run_out() {
        let (made, last, took) = run(Method::GET, MINUTE, &[(Transient, 0, false)]).await;
        assert_eq!((made, last), (MAX_ATTEMPTS as usize, Verdict::Done));
        // Three backoffs of 50, 100 and 200 ms bases, each half to all of its base.
        let (least, most) = (Duration::from_millis(175), Duration::from_millis(350));
        assert!(took >= least && took < most, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_requests_are_retried_only_when_they_surely_never_arrived() {
        assert_eq!(
            run(Method::POST, MINUTE, &[(Transient, 0, false)]).await.0,
            1
        );
        assert_eq!(run(Method::POST, MINUTE, &[(Failed, 0, false)]).await.0, 1);
        let unreached = run(Method::POST, MINUTE, &[(Unreached, 0, false)]).await;
        assert_eq!(unreached.0, MAX_ATTEMPTS as usize);
        assert_eq!(
            run(Method::PUT, MINUTE, &[(Failed, 0, false)]).await.0,
            MAX_ATTEMPTS as usize
        );
        let (made, last, _) = run(
            Method::POST,
            MINUTE,
            &[(Unreached, 0, false), (Answered, 1, false)],
        )
        .await;
        assert_eq!((made, last), (2, Verdict::Done));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passed_ends_the_loop() {
        assert_eq!(run(Method::GET, MINUTE, &[(TimedOut, 0, false)]).await.0, 1);
        // 429s retry at once while time is left; the backoff never sleeps past the deadline.
        let limited = run(Method::POST, MINUTE, &[(RateLimited, 0, false)]).await;
        assert_eq!(
            limited,
            (MAX_ATTEMPTS as usize, Verdict::Done, Duration::ZERO)
        );
        let short = Duration::from_millis(20);
        let (made, _, took) = run(
            Method::GET,
            short,
            &[(Transient, 0, false), (RateLimited, 1, false)],
        )
        .await;
        assert!(took <= short, "slept past the deadline: {took:?}");
        assert!(
            made < MAX_ATTEMPTS as usize,
            "a 429 at the deadline is answered: {made} attempts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_token_refused_is_free_once_per_client() {
        // Every client's token, minted before the request, refused once: free.
        let script: Vec<_> = (0..10)
            .map(|c| (Unauthorized, c, true))
            .chain([(Answered, 0, false)])
            .collect();
        let (made, last, _) = run(Method::POST, MINUTE, &script).await;
        assert_eq!((made, last), (11, Verdict::Done));
        // The same client again: its second refusal costs an attempt, as a fresh token's does.
        let (made, last, _) = run(Method::POST, MINUTE, &[(Unauthorized, 7, true)]).await;
        assert_eq!((made, last), (1 + MAX_ATTEMPTS as usize, Verdict::Done));
        let (made, _, _) = run(Method::POST, MINUTE, &[(Unauthorized, 7, false)]).await;
        assert_eq!(made, MAX_ATTEMPTS as usize);
        // Finite however many clients refuse: MAX_ATTEMPTS plus one per client.
        let all: Vec<_> = (0..50).map(|c| (Unauthorized, c, true)).collect();
        assert_eq!(
            run(Method::GET, MINUTE, &all).await.0,
            50 + MAX_ATTEMPTS as usize
        );
    }

    #[test]
    fn a_client_lost_while_waiting_is_free_once_per_client_and_a_reload_costs_an_attempt() {
        let now = Instant::now();
        let mut attempts = Attempts::new(&Method::GET, now, now + MINUTE);
        let lost = |client| Refusal::ClientLost {
            client,
            waited: Duration::ZERO,
        };
        let refusals = [lost(0), lost(1), lost(0), lost(2), lost(1), lost(1)];
        for (made, refusal) in refusals.iter().enumerate() {
            assert!(attempts.begin(), "attempt {made} refused");
            assert_eq!(
                attempts.refused(refusal),
                Verdict::Retry { back_off: false }
            );
        }
        // Three free (clients 0, 1, 2), three paid: one attempt left.
        assert!(attempts.begin());
        let reconfigured = Refusal::Reconfigured {
            waited: Duration::ZERO,
        };
        assert_eq!(
            attempts.refused(&reconfigured),
            Verdict::Retry { back_off: false }
        );
        assert!(
            !attempts.begin(),
            "the reload's retry spent the last attempt"
        );
        let mut fresh = Attempts::new(&Method::GET, now, now + MINUTE);
        assert!(fresh.begin());
        assert_eq!(fresh.refused(&Refusal::QueueFull), Verdict::Done);
        assert_eq!(fresh.refused(&Refusal::NoHealthyClient), Verdict::Done);
    }
}
