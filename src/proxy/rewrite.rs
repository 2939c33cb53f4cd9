//! What changes between the caller's request and the upstream's, in both directions:
//! hop-by-hop headers removed, caller credentials stripped, bearer token and target set.
//! Path and query bytes are copied verbatim (no decoding, no re-encoding).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, request};
use http_body_util::Full;

use crate::inbound::API_KEY_HEADER;

/// Where requests go: scheme and authority of `genesys.api_base`.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus
/// `proxy-*` and `expect` (gcpool has already read the body).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Header names listed in `Connection: a, b` (also hop-by-hop).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Copies end-to-end headers from `from`, dropping hop-by-hop ones and those in `also_drop`.
fn end_to_end(from: &HeaderMap, also_drop: &[HeaderName]) -> HeaderMap {
    let listed = connection_listed(from);
    let mut to = HeaderMap::with_capacity(from.len());
    for (name, value) in from {
        if is_hop_by_hop(name) || listed.contains(name) || also_drop.contains(name) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    to
}

/// The request sent upstream for the caller's `parts` and buffered `body`, carrying the
/// pool token's `Authorization` value `bearer`.
///
/// # Errors
/// Only when the pieces cannot form a URI, which validated config and hyper's parsing rule out.
pub(super) fn upstream_request(
    parts: &request::Parts,
    body: Bytes,
    target: &ApiTarget,
    bearer: &HeaderValue,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()?;
    let caller_credentials = [
        header::HOST,
        header::AUTHORIZATION,
        HeaderName::from_static(API_KEY_HEADER),
        header::CONTENT_LENGTH,
    ];
    let mut headers = end_to_end(&parts.headers, &caller_credentials);
    headers.insert(header::AUTHORIZATION, bearer.clone());
    let host = HeaderValue::from_str(target.authority.as_str())?;
    headers.insert(header::HOST, host);

    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Removes hop-by-hop headers from an upstream response before it goes back to the caller.
pub(super) fn response_headers(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    for name in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // gcpool's own headers are gcpool's to set: an upstream cannot forge them.
    for name in [
        super::CLIENT_HEADER,
        super::WAIT_HEADER,
        super::REASON_HEADER,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_credentials_and_hop_by_hop_keeps_the_rest() {
        let caller = Request::builder()
            .method("POST")
            .uri("/api/v2/users/search?a=%2C&b=1")
            .header("host", "gcpool.local:8080")
            .header("authorization", "Bearer caller-token")
            .header("x-api-key", "caller-key")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("x-custom", "a")
            .header("x-custom", "b")
            .header("accept-encoding", "gzip")
            .body(())
            .unwrap();
        let (parts, ()) = caller.into_parts();
        let target = ApiTarget {
            scheme: Scheme::HTTPS,
            authority: "api.mypurecloud.com".parse().unwrap(),
        };
        let up = upstream_request(
            &parts,
            Bytes::from_static(b"{}"),
            &target,
            &HeaderValue::from_static("Bearer tok"),
        )
        .unwrap();
        assert_eq!(
            up.uri(),
            "https://api.mypurecloud.com/api/v2/users/search?a=%2C&b=1"
        );
        let h = up.headers();
        assert_eq!(h["authorization"], "Bearer tok");
        assert_eq!(h["host"], "api.mypurecloud.com");
        assert!(h.get("x-api-key").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get_all("x-custom").iter().count(), 2);
        assert_eq!(h["accept-encoding"], "gzip");
    }
}
