//! Caller-side checks before anything is spent: the request target, the caller's key.
//!
//! `CONNECT` is refused, absolute-form targets must name the configured API host, paths
//! must stay under `/api/v2/` (also once percent-decoded), methods must be ones the
//! Platform API has for the path, and callers authenticate with an API key unless anonymous
//! access is allowed (loopback sidecars only; enforced by config validation).

use base64::Engine;
use http::{HeaderMap, Method, Uri, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::InboundConfig;
use crate::proxy::Reject;
use crate::routes::{Route, RouteMethod, RouteTable};

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
    if has_dot_segment(path) {
        return Err(Reject::BadPath);
    }
    Ok(())
}

/// Checks the method against the operations the route table has for the path: a method no
/// operation has there gets 405 (HEAD is allowed wherever GET is). A path the table does
/// not know is forwarded with any method the Platform API uses (the table may be older
/// than the API), and refused with any other (`TRACE`, `OPTIONS`, extension methods).
///
/// # Errors
/// [`Reject::MethodNotAllowed`] naming the methods that are allowed.
pub fn check_method(
    method: &Method,
    path: &str,
    route: &Route,
    table: &RouteTable,
) -> Result<(), Reject> {
    if matches!(route, Route::Known(_)) {
        return Ok(());
    }
    let mut allowed = table.methods_for(path);
    if allowed.is_empty() {
        if RouteMethod::from_http(method).is_some() {
            return Ok(());
        }
        allowed = RouteMethod::ALL.to_vec();
    } else if allowed.contains(&RouteMethod::Get) && !allowed.contains(&RouteMethod::Head) {
        // HEAD goes wherever GET does (`RouteTable::lookup` made it the GET operation).
        allowed.push(RouteMethod::Head);
    }
    Err(Reject::MethodNotAllowed {
        method: method.as_str().chars().take(32).collect(),
        allowed,
    })
}

fn default_port(uri: &Uri) -> Option<u16> {
    match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    }
}

/// Whether the path, percent-decoded as a hop that decodes it would read it, has a `.` or
/// `..` segment: `/`, a backslash, `%2F` and `%5C` (any case) separate segments and `%2E` is a
/// dot. So `/api/v2/users/x%2F..%2F..%2Fauthorization` is caught, while a `%2F` inside an
/// ordinary segment (`rows/key%2Fwith%2Fslashes`) is not a traversal. A dot segment with
/// path parameters (`..;`, `..%3Bx`) counts too: servers that read `;` parameters
/// (Tomcat, Jetty) treat it as `..`.
fn has_dot_segment(path: &str) -> bool {
    #[derive(PartialEq)]
    enum Token {
        Separator,
        Dot,
        /// `;` (or `%3B`): path parameters follow.
        Params,
        Other,
    }
    let bytes = path.as_bytes();
    let (mut at, mut dots, mut only_dots) = (0, 0usize, true);
    loop {
        let (token, width) = match bytes.get(at) {
            None => (Token::Separator, 1),
            Some(b'/' | b'\\') => (Token::Separator, 1),
            Some(b'.') => (Token::Dot, 1),
            Some(b';') => (Token::Params, 1),
            Some(b'%') => match (bytes.get(at + 1), bytes.get(at + 2)) {
                (Some(b'2'), Some(b'f' | b'F')) | (Some(b'5'), Some(b'c' | b'C')) => {
                    (Token::Separator, 3)
                }
                (Some(b'2'), Some(b'e' | b'E')) => (Token::Dot, 3),
                (Some(b'3'), Some(b'b' | b'B')) => (Token::Params, 3),
                _ => (Token::Other, 1),
            },
            Some(_) => (Token::Other, 1),
        };
        match token {
            Token::Separator => {
                if only_dots && (dots == 1 || dots == 2) {
                    return true;
                }
                if at >= bytes.len() {
                    return false;
                }
                (dots, only_dots) = (0, true);
            }
            Token::Dot => dots += 1,
            Token::Params => {
                if only_dots && (dots == 1 || dots == 2) {
                    return true;
                }
                only_dots = false;
            }
            Token::Other => only_dots = false,
        }
        at += width;
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
        for traversal in [
            "/api/v2/..%2f..%2fetc/passwd",
            "/api/v2/users/x%2F..%2F..%2Fauthorization%2Froles",
            "/api/v2/users/x%5c..%5Cy",
            "/api/v2/users/.%2E",
            "/api/v2/users/x%2f.",
            "/api/v2/users/%2e",
            "/api/v2/users/..;/..;/authorization/roles",
            "/api/v2/users/%2e%2e;x=1",
            "/api/v2/users/..%3b",
            "/api/v2/users/.;",
        ] {
            assert!(
                matches!(ok(Method::GET, traversal), Err(Reject::BadPath)),
                "{traversal}"
            );
        }
        for fine in [
            "/api/v2/flows/datatables/d/rows/a%2Fb%2Fc",
            "/api/v2/users/...",
            "/api/v2/users/.x",
            "/api/v2/users/x%2F...%2Fy",
            "/api/v2/users/%2e%2e%2e",
            "/api/v2/users/%2",
            "/api/v2/users/x%",
            "/api/v2/users/a;b",
            "/api/v2/users/x..;",
        ] {
            assert!(ok(Method::GET, fine).is_ok(), "{fine}");
        }
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
    fn methods_the_table_has_for_the_path() {
        let table = RouteTable::genesys();
        let check = |m: &str, path: &str| {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            let route = table.lookup(&method, path);
            check_method(&method, path, &route, table)
        };
        assert!(check("GET", "/api/v2/users").is_ok());
        assert!(
            check("HEAD", "/api/v2/users").is_ok(),
            "HEAD wherever GET is"
        );
        assert!(check("GET", "/api/v2/not/in/the/table").is_ok());
        assert!(check("DELETE", "/api/v2/not/in/the/table").is_ok());
        let Err(Reject::MethodNotAllowed { allowed, .. }) = check("DELETE", "/api/v2/users") else {
            panic!("DELETE /api/v2/users has no operation");
        };
        assert_eq!(
            allowed,
            [RouteMethod::Get, RouteMethod::Post, RouteMethod::Head]
        );
        assert!(matches!(
            check("FOO", "/api/v2/not/in/the/table"),
            Err(Reject::MethodNotAllowed { allowed, .. }) if allowed.len() == RouteMethod::ALL.len()
        ));
        assert!(check("TRACE", "/api/v2/users/me").is_err());
        assert!(check("OPTIONS", "/api/v2/users/me").is_err());
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
