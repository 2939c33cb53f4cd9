//! What happened to one request, recorded in the metrics once, when the request ends: its
//! admissions (time queued), its upstream exchanges (client, status, time) and how it was
//! answered.
//! Recorded on drop, so the attempts of a caller who left midway count too (the request
//! itself does not: it has no status).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::metrics::Metrics;
use crate::pool::PoolClient;

/// One request's facts, until it ends.
#[derive(Debug)]
pub(super) struct Exchange<'a> {
    metrics: &'a Metrics,
    method: &'static str,
    /// The operation template, or `other`.
    pub(super) route: &'static str,
    /// How long each admission waited (for its slot, and for a token).
    admissions: Vec<Duration>,
    attempts: Vec<Attempt>,
    answer: Option<Answer>,
}

#[derive(Debug)]
struct Attempt {
    client: Arc<PoolClient>,
    /// `None`: no answer (connection failed, or the deadline passed).
    status: Option<StatusCode>,
    took: Duration,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    outcome: Outcome,
}

/// How the request was answered, for `gcpool_requests_total{outcome}`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    Forwarded,
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
            admissions: Vec::new(),
            attempts: Vec::new(),
            answer: None,
        }
    }

    /// An admission that waited `waited` (also one whose slot was given back).
    pub(super) fn admitted(&mut self, waited: Duration) {
        self.admissions.push(waited);
    }

    /// One upstream exchange on `client`.
    pub(super) fn attempted(
        &mut self,
        client: &Arc<PoolClient>,
        status: Option<StatusCode>,
        took: Duration,
    ) {
        self.attempts.push(Attempt {
            client: client.clone(),
            status,
            took,
        });
    }

    /// Time spent waiting for admission, over all attempts.
    pub(super) fn queued(&self) -> Duration {
        self.admissions.iter().sum()
    }

    /// The request was answered with `status`.
    pub(super) fn answered(&mut self, status: StatusCode, outcome: Outcome) {
        self.answer = Some(Answer { status, outcome });
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        for waited in &self.admissions {
            m.queue_wait.observe(waited.as_secs_f64());
        }
        for attempt in &self.attempts {
            let client = attempt.client.name.as_str();
            m.upstream_duration
                .with_label_values(&[self.route])
                .observe(attempt.took.as_secs_f64());
            let status = attempt.status.as_ref().map_or("error", StatusCode::as_str);
            m.upstream_requests
                .with_label_values(&[client, status])
                .inc();
            if attempt.status == Some(StatusCode::TOO_MANY_REQUESTS) {
                m.upstream_429
                    .with_label_values(&[client, self.route])
                    .inc();
            }
        }
        let Some(answer) = &self.answer else {
            return;
        };
        let outcome = match answer.outcome {
            Outcome::Forwarded => "forwarded",
            Outcome::Rejected(_) => "rejected",
            Outcome::Error => "error",
        };
        m.requests
            .with_label_values(&[self.route, self.method, answer.status.as_str(), outcome])
            .inc();
        if let Outcome::Rejected(reason) = answer.outcome {
            m.rejections.with_label_values(&[reason]).inc();
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
