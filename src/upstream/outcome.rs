//! What one upstream attempt came to, classified once: the request path decides what to do
//! next from the class alone (answer, cool down and retry elsewhere, drop the token, back
//! off), never from status codes of its own.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use super::limit::UpstreamLimit;
use super::{UpstreamBody, UpstreamError};

/// Largest 429 body read to learn which limit fired.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What an outcome means for trying again, without its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Answered,
    RateLimited,
    Unauthorized,
    Transient,
    /// No answer by the deadline.
    TimedOut,
    /// No answer, and the request surely never reached the upstream application.
    Unreached,
    /// No answer; the request may have reached the upstream.
    Failed,
}

/// The upstream's answer to one attempt.
#[derive(Debug)]
pub enum Outcome {
    /// An answer to pass on as it is (success or not); its body streams.
    Answered(Response<UpstreamBody>),
    /// 429: the limit it named, and the answer with the body read so far (at most 64 KiB,
    /// by the deadline), ready to pass on when no retry is left.
    RateLimited {
        limit: UpstreamLimit,
        response: Response<Bytes>,
    },
    /// 401: the token was refused (revoked, idle-expired).
    Unauthorized(Response<UpstreamBody>),
    /// 502, 503 or 504: the upstream failed, perhaps only for now.
    Transient(Response<UpstreamBody>),
    /// No answer: the connection failed or the deadline passed.
    Failed(UpstreamError),
}

impl Outcome {
    /// Classifies what [`Upstream::send`](super::Upstream::send) returned; a 429's body is
    /// read by `deadline`.
    pub async fn classify(
        sent: Result<Response<UpstreamBody>, UpstreamError>,
        deadline: Instant,
    ) -> Self {
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Self::Failed(error),
        };
        match response.status() {
            // Rare, and reading a body: boxed, so it does not swell every request's future.
            StatusCode::TOO_MANY_REQUESTS => Box::pin(Self::rate_limited(response, deadline)).await,
            StatusCode::UNAUTHORIZED => Self::Unauthorized(response),
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Self::Transient(response),
            _ => Self::Answered(response),
        }
    }

    async fn rate_limited(response: Response<UpstreamBody>, deadline: Instant) -> Self {
        let (mut head, body) = response.into_parts();
        let body = tokio::time::timeout_at(deadline, Limited::new(body, MAX_ERROR_BODY).collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        // The body is now what was read; its length is set anew.
        head.headers.remove(header::CONTENT_LENGTH);
        head.headers.remove(header::TRANSFER_ENCODING);
        let limit = UpstreamLimit::parse(&head.headers, &body);
        Self::RateLimited {
            limit,
            response: Response::from_parts(head, body),
        }
    }

    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Answered(_) => OutcomeKind::Answered,
            Self::RateLimited { .. } => OutcomeKind::RateLimited,
            Self::Unauthorized(_) => OutcomeKind::Unauthorized,
            Self::Transient(_) => OutcomeKind::Transient,
            Self::Failed(UpstreamError::Timeout) => OutcomeKind::TimedOut,
            Self::Failed(error) if error.is_connect() => OutcomeKind::Unreached,
            Self::Failed(_) => OutcomeKind::Failed,
        }
    }

    /// The status the upstream answered with; `None` when it did not answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Answered(r) | Self::Unauthorized(r) | Self::Transient(r) => Some(r.status()),
            Self::RateLimited { response, .. } => Some(response.status()),
            Self::Failed(_) => None,
        }
    }
}
