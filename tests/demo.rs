//! `gcpool demo` runs end to end: both phases use the same clients for the same measured
//! time against one denominator, its output fits 100 columns, and `--svg` draws the same
//! per-second numbers the JSON report holds.

use std::process::{Command, Output};

use serde_json::Value;

/// A short demo: 3 clients × 4 per 1 s window (12 per window), 24 req/s offered in bursts
/// of 12 for 2 s per phase.
const SHORT: &[&str] = &[
    "demo",
    "--clients",
    "3",
    "--window",
    "1s",
    "--token-limit",
    "4",
    "--duration",
    "2s",
    "--rate",
    "24",
    "--burst",
    "12",
    "--max-wait",
    "1s",
    "--guard",
    "100ms",
];

fn demo(extra: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_gcpool"))
        .args(SHORT)
        .args(extra)
        .output()
        .expect("run gcpool demo");
    assert!(
        output.status.success(),
        "demo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn series_sum(phase: &Value, key: &str) -> u64 {
    phase["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|s| u(&s[key]))
        .sum()
}

#[test]
fn json_report_measures_both_phases_for_the_same_time_against_one_denominator() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("timeline.svg");
    let output = demo(&["--json", "--svg", svg_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is the JSON report ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let without = &report["without_gcpool"];
    let with = &report["with_gcpool"];

    // The same time: each phase's clock reading, not the flag, and no drain in it.
    let (a, b) = (f(&without["measured_s"]), f(&with["measured_s"]));
    assert_eq!(f(&report["duration_s"]), 2.0);
    for measured in [a, b] {
        assert!(
            (2.0..2.1).contains(&measured),
            "each phase is measured for the 2 s of load: {report}"
        );
    }
    assert!((a - b).abs() < 0.1, "equal durations: {a} vs {b}");
    assert_eq!(with["timeline"].as_array().map(Vec::len), Some(2));
    assert_eq!(without["timeline"].as_array().map(Vec::len), Some(2));

    // One denominator: 12 per 1 s window, 2 windows start in 2 s.
    assert_eq!(u(&report["pool_capacity_per_window"]), 12);
    assert_eq!(u(&report["capacity_in_duration"]), 24);
    for phase in [without, with] {
        let answered = u(&phase["answered"]);
        assert!(
            answered <= 24,
            "no phase answers more than the pool may: {phase}"
        );
        assert!(
            (f(&phase["answered_share"]) - answered as f64 / 24.0).abs() < 1e-9,
            "the share uses the one denominator: {phase}"
        );
        // The timeline adds up to the totals.
        assert_eq!(series_sum(phase, "answered"), answered, "{phase}");
        assert_eq!(
            series_sum(phase, "upstream_429"),
            u(&phase["upstream_429"]),
            "{phase}"
        );
        assert_eq!(
            series_sum(phase, "local_429"),
            u(&phase["local_429"]),
            "{phase}"
        );
    }

    // Like with like: the same load and the same clients, each used without gcpool.
    assert_eq!(u(&with["sent"]), u(&without["sent"]), "the same load");
    assert_eq!(u(&with["sent"]), 48, "4 bursts of 12 in 2 s");
    let per_client = without["answered_per_client"].as_object().unwrap();
    assert_eq!(per_client.len(), 3, "{report}");
    assert!(
        per_client.values().all(|n| u(n) > 0),
        "round-robin: every client answered without gcpool: {report}"
    );
    assert!(u(&without["upstream_429"]) > 0, "{report}");
    assert_eq!(u(&without["local_429"]), 0, "{report}");
    assert_eq!(
        u(&with["upstream_429"]),
        0,
        "gcpool keeps the API from answering 429: {report}"
    );
    assert!(
        u(&with["local_429"]) > 0,
        "the excess is told to retry: {report}"
    );
    // bench/capacity.sh's figures stay: every 2xx, the drain included.
    assert_eq!(
        u(&with["served"]),
        u(&with["answered"]) + u(&with["after_end"]["answered"]),
        "{report}"
    );
    assert!(with["capacity_used"].is_f64(), "{report}");
    let summary = report["summary"].to_string();
    assert!(
        summary.contains(&format!(
            "With gcpool:    {} answered, 0 upstream 429s",
            u(&with["answered"])
        )),
        "{summary}"
    );

    // The cached route: 3 bursts of 12 identical lookups, counted by the simulator and by
    // each answer's x-gcpool-cache.
    let cached = &report["cached_route"];
    assert_eq!(
        cached["route"], "GET /api/v2/routing/queues/{queueId}",
        "{cached}"
    );
    assert_eq!(u(&cached["lookups"]), 36, "{cached}");
    assert_eq!(
        u(&cached["upstream_calls"]),
        1,
        "one upstream call: {cached}"
    );
    assert_eq!(u(&cached["miss"]), 1, "{cached}");
    assert_eq!(u(&cached["other"]), 0, "{cached}");
    assert_eq!(
        u(&cached["miss"]) + u(&cached["coalesced"]) + u(&cached["hit"]),
        36,
        "{cached}"
    );
    assert!(
        u(&cached["hit"]) >= 24,
        "the later bursts are hits: {cached}"
    );

    assert!(
        stderr.contains("[with gcpool]"),
        "live lines go to stderr with --json"
    );
    for line in stderr.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line:?}"
        );
    }

    let svg = std::fs::read_to_string(&svg_path).expect("--svg wrote the file");
    check_well_formed(&svg);
    assert!(
        !svg.contains("href") && !svg.contains("url(") && !svg.contains("<image"),
        "self-contained"
    );
    for phase in [without, with] {
        let name = phase["name"].as_str().unwrap();
        for key in ["answered", "upstream_429", "local_429"] {
            let json: Vec<u64> = phase["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| u(&s[key]))
                .collect();
            assert_eq!(
                svg_series(&svg, name, key),
                json,
                "the picture's {name}/{key} bars are the report's"
            );
        }
    }
}

#[test]
fn plain_output_fits_100_columns_and_says_what_it_shows() {
    let output = demo(&["--plain"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns ({}): {line:?}",
            line.chars().count()
        );
    }
    for words in [
        "window: the API counts each client's requests over any sliding 1.0 s",
        "rates:  requests per second",
        "[without gcpool] t=",
        "[with gcpool] t=",
        "one denominator: 3 clients × 4 per 1.0 s window = at most 24 answers in 2.0 s",
        "measured time (load sent for)",
        "Without gcpool: ",
        "With gcpool: ",
        "callers waited p50 ",
        "Cached route GET /api/v2/routing/queues/{queueId} (ttl 30s): 36 identical lookups",
        "in 3 bursts, as a Data Action that looks the queue up on each call: 1 upstream call;",
    ] {
        assert!(stdout.contains(words), "missing {words:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains('\x1b'),
        "no terminal control codes in plain output"
    );
}

/// The comma-separated `data-values` of one series in one phase's panel, checked against
/// the bars drawn in that series.
fn svg_series(svg: &str, phase: &str, series: &str) -> Vec<u64> {
    let panel_start = format!("<g data-phase=\"{phase}\">");
    let panel = svg
        .split(&panel_start)
        .nth(1)
        .unwrap_or_else(|| panic!("no panel for {phase}"));
    let panel = panel.split("<g data-phase=").next().unwrap_or(panel);
    let attr = format!("data-series=\"{series}\" data-values=\"");
    let group = panel
        .split(&attr)
        .nth(1)
        .and_then(|rest| rest.split("</g>").next())
        .unwrap_or_else(|| panic!("no {series} series for {phase}"));
    let values: Vec<u64> = group
        .split('"')
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|v| v.parse().expect("a count"))
        .collect();
    // The bars drawn are the values: one per non-zero second, at that second.
    let mut drawn = vec![0; values.len()];
    for bar in group.split("<rect ").skip(1) {
        let attr = |name: &str| -> usize {
            bar.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bar without {name}: {bar}"))
        };
        drawn[attr("data-second")] += attr("data-count") as u64;
    }
    assert_eq!(drawn, values, "{phase}/{series}: bars drawn vs data-values");
    values
}

/// A small XML well-formedness check: one root `svg` element, every tag closed in order,
/// attributes quoted, `&` only as an entity.
fn check_well_formed(xml: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = xml.trim_start();
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        rest = &rest[open..];
        if let Some(body) = rest.strip_prefix("<?") {
            let end = body.find("?>").expect("processing instruction closed");
            assert!(stack.is_empty() && roots == 0, "declaration first");
            rest = &body[end + 2..];
            continue;
        }
        if let Some(body) = rest.strip_prefix("<!--") {
            rest = &body[body.find("-->").expect("comment closed") + 3..];
            continue;
        }
        let end = tag_end(rest);
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
            assert_eq!(open, name.trim(), "tags close in order");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name: String = tag.chars().take_while(|c| !c.is_whitespace()).collect();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':'),
            "tag name {name:?}"
        );
        check_attributes(&tag[name.len()..]);
        if stack.is_empty() {
            roots += 1;
            assert_eq!(name, "svg", "the root is <svg>");
        }
        if !self_closing {
            stack.push(name);
        }
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert_eq!(roots, 1, "one root element");
}

/// Index of the `>` that ends the tag at the start of `s`, skipping quoted values.
fn tag_end(s: &str) -> usize {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '<') => panic!("'<' inside a tag: {}", &s[..i]),
            (None, '>') => return i,
            _ => {}
        }
    }
    panic!("unterminated tag: {s:.60}")
}

fn check_attributes(mut attrs: &str) {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return;
        }
        let eq = attrs
            .find('=')
            .unwrap_or_else(|| panic!("attribute without value: {attrs}"));
        let name = attrs[..eq].trim();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)),
            "attribute name {name:?}"
        );
        let value = attrs[eq + 1..].trim_start();
        let quote = value.chars().next().expect("a value");
        assert!(quote == '"' || quote == '\'', "quoted value: {value}");
        let close = value[1..].find(quote).expect("value closed") + 1;
        check_text(&value[1..close]);
        attrs = &value[close + 1..];
    }
}

fn check_text(text: &str) {
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#"]
                .iter()
                .any(|e| entity.starts_with(e)),
            "bare '&' in {text:?}"
        );
    }
    assert!(!text.contains('<'), "'<' in text: {text:?}");
}
