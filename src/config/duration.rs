//! Human durations: `250ms`, `10s`, `1m`, `2h`.

use std::time::Duration;

/// Parses a duration such as `250ms`, `10s`, `1m` or `2h`.
///
/// # Errors
/// A message naming what is wrong with `text`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    Err(format!(
        "cannot parse duration {text:?} (not implemented yet)"
    ))
}
