//! The closing report: what each phase measured over the same time, against one denominator,
//! as JSON (`--json`), as a table with the result in plain words, and as the SVG's data.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::{CachedRouteReport, Outcome, Plan, Record, client_names};

/// The closing report of `gcpool demo`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub clients: usize,
    pub window_s: f64,
    /// Requests per client per window.
    pub token_limit: u32,
    pub pool_capacity_per_window: u64,
    pub offered_rate_per_s: f64,
    pub burst: u32,
    /// How long each phase sends load and is counted (both phases alike).
    pub duration_s: f64,
    /// The one denominator of both phases: the most answers the pool's clients may get in
    /// `duration_s`, from an idle start (`capacity_windows` × `pool_capacity_per_window`).
    pub capacity_in_duration: u64,
    pub capacity_windows: u64,
    pub without_gcpool: Option<PhaseReport>,
    pub with_gcpool: PhaseReport,
    /// The response cache's step: identical lookups of a cached route.
    pub cached_route: CachedRouteReport,
    /// The result in plain words.
    pub summary: Vec<String>,
}

/// What one phase measured. Counts cover the measured time only; what arrived after it (the
/// answers gcpool's queue still held when the load stopped) is in `after_end`.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// The measured time, read from the clock: from the first burst to when sending stopped.
    pub measured_s: f64,
    pub sent: u64,
    /// 2xx answers.
    pub answered: u64,
    /// `answered` ÷ the report's `capacity_in_duration`.
    pub answered_share: f64,
    /// 429s the API (the simulator) answered, whether or not the caller saw them.
    pub upstream_429: u64,
    /// 429s gcpool answered itself, with `Retry-After`.
    pub local_429: u64,
    pub other_errors: u64,
    /// Time from sending to a 2xx answer: what callers paid to be answered.
    pub wait_p50_ms: Option<u64>,
    pub wait_p95_ms: Option<u64>,
    pub answered_per_client: BTreeMap<String, u64>,
    pub after_end: AfterEnd,
    /// One entry per second of the measured time.
    pub timeline: Vec<Second>,
    /// `bench/capacity.sh`'s figures (SPEC §9), kept as they were.
    #[serde(flatten)]
    pub capacity_check: CapacityFigures,
}

/// The figures `bench/capacity.sh` reads (SPEC §9: capacity used ≥ 98 % under saturating
/// load). They count every 2xx, the drain included, over the whole windows since the first
/// answer; the demo's comparison uses the measured time and one denominator instead.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapacityFigures {
    /// Every 2xx answer, during the measured time and after it.
    pub served: u64,
    pub served_per_client: BTreeMap<String, u64>,
    /// 2xx answers in whole windows since the first one ÷ what an exact sliding-window
    /// admitter could admit in them; `None` when less than one window was covered.
    pub capacity_used: Option<f64>,
    pub windows_measured: u64,
    /// gcpool's own `x-gcpool-wait-ms` of those answers.
    pub queue_wait_p50_ms: Option<u64>,
    pub queue_wait_p99_ms: Option<u64>,
}

/// Answers that arrived after the measured time, while the phase waited for the last one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AfterEnd {
    pub answered: u64,
    pub upstream_429: u64,
    pub local_429: u64,
    pub other_errors: u64,
    /// From the end of the measured time to the last answer.
    pub drain_s: f64,
}

/// What happened in one second of a phase (by the time the answer arrived).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    pub second: usize,
    pub answered: u64,
    pub upstream_429: u64,
    pub local_429: u64,
}

// === impl DemoReport ===

impl DemoReport {
    pub(super) fn new(
        plan: &Plan,
        rate: f64,
        without_gcpool: Option<PhaseReport>,
        with_gcpool: PhaseReport,
        cached_route: CachedRouteReport,
    ) -> Self {
        let mut report = Self {
            clients: plan.clients,
            window_s: plan.window.as_secs_f64(),
            token_limit: plan.token_limit,
            pool_capacity_per_window: plan.capacity_per_window(),
            offered_rate_per_s: rate,
            burst: plan.burst,
            duration_s: plan.duration.as_secs_f64(),
            capacity_in_duration: plan.capacity_per_window() * plan.windows(),
            capacity_windows: plan.windows(),
            without_gcpool,
            with_gcpool,
            cached_route,
            summary: Vec::new(),
        };
        report.summary = report.words();
        report
    }

    /// The result in plain words, from the numbers.
    fn words(&self) -> Vec<String> {
        let with = &self.with_gcpool;
        let mut words = Vec::new();
        if let Some(without) = &self.without_gcpool {
            words.push(format!(
                "Without gcpool: {} answered, {} were upstream 429s (each client ran into its \
                 own limit).",
                without.answered, without.upstream_429
            ));
        }
        words.push(format!(
            "With gcpool:    {} answered, {} upstream 429s, {} local 429s (told when to retry);",
            with.answered, with.upstream_429, with.local_429
        ));
        words.push(format!(
            "                callers waited p50 {} ms, p95 {} ms for their answers.",
            ms(with.wait_p50_ms),
            ms(with.wait_p95_ms)
        ));
        if with.after_end.answered > 0 {
            words.push(format!(
                "                {} requests still queued when the time was up were answered \
                 {:.1} s later.",
                with.after_end.answered, with.after_end.drain_s
            ));
        }
        let limit = format!(
            "at most {} answers in {}",
            self.capacity_in_duration,
            secs(self.duration_s)
        );
        words.push(match &self.without_gcpool {
            Some(_) => format!("The limit is the same in both: {limit}. gcpool does not raise it;"),
            None => format!("The limit: {limit}. gcpool does not raise it;"),
        });
        words.push(if with.upstream_429 == 0 {
            "it keeps each client under its limit and turns the excess into waits and Retry-After."
                .to_owned()
        } else {
            format!(
                "it met {} upstream 429s here and retried them on other clients (see the timeline).",
                with.upstream_429
            )
        });
        words
    }

    /// The report as lines of at most 100 columns.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            String::new(),
            format!(
                "gcpool demo report: the same {} clients and the same load, {} measured per phase",
                self.clients,
                secs(self.duration_s)
            ),
            format!(
                "one denominator: {} clients × {} per {} window = at most {} answers in {} \
                 ({} windows)",
                self.clients,
                self.token_limit,
                secs(self.window_s),
                self.capacity_in_duration,
                secs(self.duration_s),
                self.capacity_windows
            ),
            String::new(),
            row("", "without gcpool", "with gcpool"),
        ];
        let with = &self.with_gcpool;
        let without = self.without_gcpool.as_ref();
        let both = |f: &Column| (without.map_or_else(|| "-".to_owned(), f), f(with));
        let rows: [(&str, &Column); 9] = [
            ("measured time (load sent for)", &|p| {
                format!("{:.2} s", p.measured_s)
            }),
            ("requests sent", &|p| p.sent.to_string()),
            ("answered (2xx)", &|p| p.answered.to_string()),
            ("  share of the most the pool may answer", &|p| {
                format!("{:.0} %", p.answered_share * 100.0)
            }),
            ("upstream 429s (the API refused)", &|p| {
                p.upstream_429.to_string()
            }),
            ("local 429s (gcpool: Retry-After)", &|p| {
                p.local_429.to_string()
            }),
            ("wait for a 2xx answer, p50 / p95", &|p| {
                format!("{} / {} ms", ms(p.wait_p50_ms), ms(p.wait_p95_ms))
            }),
            ("answered per client", &|p| {
                let counts: Vec<String> =
                    p.answered_per_client.values().map(u64::to_string).collect();
                fit(&counts.join(" "), 16)
            }),
            ("answered after the time, drain", &|p| {
                format!("{} in {:.1} s", p.after_end.answered, p.after_end.drain_s)
            }),
        ];
        for (label, f) in rows {
            let (a, b) = both(f);
            out.push(row(label, &a, &b));
        }
        out.push(String::new());
        out.extend(self.summary.iter().cloned());
        out.push(String::new());
        out.extend(self.cached_route.lines());
        out
    }
}

// === impl PhaseReport ===

impl PhaseReport {
    pub(super) fn new(
        name: &str,
        plan: &Plan,
        record: &Record,
        measured: Duration,
        drained: Duration,
    ) -> Self {
        let seconds = plan.seconds();
        let mut timeline: Vec<Second> = (0..seconds)
            .map(|second| Second {
                second,
                ..Second::default()
            })
            .collect();
        let names = client_names(plan.clients);
        let mut per_client: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 0)).collect();
        let mut after_end = AfterEnd {
            drain_s: drained.as_secs_f64(),
            ..AfterEnd::default()
        };
        let (mut local_429, mut other, mut waits) = (0, 0, Vec::new());
        for answer in &record.answers {
            if answer.at >= plan.duration {
                match answer.outcome {
                    Outcome::Answered => after_end.answered += 1,
                    Outcome::Local429 => after_end.local_429 += 1,
                    Outcome::Upstream429 | Outcome::Other => after_end.other_errors += 1,
                }
                continue;
            }
            let i = usize::try_from(answer.at.as_secs()).unwrap_or(usize::MAX);
            let Some(second) = timeline.get_mut(i) else {
                continue;
            };
            match answer.outcome {
                Outcome::Answered => {
                    second.answered += 1;
                    waits.push(u64::try_from(answer.latency.as_millis()).unwrap_or(u64::MAX));
                    let name = answer.client.and_then(|c| names.get(c));
                    if let Some(count) = name.and_then(|n| per_client.get_mut(n)) {
                        *count += 1;
                    }
                }
                Outcome::Local429 => {
                    second.local_429 += 1;
                    local_429 += 1;
                }
                // Upstream 429s are counted where the API counts them, below.
                Outcome::Upstream429 => {}
                Outcome::Other => other += 1,
            }
        }
        // The simulator's running 429 count at each second's end; missing samples (a late
        // tick) fall back to the count at the end of the measured time.
        let at = |i: usize| -> u64 {
            if i == 0 {
                0
            } else {
                record
                    .upstream_429_each_second
                    .get(i - 1)
                    .copied()
                    .filter(|_| i < seconds)
                    .unwrap_or(record.upstream_429_at_end)
            }
        };
        for (i, second) in timeline.iter_mut().enumerate() {
            second.upstream_429 = at(i + 1).saturating_sub(at(i));
        }
        after_end.upstream_429 = record
            .upstream_429_after_drain
            .saturating_sub(record.upstream_429_at_end);
        waits.sort_unstable();
        let answered: u64 = timeline.iter().map(|s| s.answered).sum();
        let capacity = plan.capacity_per_window() * plan.windows();
        Self {
            name: name.to_owned(),
            measured_s: measured.as_secs_f64(),
            sent: record.sent.iter().filter(|&&t| t < plan.duration).count() as u64,
            answered,
            answered_share: answered as f64 / capacity.max(1) as f64,
            upstream_429: record.upstream_429_at_end,
            local_429,
            other_errors: other,
            wait_p50_ms: quantile(&waits, 0.50),
            wait_p95_ms: quantile(&waits, 0.95),
            answered_per_client: per_client,
            after_end,
            timeline,
            capacity_check: CapacityFigures::new(plan, record),
        }
    }
}

// === impl CapacityFigures ===

impl CapacityFigures {
    fn new(plan: &Plan, record: &Record) -> Self {
        let names = client_names(plan.clients);
        let mut served_per_client: BTreeMap<String, u64> =
            names.iter().map(|n| (n.clone(), 0)).collect();
        let (mut ok_times, mut queued) = (Vec::new(), Vec::new());
        for answer in record
            .answers
            .iter()
            .filter(|a| a.outcome == Outcome::Answered)
        {
            ok_times.push(answer.at);
            queued.extend(answer.queued_ms);
            let name = answer.client.and_then(|c| names.get(c));
            if let Some(count) = name.and_then(|n| served_per_client.get_mut(n)) {
                *count += 1;
            }
        }
        queued.sort_unstable();
        let (capacity_used, windows_measured) =
            capacity_used(&ok_times, plan.window, plan.capacity_per_window());
        Self {
            served: ok_times.len() as u64,
            served_per_client,
            capacity_used,
            windows_measured,
            queue_wait_p50_ms: quantile(&queued, 0.50),
            queue_wait_p99_ms: quantile(&queued, 0.99),
        }
    }
}

/// Served in whole windows since the first success ÷ (capacity per window × windows).
/// An exact sliding-window admitter with a permanent backlog admits `capacity` at the first
/// instant and again each window later, so that is what it could have served.
fn capacity_used(ok_times: &[Duration], window: Duration, capacity: u64) -> (Option<f64>, u64) {
    let mut times = ok_times.to_vec();
    times.sort_unstable();
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return (None, 0);
    };
    let windows = ((last - first).as_secs_f64() / window.as_secs_f64()).floor() as u64;
    if windows == 0 || capacity == 0 {
        return (None, windows);
    }
    let end = first + window.saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX));
    let served = times.iter().filter(|&&t| t < end).count() as f64;
    (Some(served / (capacity * windows) as f64), windows)
}

/// One table row's value, for one phase.
type Column = dyn Fn(&PhaseReport) -> String;

fn row(label: &str, a: &str, b: &str) -> String {
    format!("{label:<42} {a:>20} {b:>20}")
}

/// `text` cut to `width` characters, with `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn ms(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn secs(s: f64) -> String {
    format!("{s:.1} s")
}

pub(super) fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::super::{Answer, live};
    use super::*;

    fn plan(clients: usize, duration: Duration) -> Plan {
        Plan {
            clients,
            window: Duration::from_secs(1),
            token_limit: 4,
            per_minute: 240,
            duration,
            burst: 12,
            burst_every: Duration::from_millis(500),
        }
    }

    fn answer(at_ms: u64, outcome: Outcome, client: Option<usize>) -> Answer {
        Answer {
            at: Duration::from_millis(at_ms),
            outcome,
            client,
            latency: Duration::from_millis(at_ms % 1000),
            queued_ms: None,
        }
    }

    #[test]
    fn a_phase_counts_its_measured_time_and_keeps_the_drain_apart() {
        let plan = plan(3, Duration::from_secs(2));
        let record = Record {
            sent: [0, 0, 0, 1500].map(Duration::from_millis).to_vec(),
            answers: vec![
                answer(100, Outcome::Answered, Some(0)),
                answer(200, Outcome::Local429, None),
                answer(1500, Outcome::Answered, Some(2)),
                answer(2300, Outcome::Answered, Some(1)),
            ],
            upstream_429_each_second: vec![5],
            upstream_429_at_end: 7,
            upstream_429_after_drain: 9,
        };
        let p = PhaseReport::new(
            "with gcpool",
            &plan,
            &record,
            Duration::from_millis(2004),
            Duration::from_millis(300),
        );
        let second = |second, answered, upstream_429, local_429| Second {
            second,
            answered,
            upstream_429,
            local_429,
        };
        assert_eq!(p.timeline, [second(0, 1, 5, 1), second(1, 1, 2, 0)]);
        assert_eq!(
            (p.sent, p.answered, p.upstream_429, p.local_429),
            (4, 2, 7, 1)
        );
        assert!((p.answered_share - 2.0 / 24.0).abs() < 1e-9);
        assert_eq!((p.after_end.answered, p.after_end.upstream_429), (1, 2));
        assert_eq!(
            p.answered_per_client.values().copied().collect::<Vec<_>>(),
            [1, 0, 1],
            "the answer after the time is not counted for client-02"
        );
        assert_eq!((p.wait_p50_ms, p.wait_p95_ms), (Some(500), Some(500)));
        assert_eq!(p.measured_s, 2.004);
    }

    #[test]
    fn a_missed_sample_moves_429s_between_seconds_but_loses_none() {
        let plan = plan(3, Duration::from_secs(3));
        let record = Record {
            upstream_429_each_second: vec![4],
            upstream_429_at_end: 10,
            ..Record::default()
        };
        let p = PhaseReport::new("x", &plan, &record, Duration::ZERO, Duration::ZERO);
        let per_second: Vec<u64> = p.timeline.iter().map(|s| s.upstream_429).collect();
        assert_eq!(per_second, [4, 6, 0]);
    }

    #[test]
    fn every_line_fits_100_columns_with_large_numbers() {
        let plan = plan(50, Duration::from_secs(600));
        let big = Record {
            sent: vec![Duration::ZERO; 99_999],
            answers: (0..50)
                .map(|c| answer(599_000, Outcome::Answered, Some(c)))
                .collect(),
            upstream_429_each_second: vec![99_999; 599],
            upstream_429_at_end: 99_999,
            upstream_429_after_drain: 199_999,
        };
        let phase = PhaseReport::new(
            "without gcpool",
            &plan,
            &big,
            Duration::from_secs(600),
            Duration::from_secs(3600),
        );
        let mut with = phase.clone();
        with.name = "with gcpool".into();
        with.wait_p50_ms = Some(99_999);
        with.wait_p95_ms = Some(99_999);
        let cached = CachedRouteReport {
            route: super::super::cached::ROUTE.to_owned(),
            ttl: "30s".to_owned(),
            bursts: 3,
            lookups: 999_999,
            upstream_calls: 999_999,
            miss: 999_999,
            coalesced: 999_999,
            hit: 999_999,
            other: 999_999,
        };
        let report = DemoReport::new(&plan, 9_999.5, Some(phase), with, cached);
        let mut lines = report.lines();
        lines.extend(live::header_lines(&plan, 9_999.5, Duration::from_secs(600)));
        let live = live::Live::new("without gcpool", live::Display::Lines, &plan);
        lines.extend(live.lines(&big, Duration::from_secs(599), 99_999));
        for line in &lines {
            assert!(
                line.chars().count() <= live::COLUMNS,
                "{} columns: {line:?}",
                line.chars().count()
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains("client-01 1/4") && l.ends_with('…'))
        );
    }

    #[test]
    fn capacity_used_counts_whole_windows_only() {
        let w = Duration::from_secs(1);
        let at = |ms: u64| Duration::from_millis(ms);
        // 3 per window at 0, 1.005, 2.010, plus a partial last group at 3.015.
        let mut times = Vec::new();
        for base in [0, 1005, 2010] {
            times.extend([at(base), at(base + 1), at(base + 2)]);
        }
        times.push(at(3015));
        let (used, windows) = capacity_used(&times, w, 3);
        assert_eq!(windows, 3);
        assert!((used.unwrap() - 1.0).abs() < 1e-9);
        let (used, _) = capacity_used(&times[1..], w, 3);
        assert!(used.unwrap() < 1.0);
        assert_eq!(capacity_used(&[], w, 3), (None, 0));
    }
}
