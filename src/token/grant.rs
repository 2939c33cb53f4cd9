//! The OAuth client-credentials grant: the only code that sends a client secret.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use crate::secret::Secret;
use crate::upstream::{Upstream, UpstreamError};

/// Longest token lifetime believed (s); longer-lived tokens are simply refreshed sooner.
const MAX_LIFETIME_S: u64 = 7 * 24 * 3600;

/// Largest token answer read (they are a few hundred bytes).
const MAX_GRANT_BODY: usize = 64 * 1024;

/// A freshly minted access token.
#[derive(Debug)]
pub struct Granted {
    pub access_token: Secret,
    pub expires_in: Duration,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("credentials rejected by the login host ({status})")]
    Rejected { status: StatusCode },
    #[error("login host is rate limiting token requests")]
    RateLimited { retry_after: Option<Duration> },
    #[error("login host answered {status}")]
    Status { status: StatusCode },
    #[error("login host {host} unreachable")]
    Transport {
        /// `scheme://host:port` of the login host.
        host: String,
        #[source]
        source: UpstreamError,
    },
    #[error("token answer unreadable: {0}")]
    Malformed(String),
}

impl GrantError {
    /// Whether the client's credentials themselves were refused (not a passing fault).
    pub fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

/// Mints a token at `{login_base}/oauth/token` with HTTP Basic client authentication.
///
/// # Errors
/// See [`GrantError`]; its messages never contain the secret or a token.
pub async fn client_credentials(
    upstream: &Upstream,
    login_base: &Uri,
    client_id: &str,
    client_secret: &Secret,
    timeout: Duration,
) -> Result<Granted, GrantError> {
    let mut parts = login_base.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/oauth/token"));
    let uri =
        Uri::from_parts(parts).map_err(|e| GrantError::Malformed(format!("login URL: {e}")))?;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{client_id}:{}", client_secret.expose()));
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from_static(
            b"grant_type=client_credentials",
        )))
        .map_err(|e| GrantError::Malformed(format!("request: {e}")))?;

    let response =
        upstream
            .send(request, timeout)
            .await
            .map_err(|source| GrantError::Transport {
                host: login_base.to_string().trim_end_matches('/').to_owned(),
                source,
            })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = Limited::new(response.into_body(), MAX_GRANT_BODY)
        .collect()
        .await
        .map_err(|e| GrantError::Malformed(format!("body: {e}")))?
        .to_bytes();

    match status {
        s if s.is_success() => {}
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return Err(GrantError::Rejected { status });
        }
        StatusCode::TOO_MANY_REQUESTS => return Err(GrantError::RateLimited { retry_after }),
        _ => return Err(GrantError::Status { status }),
    }
    let answer: TokenAnswer =
        serde_json::from_slice(&body).map_err(|e| GrantError::Malformed(format!("json: {e}")))?;
    if answer.access_token.is_empty() {
        return Err(GrantError::Malformed("empty access_token".into()));
    }
    Ok(Granted {
        access_token: Secret::new(answer.access_token),
        // Genesys' default lifetime is 24 h; an answer without expires_in gets the minimum
        // client lifetime (5 min) so it is refreshed early rather than late.
        // Clamped to a week: a silly value must not overflow instant arithmetic.
        expires_in: Duration::from_secs(answer.expires_in.unwrap_or(300).clamp(1, MAX_LIFETIME_S)),
    })
}
