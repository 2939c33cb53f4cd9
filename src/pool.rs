//! The pool of OAuth clients: health, requests in flight, and which client to use next.
//!
//! Knows nothing of budgets: it offers the healthy clients in order of preference (fewest
//! requests in flight first, ties round-robin); admission decides among them.
//!
//! A client's index is stable for the life of the process (see
//! [`Registry`](crate::admission::Registry)): a config reload builds a new `Pool` in which
//! removed clients leave an empty slot and new ones take new indices, so an index held by
//! a request admitted under the previous config still names the same client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;

use serde::Serialize;
use tokio::time::Instant;

use crate::token::{Token, TokenSlot, TokenState};

/// One OAuth client of the pool.
#[derive(Debug)]
pub struct PoolClient {
    pub name: String,
    /// `name` as a header value (`x-gcpool-client`), made once; `None` if the name cannot
    /// be one.
    pub name_header: Option<http::HeaderValue>,
    pub tokens: Arc<TokenSlot>,
    /// Shared with the client's successor after a secret rotation.
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicU32,
    upstream_429: AtomicU64,
}

/// The clients of one config, by stable index.
#[derive(Debug)]
pub struct Pool {
    /// By index; `None` where a client of an earlier config was removed.
    clients: Vec<Option<Arc<PoolClient>>>,
    /// Indices of this config's clients, in config order.
    order: Vec<usize>,
    next: AtomicUsize,
}

/// A chosen client and the token to send; counts as in flight until dropped.
#[derive(Debug)]
pub struct Lease {
    pub client: Arc<PoolClient>,
    pub token: Arc<Token>,
}

/// A client as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    pub name: String,
    pub state: &'static str,
    pub healthy: bool,
    /// Admissions in the token budget's current window.
    pub budget_used: u64,
    pub budget_limit: u32,
    pub in_flight: u32,
    pub token_expires_in_s: u64,
    pub upstream_429: u64,
}

// === impl PoolClient ===

impl PoolClient {
    pub fn new(name: String, tokens: Arc<TokenSlot>) -> Self {
        Self {
            name_header: http::HeaderValue::from_str(&name).ok(),
            name,
            tokens,
            counters: Arc::default(),
        }
    }

    /// The same client with new credentials: requests in flight and 429s count on.
    pub fn with_tokens(&self, tokens: Arc<TokenSlot>) -> Self {
        Self {
            name: self.name.clone(),
            name_header: self.name_header.clone(),
            tokens,
            counters: self.counters.clone(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    pub fn record_upstream_429(&self) {
        self.counters.upstream_429.fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_healthy(&self, now: Instant) -> bool {
        self.tokens.usable(now).is_some()
    }

    /// As `/status` shows it, given its token budget's `(used, limit)` and whether it
    /// cools down after an upstream 429.
    pub fn status(&self, now: Instant, budget: (u32, u32), cooling: bool) -> ClientStatus {
        let state = match self.tokens.state(now) {
            TokenState::Starting => "starting",
            TokenState::Ready if cooling => "cooling_down",
            TokenState::Ready => "ready",
            // Sitting out, or re-minting, after the upstream refused its token.
            TokenState::Recovering => "cooling_down",
            TokenState::Failed => "failed",
        };
        ClientStatus {
            name: self.name.clone(),
            state,
            healthy: state == "ready",
            budget_used: u64::from(budget.0),
            budget_limit: budget.1,
            in_flight: self.in_flight(),
            token_expires_in_s: self.tokens.expires_in(now).as_secs(),
            upstream_429: self.counters.upstream_429.load(Ordering::Relaxed),
        }
    }
}

// === impl Pool ===

impl Pool {
    /// A pool of `clients` at indices 0, 1, … in that order (no reload to come).
    pub fn new(clients: Vec<Arc<PoolClient>>) -> Self {
        Self::with_indices(clients.into_iter().enumerate().collect())
    }

    /// A pool of `(index, client)` pairs, in config order; indices are unique.
    pub fn with_indices(clients: Vec<(usize, Arc<PoolClient>)>) -> Self {
        let len = clients.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
        let mut slots = vec![None; len];
        let order = clients.iter().map(|(i, _)| *i).collect();
        for (index, client) in clients {
            slots[index] = Some(client);
        }
        Self {
            clients: slots,
            order,
            next: AtomicUsize::new(0),
        }
    }

    /// This config's clients with their indices, in config order.
    pub fn clients(&self) -> impl Iterator<Item = (usize, &Arc<PoolClient>)> + '_ {
        self.order
            .iter()
            .filter_map(|&i| Some((i, self.clients.get(i)?.as_ref()?)))
    }

    /// Client `index`, if it belongs to this config.
    pub fn client(&self, index: usize) -> Option<&Arc<PoolClient>> {
        self.clients.get(index)?.as_ref()
    }

    /// Indices up to the highest one in use (the size of per-index tables).
    pub fn index_bound(&self) -> usize {
        self.clients.len()
    }

    /// At least one client holds a usable token.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.clients().any(|(_, c)| c.is_healthy(now))
    }

    /// Indices of the clients holding a usable token, fewest requests in flight first
    /// (ties in round-robin order, so sequential traffic spreads too).
    pub fn candidates(&self, now: Instant) -> Vec<usize> {
        let n = self.order.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut healthy: Vec<(u32, usize)> = (0..n)
            .map(|offset| self.order[(start + offset) % n])
            .filter_map(|i| {
                let client = self.client(i)?;
                client.is_healthy(now).then(|| (client.in_flight(), i))
            })
            .collect();
        healthy.sort_by_key(|&(load, _)| load);
        healthy.into_iter().map(|(_, i)| i).collect()
    }

    /// Waits until some client holds a usable token, as long as one whose token the
    /// upstream refused is expected to re-mint by `until`. Returns whether a client may
    /// have a token now (`false`: none is coming in time, or `until` passed).
    pub async fn wait_for_token(&self, until: Instant) -> bool {
        let mut changes: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = self
            .clients()
            .map(|(_, c)| Box::pin(c.tokens.changed()))
            .collect();
        // Registered before the state is read, so no change can slip in between.
        for change in &mut changes {
            change.as_mut().enable();
        }
        let now = Instant::now();
        if self.is_ready(now) {
            return true;
        }
        let coming = self
            .clients()
            .any(|(_, c)| c.tokens.recovering_until(now).is_some_and(|at| at <= until));
        if !coming {
            return false;
        }
        let any_change = std::future::poll_fn(|cx| {
            // Every future is polled, so each one registers its waker.
            let mut ready = false;
            for change in &mut changes {
                ready |= change.as_mut().poll(cx).is_ready();
            }
            if ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout_at(until, any_change).await.is_ok()
    }

    /// Takes client `index` with its current token; `None` if it has no usable token (or
    /// left the pool in a reload).
    pub fn lease(&self, index: usize, now: Instant) -> Option<Lease> {
        let client = self.client(index)?;
        let token = client.tokens.usable(now)?;
        client.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            client: client.clone(),
            token,
        })
    }
}

// === impl Lease ===

impl Drop for Lease {
    fn drop(&mut self) {
        self.client
            .counters
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}
