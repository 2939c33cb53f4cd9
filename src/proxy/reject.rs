//! Why gcpool answered a request itself, and how that answer looks: one place decides the
//! status, the Genesys-shaped JSON body, `x-gcpool-reason` and the metric label.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use serde_json::json;

use super::ProxyBody;
use crate::budget::BudgetKind;
use crate::routes::{Operation, RouteMethod};
use crate::upstream::UpstreamError;

/// The gcpool budget named in a local 429's `limit` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The budget's name, e.g. `token:pool-01` or `org`.
    pub key: String,
    /// Its rate per minute.
    pub value: u32,
}

/// Response header naming why gcpool refused or failed a request.
pub const REASON_HEADER: &str = "x-gcpool-reason";

/// Why gcpool answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("CONNECT is not supported: gcpool is an API gateway, not a tunnel")]
    ConnectRefused,
    #[error("absolute-form requests are forwarded only to the configured Genesys API host")]
    ForeignHost,
    #[error("only /api/v2/ paths are forwarded")]
    NotApiPath,
    #[error("the path contains dot segments (also percent-encoded, or made by %2F or %5C)")]
    BadPath,
    #[error("the Platform API has no {method} operation for this path; allowed: {}", allow_list(.allowed))]
    MethodNotAllowed {
        method: String,
        allowed: Vec<RouteMethod>,
    },
    #[error("the request body could not be read")]
    BadBody,
    #[error("the request body did not arrive before the request deadline")]
    BodyTimeout,
    #[error("the request is over the size limit. Maximum bytes: {0}")]
    BodyTooLarge(u64),
    #[error("too many request bodies are in flight; retry shortly")]
    BodyMemory,
    #[error(
        "the caller is not authenticated: send X-API-Key or HTTP Basic with the key as password"
    )]
    Unauthorized,
    #[error("route {0} is not on this gcpool's allow-list")]
    RouteNotAllowed(String),
    #[error("no OAuth client of the pool has a usable token")]
    NoHealthyClient,
    #[error("the {} admits no request within the queue's max wait", budget_phrase(*.kind))]
    OverBudget {
        kind: BudgetKind,
        retry_after: Duration,
        limit: Option<LimitInfo>,
    },
    #[error("too many requests are already waiting for a slot")]
    QueueFull,
    #[error("no slot frees up before the request's deadline")]
    Deadline {
        retry_after: Duration,
        limit: Option<LimitInfo>,
    },
    #[error("every client of the pool is cooling down after upstream 429s")]
    AllCoolingDown { retry_after: Duration },
    #[error("the Genesys API is unreachable")]
    UpstreamUnreachable(#[source] UpstreamError),
    #[error("the Genesys API did not answer before the request deadline")]
    UpstreamTimeout,
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ConnectRefused | Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::ForeignHost | Self::BadPath | Self::BadBody => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyMemory => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotApiPath => StatusCode::NOT_FOUND,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RouteNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::NoHealthyClient => StatusCode::SERVICE_UNAVAILABLE,
            Self::OverBudget { .. }
            | Self::QueueFull
            | Self::Deadline { .. }
            | Self::AllCoolingDown { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Value of `x-gcpool-reason` and of the `reason` label of `gcpool_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ConnectRefused | Self::ForeignHost | Self::BadPath | Self::BadBody => {
                "bad_request"
            }
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NotApiPath => "not_found",
            Self::BodyTimeout => "body_timeout",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::BodyMemory => "body_memory",
            Self::Unauthorized => "unauthorized",
            Self::RouteNotAllowed(_) => "route_not_allowed",
            Self::NoHealthyClient | Self::AllCoolingDown { .. } => "no_healthy_client",
            Self::OverBudget { kind, .. } => kind.reason(),
            Self::QueueFull => "queue_full",
            Self::Deadline { .. } => "deadline",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Genesys' error code for the status.
    fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad.request",
            StatusCode::UNAUTHORIZED => "authentication.required",
            StatusCode::FORBIDDEN => "route.not.allowed",
            StatusCode::TOO_MANY_REQUESTS => "too.many.requests.retry.after",
            StatusCode::NOT_FOUND => "not.found",
            StatusCode::METHOD_NOT_ALLOWED => "method.not.allowed",
            StatusCode::REQUEST_TIMEOUT => "request.timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "request.entity.too.large",
            StatusCode::BAD_GATEWAY => "bad.gateway",
            StatusCode::SERVICE_UNAVAILABLE => "service.unavailable",
            StatusCode::GATEWAY_TIMEOUT => "request.timeout",
            _ => "internal.server.error",
        }
    }

    /// Whether the caller caused it (counted as a rejection) rather than the upstream (an error).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, Self::UpstreamUnreachable(_) | Self::UpstreamTimeout)
    }

    /// How long the caller should wait before trying again (local 429s).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::OverBudget { retry_after, .. }
            | Self::Deadline { retry_after, .. }
            | Self::AllCoolingDown { retry_after } => Some(*retry_after),
            Self::QueueFull => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The answer sent to the caller. A local 429 carries Genesys' own 429 body and
    /// `Retry-After`, so SDKs and Data Actions treat it exactly like an upstream one.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = match self.retry_after() {
            Some(wait) => {
                let seconds = ceil_secs(wait).max(1);
                let mut body = json!({
                    "message": format!("Rate limit exceeded the maximum. Retry the request in [{seconds}] seconds"),
                    "code": self.code(),
                    "status": 429,
                    "contextId": context_id(),
                    "details": [],
                    "errors": [],
                });
                if let Self::OverBudget {
                    limit: Some(limit), ..
                }
                | Self::Deadline {
                    limit: Some(limit), ..
                } = &self
                {
                    body["limit"] =
                        json!({"key": limit.key, "namespace": "gcpool", "value": limit.value});
                }
                body
            }
            None => json!({
                "message": self.to_string(),
                "code": self.code(),
                "status": status.as_u16(),
            }),
        };
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(wait).max(1)),
            );
        }
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        if matches!(self, Self::ConnectRefused) {
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if let Self::MethodNotAllowed { allowed, .. } = &self
            && let Ok(value) = HeaderValue::from_str(&allow_list(allowed))
        {
            headers.insert(header::ALLOW, value);
        }
        if matches!(self, Self::NoHealthyClient | Self::BodyMemory) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `GET, POST, HEAD`: the value of an `Allow` header.
fn allow_list(methods: &[RouteMethod]) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON response gcpool writes itself.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn budget_phrase(kind: BudgetKind) -> &'static str {
    match kind {
        BudgetKind::Token => "token budget of every client",
        BudgetKind::Endpoint => "route's budget",
        BudgetKind::Org => "org budget",
    }
}

/// A random id for `contextId`, shaped like Genesys' correlation ids.
fn context_id() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The route as the allow-list refusal names it (never the raw path a caller sent).
pub(super) fn route_text(operation: Option<Operation>) -> String {
    operation.map_or_else(
        || "(not a known Genesys operation)".to_owned(),
        |op| op.to_string(),
    )
}

/// A duration as whole seconds, rounded up (for `Retry-After`).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
