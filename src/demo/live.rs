//! The live view: a header that explains the window and the rates, printed once, then each
//! phase's lines, redrawn in place below it on a terminal (plain lines otherwise). Every
//! line fits 100 columns.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::{Outcome, Plan, Record, client_names};

/// Where the live view goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Display {
    /// Redrawn in place on a terminal, below the header.
    Redraw,
    /// One line a second on stdout.
    Lines,
    /// One line a second on stderr (stdout carries the JSON report).
    Stderr,
}

/// One phase's live lines.
#[derive(Debug)]
pub(super) struct Live {
    name: &'static str,
    display: Display,
    window: Duration,
    token_limit: u32,
    duration: Duration,
    names: Vec<String>,
    /// Lines drawn last time, to move the cursor back over them.
    drawn: usize,
    /// The last status line printed in the plain views, not to print it twice.
    last_status: String,
}

/// Widest line the demo prints.
pub(super) const COLUMNS: usize = 100;

pub(super) fn is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Prints the header: what the clients may do, what "window" and the rates mean, what the
/// load is and what each phase does.
pub(super) fn header(display: Display, plan: &Plan, rate: f64, max_wait: Duration) {
    for line in header_lines(plan, rate, max_wait) {
        emit(display, &line);
    }
}

pub(super) fn header_lines(plan: &Plan, rate: f64, max_wait: Duration) -> Vec<String> {
    let w = plan.window.as_secs_f64();
    let capacity = plan.capacity_per_window();
    let per_second = capacity as f64 / w;
    vec![
        format!(
            "gcpool demo: {} OAuth clients, each allowed {} requests per {w:.1} s window.",
            plan.clients, plan.token_limit
        ),
        format!(
            "  window: the API counts each client's requests over any sliding {w:.1} s; request {} \
             of one",
            plan.token_limit + 1
        ),
        format!(
            "          client inside it is refused with a 429. Pool: {} × {} = {capacity} per \
             window.",
            plan.clients, plan.token_limit
        ),
        format!(
            "  rates:  requests per second. The pool averages {per_second:.1}/s; the load offers \
             {rate:.1}/s,"
        ),
        format!(
            "          in bursts of {} every {:.1} s, for {:.1} s per phase.",
            plan.burst,
            plan.burst_every.as_secs_f64(),
            plan.duration.as_secs_f64()
        ),
        "  without gcpool: the load generator uses the same clients round-robin, straight at \
         the API."
            .to_owned(),
        format!(
            "  with gcpool:    the same load through gcpool; a request waits (up to {:.1} s) \
             for a client",
            max_wait.as_secs_f64()
        ),
        "                  with room, or gets a local 429 with Retry-After.".to_owned(),
        String::new(),
    ]
}

fn emit(display: Display, line: &str) {
    match display {
        Display::Redraw | Display::Lines => println!("{line}"),
        Display::Stderr => eprintln!("{line}"),
    }
}

// === impl Live ===

impl Live {
    pub(super) fn new(name: &'static str, display: Display, plan: &Plan) -> Self {
        Self {
            name,
            display,
            window: plan.window,
            token_limit: plan.token_limit,
            duration: plan.duration,
            names: client_names(plan.clients),
            drawn: 0,
            last_status: String::new(),
        }
    }

    /// Shows the phase as of `elapsed`, when the API had answered `upstream_429` 429s.
    pub(super) fn draw(&mut self, record: &Record, elapsed: Duration, upstream_429: u64) {
        let lines = self.lines(record, elapsed, upstream_429);
        match self.display {
            Display::Redraw => {
                let mut out = std::io::stdout().lock();
                if self.drawn > 0 {
                    // Back to the first line of this phase, and clear below: the header
                    // and earlier phases stay.
                    let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
                }
                for line in &lines {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
                self.drawn = lines.len();
            }
            Display::Lines | Display::Stderr => {
                if let Some(first) = lines.into_iter().next()
                    && first != self.last_status
                {
                    emit(self.display, &first);
                    self.last_status = first;
                }
            }
        }
    }

    /// The last view of the phase, left on screen.
    pub(super) fn finish(&mut self, record: &Record, elapsed: Duration, upstream_429: u64) {
        self.draw(record, elapsed, upstream_429);
        if self.display != Display::Redraw {
            emit(
                self.display,
                &format!(
                    "[{}] load stopped at {:.1} s; the last answer came {:.1} s later",
                    self.name,
                    self.duration.as_secs_f64(),
                    elapsed.saturating_sub(self.duration).as_secs_f64()
                ),
            );
        }
    }

    /// The status line first (the plain view prints only it), then the details.
    /// Upstream 429s are the API's count: gcpool never passes one on to its caller.
    pub(super) fn lines(&self, record: &Record, elapsed: Duration, upstream: u64) -> Vec<String> {
        let count = |o: Outcome, since: Duration| {
            record
                .answers
                .iter()
                .filter(|a| a.outcome == o && a.at >= since)
                .count()
        };
        let sent = record.sent.len();
        let answers = record.answers.len();
        let total = |o| count(o, Duration::ZERO);
        let counts = [
            ("sent", sent, 4),
            ("answered", total(Outcome::Answered), 4),
            (
                "upstream 429",
                usize::try_from(upstream).unwrap_or(usize::MAX),
                4,
            ),
            ("local 429", total(Outcome::Local429), 4),
            ("waiting", sent.saturating_sub(answers), 3),
        ];
        let t = elapsed.as_secs_f64().floor();
        let padded = counts.iter().fold(
            format!("[{}] t={t:>3.0}s", self.name),
            |line, (label, n, width)| format!("{line}  {label} {n:>width$}"),
        );
        // Large counts: drop the padding rather than pass 100 columns.
        let status = if padded.chars().count() <= COLUMNS {
            padded
        } else {
            counts.iter().fold(
                format!("[{}] t={t:.0}s", self.name),
                |line, (label, n, _)| format!("{line} {label} {n}"),
            )
        };
        // Rates over the last whole second, the one the timeline (and the SVG) shows.
        let shown = elapsed.as_secs().saturating_sub(1);
        let in_second = |t: Duration| t.as_secs() == shown;
        let count_in = |o: Outcome| {
            record
                .answers
                .iter()
                .filter(|a| a.outcome == o && in_second(a.at))
                .count()
        };
        // The API's running 429 count at the start of second `k`; `upstream` past the samples.
        let upstream_at = |k: u64| -> u64 {
            let k = usize::try_from(k).unwrap_or(usize::MAX);
            match k {
                0 => 0,
                k => record
                    .upstream_429_each_second
                    .get(k - 1)
                    .copied()
                    .unwrap_or(upstream),
            }
        };
        let rates = format!(
            "  from {shown} s to {} s: sent {}/s, answered {}/s, upstream 429 {}/s, local 429 {}/s",
            shown + 1,
            record.sent.iter().filter(|&&t| in_second(t)).count(),
            count_in(Outcome::Answered),
            upstream_at(shown + 1).saturating_sub(upstream_at(shown)),
            count_in(Outcome::Local429),
        );
        let since = elapsed.saturating_sub(self.window);
        let mut uses = format!(
            "  answered in the last {:.1} s window, per client:",
            self.window.as_secs_f64()
        );
        for (i, name) in self.names.iter().enumerate() {
            let used = record
                .answers
                .iter()
                .filter(|a| a.outcome == Outcome::Answered && a.at >= since)
                .filter(|a| a.client == Some(i))
                .count();
            let entry = format!("  {name} {used}/{}", self.token_limit);
            if uses.chars().count() + entry.chars().count() > COLUMNS - 2 {
                uses.push_str(" …");
                break;
            }
            uses.push_str(&entry);
        }
        vec![status, rates, uses]
    }
}
