//! Human durations: `250ms`, `10s`, `1m`, `2h`, `1m30s`, `1.5s`; millisecond precision.
//!
//! Whether zero is allowed is the validator's decision, not this parser's.

use std::time::Duration;

/// Units in the order they are printed, with their length in milliseconds.
const UNITS: [(&str, u128); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Longest duration accepted: far beyond any sensible timeout, and safe to add to an instant.
const MAX_MS: u128 = 366 * 24 * 3_600_000;

/// Parses a duration such as `250ms`, `10s`, `1m`, `2h`, `1m30s` or `1.5s`.
///
/// Each part is a number (optionally with a fraction) followed by a unit: `ms`, `s`, `m` or `h`.
/// A bare `0` is also accepted. The result must be a whole number of milliseconds.
///
/// # Errors
/// A message naming what is wrong with `text`: empty, negative, no unit, unknown unit,
/// finer than a millisecond, or longer than a year.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("duration is empty; expected e.g. 250ms, 10s, 1m or 2h".into());
    }
    if s.starts_with('-') {
        return Err(format!("duration {s:?} is negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    // Total in nanoseconds over u128, so no intermediate step can overflow for inputs of
    // reasonable length; each part is bounded before it is added.
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits_end);
        if number.is_empty() {
            return Err(format!(
                "duration {s:?} is not a number followed by a unit (ms, s, m or h)"
            ));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_ms = match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, ms)) => *ms,
            None if unit.is_empty() => {
                return Err(format!(
                    "duration {s:?} has no unit; write e.g. {number}s or {number}ms"
                ));
            }
            None => {
                return Err(format!(
                    "duration {s:?} has unknown unit {unit:?}; use ms, s, m or h"
                ));
            }
        };
        total_ns = total_ns.saturating_add(
            part_ns(number, unit_ms)
                .ok_or_else(|| format!("duration {s:?} has an invalid number {number:?}"))?,
        );
        if total_ns > MAX_MS * 1_000_000 {
            return Err(format!("duration {s:?} is longer than a year"));
        }
        rest = next;
    }
    if !total_ns.is_multiple_of(1_000_000) {
        return Err(format!(
            "duration {s:?} is finer than a millisecond; use whole milliseconds"
        ));
    }
    let ms = u64::try_from(total_ns / 1_000_000)
        .map_err(|_| format!("duration {s:?} is longer than a year"))?;
    Ok(Duration::from_millis(ms))
}

/// Prints a duration the way [`parse_duration`] reads it: `1h`, `1m30s`, `250ms`, `0s`.
/// Anything below a millisecond is dropped (config durations never have any).
pub(super) fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (name, len) in UNITS {
        let n = ms / len;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(name);
            ms %= len;
        }
    }
    out
}

/// `number` (digits with at most one `.`) times `unit_ms`, in nanoseconds.
fn part_ns(number: &str, unit_ms: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    // More digits than this cannot be a sensible duration; it also keeps u128 from overflowing.
    if int.len() > 12 || frac.len() > 12 || frac.contains('.') {
        return None;
    }
    let unit_ns = unit_ms * 1_000_000;
    let int_value: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut ns = int_value.checked_mul(unit_ns)?;
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        // Fractions that do not land on a whole nanosecond are rounded down; the
        // millisecond check in the caller rejects anything that matters.
        ns = ns.checked_add(frac_value.checked_mul(unit_ns)? / scale)?;
    }
    Some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
    }

    #[test]
    fn parses_compound_fraction_and_zero() {
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h1m1s1ms"), Ok(ms(3_661_001)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0.25s"), Ok(ms(250)));
        assert_eq!(parse_duration(".5m"), Ok(ms(30_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 5s "), Ok(ms(5_000)));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("-1s", "negative"),
            ("10", "no unit"),
            ("10 s", "unknown unit"),
            ("10sec", "unknown unit"),
            ("5d", "unknown unit"),
            ("s", "not a number"),
            ("1..5s", "invalid number"),
            ("1.2.3s", "invalid number"),
            (".s", "invalid number"),
            ("1.0001s", "finer than a millisecond"),
            ("9999999h", "longer than a year"),
            (
                "99999999999999999999999999999999999999999h",
                "invalid number",
            ),
            ("1s-", "unknown unit"),
        ];
        for (input, reason) in cases {
            let err = parse_duration(input).unwrap_err();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
    }

    #[test]
    fn formats_as_it_parses() {
        assert_eq!(format_duration(ms(30_000)), "30s");
        assert_eq!(format_duration(ms(250)), "250ms");
        assert_eq!(format_duration(ms(90_000)), "1m30s");
        assert_eq!(format_duration(ms(3_600_000)), "1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for n in [
            1, 5, 999, 1_000, 1_001, 59_999, 60_000, 3_599_999, 3_600_001, 86_400_000,
        ] {
            assert_eq!(parse_duration(&format_duration(ms(n))), Ok(ms(n)), "{n}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for input in [
            "ms", "h1", "1hh", "1µs", "1sm", "..", "1.", "٣s", "1\u{0}s", "1m30",
        ] {
            let _ = parse_duration(input);
        }
    }
}
