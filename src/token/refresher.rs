//! Background refresh of one client's token: at 70–80 % of its lifetime, at once when the
//! upstream refused it, with backoff and jitter after failed grants, and never sooner than
//! the client's re-mint rule allows ([`super::pacing`]). One task per client, owned by
//! [`crate::shutdown::Shutdown`]; it makes every grant of its client.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{GrantError, TokenSlot};

/// First retry delay after a passing failure.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// First retry delay after the credentials were rejected (someone must fix them).
const REJECTED_MIN: Duration = Duration::from_secs(5);
/// Longest delay between attempts.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Keeps `slot` supplied with a token until `stop` is cancelled. The first grant is
/// attempted at once, so spawning one task per client fetches all tokens concurrently;
/// with `grant_now` even when the slot already holds a token (rotated credentials).
pub async fn run(slot: Arc<TokenSlot>, stop: CancellationToken, mut grant_now: bool) {
    let mut failures: u32 = 0;
    // After a failed grant: when to try again (a refused token does not cut this short).
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let due = match (retry_at, slot.usable(now)) {
            (Some(at), _) => at,
            (None, _) if grant_now => now,
            (None, Some(token)) => token.refresh_at,
            // None yet, or the request path dropped the one the upstream refused.
            (None, None) => now,
        };
        // The re-mint interval, a sit-out or a failed client's backoff may push it back.
        let at = slot
            .earliest_grant()
            .map_or(due, |earliest| earliest.max(due));
        if at > now {
            tokio::select! {
                _ = sleep_until(at) => {}
                // A token refused upstream: work out again when to grant.
                _ = slot.woken() => {}
                _ = stop.cancelled() => return,
            }
            continue;
        }
        let result = tokio::select! {
            r = slot.grant() => r,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(token) => {
                if failures > 0 {
                    info!(client = %slot.name(), "token grant succeeded again");
                } else if token.generation == 1 {
                    info!(client = %slot.name(), "token acquired");
                }
                if grant_now {
                    info!(client = %slot.name(), "token acquired with the new credentials");
                }
                grant_now = false;
                failures = 0;
                retry_at = None;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = retry_delay(&error, failures);
                warn!(
                    client = %slot.name(),
                    error = %crate::telemetry::error_chain(&error),
                    "token grant failed; retrying in {delay:?}"
                );
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// Exponential backoff with full jitter in its upper half; honours the login host's
/// `Retry-After`.
fn retry_delay(error: &GrantError, failures: u32) -> Duration {
    let base = if error.is_rejection() {
        REJECTED_MIN
    } else {
        RETRY_MIN
    };
    let exp = base
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(RETRY_MAX);
    let jittered = exp.mul_f64(rand::rng().random_range(0.5..1.0));
    match error {
        GrantError::RateLimited {
            retry_after: Some(after),
        } => jittered.max(*after),
        _ => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn backoff_grows_and_is_capped() {
        let e = GrantError::Status {
            status: StatusCode::BAD_GATEWAY,
        };
        assert!(retry_delay(&e, 1) <= RETRY_MIN);
        assert!(retry_delay(&e, 4) >= RETRY_MIN * 4);
        assert!(retry_delay(&e, 40) <= RETRY_MAX);
        let rejected = GrantError::Rejected {
            status: StatusCode::UNAUTHORIZED,
        };
        assert!(retry_delay(&rejected, 1) >= REJECTED_MIN / 2);
        let limited = GrantError::RateLimited {
            retry_after: Some(Duration::from_secs(42)),
        };
        assert!(retry_delay(&limited, 1) >= Duration::from_secs(42));
    }
}
