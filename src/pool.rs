//! The pool of OAuth clients: health, requests in flight, and which client to use next.
//!
//! Knows nothing of budgets: it offers the healthy clients in order of preference (fewest
//! requests in flight first, ties round-robin); admission decides among them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio::time::Instant;

use crate::token::{Token, TokenSlot, TokenState};

/// One OAuth client of the pool.
#[derive(Debug)]
pub struct PoolClient {
    pub name: String,
    pub tokens: Arc<TokenSlot>,
    in_flight: AtomicU32,
    upstream_429: AtomicU64,
}

/// Every client, in config order.
#[derive(Debug)]
pub struct Pool {
    clients: Vec<Arc<PoolClient>>,
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
            name,
            tokens,
            in_flight: AtomicU32::new(0),
            upstream_429: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn record_upstream_429(&self) {
        self.upstream_429.fetch_add(1, Ordering::Relaxed);
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
            upstream_429: self.upstream_429.load(Ordering::Relaxed),
        }
    }
}

// === impl Pool ===

impl Pool {
    pub fn new(clients: Vec<Arc<PoolClient>>) -> Self {
        Self {
            clients,
            next: AtomicUsize::new(0),
        }
    }

    pub fn clients(&self) -> &[Arc<PoolClient>] {
        &self.clients
    }

    /// At least one client holds a usable token.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.clients.iter().any(|c| c.is_healthy(now))
    }

    /// Indices of the clients holding a usable token, fewest requests in flight first
    /// (ties in round-robin order, so sequential traffic spreads too).
    pub fn candidates(&self, now: Instant) -> Vec<usize> {
        let n = self.clients.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut healthy: Vec<(u32, usize)> = (0..n)
            .map(|offset| (start + offset) % n)
            .filter(|&i| self.clients[i].is_healthy(now))
            .map(|i| (self.clients[i].in_flight(), i))
            .collect();
        healthy.sort_by_key(|&(load, _)| load);
        healthy.into_iter().map(|(_, i)| i).collect()
    }

    /// Takes client `index` with its current token; `None` if it has no usable token.
    pub fn lease(&self, index: usize, now: Instant) -> Option<Lease> {
        let client = self.clients.get(index)?;
        let token = client.tokens.usable(now)?;
        client.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            client: client.clone(),
            token,
        })
    }
}

// === impl Lease ===

impl Drop for Lease {
    fn drop(&mut self) {
        self.client.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
