//! The admin listener (never the public one):
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when a client has a usable token and no shutdown started; else 503 + JSON reason |
//! | `GET /status` | JSON: version, uptime, shared state, one entry per client |
//! | `GET /metrics` | Prometheus text exposition |

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::generation::{Generation, Live};
use crate::metrics::Metrics;
use crate::pool::ClientStatus;
use crate::proxy::{ProxyBody, json_response};

/// State the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    live: Arc<Live>,
    metrics: Metrics,
    shutdown: CancellationToken,
    started: Instant,
}

impl Admin {
    pub fn new(live: Arc<Live>, metrics: Metrics, shutdown: CancellationToken) -> Self {
        Self {
            live,
            metrics,
            shutdown,
            started: Instant::now(),
        }
    }

    pub async fn handle<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": "admin endpoints answer GET only", "code": "method.not.allowed", "status": 405}),
            );
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            "/readyz" => self.readyz(),
            "/status" => json_response(StatusCode::OK, &self.status().await),
            "/metrics" => {
                self.refresh_gauges().await;
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({"message": "admin paths: /healthz /readyz /status /metrics", "code": "not.found", "status": 404}),
            ),
        }
    }

    fn readyz(&self) -> Response<ProxyBody> {
        let (ready, reason) = if self.shutdown.is_cancelled() {
            (false, "shutting down")
        } else if !self.live.current().pool.is_ready(Instant::now()) {
            (false, "no client has a usable token")
        } else {
            (true, "")
        };
        if ready {
            json_response(StatusCode::OK, &json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": reason}),
            )
        }
    }

    async fn client_statuses(&self, live: &Generation) -> (Vec<ClientStatus>, (u32, u32)) {
        let now = Instant::now();
        let (usage, org, cooling) = live.admission.snapshot(&live.pool).await;
        let statuses = live
            .pool
            .clients()
            .zip(usage)
            .map(|((i, c), budget)| {
                let cooling = cooling.get(i).is_some_and(|d| !d.is_zero());
                c.status(now, budget, cooling)
            })
            .collect();
        (statuses, org)
    }

    async fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let live = self.live.current();
        let (clients, org) = self.client_statuses(&live).await;
        let store = live.admission.store();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": now.saturating_duration_since(self.started).as_secs(),
            "config_generation": live.number,
            "shared_state": {"backend": store.backend(), "up": store.is_up()},
            "org_budget": {"used": org.0, "limit": org.1},
            "queue_pending": live.admission.pending(),
            "learned_limits": live.admission.learned_limits(),
            "clients": clients,
        })
    }

    /// Gauges derived from state are computed at scrape time, not on the request path.
    async fn refresh_gauges(&self) {
        let live = self.live.current();
        self.metrics
            .shared_state_up
            .set(i64::from(live.admission.store().is_up()));
        let statuses = self.client_statuses(&live).await.0;
        // Only the current clients: a scrape that raced a reload must not bring back the
        // gauges of a removed client.
        for family in [
            &self.metrics.client_healthy,
            &self.metrics.client_budget_limit,
            &self.metrics.client_budget_used,
            &self.metrics.token_expires_in,
        ] {
            family.reset();
        }
        for status in statuses {
            let name = [status.name.as_str()];
            self.metrics
                .client_healthy
                .with_label_values(&name)
                .set(i64::from(status.healthy));
            self.metrics
                .client_budget_limit
                .with_label_values(&name)
                .set(i64::from(status.budget_limit));
            self.metrics
                .client_budget_used
                .with_label_values(&name)
                .set(i64::try_from(status.budget_used).unwrap_or(i64::MAX));
            self.metrics
                .token_expires_in
                .with_label_values(&name)
                .set(i64::try_from(status.token_expires_in_s).unwrap_or(i64::MAX));
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
