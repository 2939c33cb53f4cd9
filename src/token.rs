//! Per-client token cache: the current bearer token, its grants and the re-mint rule.
//!
//! The request path only reads [`TokenSlot::usable`] and reports what the upstream made of
//! a token ([`TokenSlot::refused`] after a 401, [`TokenSlot::accepted`] otherwise). Every
//! grant is made by the client's refresher task ([`refresher::run`]), which waits for
//! [`pacing`]'s rule first: at most one grant per `genesys.token_remint_interval`, however
//! many 401s arrive; a fresh token refused makes the client sit out the rest of that
//! interval; fresh tokens refused again and again fail it, with backoff.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use http::Uri;
use prometheus::IntCounterVec;
use rand::Rng;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::secret::Secret;
use crate::upstream::Upstream;

pub mod grant;
pub mod pacing;
pub mod refresher;

pub use grant::GrantError;
pub use pacing::Verdict;

use pacing::Pacing;

/// How long a token grant may take.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bearer token and when it stops being usable.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    /// `Bearer <value>`, built once per grant, marked sensitive (never logged by hyper).
    pub bearer: http::HeaderValue,
    /// When the grant answered.
    pub minted_at: Instant,
    pub expires_at: Instant,
    /// When the background refresher replaces it (70–80 % of its lifetime, jittered).
    pub refresh_at: Instant,
    /// Not used for new requests past this instant (a margin before `expires_at`).
    pub usable_until: Instant,
    /// Increases with every grant of this client.
    pub generation: u64,
}

/// Where a client's credentials stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// No grant answered yet.
    Starting,
    /// Holds a usable token.
    Ready,
    /// No usable token for now, a new one is on its way: the upstream refused the last
    /// one, and the client re-mints (at once, or after sitting out the re-mint interval).
    Recovering,
    /// Credentials rejected, fresh tokens refused again and again, or no usable token
    /// left after failed grants.
    Failed,
}

/// The metric families a token slot counts in.
#[derive(Debug, Clone)]
pub struct TokenMetrics {
    /// `gcpool_token_refresh_total{client,result}`: every grant, once.
    pub grants: IntCounterVec,
    /// `gcpool_token_refused_total{client,age}`: every token the upstream refused, once.
    pub refused: IntCounterVec,
}

/// One client's credentials and token.
#[derive(Debug)]
pub struct TokenSlot {
    name: String,
    client_id: String,
    secret: Secret,
    login_base: Uri,
    upstream: Upstream,
    metrics: TokenMetrics,
    current: RwLock<Option<Arc<Token>>>,
    /// Set when the login host rejected the credentials; cleared by a successful grant.
    rejected: AtomicBool,
    attempted: AtomicBool,
    /// Set when the last grant failed; cleared by a successful grant.
    grant_failed: AtomicBool,
    generation: AtomicU64,
    /// The re-mint rule; never held across an await.
    pacing: Mutex<Pacing>,
    /// Copy of the pacing's refusal streak, so a successful use costs one atomic load.
    streak: AtomicU32,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Wakes the background refresher when the request path dropped the token.
    wake: tokio::sync::Notify,
    /// Wakes requests waiting for a token whenever this slot's state may have changed.
    changed: tokio::sync::Notify,
}

// === impl Token ===

impl Token {
    fn new(
        value: Secret,
        bearer: http::HeaderValue,
        lifetime: Duration,
        generation: u64,
        now: Instant,
    ) -> Self {
        let fraction = rand::rng().random_range(0.70..0.80);
        // Keep a margin so a request never leaves with a token about to die in transit.
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        Self {
            value,
            bearer,
            minted_at: now,
            expires_at: now + lifetime,
            refresh_at: now + lifetime.mul_f64(fraction),
            usable_until: now + lifetime - margin,
            generation,
        }
    }
}

// === impl TokenSlot ===

impl TokenSlot {
    /// A client with no token yet; its refresher makes the first grant.
    /// `remint_interval` is the shortest time between two grants.
    pub fn new(
        name: String,
        client_id: String,
        secret: Secret,
        login_base: Uri,
        upstream: Upstream,
        metrics: TokenMetrics,
        remint_interval: Duration,
    ) -> Self {
        Self {
            name,
            client_id,
            secret,
            login_base,
            upstream,
            metrics,
            current: RwLock::new(None),
            rejected: AtomicBool::new(false),
            attempted: AtomicBool::new(false),
            grant_failed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            pacing: Mutex::new(Pacing::new(remint_interval)),
            streak: AtomicU32::new(0),
            refresh_lock: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The same client with new credentials (a reload rotated its secret or id). It keeps
    /// serving with the current token until a grant with the new credentials replaces it
    /// (run its refresher with `grant_now`); if the login host rejects them, the client
    /// fails as it would at start. New credentials are granted at once: the re-mint
    /// interval starts anew.
    pub fn rotated(&self, client_id: String, secret: Secret) -> Self {
        let slot = Self::new(
            self.name.clone(),
            client_id,
            secret,
            self.login_base.clone(),
            self.upstream.clone(),
            self.metrics.clone(),
            self.remint_interval(),
        );
        *slot.current.write().unwrap_or_else(|e| e.into_inner()) = self.current();
        slot.generation.store(self.generation(), Ordering::Relaxed);
        slot.attempted
            .store(self.attempted.load(Ordering::Relaxed), Ordering::Relaxed);
        slot
    }

    /// Whether this slot holds exactly these credentials.
    pub fn has_credentials(&self, client_id: &str, secret: &Secret) -> bool {
        self.client_id == client_id && self.secret.expose() == secret.expose()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shortest time between two grants of this client.
    pub fn remint_interval(&self) -> Duration {
        self.pacing().interval()
    }

    /// Applies a reloaded `genesys.token_remint_interval`.
    pub fn set_remint_interval(&self, interval: Duration) {
        self.pacing().set_interval(interval);
        // The refresher may be waiting for the end of the old interval.
        self.wake.notify_one();
    }

    /// The current token if it can still be sent at `now`.
    pub fn usable(&self, now: Instant) -> Option<Arc<Token>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|t| t.usable_until > now).cloned()
    }

    /// The current token, usable or not.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn state(&self, now: Instant) -> TokenState {
        if self.usable(now).is_some() {
            TokenState::Ready
        } else if self.rejected.load(Ordering::Relaxed) || self.pacing().is_failed() {
            TokenState::Failed
        } else if !self.attempted.load(Ordering::Relaxed) {
            TokenState::Starting
        } else if self.grant_failed.load(Ordering::Relaxed) {
            TokenState::Failed
        } else {
            TokenState::Recovering
        }
    }

    /// When a [`TokenState::Recovering`] client may have a token again (the start of its
    /// next grant, `now` at the earliest); `None` in any other state.
    pub fn recovering_until(&self, now: Instant) -> Option<Instant> {
        (self.state(now) == TokenState::Recovering)
            .then(|| self.pacing().earliest_grant().map_or(now, |at| at.max(now)))
    }

    /// Resolves when this slot's state may have changed: a token was minted, a grant
    /// failed, or the upstream refused a token. Enable it before checking the state.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The upstream answered 401 at `now` to `token`: drops it and decides when this
    /// client re-mints (see [`Verdict`]). Each token counts once, however many requests
    /// it was refused for.
    pub fn refused(&self, token: &Token, now: Instant) -> Verdict {
        let jitter = rand::rng().random_range(0.5..1.0);
        let verdict = {
            let mut pacing = self.pacing();
            let verdict = pacing.refused(
                token.generation,
                token.minted_at,
                self.generation(),
                now,
                jitter,
            );
            self.streak.store(pacing.streak(), Ordering::Relaxed);
            verdict
        };
        let age = match verdict {
            Verdict::Superseded => return verdict,
            Verdict::Stale { remint_at } => {
                debug!(client = %self.name, generation = token.generation, "upstream refused the token (401); re-minting in {:?}", remint_at.saturating_duration_since(now));
                "stale"
            }
            Verdict::Fresh { remint_at, streak } => {
                warn!(client = %self.name, streak, "upstream refused a token younger than the re-mint interval (401); the client sits out and re-mints in {:?}", remint_at.saturating_duration_since(now));
                "fresh"
            }
            Verdict::Failed { remint_at, streak } => {
                warn!(client = %self.name, streak, "upstream refused {streak} fresh tokens in a row (401); client failed, re-minting in {:?}", remint_at.saturating_duration_since(now));
                "fresh"
            }
        };
        self.metrics
            .refused
            .with_label_values(&[&self.name, age])
            .inc();
        self.invalidate(token.generation);
        verdict
    }

    /// The upstream answered a request sent with the token of `generation` with anything
    /// but 401: the token works, and a streak of refused fresh tokens ends.
    pub fn accepted(&self, generation: u64) {
        if self.streak.load(Ordering::Relaxed) == 0 {
            return;
        }
        let ended = {
            let mut pacing = self.pacing();
            let ended = pacing.accepted();
            self.streak.store(0, Ordering::Relaxed);
            ended
        };
        if ended >= pacing::FAIL_AFTER {
            info!(client = %self.name, generation, "upstream accepts this client's token again; client serves again");
        }
    }

    /// Drops the token of generation `generation` and wakes the refresher.
    fn invalidate(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            *current = None;
        }
        drop(current);
        // The refresher replaces it as soon as the re-mint rule allows.
        self.wake.notify_one();
        self.changed.notify_waiters();
    }

    /// Resolves when [`TokenSlot::refused`] dropped the token (or the interval changed).
    async fn woken(&self) {
        self.wake.notified().await;
    }

    /// When the next grant may start (`None`: at once).
    fn earliest_grant(&self) -> Option<Instant> {
        self.pacing().earliest_grant()
    }

    fn pacing(&self) -> MutexGuard<'_, Pacing> {
        self.pacing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mints a new token, once the re-mint rule allows (single flight). Only the
    /// refresher calls this, so every grant is counted once, in one place.
    ///
    /// # Errors
    /// When the grant fails; the previous token, if still usable, stays in place.
    async fn grant(&self) -> Result<Arc<Token>, GrantError> {
        let _single_flight = self.refresh_lock.lock().await;
        // The interval holds whoever asked: a refusal may push it back while we wait.
        while let Some(at) = self.earliest_grant().filter(|at| *at > Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
        self.pacing().granting(Instant::now());
        // The whole grant, body included, is bounded: the lock is held meanwhile.
        let result = tokio::time::timeout(
            GRANT_TIMEOUT,
            grant::client_credentials(
                &self.upstream,
                &self.login_base,
                &self.client_id,
                &self.secret,
                GRANT_TIMEOUT,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(GrantError::Transport {
                host: self.login_base.to_string().trim_end_matches('/').to_owned(),
                source: crate::upstream::UpstreamError::Timeout,
            })
        });
        self.attempted.store(true, Ordering::Relaxed);
        let result = result.and_then(|granted| {
            let mut bearer =
                http::HeaderValue::try_from(format!("Bearer {}", granted.access_token.expose()))
                    .map_err(|_| {
                        GrantError::Malformed("access_token is not a header value".into())
                    })?;
            bearer.set_sensitive(true);
            Ok((granted, bearer))
        });
        let outcome = match result {
            Ok((granted, bearer)) => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let token = Arc::new(Token::new(
                    granted.access_token,
                    bearer,
                    granted.expires_in,
                    generation,
                    Instant::now(),
                ));
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
                self.rejected.store(false, Ordering::Relaxed);
                self.grant_failed.store(false, Ordering::Relaxed);
                self.metrics
                    .grants
                    .with_label_values(&[&self.name, "ok"])
                    .inc();
                Ok(token)
            }
            Err(e) => {
                if e.is_rejection() {
                    self.rejected.store(true, Ordering::Relaxed);
                    // Rejected credentials: the old token may be revoked too; stop using it.
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
                }
                self.grant_failed.store(true, Ordering::Relaxed);
                self.metrics
                    .grants
                    .with_label_values(&[&self.name, "error"])
                    .inc();
                Err(e)
            }
        };
        self.changed.notify_waiters();
        outcome
    }

    /// The generation of the last token granted (0 before the first grant).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Seconds until the current token expires (0 without one).
    pub fn expires_in(&self, now: Instant) -> Duration {
        self.current()
            .map(|t| t.expires_at.saturating_duration_since(now))
            .unwrap_or_default()
    }
}
