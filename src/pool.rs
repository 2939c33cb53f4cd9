//! The pool of OAuth clients: health, requests in flight, and which client to use next.
//!
//! Knows nothing of budgets: until the budget engine decides, the healthy client with the
//! fewest requests in flight is chosen, ties broken round-robin.

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
    pub budget_limit: u32,
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
    /// Admissions in the current budget window; `None` until the budget engine counts them.
    pub budget_used: Option<u64>,
    pub budget_limit: u32,
    pub in_flight: u32,
    pub token_expires_in_s: u64,
    pub upstream_429: u64,
}

// === impl PoolClient ===

impl PoolClient {
    pub fn new(name: String, tokens: Arc<TokenSlot>, budget_limit: u32) -> Self {
        Self {
            name,
            tokens,
            budget_limit,
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

    pub fn status(&self, now: Instant) -> ClientStatus {
        let state = match self.tokens.state(now) {
            TokenState::Starting => "starting",
            TokenState::Ready => "ready",
            TokenState::Failed => "failed",
        };
        ClientStatus {
            name: self.name.clone(),
            state,
            healthy: state == "ready",
            budget_used: None,
            budget_limit: self.budget_limit,
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

    /// The healthy client with the fewest requests in flight, skipping `exclude`
    /// (a client that just failed this request). `None` when no client is usable.
    pub fn lease(&self, now: Instant, exclude: Option<&str>) -> Option<Lease> {
        let n = self.clients.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(u32, &Arc<PoolClient>, Arc<Token>)> = None;
        for offset in 0..n {
            let client = &self.clients[(start + offset) % n];
            if exclude == Some(client.name.as_str()) {
                continue;
            }
            let Some(token) = client.tokens.usable(now) else {
                continue;
            };
            let load = client.in_flight();
            if best.as_ref().is_none_or(|(l, _, _)| load < *l) {
                best = Some((load, client, token));
            }
        }
        let (_, client, token) = best?;
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
