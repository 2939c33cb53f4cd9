//! The pooled HTTP client to Genesys (API and login hosts): hyper-util over rustls.
//!
//! `https://` for the real regions, plain `http://` for the simulator. Request bodies are
//! [`Full`] buffers (so an attempt can be replayed on another client); response bodies are
//! streamed back as they arrive.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Why an upstream exchange produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream request failed")]
    Transport(#[source] hyper_util::client::legacy::Error),
    #[error("upstream did not answer in time")]
    Timeout,
}

impl UpstreamError {
    /// Whether the request surely never reached the upstream application
    /// (safe to retry for any method).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_connect())
    }
}

/// A cheap-to-clone pooled client.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Upstream {
    /// Builds the client with the webpki roots (no system trust store needed in a
    /// distroless image).
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = HyperClient::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(1024)
            .build(https);
        Self { client }
    }

    /// Sends one request and waits for its response head, at most `timeout`.
    ///
    /// # Errors
    /// [`UpstreamError::Timeout`] past `timeout`, [`UpstreamError::Transport`] when the
    /// connection fails.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(UpstreamError::Transport(e)),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}
