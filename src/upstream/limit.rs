//! What an upstream 429 says: which limit fired (Genesys' `limit` object, when the body
//! has one) and for how long to cool down (`Retry-After`).

use std::time::Duration;

use http::{HeaderMap, header};
use serde::Deserialize;

/// Cool-down when a 429 carries no usable `Retry-After` (what Genesys' SDKs assume).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(3);

/// The `limit` object of a Genesys 429 body (not guaranteed to be there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LimitObject {
    pub key: Option<String>,
    pub namespace: Option<String>,
    pub value: Option<u64>,
}

/// What an upstream 429 said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLimit {
    pub retry_after: Duration,
    pub limit: Option<LimitObject>,
}

/// Which part of the pool a 429 cools down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// A per-token limit (`client.credentials.token.rate.per.minute`): that client only.
    Client,
    /// A limit of the route: every client, this route.
    Route,
    /// An org or service limit: the whole pool.
    Pool,
}

#[derive(Deserialize)]
struct ErrorBody {
    limit: Option<LimitObject>,
}

impl UpstreamLimit {
    /// Reads `Retry-After` (whole seconds) and the body's `limit` object.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Self {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RETRY_AFTER);
        let limit = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .and_then(|b| b.limit);
        Self { retry_after, limit }
    }

    /// What to cool down. Without a `limit` object the per-token limit is assumed (the
    /// one a pool can avoid by moving to another client).
    pub fn scope(&self) -> LimitScope {
        let Some(limit) = &self.limit else {
            return LimitScope::Client;
        };
        let key = limit
            .key
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let namespace = limit
            .namespace
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if key.contains("token") || namespace.contains("oauth") {
            LimitScope::Client
        } else if key.contains("route") || key.contains("endpoint") || key.contains("resource") {
            LimitScope::Route
        } else {
            LimitScope::Pool
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(body: &str, retry_after: Option<&str>) -> UpstreamLimit {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(header::RETRY_AFTER, v.parse().unwrap());
        }
        UpstreamLimit::parse(&headers, body.as_bytes())
    }

    #[test]
    fn reads_genesys_429s() {
        let token = limit(
            r#"{"message":"Rate limit exceeded the maximum. Retry the request in [7] seconds","code":"too.many.requests.retry.after","status":429,"limit":{"key":"client.credentials.token.rate.per.minute","namespace":"oauth.client","value":300}}"#,
            Some("7"),
        );
        assert_eq!(token.retry_after, Duration::from_secs(7));
        assert_eq!(token.scope(), LimitScope::Client);
        assert_eq!(token.limit.as_ref().unwrap().value, Some(300));

        let route = limit(
            r#"{"limit":{"key":"route.rate.per.minute","namespace":"architect","value":100}}"#,
            None,
        );
        assert_eq!(
            route.retry_after, DEFAULT_RETRY_AFTER,
            "3 s when Retry-After is missing"
        );
        assert_eq!(route.scope(), LimitScope::Route);

        let service = limit(
            r#"{"limit":{"key":"user.rate.per.minute","namespace":"directory","value":180}}"#,
            Some("x"),
        );
        assert_eq!(
            service.scope(),
            LimitScope::Pool,
            "a service limit cools the whole pool"
        );
        assert_eq!(service.retry_after, DEFAULT_RETRY_AFTER);

        let bare = limit("not json", Some("2"));
        assert_eq!(bare.limit, None);
        assert_eq!(bare.scope(), LimitScope::Client);
    }
}
