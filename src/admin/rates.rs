//! The status page's "last minute": upstream and local 429s, admissions and queue wait,
//! derived from the Prometheus counters.
//!
//! A background task samples the counters every [`EVERY`] and keeps the samples of the
//! last [`SPAN`]. A figure for "the last minute" is the live counter minus the oldest
//! sample still inside the span, so it covers 55–60 s (less while gcpool is younger than a
//! minute: then it counts since start). Nothing on the request path changes for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::core::Collector;
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::metrics::Metrics;

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// How far back "the last minute" reaches.
pub const SPAN: Duration = Duration::from_secs(60);

/// The counters a sample reads, as totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// `gcpool_upstream_429_total`, all series.
    pub upstream_429: u64,
    /// `gcpool_requests_total{status="429", outcome="rejected"}`: 429s gcpool answered itself.
    pub local_429: u64,
    /// `gcpool_queue_wait_seconds` count: admissions.
    pub admissions: u64,
    /// `gcpool_queue_wait_seconds` sum.
    pub wait_s: f64,
}

/// What happened in the last minute (see the module doc for the span).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastMinute {
    /// Seconds the figures cover.
    pub span_s: u64,
    pub upstream_429: u64,
    pub local_429: u64,
    pub admissions: u64,
    /// Mean time an admission waited for its slot, in ms (`None`: no admission).
    pub queue_wait_mean_ms: Option<f64>,
    /// Upstream and local 429s per sampling interval, oldest first (the page's chart).
    #[serde(skip)]
    pub intervals: Vec<(u64, u64)>,
}

/// Samples of the counters over the last [`SPAN`].
#[derive(Debug)]
pub struct Rates {
    samples: Mutex<VecDeque<(Instant, Counts)>>,
}

// === impl Counts ===

impl Counts {
    /// The counters' values now.
    pub fn read(metrics: &Metrics) -> Self {
        let mut counts = Self {
            admissions: metrics.queue_wait.get_sample_count(),
            wait_s: metrics.queue_wait.get_sample_sum(),
            ..Self::default()
        };
        for family in metrics.upstream_429.collect() {
            for m in family.get_metric() {
                counts.upstream_429 += counter_value(m);
            }
        }
        for family in metrics.requests.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value())
                };
                if label("status") == Some("429") && label("outcome") == Some("rejected") {
                    counts.local_429 += counter_value(m);
                }
            }
        }
        counts
    }
}

/// An integer counter's value (they are exported as f64).
fn counter_value(m: &prometheus::proto::Metric) -> u64 {
    // Integer counters: exact in f64 up to 2^53.
    m.get_counter().get_value().max(0.0) as u64
}

// === impl Rates ===

impl Rates {
    /// Rates whose first sample is `first`, taken `at`.
    pub fn new(at: Instant, first: Counts) -> Self {
        Self {
            samples: Mutex::new(VecDeque::from([(at, first)])),
        }
    }

    /// Keeps a sample; forgets those older than [`SPAN`].
    pub fn record(&self, at: Instant, counts: Counts) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((at, counts));
        while samples
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > SPAN)
        {
            samples.pop_front();
        }
    }

    /// The last minute up to `now`, when the counters stand at `current`.
    pub fn last_minute(&self, now: Instant, current: Counts) -> LastMinute {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut inside = samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= SPAN)
            .copied()
            .peekable();
        let (since, base) = inside.peek().copied().unwrap_or((now, current));
        let mut intervals = Vec::new();
        let mut previous = base;
        for (_, counts) in inside.skip(1).chain([(now, current)]) {
            intervals.push((
                counts.upstream_429.saturating_sub(previous.upstream_429),
                counts.local_429.saturating_sub(previous.local_429),
            ));
            previous = counts;
        }
        let admissions = current.admissions.saturating_sub(base.admissions);
        let queue_wait_mean_ms = (admissions > 0)
            .then(|| (current.wait_s - base.wait_s).max(0.0) * 1000.0 / admissions as f64);
        LastMinute {
            span_s: now.saturating_duration_since(since).as_secs(),
            upstream_429: current.upstream_429.saturating_sub(base.upstream_429),
            local_429: current.local_429.saturating_sub(base.local_429),
            admissions,
            queue_wait_mean_ms,
            intervals,
        }
    }

    /// Samples `metrics` every [`EVERY`] until `stop` or until the rates are dropped
    /// (the admin server they belong to ended). Needs a Tokio runtime; without one, the
    /// rates keep their first sample only.
    pub fn spawn_sampler(rates: &Arc<Self>, metrics: Metrics, stop: CancellationToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rates: Weak<Self> = Arc::downgrade(rates);
        let task = async move {
            let mut tick = tokio::time::interval_at(Instant::now() + EVERY, EVERY);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(rates) = rates.upgrade() else { return };
                rates.record(Instant::now(), Counts::read(&metrics));
            }
        };
        runtime.spawn(task.instrument(info_span!("status_rates")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(upstream_429: u64, local_429: u64, admissions: u64, wait_s: f64) -> Counts {
        Counts {
            upstream_429,
            local_429,
            admissions,
            wait_s,
        }
    }

    #[test]
    fn counts_read_sums_every_series_and_only_local_429s() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        metrics
            .upstream_429
            .with_label_values(&["pool-01", "other"])
            .inc_by(2);
        metrics
            .upstream_429
            .with_label_values(&["pool-02", "/api/v2/users"])
            .inc();
        let requests = |status, outcome| {
            metrics
                .requests
                .with_label_values(&["other", "GET", status, outcome, "anonymous"])
        };
        requests("429", "rejected").inc_by(4);
        requests("429", "forwarded").inc_by(7); // an upstream 429 passed on: not local
        requests("503", "rejected").inc();
        requests("200", "forwarded").inc();
        metrics.queue_wait.observe(0.5);
        metrics.queue_wait.observe(0.0);
        assert_eq!(Counts::read(&metrics), counts(3, 4, 2, 0.5));
    }

    #[tokio::test(start_paused = true)]
    async fn last_minute_is_the_change_since_the_oldest_sample_within_60_s() {
        let start = Instant::now();
        let rates = Rates::new(start, Counts::default());
        let at = |s| start + Duration::from_secs(s);
        let record = |s| rates.record(at(s), counts(s, 2 * s, 10 * s, s as f64));
        record(5);
        record(10);
        let young = rates.last_minute(at(12), counts(12, 24, 120, 12.0));
        assert_eq!(young.span_s, 12, "younger than a minute: since start");
        assert_eq!((young.upstream_429, young.local_429), (12, 24));
        assert_eq!(young.intervals, vec![(5, 10), (5, 10), (2, 4)]);

        for s in (15..=60).step_by(5) {
            record(s);
        }

        // At 67 s, the samples at 0 s and 5 s are older than 60 s: the base is the one at 10 s.
        let now = at(67);
        let minute = rates.last_minute(now, counts(70, 140, 700, 70.0));
        assert_eq!(minute.span_s, 57);
        assert_eq!(minute.upstream_429, 60);
        assert_eq!(minute.local_429, 120);
        assert_eq!(minute.admissions, 600);
        assert_eq!(minute.queue_wait_mean_ms, Some(100.0));
        // 11 intervals between the samples at 10..=60 s, plus the one up to now.
        assert_eq!(minute.intervals.len(), 11);
        assert_eq!(minute.intervals[0], (5, 10));
        assert_eq!(minute.intervals[10], (10, 20));

        // Recording prunes what no figure can use any more.
        rates.record(at(70), counts(70, 140, 700, 70.0));
        assert!(rates.samples.lock().unwrap().len() <= 13);
    }

    #[tokio::test(start_paused = true)]
    async fn no_admission_means_no_mean_wait() {
        let start = Instant::now();
        let rates = Rates::new(start, counts(0, 0, 5, 1.0));
        let minute = rates.last_minute(start + EVERY, counts(0, 0, 5, 1.0));
        assert_eq!(minute.queue_wait_mean_ms, None);
        assert_eq!(minute.intervals, vec![(0, 0)]);
    }
}
