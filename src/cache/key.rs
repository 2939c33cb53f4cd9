//! What makes two requests the same cached answer (SPEC §11): the method, the raw path and
//! query byte for byte, and the request headers that change the answer: `Accept`,
//! `Accept-Language`, and whether the caller accepts gzip.
//!
//! Only gzip acceptance goes into the key, not the whole `Accept-Encoding`: Genesys
//! compresses with gzip, so callers that send `gzip, deflate` and `gzip` share answers.
//! [`super::storable`] keeps an answer in any other encoding out of the store.

use std::sync::Arc;

use http::header::{ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE};
use http::{HeaderMap, Method};

/// A cache key; cheap to clone (the store and the flights map both hold it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    bytes: Arc<[u8]>,
    gzip: bool,
}

impl Key {
    /// The key of a request: `target` is its path and query as received (origin form).
    pub fn new(method: &Method, target: &[u8], headers: &HeaderMap) -> Self {
        // NUL separates the parts: no method, target or header value can hold one (hyper
        // and `http` refuse it), so two different requests never make the same bytes.
        let mut bytes = Vec::with_capacity(target.len() + 64);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(target);
        for name in [ACCEPT, ACCEPT_LANGUAGE] {
            bytes.push(0);
            for (i, value) in headers.get_all(&name).iter().enumerate() {
                if i > 0 {
                    bytes.extend_from_slice(b", ");
                }
                bytes.extend_from_slice(value.as_bytes());
            }
        }
        let gzip = accepts_gzip(headers);
        bytes.push(0);
        bytes.push(if gzip { b'g' } else { b'i' });
        Self {
            bytes: bytes.into(),
            gzip,
        }
    }

    /// Whether the request accepts a gzip-encoded answer.
    pub fn accepts_gzip(&self) -> bool {
        self.gzip
    }

    /// Bytes the key holds (counted against `cache.max_bytes`).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a key holds at least its method.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The parts, readable; a key holds no credential (API keys and tokens are other
        // headers).
        let text: Vec<String> = self
            .bytes
            .split(|&b| b == 0)
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect();
        f.debug_tuple("Key").field(&text.join(" | ")).finish()
    }
}

/// Whether `Accept-Encoding` accepts gzip (RFC 9110 §12.5.3): a `gzip`, `x-gzip` or `*`
/// coding with a weight above 0, unless `gzip` itself is given weight 0.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for coding in value.split(',') {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let weight = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| v.trim().parse::<f32>().ok())
                        .flatten()
                })
                .unwrap_or(1.0);
            let accepted = weight > 0.0;
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(accepted);
            } else if name == "*" {
                any = Some(accepted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }

    fn key(target: &str, pairs: &[(&str, &str)]) -> Key {
        Key::new(&Method::GET, target.as_bytes(), &headers(pairs))
    }

    #[test]
    fn the_same_request_makes_the_same_key_and_other_headers_do_not_count() {
        let a = key(
            "/api/v2/routing/queues/q1",
            &[("accept", "application/json")],
        );
        let b = key(
            "/api/v2/routing/queues/q1",
            &[
                ("accept", "application/json"),
                ("x-api-key", "secret"),
                ("user-agent", "PureCloud SDK/python"),
            ],
        );
        assert_eq!(a, b);
    }

    #[test]
    fn path_query_method_and_the_answer_changing_headers_each_make_another_key() {
        let base = key("/api/v2/routing/queues/q1?expand=a", &[]);
        let others = [
            key("/api/v2/routing/queues/q2?expand=a", &[]),
            key("/api/v2/routing/queues/q1?expand=b", &[]),
            key("/api/v2/routing/queues/q1", &[]),
            // Byte for byte: another encoding of the same character is another key.
            key("/api/v2/routing/queues/%71%31?expand=a", &[]),
            key(
                "/api/v2/routing/queues/q1?expand=a",
                &[("accept", "text/csv")],
            ),
            key(
                "/api/v2/routing/queues/q1?expand=a",
                &[("accept-language", "fr")],
            ),
            key(
                "/api/v2/routing/queues/q1?expand=a",
                &[("accept-encoding", "gzip")],
            ),
            Key::new(
                &Method::HEAD,
                b"/api/v2/routing/queues/q1?expand=a",
                &HeaderMap::new(),
            ),
        ];
        for other in &others {
            assert_ne!(&base, other, "{other:?}");
        }
        // A header's value cannot leak into the next part.
        assert_ne!(
            key("/x", &[("accept", "a"), ("accept-language", "b")]),
            key("/x", &[("accept", "a, b")]),
        );
    }

    #[test]
    fn gzip_acceptance_follows_the_weights() {
        let cases = [
            ("gzip", true),
            ("gzip, deflate, br", true),
            ("GZIP;q=0.5", true),
            ("x-gzip", true),
            ("*", true),
            ("identity", false),
            ("deflate", false),
            ("gzip;q=0", false),
            ("gzip; q=0.0", false),
            ("*, gzip;q=0", false),
            ("*;q=0", false),
            ("", false),
        ];
        for (value, gzip) in cases {
            let k = key("/x", &[("accept-encoding", value)]);
            assert_eq!(k.accepts_gzip(), gzip, "{value:?}");
        }
        assert!(!key("/x", &[]).accepts_gzip(), "no Accept-Encoding");
        // Only the acceptance counts: these share answers.
        assert_eq!(
            key("/x", &[("accept-encoding", "gzip, deflate")]),
            key("/x", &[("accept-encoding", "gzip")]),
        );
    }
}
