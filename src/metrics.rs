//! Every Prometheus family of SPEC §7, registered on a caller-supplied registry.
//!
//! No global registry and no `register_*!` macros: tests get independent registries and
//! `/metrics` shows exactly what is registered here. Label values come from closed sets
//! (route templates or `other`, reject reasons, client names from config).

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Buckets for latencies and waits, in seconds: 0.5 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The metric families gcpool exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub rejections: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_429: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub response_aborted: IntCounterVec,
    pub queue_wait: Histogram,
    pub queue_pending: IntGauge,
    pub queue_max_wait: Gauge,
    pub client_budget_used: IntGaugeVec,
    pub client_budget_limit: IntGaugeVec,
    pub client_healthy: IntGaugeVec,
    pub token_refresh: IntCounterVec,
    pub token_refused: IntCounterVec,
    pub token_expires_in: IntGaugeVec,
    pub shared_state_up: IntGauge,
    pub tls_handshake_failures: IntCounter,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub build_info: IntGaugeVec,
    pub cache_requests: IntCounterVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
}

// === impl Metrics ===

impl Metrics {
    /// Creates every family and registers it on `registry`.
    ///
    /// # Errors
    /// When a family is already registered on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> prometheus::Result<C> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let metrics = Self {
            registry: registry.clone(),
            requests: counter(
                "gcpool_requests_total",
                "Requests answered to callers, by route template, method, status, outcome and caller.",
                &["route", "method", "status", "outcome", "caller"],
            )?,
            rejections: counter(
                "gcpool_rejections_total",
                "Requests gcpool answered itself without forwarding, by reason and caller.",
                &["reason", "caller"],
            )?,
            upstream_requests: counter(
                "gcpool_upstream_requests_total",
                "Requests sent to the Genesys API, by client and status (error when no answer).",
                &["client", "status"],
            )?,
            upstream_429: counter(
                "gcpool_upstream_429_total",
                "429 answers from the Genesys API, by client and route.",
                &["client", "route"],
            )?,
            upstream_duration: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gcpool_upstream_duration_seconds",
                        "Time from sending a request upstream to its response headers.",
                    )
                    .buckets(SECONDS_BUCKETS.to_vec()),
                    &["route"],
                )?,
            )?,
            response_aborted: counter(
                "gcpool_response_aborted_total",
                "Answers cut before their end, by reason (upstream_stalled: the upstream \
                 body sent nothing for server.request_timeout; upstream_error: the upstream \
                 connection failed mid-body; caller_stalled: the caller took nothing of it \
                 for server.idle_timeout, and its connection was dropped).",
                &["reason"],
            )?,
            queue_wait: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "gcpool_queue_wait_seconds",
                        "Time a request waited for its admission slot.",
                    )
                    .buckets(SECONDS_BUCKETS.to_vec()),
                )?,
            )?,
            queue_pending: reg(
                registry,
                IntGauge::new(
                    "gcpool_queue_pending",
                    "Requests waiting for an admission slot.",
                )?,
            )?,
            queue_max_wait: reg(
                registry,
                Gauge::new(
                    "gcpool_queue_max_wait_seconds",
                    "budgets.queue.max_wait of the current config: the longest a request waits \
                     for its slot (alerts compare queue waits with it).",
                )?,
            )?,
            client_budget_used: gauge_vec(
                "gcpool_client_budget_used",
                "Admissions in the client's current budget window.",
                &["client"],
            )?,
            client_budget_limit: gauge_vec(
                "gcpool_client_budget_limit",
                "Admissions the client's budget allows per window.",
                &["client"],
            )?,
            client_healthy: gauge_vec(
                "gcpool_client_healthy",
                "1 when the client has a usable token and is not failed or cooling down.",
                &["client"],
            )?,
            token_refresh: counter(
                "gcpool_token_refresh_total",
                "Token grants attempted, by client and result (ok, error).",
                &["client", "result"],
            )?,
            token_refused: counter(
                "gcpool_token_refused_total",
                "Tokens the upstream refused (401), each counted once, by client and age: stale \
                 (older than the re-mint interval: re-minted) or fresh (younger: the client sits out).",
                &["client", "age"],
            )?,
            token_expires_in: gauge_vec(
                "gcpool_token_expires_in_seconds",
                "Seconds until the client's current token expires (0 when it has none).",
                &["client"],
            )?,
            shared_state_up: reg(
                registry,
                IntGauge::new(
                    "gcpool_shared_state_up",
                    "1 while the budget store in use answers (always 1 for the in-memory store).",
                )?,
            )?,
            tls_handshake_failures: reg(
                registry,
                IntCounter::new(
                    "gcpool_tls_handshake_failures_total",
                    "Inbound TLS handshakes that failed or timed out (plain HTTP to a TLS port included).",
                )?,
            )?,
            config_reloads: counter(
                "gcpool_config_reloads_total",
                "Config reloads (SIGHUP or file change), by result (applied, rejected).",
                &["result"],
            )?,
            config_last_reload_successful: reg(
                registry,
                IntGauge::new(
                    "gcpool_config_last_reload_successful",
                    "0 after a rejected config reload, until one is applied; 1 otherwise.",
                )?,
            )?,
            build_info: gauge_vec(
                "gcpool_build_info",
                "Always 1; the version label carries the build.",
                &["version"],
            )?,
            cache_requests: counter(
                "gcpool_cache_requests_total",
                "Requests on cached routes, by route template and result (hit, miss, coalesced, stale, bypass).",
                &["route", "result"],
            )?,
            cache_entries: reg(
                registry,
                IntGauge::new("gcpool_cache_entries", "Answers the response cache holds.")?,
            )?,
            cache_bytes: reg(
                registry,
                IntGauge::new(
                    "gcpool_cache_bytes",
                    "Bytes of keys and answers the response cache holds.",
                )?,
            )?,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics.shared_state_up.set(1);
        metrics.config_last_reload_successful.set(1);
        for result in ["applied", "rejected"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        for reason in ["upstream_stalled", "upstream_error", "caller_stalled"] {
            metrics.response_aborted.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    /// Drops the per-client gauges of a client a reload removed (its counters stay: they
    /// are totals).
    pub fn forget_client(&self, name: &str) {
        for family in [
            &self.client_budget_used,
            &self.client_budget_limit,
            &self.client_healthy,
            &self.token_expires_in,
        ] {
            let _ = family.remove_label_values(&[name]);
        }
    }

    /// The text exposition of everything registered.
    pub fn encode(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_family_is_exported() {
        let metrics = Metrics::register(&Registry::new()).unwrap();
        metrics
            .requests
            .with_label_values(&["other", "GET", "200", "forwarded", "anonymous"])
            .inc();
        metrics
            .rejections
            .with_label_values(&["deadline", "anonymous"])
            .inc();
        metrics
            .upstream_requests
            .with_label_values(&["pool-01", "200"])
            .inc();
        metrics
            .upstream_429
            .with_label_values(&["pool-01", "other"])
            .inc();
        metrics
            .upstream_duration
            .with_label_values(&["other"])
            .observe(0.01);
        metrics.queue_wait.observe(0.0);
        for family in [
            &metrics.client_budget_used,
            &metrics.client_budget_limit,
            &metrics.client_healthy,
            &metrics.token_expires_in,
        ] {
            family.with_label_values(&["pool-01"]).set(1);
        }
        metrics
            .token_refresh
            .with_label_values(&["pool-01", "ok"])
            .inc();
        metrics
            .token_refused
            .with_label_values(&["pool-01", "stale"])
            .inc();
        let text = metrics.encode();
        for name in [
            "gcpool_requests_total",
            "gcpool_rejections_total",
            "gcpool_upstream_requests_total",
            "gcpool_upstream_429_total",
            "gcpool_upstream_duration_seconds",
            "gcpool_response_aborted_total",
            "gcpool_queue_wait_seconds",
            "gcpool_queue_pending",
            "gcpool_queue_max_wait_seconds",
            "gcpool_client_budget_used",
            "gcpool_client_budget_limit",
            "gcpool_client_healthy",
            "gcpool_token_refresh_total",
            "gcpool_token_refused_total",
            "gcpool_token_expires_in_seconds",
            "gcpool_shared_state_up",
            "gcpool_tls_handshake_failures_total",
            "gcpool_config_reloads_total",
            "gcpool_config_last_reload_successful",
            "gcpool_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }
}
