//! `gcpool demo --svg FILE`: the per-second timeline of both phases as one self-contained
//! SVG (no external references): stacked bars of answered (2xx), upstream 429 and local 429
//! per second, one panel per phase on the same scale, with axes, a legend and the pool's
//! average capacity. Every bar group carries its series in `data-values`, so a script (or a
//! test) can read the numbers back.

use std::fmt::Write;

use super::report::{DemoReport, PhaseReport, Second};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 110.0;
const PLOT_HEIGHT: f64 = 200.0;
const PANEL: f64 = 270.0;

/// The three series, bottom of the stack first: (key, legend, colour, value).
type Series = (&'static str, &'static str, &'static str, fn(&Second) -> u64);
const SERIES: [Series; 3] = [
    ("answered", "answered (2xx)", "#2e7d32", |s| s.answered),
    (
        "upstream_429",
        "upstream 429 (the API refused)",
        "#c62828",
        |s| s.upstream_429,
    ),
    (
        "local_429",
        "local 429 (gcpool: Retry-After)",
        "#f9a825",
        |s| s.local_429,
    ),
];

/// The SVG document.
pub(super) fn render(report: &DemoReport) -> String {
    let phases: Vec<&PhaseReport> = report
        .without_gcpool
        .iter()
        .chain(std::iter::once(&report.with_gcpool))
        .collect();
    let per_second = report.pool_capacity_per_window as f64 / report.window_s.max(0.001);
    let tallest = phases
        .iter()
        .flat_map(|p| &p.timeline)
        .map(|s| SERIES.iter().map(|(.., v)| v(s)).sum::<u64>())
        .max()
        .unwrap_or(0);
    let y_max = nice(tallest.max(per_second.ceil() as u64).max(1));
    let height = TOP + PANEL * phases.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="16">{}</text>"#,
        escape(&format!(
            "gcpool demo: what happened each second, the same {} clients and load in both phases",
            report.clients
        ))
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="44">{}</text>"#,
        escape(&format!(
            "{} clients × {} requests per {:.1} s window: the pool averages {per_second:.1} \
             requests/s, at most {} in the {:.1} s shown",
            report.clients,
            report.token_limit,
            report.window_s,
            report.capacity_in_duration,
            report.duration_s
        ))
    );
    legend(&mut svg);
    for (i, phase) in phases.iter().enumerate() {
        panel(&mut svg, phase, TOP + PANEL * i as f64, y_max, per_second);
    }
    svg.push_str("</svg>\n");
    svg
}

fn legend(svg: &mut String) {
    let mut x = LEFT;
    for (_, label, colour, _) in SERIES {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="56" width="12" height="12" fill="{colour}"/><text x="{}" y="66">{}</text>"#,
            x + 16.0,
            escape(label)
        );
        x += 24.0 + 7.0 * label.len() as f64;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x}" y1="62" x2="{}" y2="62" stroke="#555" stroke-dasharray="6 4"/><text x="{}" y="66">pool capacity, average per second</text>"##,
        x + 24.0,
        x + 30.0
    );
}

fn panel(svg: &mut String, phase: &PhaseReport, top: f64, y_max: u64, per_second: f64) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let bottom = top + PLOT_HEIGHT;
    let seconds = phase.timeline.len().max(1);
    let slot = plot_width / seconds as f64;
    let y = |v: f64| bottom - v / y_max as f64 * PLOT_HEIGHT;
    let _ = writeln!(svg, r#"<g data-phase="{}">"#, escape(&phase.name));
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 10.0,
        escape(&title(phase))
    );
    // Axes, y ticks and gridlines.
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#000"/><line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#000"/>"##,
        WIDTH - RIGHT
    );
    for tick in [0, y_max / 2, y_max] {
        let ty = y(tick as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{ty}" x2="{}" y2="{ty}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{tick}</text>"##,
            LEFT + 1.0,
            WIDTH - RIGHT,
            LEFT - 6.0,
            ty + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">requests per second</text>"#,
        top + PLOT_HEIGHT / 2.0
    );
    let every = seconds.div_ceil(30).max(1);
    for s in (0..seconds).step_by(every) {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{s}</text>"#,
            LEFT + slot * (s as f64 + 0.5),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the load started (each bar: answers that arrived in that second)</text>"#,
        LEFT + plot_width / 2.0,
        bottom + 34.0
    );
    // Stacked bars, one group per series.
    let mut stacked = vec![0_u64; phase.timeline.len()];
    for (key, label, colour, value) in SERIES {
        let values: Vec<String> = phase
            .timeline
            .iter()
            .map(|s| value(s).to_string())
            .collect();
        let _ = writeln!(
            svg,
            r#"<g data-series="{key}" data-values="{}" fill="{colour}">"#,
            values.join(",")
        );
        for (i, second) in phase.timeline.iter().enumerate() {
            let count = value(second);
            if count == 0 {
                continue;
            }
            let base = stacked.get(i).copied().unwrap_or(0);
            let (y0, y1) = (y(base as f64), y((base + count) as f64));
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" data-second="{}" data-count="{count}"><title>{}</title></rect>"#,
                LEFT + slot * (i as f64 + 0.15),
                slot * 0.7,
                y0 - y1,
                second.second,
                escape(&format!("second {}: {count} {label}", second.second))
            );
            if let Some(s) = stacked.get_mut(i) {
                *s += count;
            }
        }
        svg.push_str("</g>\n");
    }
    let cy = y(per_second);
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{cy:.1}" x2="{}" y2="{cy:.1}" stroke="#555" stroke-dasharray="6 4"/>"##,
        WIDTH - RIGHT
    );
    svg.push_str("</g>\n");
}

fn title(phase: &PhaseReport) -> String {
    let mut title = format!(
        "{}: {} answered, {} upstream 429s, {} local 429s in {:.2} s",
        phase.name, phase.answered, phase.upstream_429, phase.local_429, phase.measured_s
    );
    if phase.after_end.answered > 0 {
        title.push_str(&format!(
            "; {} more answered in the {:.1} s after (not drawn)",
            phase.after_end.answered, phase.after_end.drain_s
        ));
    }
    title
}

/// The smallest of 1, 2, 5 × 10ⁿ (n ≥ 0) at or above `v`, for a readable axis.
fn nice(v: u64) -> u64 {
    let mut step = 1_u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v {
                return step.saturating_mul(m);
            }
        }
        step = step.saturating_mul(10);
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_numbers() {
        assert_eq!(
            [1, 3, 6, 11, 30, 31, 99, 101].map(nice),
            [1, 5, 10, 20, 50, 50, 100, 200]
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b & "c">"#), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
