//! Why gcpool answered a request itself, and how that answer looks: the one place where a
//! refusal of any layer (inbound, admission) or an upstream failure becomes an answer, with
//! its status, Genesys-shaped JSON body, `x-gcpool-reason` and metric label. A refused
//! gateway login gets the shape of Genesys' login errors (`error`, `description`,
//! `error_description`).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::ProxyBody;
use crate::admission::Refusal as Admission;
use crate::inbound::{LoginError, Refusal as Inbound, allow_list};
use crate::upstream::UpstreamError;

/// Response header naming why gcpool refused or failed a request.
pub const REASON_HEADER: &str = "x-gcpool-reason";

/// Why gcpool answered a request itself instead of passing an upstream answer on.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// The caller's request failed a check.
    #[error(transparent)]
    Inbound(#[from] Inbound),
    /// No slot, or no client, in time.
    #[error(transparent)]
    Admission(#[from] Admission),
    #[error("the Genesys API is unreachable")]
    UpstreamUnreachable(#[source] UpstreamError),
    #[error("the Genesys API did not answer before the request deadline")]
    UpstreamTimeout,
}

impl Reject {
    /// The failure of an upstream exchange that left no answer to pass on.
    pub fn upstream(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Timeout => Self::UpstreamTimeout,
            error => Self::UpstreamUnreachable(error),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Inbound(refusal) => match refusal {
                Inbound::ConnectRefused | Inbound::MethodNotAllowed { .. } => {
                    StatusCode::METHOD_NOT_ALLOWED
                }
                Inbound::ForeignHost
                | Inbound::BadPath
                | Inbound::BadBody
                | Inbound::BadMaxWait(_) => StatusCode::BAD_REQUEST,
                Inbound::NotApiPath => StatusCode::NOT_FOUND,
                Inbound::Unauthorized => StatusCode::UNAUTHORIZED,
                Inbound::RouteNotAllowed(_) | Inbound::RouteNotAllowedForCaller { .. } => {
                    StatusCode::FORBIDDEN
                }
                Inbound::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
                Inbound::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                Inbound::BodyMemory => StatusCode::SERVICE_UNAVAILABLE,
                // As Genesys' login: 401 for the client, 400 for the request.
                Inbound::Login(LoginError::InvalidClient) => StatusCode::UNAUTHORIZED,
                Inbound::Login(
                    LoginError::InvalidRequest(_) | LoginError::UnsupportedGrantType,
                ) => StatusCode::BAD_REQUEST,
            },
            Self::Admission(refusal) => match refusal {
                Admission::NoHealthyClient
                | Admission::ClientLost { .. }
                | Admission::Reconfigured { .. } => StatusCode::SERVICE_UNAVAILABLE,
                Admission::OverBudget { .. }
                | Admission::QueueFull
                | Admission::Deadline { .. }
                | Admission::AllCoolingDown { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Value of `x-gcpool-reason` and of the `reason` label of `gcpool_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Inbound(refusal) => match refusal {
                Inbound::ConnectRefused
                | Inbound::ForeignHost
                | Inbound::BadPath
                | Inbound::BadBody
                | Inbound::BadMaxWait(_)
                | Inbound::Login(
                    LoginError::InvalidRequest(_) | LoginError::UnsupportedGrantType,
                ) => "bad_request",
                Inbound::MethodNotAllowed { .. } => "method_not_allowed",
                Inbound::NotApiPath => "not_found",
                Inbound::Unauthorized | Inbound::Login(LoginError::InvalidClient) => "unauthorized",
                Inbound::RouteNotAllowed(_) | Inbound::RouteNotAllowedForCaller { .. } => {
                    "route_not_allowed"
                }
                Inbound::BodyTimeout => "body_timeout",
                Inbound::BodyTooLarge(_) => "body_too_large",
                Inbound::BodyMemory => "body_memory",
            },
            Self::Admission(refusal) => match refusal {
                Admission::NoHealthyClient
                | Admission::ClientLost { .. }
                | Admission::Reconfigured { .. }
                | Admission::AllCoolingDown { .. } => "no_healthy_client",
                Admission::OverBudget { kind, .. } => kind.reason(),
                Admission::QueueFull => "queue_full",
                Admission::Deadline { .. } => "deadline",
            },
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
            Self::Admission(
                Admission::OverBudget { retry_after, .. }
                | Admission::Deadline { retry_after, .. }
                | Admission::AllCoolingDown { retry_after },
            ) => Some(*retry_after),
            Self::Admission(Admission::QueueFull) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The JSON body: Genesys' own 429 body for a local 429 (with gcpool's budget in
    /// `limit`), else Genesys' error shape with the reason in words; `context_id` is its
    /// `contextId` (and the answer's `ININ-Correlation-Id`).
    fn body(&self, context_id: &str) -> serde_json::Value {
        if let Self::Inbound(Inbound::Login(error)) = self {
            // The SDKs' login code reads Genesys' login errors, not the API's.
            return json!({
                "error": error.code(),
                "description": error.description(),
                "error_description": error.description(),
            });
        }
        let Some(wait) = self.retry_after() else {
            return json!({
                "message": self.to_string(),
                "code": self.code(),
                "status": self.status().as_u16(),
                "contextId": context_id,
                "details": [],
                "errors": [],
            });
        };
        let seconds = ceil_secs(wait).max(1);
        let mut body = json!({
            "message": format!("Rate limit exceeded the maximum. Retry the request in [{seconds}] seconds"),
            "code": self.code(),
            "status": 429,
            "contextId": context_id,
            "details": [],
            "errors": [],
        });
        if let Self::Admission(
            Admission::OverBudget {
                limit: Some(limit), ..
            }
            | Admission::Deadline {
                limit: Some(limit), ..
            },
        ) = self
        {
            body["limit"] = json!({"key": limit.key, "namespace": "gcpool", "value": limit.value});
        }
        body
    }

    /// The answer sent to the caller. A local 429 carries Genesys' own 429 body and
    /// `Retry-After`, so SDKs and Data Actions treat it exactly like an upstream one; every
    /// answer carries `ININ-Correlation-Id`, equal to the body's `contextId`, as Genesys'
    /// do (SDKs log it).
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let context_id = context_id();
        let mut response = json_response(status, &self.body(&context_id));
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&context_id) {
            headers.insert(CORRELATION_HEADER, id);
        }
        if let Some(wait) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(wait).max(1)),
            );
        }
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        if matches!(self, Self::Inbound(Inbound::ConnectRefused)) {
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if let Self::Inbound(Inbound::MethodNotAllowed { allowed, .. }) = &self
            && let Ok(value) = HeaderValue::from_str(&allow_list(allowed))
        {
            headers.insert(header::ALLOW, value);
        }
        if matches!(
            self,
            Self::Inbound(Inbound::BodyMemory)
                | Self::Admission(
                    Admission::NoHealthyClient
                        | Admission::ClientLost { .. }
                        | Admission::Reconfigured { .. }
                )
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Genesys' correlation id header, on gcpool's own answers as on Genesys'.
const CORRELATION_HEADER: HeaderName = HeaderName::from_static("inin-correlation-id");

/// A JSON response gcpool writes itself.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(super::whole_body(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
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

/// A duration as whole seconds, rounded up (for `Retry-After`).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
