//! Parsers for `gcpool simulate` flag values: route limits, hidden limits, and the
//! non-zero window.
//!
//! Durations use the config's grammar ([`crate::config::parse_duration`], public API), so
//! `simulate`, `demo` and config files read `1m30s` alike.

use std::time::Duration;

use super::SimRouteLimit;
use crate::config::parse_duration;

/// As [`parse_duration`], refusing zero (a window must have a length).
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
    fn nonzero_durations() {
        assert_eq!(parse_nonzero_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_nonzero_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        for zero in ["0s", "0ms", "0"] {
            let err = parse_nonzero_duration(zero).unwrap_err();
            assert!(err.contains("longer than zero"), "{zero:?}: {err}");
        }
        let err = parse_nonzero_duration("1x").unwrap_err();
        assert!(err.contains("\"1x\""), "names the value: {err}");
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
