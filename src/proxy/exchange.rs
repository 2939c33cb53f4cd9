//! What happened to one request, recorded in the metrics by one type, each fact once, as it
//! happens: each admission (time queued), each upstream exchange (client, status, time), and
//! how the request was answered. A caller who leaves midway leaves its admissions and
//! exchanges counted, not the request (it has no answer).

use std::time::Duration;

use http::{Method, StatusCode};

use std::sync::Arc;

use crate::cache::{CacheResult, ResultCounts};
use crate::inbound::UNKNOWN_CALLER;
use crate::metrics::Metrics;
use crate::pool::PoolClient;

/// One request's facts.
#[derive(Debug)]
pub(super) struct Exchange<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    /// The operation template, or `other`.
    pub(super) route: &'static str,
    /// Who asked, once the inbound checks know: a configured caller's name or
    /// `anonymous`; `unknown` until then.
    pub(super) caller: Option<Arc<str>>,
    /// Time spent waiting for admission, over all attempts (`x-gcpool-wait-ms`).
    queued: Duration,
    /// How the cache answered, on a cached route.
    pub(super) cache: Option<CacheResult>,
    /// The cached route's counters (`gcpool_cache_requests_total`).
    pub(super) cache_counts: Option<Arc<ResultCounts>>,
    /// gcpool answered it itself, and not as a refusal (a gateway login's token).
    pub(super) own_answer: bool,
}

/// How the request was answered, for `gcpool_requests_total{outcome}`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    Forwarded,
    /// Answered by gcpool itself, not as a refusal: a gateway login's token.
    Answered,
    /// Refused by gcpool, with the reason.
    Rejected(&'static str),
    /// No upstream answer to pass on.
    Error,
}

impl<'a> Exchange<'a> {
    pub(super) fn new(metrics: &'a Metrics, method: &Method) -> Self {
        Self {
            metrics,
            method: method_label(method),
            route: "other",
            caller: None,
            queued: Duration::ZERO,
            cache: None,
            cache_counts: None,
            own_answer: false,
        }
    }

    /// An admission that waited `waited` (also one whose slot was given back).
    pub(super) fn admitted(&mut self, waited: Duration) {
        self.queued += waited;
        self.metrics.queue_wait.observe(waited.as_secs_f64());
    }

    /// One upstream exchange on `client`: answered with `status` (`None`: no answer) after
    /// `took`.
    pub(super) fn attempted(
        &self,
        client: &PoolClient,
        status: Option<StatusCode>,
        took: Duration,
    ) {
        let m = self.metrics;
        let client = client.name.as_str();
        m.upstream_duration
            .with_label_values(&[self.route])
            .observe(took.as_secs_f64());
        let label = status.as_ref().map_or("error", StatusCode::as_str);
        m.upstream_requests
            .with_label_values(&[client, label])
            .inc();
        if status == Some(StatusCode::TOO_MANY_REQUESTS) {
            m.upstream_429
                .with_label_values(&[client, self.route])
                .inc();
        }
    }

    /// Time spent waiting for admission, over all attempts.
    pub(super) fn queued(&self) -> Duration {
        self.queued
    }

    /// The cache's part in the answer.
    pub(super) fn cached(&self, result: CacheResult) {
        if let Some(counts) = &self.cache_counts {
            counts.add(result);
        }
    }

    /// The request was answered with `status`.
    pub(super) fn answered(&self, status: StatusCode, outcome: Outcome) {
        let m = self.metrics;
        let label = match outcome {
            Outcome::Forwarded => "forwarded",
            Outcome::Answered => "answered",
            Outcome::Rejected(_) => "rejected",
            Outcome::Error => "error",
        };
        let caller = self.caller.as_deref().unwrap_or(UNKNOWN_CALLER);
        m.requests
            .with_label_values(&[self.route, self.method, status.as_str(), label, caller])
            .inc();
        if let Outcome::Rejected(reason) = outcome {
            m.rejections.with_label_values(&[reason, caller]).inc();
        }
    }
}

/// A bounded label for the method: the standard ones, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}
