//! Per-client token cache: the current bearer token, single-flight refresh, expiry.
//!
//! The request path only reads [`TokenSlot::usable`]; it waits for a grant only after an
//! upstream 401 ([`TokenSlot::refresh`], single flight with the background refresher).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Uri;
use prometheus::IntCounterVec;
use rand::Rng;
use tokio::time::Instant;

use crate::secret::Secret;
use crate::upstream::Upstream;

pub mod grant;
pub mod refresher;

pub use grant::GrantError;

/// How long a token grant may take.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bearer token and when it stops being usable.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    /// `Bearer <value>`, built once per grant, marked sensitive (never logged by hyper).
    pub bearer: http::HeaderValue,
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
    /// Credentials rejected, or no usable token left after failures.
    Failed,
}

/// One client's credentials and token.
#[derive(Debug)]
pub struct TokenSlot {
    name: String,
    client_id: String,
    secret: Secret,
    login_base: Uri,
    upstream: Upstream,
    refresh_metric: IntCounterVec,
    current: RwLock<Option<Arc<Token>>>,
    /// Set when the login host rejected the credentials; cleared by a successful grant.
    rejected: AtomicBool,
    attempted: AtomicBool,
    generation: AtomicU64,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Wakes the background refresher when the request path dropped the token.
    wake: tokio::sync::Notify,
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
            expires_at: now + lifetime,
            refresh_at: now + lifetime.mul_f64(fraction),
            usable_until: now + lifetime - margin,
            generation,
        }
    }
}

// === impl TokenSlot ===

impl TokenSlot {
    pub fn new(
        name: String,
        client_id: String,
        secret: Secret,
        login_base: Uri,
        upstream: Upstream,
        refresh_metric: IntCounterVec,
    ) -> Self {
        Self {
            name,
            client_id,
            secret,
            login_base,
            upstream,
            refresh_metric,
            current: RwLock::new(None),
            rejected: AtomicBool::new(false),
            attempted: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            refresh_lock: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The same client with new credentials (a reload rotated its secret or id). It keeps
    /// serving with the current token until a grant with the new credentials replaces it
    /// (run its refresher with `grant_now`); if the login host rejects them, the client
    /// fails as it would at start.
    pub fn rotated(&self, client_id: String, secret: Secret) -> Self {
        let slot = Self::new(
            self.name.clone(),
            client_id,
            secret,
            self.login_base.clone(),
            self.upstream.clone(),
            self.refresh_metric.clone(),
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
        } else if self.rejected.load(Ordering::Relaxed) || self.attempted.load(Ordering::Relaxed) {
            TokenState::Failed
        } else {
            TokenState::Starting
        }
    }

    /// Drops the token of generation `generation` (e.g. after the upstream refused it).
    pub fn invalidate(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            *current = None;
        }
        drop(current);
        // Whatever happens to the caller's own refresh (it may fail or be cancelled), the
        // refresher now knows this client has no token and keeps trying with backoff.
        self.wake.notify_one();
    }

    /// Resolves when [`TokenSlot::invalidate`] dropped the token.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Mints a new token unless another caller already replaced `stale` (single flight).
    /// `stale` is the generation the caller found wanting; `None` forces a grant.
    ///
    /// # Errors
    /// When the grant fails; the previous token, if still usable, stays in place.
    pub async fn refresh(&self, stale: Option<u64>) -> Result<Arc<Token>, GrantError> {
        let _single_flight = self.refresh_lock.lock().await;
        let now = Instant::now();
        if let (Some(stale), Some(token)) = (stale, self.usable(now))
            && token.generation != stale
        {
            return Ok(token);
        }
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
        .unwrap_or(Err(GrantError::Transport(
            crate::upstream::UpstreamError::Timeout,
        )));
        self.attempted.store(true, Ordering::Relaxed);
        match result {
            Ok(granted) => {
                let Ok(mut bearer) = http::HeaderValue::try_from(format!(
                    "Bearer {}",
                    granted.access_token.expose()
                )) else {
                    self.refresh_metric
                        .with_label_values(&[&self.name, "error"])
                        .inc();
                    return Err(GrantError::Malformed(
                        "access_token is not a header value".into(),
                    ));
                };
                bearer.set_sensitive(true);
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
                self.refresh_metric
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
                self.refresh_metric
                    .with_label_values(&[&self.name, "error"])
                    .inc();
                Err(e)
            }
        }
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
