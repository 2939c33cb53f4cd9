//! What the simulator saw: counters and the busiest window per client, route and org.
//!
//! [`SimStats`] is a plain snapshot (also the JSON of `GET /sim/stats`); the live counters
//! and arrival windows sit in `state.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Snapshot of everything the simulator counted since start or the last reset.
///
/// `max_in_window` figures count **arrivals** (requests carrying a valid token, admitted or
/// answered 429) inside any window of the configured length; they are exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// `/api/v2` requests admitted (answered by the echo handler).
    pub accepted: u64,
    /// `/api/v2` requests answered 429.
    pub rejected_429: u64,
    /// `/api/v2` requests answered 401 (no, unknown, revoked or expired token).
    pub rejected_401: u64,
    /// Successful client-credentials grants.
    pub token_grants: u64,
    /// Grants answered 400 or 401.
    pub token_grant_failures: u64,
    /// Per configured client id.
    pub clients: BTreeMap<String, ClientStats>,
    /// Per configured route limit, keyed `"PUT /api/v2/architect/ivrs/{ivrId}"`.
    pub routes: BTreeMap<String, RouteStats>,
    /// The whole organisation.
    pub org: OrgStats,
}

/// Requests that carried one client's tokens (any of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    pub accepted: u64,
    pub rejected_429: u64,
    /// 401s for this client's expired, revoked or refused tokens.
    pub rejected_401: u64,
    /// Successful client-credentials grants of this client.
    #[serde(default)]
    pub token_grants: u64,
    /// Most arrivals on this client's tokens inside one window.
    pub max_in_window: u64,
    /// Per-token limit that applies to this client's tokens.
    pub limit: u32,
}

/// Requests that matched one configured route limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    pub accepted: u64,
    pub rejected_429: u64,
    pub max_in_window: u64,
    pub limit: u32,
}

/// Every `/api/v2` request with a valid token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgStats {
    pub max_in_window: u64,
    pub limit: Option<u32>,
}

// === impl SimStats ===

impl SimStats {
    /// Stats of one client id; a default (all zero) entry when it is unknown.
    pub fn client(&self, client_id: &str) -> ClientStats {
        self.clients.get(client_id).cloned().unwrap_or_default()
    }

    /// Stats of one route limit, by its `"METHOD /template"` key; all zero when unknown.
    pub fn route(&self, key: &str) -> RouteStats {
        self.routes.get(key).cloned().unwrap_or_default()
    }
}
