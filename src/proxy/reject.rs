//! Why gcpool answered a request itself, and how that answer looks: one place decides the
//! status, the Genesys-shaped JSON body, `x-gcpool-reason` and the metric label.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use serde_json::json;

use super::ProxyBody;
use crate::upstream::UpstreamError;

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
    #[error("the path contains dot segments")]
    BadPath,
    #[error("the request body could not be read")]
    BadBody,
    #[error("the request is over the size limit. Maximum bytes: {0}")]
    BodyTooLarge(u64),
    #[error(
        "the caller is not authenticated: send X-API-Key or HTTP Basic with the key as password"
    )]
    Unauthorized,
    #[error("no OAuth client of the pool has a usable token")]
    NoHealthyClient,
    #[error("the Genesys API is unreachable")]
    UpstreamUnreachable(#[source] UpstreamError),
    #[error("the Genesys API did not answer before the request deadline")]
    UpstreamTimeout,
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            Self::ForeignHost | Self::BadPath | Self::BadBody => StatusCode::BAD_REQUEST,
            Self::NotApiPath => StatusCode::NOT_FOUND,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NoHealthyClient => StatusCode::SERVICE_UNAVAILABLE,
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
            Self::NotApiPath => "not_found",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::Unauthorized => "unauthorized",
            Self::NoHealthyClient => "no_healthy_client",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Genesys' error code for the status.
    fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad.request",
            StatusCode::UNAUTHORIZED => "authentication.required",
            StatusCode::NOT_FOUND => "not.found",
            StatusCode::METHOD_NOT_ALLOWED => "method.not.allowed",
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

    /// The answer sent to the caller.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body = json!({
            "message": self.to_string(),
            "code": self.code(),
            "status": status.as_u16(),
        });
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.reason()));
        if matches!(self, Self::ConnectRefused) {
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if matches!(self, Self::NoHealthyClient) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
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

/// A duration as whole seconds, rounded up (for `Retry-After`).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
