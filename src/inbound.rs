//! Caller-side checks before anything is spent: the request target, the caller's key.
//!
//! `CONNECT` is refused, absolute-form targets must name the configured API host, paths
//! must stay under `/api/v2/`, and callers authenticate with an API key unless anonymous
//! access is allowed (loopback sidecars only; enforced by config validation).

use base64::Engine;
use http::{HeaderMap, Method, Uri, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::InboundConfig;
use crate::proxy::Reject;

/// The header callers may carry their key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Checks the request line: method, target host, path. For HTTP/1.x an authority in the
/// target means absolute form (HTTP_PROXY style) and must name the API host; HTTP/2 always
/// carries `:authority`, which is only the caller's Host and never chooses the upstream.
///
/// # Errors
/// [`Reject::ConnectRefused`], [`Reject::ForeignHost`], [`Reject::NotApiPath`] or
/// [`Reject::BadPath`].
pub fn check_target(
    method: &Method,
    uri: &Uri,
    version: http::Version,
    api_authority: &http::uri::Authority,
) -> Result<(), Reject> {
    if method == Method::CONNECT {
        return Err(Reject::ConnectRefused);
    }
    let absolute_form = version < http::Version::HTTP_2;
    if let Some(authority) = uri.authority().filter(|_| absolute_form) {
        let same_host = authority.host().eq_ignore_ascii_case(api_authority.host());
        let same_port = authority.port_u16().or(default_port(uri))
            == api_authority.port_u16().or(default_port(uri));
        if !same_host || !same_port {
            return Err(Reject::ForeignHost);
        }
    }
    let path = uri.path();
    if !path.starts_with("/api/v2/") {
        return Err(Reject::NotApiPath);
    }
    if path.split('/').any(is_dot_segment) {
        return Err(Reject::BadPath);
    }
    Ok(())
}

fn default_port(uri: &Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// `.` or `..`, also when percent-encoded (`%2e`, `%2E%2e`, …).
fn is_dot_segment(segment: &str) -> bool {
    match segment.len() {
        // ".", "..", or one to two "%2e" (any case) mixed with ".": at most 6 bytes.
        1..=6 if segment.starts_with(['.', '%']) => {
            let lowered = segment.to_ascii_lowercase().replace("%2e", ".");
            lowered == "." || lowered == ".."
        }
        _ => false,
    }
}

/// Who may call: API key digests, or anyone when anonymous access is on.
#[derive(Debug, Clone)]
pub struct Authenticator {
    digests: Vec<(String, [u8; 32])>,
    anonymous: bool,
}

impl Authenticator {
    pub fn new(config: &InboundConfig) -> Self {
        Self {
            digests: config
                .api_keys
                .iter()
                .map(|k| (k.name.clone(), k.sha256))
                .collect(),
            anonymous: config.allow_anonymous,
        }
    }

    /// The name of the key the caller presented, or `None` for an anonymous caller.
    ///
    /// # Errors
    /// [`Reject::Unauthorized`] when a key is required and none matches.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<&str>, Reject> {
        for candidate in presented_keys(headers) {
            let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
            // Compare with every key, without an early exit, so timing says nothing.
            let mut found = None;
            for (name, known) in &self.digests {
                if bool::from(known.ct_eq(&digest)) && found.is_none() {
                    found = Some(name.as_str());
                }
            }
            if found.is_some() {
                return Ok(found);
            }
        }
        if self.anonymous {
            Ok(None)
        } else {
            Err(Reject::Unauthorized)
        }
    }
}

/// Keys from `X-API-Key` and from the password of HTTP Basic (Data Actions send either).
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    let api_keys = headers
        .get_all(API_KEY_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned());
    let basic = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(basic_password);
    api_keys.chain(basic)
}

fn basic_password(value: &str) -> Option<String> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn authority() -> http::uri::Authority {
        "api.mypurecloud.com".parse().unwrap()
    }

    #[test]
    fn target_checks() {
        let a = authority();
        let ok =
            |m: Method, u: &str| check_target(&m, &u.parse().unwrap(), http::Version::HTTP_11, &a);
        assert!(ok(Method::GET, "/api/v2/users?pageSize=1").is_ok());
        assert!(ok(Method::GET, "https://api.mypurecloud.com/api/v2/users").is_ok());
        assert!(ok(Method::GET, "http://API.mypurecloud.com:80/api/v2/users").is_ok());
        assert!(matches!(
            ok(Method::GET, "http://evil.example/api/v2/users"),
            Err(Reject::ForeignHost)
        ));
        assert!(matches!(
            ok(Method::GET, "https://api.mypurecloud.com:8443/api/v2/users"),
            Err(Reject::ForeignHost)
        ));
        assert!(matches!(
            ok(Method::CONNECT, "api.mypurecloud.com:443"),
            Err(Reject::ConnectRefused)
        ));
        assert!(matches!(
            ok(Method::GET, "/metrics"),
            Err(Reject::NotApiPath)
        ));
        assert!(matches!(
            ok(Method::GET, "/api/v2"),
            Err(Reject::NotApiPath)
        ));
        assert!(matches!(
            ok(Method::GET, "/api/v2/../../x"),
            Err(Reject::BadPath)
        ));
        assert!(matches!(
            ok(Method::GET, "/api/v2/%2e%2E/x"),
            Err(Reject::BadPath)
        ));
        assert!(ok(Method::GET, "/api/v2/users/a.b").is_ok());
        let h2 = check_target(
            &Method::GET,
            &"https://gcpool.example:8443/api/v2/users".parse().unwrap(),
            http::Version::HTTP_2,
            &a,
        );
        assert!(
            h2.is_ok(),
            "an HTTP/2 :authority is the caller's Host, not a target"
        );
    }

    #[test]
    fn api_key_from_header_or_basic_password() {
        let key = "s3cret-key";
        let config = InboundConfig {
            api_keys: vec![ApiKey {
                name: "data-actions".into(),
                sha256: Sha256::digest(key).into(),
            }],
            allow_anonymous: false,
            allow_routes: vec![],
        };
        let auth = Authenticator::new(&config);
        let mut h = HeaderMap::new();
        assert!(matches!(auth.authenticate(&h), Err(Reject::Unauthorized)));
        h.insert(API_KEY_HEADER, key.parse().unwrap());
        assert_eq!(auth.authenticate(&h).unwrap(), Some("data-actions"));
        let mut h = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{key}"));
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(auth.authenticate(&h).unwrap(), Some("data-actions"));
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, "wrong".parse().unwrap());
        assert!(matches!(auth.authenticate(&h), Err(Reject::Unauthorized)));
    }
}
