//! What changes between the caller's request and the upstream's, in both directions:
//! hop-by-hop headers removed, caller credentials stripped, bearer token and target set.
//! Path and query bytes are copied verbatim (no decoding, no re-encoding).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, request};
use http_body_util::Full;

use crate::inbound::{API_KEY, MAX_WAIT};

/// Where requests go: scheme and authority of `genesys.api_base`.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header value requests to the target carry.
    host: HeaderValue,
}

impl ApiTarget {
    /// # Errors
    /// When the authority cannot be a header value (an `Authority` always can).
    pub fn new(scheme: Scheme, authority: Authority) -> Result<Self, http::Error> {
        let host = HeaderValue::from_str(authority.as_str())?;
        Ok(Self {
            scheme,
            authority,
            host,
        })
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus
/// `proxy-*` and `expect` (gcpool has already read the body).
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// gcpool's own response headers: gcpool's to set, an upstream cannot forge them.
static OWN: [HeaderName; 4] = [
    HeaderName::from_static(super::CLIENT_HEADER),
    HeaderName::from_static(super::CACHE_HEADER),
    HeaderName::from_static(super::WAIT_HEADER),
    HeaderName::from_static(super::REASON_HEADER),
];

/// The caller's headers that never go upstream: what gcpool sets (`Host` replaced, the
/// rest removed), and its credentials.
static CALLER_ONLY: [HeaderName; 5] = [
    header::HOST,
    header::AUTHORIZATION,
    API_KEY,
    header::CONTENT_LENGTH,
    MAX_WAIT,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // One match on the name's text (a length switch, then a compare) instead of ten
    // `HeaderName` comparisons; the list above is what `remove` uses.
    matches!(
        name.as_str(),
        "connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
            | "keep-alive"
            | "proxy-connection"
    )
}

fn is_own(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-gcpool-") && OWN.contains(name)
}

/// Header names listed in `Connection: a, b` (also hop-by-hop). Read as bytes: a value with
/// a non-ASCII byte somewhere still names the headers it lists.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

/// Headers an upstream answer may carry beyond those of the request it answers, plus
/// gcpool's own (Genesys sends about 15).
const ANSWER_ROOM: usize = 24;

/// The caller's request as it goes upstream, prepared once: every attempt sends the same
/// method, URI and headers, with its own client's token.
#[derive(Debug)]
pub(super) struct UpstreamHead {
    method: Method,
    /// Absolute: the target's scheme and authority, the caller's path and query.
    uri: Uri,
    /// End-to-end headers and `Host`; each attempt adds `Authorization`.
    headers: HeaderMap,
}

impl UpstreamHead {
    /// The head for the caller's `parts`, whose header map it takes over (no copy; hyper
    /// made it for this request): hop-by-hop headers and caller credentials removed,
    /// `Host` set to the target.
    ///
    /// # Errors
    /// Only when the pieces cannot form a URI, which validated config and hyper's parsing
    /// rule out.
    pub(super) fn new(parts: &mut request::Parts, target: &ApiTarget) -> Result<Self, http::Error> {
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
        let mut headers = std::mem::take(&mut parts.headers);
        // `Host` is replaced below; the rest goes only if present (a lookup per name costs
        // more than one pass over the few a request carries).
        let strip = |name: &HeaderName| is_hop_by_hop(name) || CALLER_ONLY[1..].contains(name);
        if headers.keys().any(strip) {
            let mut doomed = connection_listed(&headers);
            doomed.extend(headers.keys().filter(|name| strip(name)).cloned());
            for name in &doomed {
                headers.remove(name);
            }
        }
        // Each attempt adds its own token.
        headers.insert(header::HOST, target.host.clone());
        Ok(Self {
            method: parts.method.clone(),
            uri,
            headers,
        })
    }

    /// The request for one attempt: buffered `body`, `Authorization` the pool token's value
    /// `bearer`.
    pub(super) fn request(&self, body: Bytes, bearer: &HeaderValue) -> Request<Full<Bytes>> {
        // Not a clone (its capacity would be its length): hyper parses the upstream's answer
        // into the map it has just sent, and gcpool adds its own headers to that answer, so
        // room for them now saves growing it twice per request.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + ANSWER_ROOM);
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.append(header::AUTHORIZATION, bearer.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = headers;
        request
    }
}

/// Removes hop-by-hop headers, and gcpool's own, from an upstream response before it goes
/// back to the caller.
pub(super) fn response_headers(headers: &mut HeaderMap) {
    // Most answers carry none of them: one pass over the names, no lookups.
    let strip = |name: &HeaderName| is_hop_by_hop(name) || is_own(name);
    if !headers.keys().any(strip) {
        return;
    }
    let listed = connection_listed(headers);
    for name in HOP_BY_HOP.iter().chain(&OWN).chain(listed.iter()) {
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
        let (mut parts, ()) = caller.into_parts();
        let target = ApiTarget::new(Scheme::HTTPS, "api.mypurecloud.com".parse().unwrap()).unwrap();
        let up = UpstreamHead::new(&mut parts, &target).unwrap().request(
            Bytes::from_static(b"{}"),
            &HeaderValue::from_static("Bearer tok"),
        );
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

    #[test]
    fn the_hop_by_hop_match_and_list_agree() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in ["x-custom", "accept", "host", "authorization", "connections"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        for name in &OWN {
            assert!(is_own(name), "{name}");
        }
        assert!(!is_own(&HeaderName::from_static("x-gcpool-other")));
    }

    #[test]
    fn an_answer_loses_hop_by_hop_and_forged_gcpool_headers_and_keeps_the_rest() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-gcpool-client", HeaderValue::from_static("forged"));
        headers.insert("x-gcpool-wait-ms", HeaderValue::from_static("0"));
        headers.insert("x-gcpool-reason", HeaderValue::from_static("forged"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("inin-correlation-id", HeaderValue::from_static("abc"));
        response_headers(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "inin-correlation-id"]);

        // An answer with nothing to strip is left as it is.
        let mut clean = HeaderMap::new();
        clean.insert("content-type", HeaderValue::from_static("application/json"));
        response_headers(&mut clean);
        assert_eq!(clean.len(), 1);
    }

    #[test]
    fn a_connection_value_with_non_ascii_bytes_still_names_its_headers() {
        let caller = Request::builder()
            .uri("/api/v2/users/me")
            .header(
                "connection",
                HeaderValue::from_bytes(b"x-secret, x-\xff").unwrap(),
            )
            .header("x-secret", "hop-only")
            .header("x-kept", "1")
            .body(())
            .unwrap();
        let (mut parts, ()) = caller.into_parts();
        let target = ApiTarget::new(Scheme::HTTPS, "api.mypurecloud.com".parse().unwrap()).unwrap();
        let up = UpstreamHead::new(&mut parts, &target)
            .unwrap()
            .request(Bytes::new(), &HeaderValue::from_static("Bearer tok"));
        assert!(up.headers().get("x-secret").is_none());
        assert!(up.headers().get("connection").is_none());
        assert_eq!(up.headers()["x-kept"], "1");
    }
}
