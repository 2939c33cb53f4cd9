//! Parsers for `gcpool simulate` flag values: durations, route limits, hidden limits.
//!
//! The simulator's own small parsers, so it does not depend on `crate::config`.

use std::time::Duration;

use super::SimRouteLimit;

/// Parses `250ms`, `10s`, `1m`, `2h` (a whole number and a unit).
///
/// # Errors
/// A message naming the bad value when the number or the unit is missing or unknown.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || format!("invalid duration {s:?}: expected a whole number and ms, s, m or h");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        _ => None,
    }
    .ok_or_else(bad)
}

/// As [`parse_duration`], refusing zero.
pub(crate) fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("duration {s:?} must be longer than zero"));
    }
    Ok(d)
}

/// Parses `"PUT /api/v2/architect/ivrs/{ivrId}=100"`.
pub(crate) fn parse_route_limit(s: &str) -> Result<SimRouteLimit, String> {
    let bad = |why: &str| format!("invalid route limit {s:?}: {why}");
    let (route, limit) = s
        .rsplit_once('=')
        .ok_or_else(|| bad("expected METHOD /api/v2/TEMPLATE=N"))?;
    let limit: u32 = limit
        .trim()
        .parse()
        .map_err(|_| bad("limit is not a whole number"))?;
    let (method, template) = route
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("expected a method, a space and a path template"))?;
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| bad("bad method"))?;
    let template = template.trim();
    if !template.starts_with("/api/v2/") {
        return Err(bad("template must start with /api/v2/"));
    }
    Ok(SimRouteLimit::new(method, template, limit))
}

/// Parses `sim-client-02=5`.
pub(crate) fn parse_hidden_limit(s: &str) -> Result<(String, u32), String> {
    let bad = || format!("invalid hidden token limit {s:?}: expected CLIENT_ID=N");
    let (id, limit) = s.rsplit_once('=').ok_or_else(bad)?;
    let id = id.trim();
    if id.is_empty() {
        return Err(bad());
    }
    let limit = limit.trim().parse().map_err(|_| bad())?;
    Ok((id.to_owned(), limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "3d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_nonzero_duration("0s").is_err());
    }

    #[test]
    fn route_limits() {
        let r = parse_route_limit("PUT /api/v2/architect/ivrs/{ivrId}=100").unwrap();
        assert_eq!(r.method, http::Method::PUT);
        assert_eq!(r.template, "/api/v2/architect/ivrs/{ivrId}");
        assert_eq!(r.limit, 100);
        assert_eq!(r.key(), "PUT /api/v2/architect/ivrs/{ivrId}");
        assert!(parse_route_limit("PUT /api/v2/x").is_err());
        assert!(parse_route_limit("/api/v2/x=3").is_err());
        assert!(parse_route_limit("GET /users=3").is_err());
        assert!(parse_route_limit("GET /api/v2/x=lots").is_err());
    }

    #[test]
    fn hidden_limits() {
        assert_eq!(
            parse_hidden_limit("sim-client-02=5"),
            Ok(("sim-client-02".to_owned(), 5))
        );
        assert!(parse_hidden_limit("=5").is_err());
        assert!(parse_hidden_limit("sim-client-02").is_err());
        assert!(parse_hidden_limit("sim-client-02=x").is_err());
    }
}
