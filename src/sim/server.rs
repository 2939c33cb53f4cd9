//! HTTP face of the simulator: accept loop, routing, and Genesys-shaped answers.
//!
//! Endpoints: `POST /oauth/token`, `/api/v2/**` (echo; `x-sim-*` request headers steer the
//! answer: status, delay, headers, its size, a body that stalls midway), `GET /sim/stats`,
//! `POST /sim/revoke-tokens`, `POST /sim/refuse-tokens?client_id=ID&refused=true|false`,
//! `POST /sim/reset-stats`; anything else is a 404.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::state::{Admission, Grant, State};

/// Largest request body read; larger ones get 413.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// How long in-flight requests may run on after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Accepts connections on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (bounded by a grace period).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "simulator listening");
    }
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(stalled(handle(&state, req).await)) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%peer, %error, "simulator connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("simulator shutdown: in-flight requests still running after {SHUTDOWN_GRACE:?}");
    }
    info!("simulator stopped");
    Ok(())
}

/// Routes one request; never fails, every problem becomes an answer.
async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with("/api/v2/") || path == "/api/v2" {
        return api(state, req).await;
    }
    let method = req.method().clone();
    let route = match (&method, path) {
        (&Method::POST, "/oauth/token") => return token(state, req).await,
        (&Method::GET, "/sim/stats") => Some(SimRoute::Stats),
        (&Method::POST, "/sim/revoke-tokens") => Some(SimRoute::Revoke),
        (&Method::POST, "/sim/refuse-tokens") => match refuse_query(req.uri().query()) {
            Some((client_id, refused)) => Some(SimRoute::Refuse { client_id, refused }),
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad.request",
                    "expected ?client_id=ID&refused=true|false",
                );
            }
        },
        (&Method::POST, "/sim/reset-stats") => Some(SimRoute::Reset),
        _ => None,
    };
    // Read the body so the connection stays usable for the next request.
    if let Err(rsp) = read_body(req.into_body()).await {
        return rsp;
    }
    match route {
        Some(SimRoute::Stats) => match serde_json::to_vec(&state.stats()) {
            Ok(body) => json_response(StatusCode::OK, Bytes::from(body)),
            Err(error) => {
                warn!(%error, "serialising simulator stats");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal.server.error",
                    "The server encountered an unexpected condition which prevented it from fulfilling the request.",
                )
            }
        },
        Some(SimRoute::Revoke) => {
            state.revoke_tokens();
            info!("simulator revoked every issued token");
            no_content()
        }
        Some(SimRoute::Refuse { client_id, refused }) => {
            state.set_tokens_refused(&client_id, refused);
            info!(
                client_id,
                refused, "simulator refuses this client's tokens: {refused}"
            );
            no_content()
        }
        Some(SimRoute::Reset) => {
            state.reset_stats();
            no_content()
        }
        None => not_found(),
    }
}

enum SimRoute {
    Stats,
    Revoke,
    Refuse { client_id: String, refused: bool },
    Reset,
}

/// `client_id=ID&refused=true|false` of `POST /sim/refuse-tokens`.
fn refuse_query(query: Option<&str>) -> Option<(String, bool)> {
    let (mut client_id, mut refused) = (None, None);
    for (key, value) in query?.split('&').filter_map(|pair| pair.split_once('=')) {
        match key {
            "client_id" if !value.is_empty() => client_id = Some(value.to_owned()),
            "refused" => refused = value.parse().ok(),
            _ => {}
        }
    }
    Some((client_id?, refused?))
}

/// `POST /oauth/token`: client-credentials grant.
async fn token(state: &State, req: Request<Incoming>) -> Response<Body> {
    let credentials = basic_credentials(req.headers());
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(rsp) => return rsp,
    };
    let grant_type_ok = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(k, v)| k == "grant_type" && v == "client_credentials");
    let creds = credentials
        .as_ref()
        .map(|(id, s)| (id.as_str(), s.as_str()));
    match state.grant(creds, grant_type_ok) {
        Grant::Granted {
            access_token,
            expires_in,
        } => {
            let body = json!({
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": expires_in,
            });
            json_value(StatusCode::OK, &body)
        }
        Grant::InvalidClient => {
            let body = json!({
                "error": "invalid_client",
                "description": "client authentication failed",
                "error_description": "client authentication failed",
            });
            json_value(StatusCode::UNAUTHORIZED, &body)
        }
        Grant::UnsupportedGrantType => {
            let body = json!({
                "error": "unsupported_grant_type",
                "description": "grant type not supported",
                "error_description": "grant type not supported",
            });
            json_value(StatusCode::BAD_REQUEST, &body)
        }
    }
}

/// `/api/v2/**`: authenticate, apply the limits at arrival, then echo.
async fn api(state: &State, req: Request<Incoming>) -> Response<Body> {
    let bearer = bearer_token(req.headers());
    let admission = state.admit(bearer, req.method(), req.uri().path());
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let client = match admission {
        Admission::Admitted { client } => client,
        Admission::NoToken => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "authentication.required",
                "No authentication bearer token specified in authorization header.",
            );
        }
        Admission::BadCredentials => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "bad.credentials",
                "Invalid login credentials.",
            );
        }
        Admission::Expired => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "credentials.expired",
                "The authentication token has expired.",
            );
        }
        Admission::RateLimited {
            retry_after_secs,
            limit,
        } => {
            let id = correlation_id();
            let mut body = json!({
                "message": format!("Rate limit exceeded the maximum. Retry the request in [{retry_after_secs}] seconds"),
                "code": "too.many.requests.retry.after",
                "status": 429,
                "contextId": id,
                "details": [],
                "errors": [],
            });
            if state.limit_in_body {
                body["limit"] = json!({
                    "key": limit.key,
                    "namespace": limit.namespace,
                    "value": limit.value,
                });
            }
            let mut rsp = json_value_with_id(StatusCode::TOO_MANY_REQUESTS, &body, &id);
            rsp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return rsp;
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(rsp) => return rsp,
    };
    let directives = match Directives::parse(&parts.headers) {
        Ok(d) => d,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "bad.request", &message),
    };
    if let Some(delay) = directives.delay {
        tokio::time::sleep(delay).await;
    }

    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(name, value)| json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())]))
        .collect();
    let mut echo = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
        "client": client,
    });
    if let Some(size) = directives.body_bytes {
        // Padded so the whole answer is about `size` bytes (a large page of results).
        echo["padding"] = Value::String(" ".repeat(size.saturating_sub(echo.to_string().len())));
    }
    let status = directives.status;
    let empty = parts.method == Method::HEAD || matches!(status.as_u16(), 204 | 205 | 304);
    let bytes = if empty {
        Bytes::new()
    } else {
        Bytes::from(echo.to_string())
    };
    let stall = directives.stall_after.map(|sent| StallAfter {
        body: bytes.clone(),
        sent,
    });
    let mut rsp = json_response(status, bytes);
    if let Some(stall) = stall {
        rsp.extensions_mut().insert(stall);
    }
    let mut replaced: Vec<HeaderName> = Vec::new();
    for (name, value) in directives.set_headers {
        // The first x-sim-set-header for a name replaces ours; later ones add values.
        if !replaced.contains(&name) {
            rsp.headers_mut().remove(&name);
            replaced.push(name.clone());
        }
        rsp.headers_mut().append(name, value);
    }
    rsp
}

/// Test-control request headers of an admitted request.
#[derive(Debug)]
struct Directives {
    status: StatusCode,
    set_headers: Vec<(HeaderName, HeaderValue)>,
    delay: Option<Duration>,
    /// `x-sim-stall-body-after: N`: send the first N bytes of the body, then nothing.
    stall_after: Option<usize>,
    /// `x-sim-body-bytes: N`: pad the echo to about N bytes (at most 64 MiB).
    body_bytes: Option<usize>,
}

/// A response whose body stalls: carried as an extension from `api` to the service, which
/// turns it into a [`StallingBody`].
#[derive(Debug, Clone)]
struct StallAfter {
    body: Bytes,
    sent: usize,
}

/// Sends the first part of a body (announcing the whole length), then never ends: an
/// upstream that stops mid-answer.
#[derive(Debug)]
pub(crate) struct StallingBody {
    first: Option<Bytes>,
    total: u64,
}

impl http_body::Body for StallingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(first) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first)))),
            // Never woken: the connection is dropped by the peer in the end.
            None => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.total)
    }
}

/// The body the simulator sends: whole, or stalling midway.
type SentBody = http_body_util::Either<Body, StallingBody>;

/// Applies `x-sim-stall-body-after` (see [`StallAfter`]).
fn stalled(response: Response<Body>) -> Response<SentBody> {
    let (mut parts, body) = response.into_parts();
    match parts.extensions.remove::<StallAfter>() {
        Some(stall) => {
            let first = stall.body.slice(..stall.sent.min(stall.body.len()));
            let total = stall.body.len() as u64;
            Response::from_parts(
                parts,
                http_body_util::Either::Right(StallingBody {
                    first: Some(first),
                    total,
                }),
            )
        }
        None => Response::from_parts(parts, http_body_util::Either::Left(body)),
    }
}

impl Directives {
    fn parse(headers: &HeaderMap) -> Result<Self, String> {
        let status = match headers.get("x-sim-status") {
            None => StatusCode::OK,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|n| (200..=599).contains(n))
                .and_then(|n| StatusCode::from_u16(n).ok())
                .ok_or_else(|| "x-sim-status must be a status code from 200 to 599".to_owned())?,
        };
        let delay = match headers.get("x-sim-delay-ms") {
            None => None,
            Some(v) => Some(Duration::from_millis(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        "x-sim-delay-ms must be a whole number of milliseconds".to_owned()
                    })?,
            )),
        };
        let stall_after = match headers.get("x-sim-stall-body-after") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        "x-sim-stall-body-after must be a whole number of bytes".to_owned()
                    })?,
            ),
        };
        let body_bytes = match headers.get("x-sim-body-bytes") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .filter(|&n| n <= 64 * 1024 * 1024)
                    .ok_or_else(|| {
                        "x-sim-body-bytes must be a whole number of bytes, at most 67108864"
                            .to_owned()
                    })?,
            ),
        };
        let mut set_headers = Vec::new();
        for v in headers.get_all("x-sim-set-header") {
            let parsed = v
                .to_str()
                .ok()
                .and_then(|s| s.split_once(':'))
                .and_then(|(n, v)| {
                    let name = HeaderName::from_bytes(n.trim().as_bytes()).ok()?;
                    let value = HeaderValue::from_str(v.trim()).ok()?;
                    Some((name, value))
                });
            match parsed {
                Some(pair) => set_headers.push(pair),
                None => return Err("x-sim-set-header must look like `name: value`".to_owned()),
            }
        }
        Ok(Self {
            status,
            set_headers,
            delay,
            stall_after,
            body_bytes,
        })
    }
}

/// Reads a whole body, up to [`MAX_BODY_BYTES`]; the error is the answer to send.
async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.entity.too.large",
            &format!("The request is over the size limit. Maximum bytes: {MAX_BODY_BYTES}"),
        )),
        Err(error) => {
            debug!(%error, "reading request body");
            Err(error_response(
                StatusCode::BAD_REQUEST,
                "bad.request",
                "The request could not be understood by the server due to malformed syntax.",
            ))
        }
    }
}

/// `Authorization: Basic base64(id:secret)`; None when missing or garbled.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// `Authorization: Bearer <token>`; None when missing, not Bearer or empty.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A random UUID-v4-shaped id for `ININ-Correlation-Id` and `contextId`.
fn correlation_id() -> String {
    let n: u128 = rand::random();
    let n = (n & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let id = correlation_id();
    json_response_with_id(status, body, &id)
}

fn json_response_with_id(status: StatusCode, body: Bytes, id: &str) -> Response<Body> {
    let mut rsp = Response::new(Full::new(body));
    *rsp.status_mut() = status;
    let headers = rsp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // As Genesys marks its answers (genesys-facts §2.1; SPEC §11).
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    if let Ok(id) = HeaderValue::from_str(id) {
        headers.insert("inin-correlation-id", id);
    }
    rsp
}

fn json_value(status: StatusCode, body: &Value) -> Response<Body> {
    json_response(status, Bytes::from(body.to_string()))
}

fn json_value_with_id(status: StatusCode, body: &Value, id: &str) -> Response<Body> {
    json_response_with_id(status, Bytes::from(body.to_string()), id)
}

/// Genesys' short error body: `{"message","code","status"}`.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = json!({ "message": message, "code": code, "status": status.as_u16() });
    json_value(status, &body)
}

fn not_found() -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "not.found",
        "The requested resource was not found.",
    )
}

fn no_content() -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::new()));
    *rsp.status_mut() = StatusCode::NO_CONTENT;
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn basic_credentials_parse_and_garbage() {
        let ok = base64::engine::general_purpose::STANDARD.encode("id-1:se:cret");
        let h = headers(&[("authorization", format!("Basic {ok}").as_bytes())]);
        assert_eq!(
            basic_credentials(&h),
            Some(("id-1".into(), "se:cret".into())),
            "secret may contain ':'"
        );
        for bad in [
            &b"Basic !!!"[..],
            b"Bearer abc",
            b"Basic",
            b"Basic \xff\xfe",
        ] {
            assert_eq!(basic_credentials(&headers(&[("authorization", bad)])), None);
        }
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        let h = headers(&[("authorization", format!("Basic {no_colon}").as_bytes())]);
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn bearer_token_parse() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", b"Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", b"bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", b"Bearer ")])),
            None
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", b"Basic abc")])),
            None
        );
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn directives_reject_bad_values() {
        assert!(Directives::parse(&headers(&[("x-sim-status", b"100")])).is_err());
        assert!(Directives::parse(&headers(&[("x-sim-status", b"600")])).is_err());
        assert!(Directives::parse(&headers(&[("x-sim-status", b"abc")])).is_err());
        assert!(Directives::parse(&headers(&[("x-sim-delay-ms", b"-1")])).is_err());
        assert!(Directives::parse(&headers(&[("x-sim-set-header", b"no colon")])).is_err());
        assert!(Directives::parse(&headers(&[("x-sim-set-header", b"bad name: v")])).is_err());
        let d = Directives::parse(&headers(&[
            ("x-sim-status", b"503"),
            ("x-sim-set-header", b"retry-after: 3"),
            ("x-sim-delay-ms", b"20"),
        ]))
        .unwrap();
        assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(d.set_headers.len(), 1);
        assert_eq!(d.delay, Some(Duration::from_millis(20)));
    }

    #[test]
    fn refuse_tokens_query() {
        assert_eq!(
            refuse_query(Some("client_id=sim-client-02&refused=true")),
            Some(("sim-client-02".into(), true))
        );
        assert_eq!(
            refuse_query(Some("refused=false&client_id=a")),
            Some(("a".into(), false))
        );
        for bad in [
            None,
            Some(""),
            Some("client_id=a"),
            Some("client_id=&refused=true"),
            Some("client_id=a&refused=yes"),
        ] {
            assert_eq!(refuse_query(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn correlation_id_is_uuid_shaped() {
        let id = correlation_id();
        let groups: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4", "version nibble");
        assert_ne!(correlation_id(), id);
    }
}
