//! Property test of request-target parsing and route matching: whatever a caller sends,
//! nothing panics, nothing outside `/api/v2/` passes, no dot segment passes in any
//! encoding, and a matched route really is the requested method and shape.

use std::cell::RefCell;

use gcpool::inbound::check_target;
use gcpool::routes::{Route, RouteTable};
use http::{Method, Uri};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

/// Path pieces that stress the checks: encodings of dots and slashes, parameters, Unicode.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_owned()),
        Just("v2".to_owned()),
        Just("users".to_owned()),
        Just("me".to_owned()),
        Just("architect".to_owned()),
        Just("ivrs".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just(".%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("".to_owned()),
        "[a-zA-Z0-9._~%-]{1,12}",
        "\\PC{1,4}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop_oneof![
            Just("http://api.mypurecloud.com".to_owned()),
            Just("https://api.mypurecloud.com:443".to_owned()),
            Just("http://evil.example".to_owned()),
            Just("http://127.0.0.1:9000".to_owned()),
        ]),
        prop::bool::weighted(0.7),
        prop::collection::vec(segment(), 0..8),
        prop::option::of("[a-zA-Z0-9=&%,]{0,20}"),
    )
        .prop_map(|(origin, api_prefix, segments, query)| {
            let mut path = if api_prefix {
                "/api/v2".to_owned()
            } else {
                String::new()
            };
            for s in segments {
                path.push('/');
                path.push_str(&s);
            }
            if path.is_empty() {
                path.push('/');
            }
            let mut t = origin.unwrap_or_default() + &path;
            if let Some(q) = query {
                t.push('?');
                t.push_str(&q);
            }
            t
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::CONNECT),
        Just(Method::from_bytes(b"PURGE").expect("a valid method token")),
    ]
}

/// Cases generated.
const CASES: u32 = 4000;
/// At least this share of the targets must parse as a URI (about 97 % do), and at least
/// this many must pass `check_target` (about 11 % do), or the property checks too little.
const MIN_PARSED_SHARE: f64 = 0.5;
const MIN_PASSED: u32 = 100;

/// What became of one generated target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// No URI: hyper would refuse it before gcpool sees it.
    Unparseable,
    /// Refused by `check_target`.
    Refused,
    /// Passed `check_target`, so the properties of what passes were checked.
    Passed,
}

/// The property for one target.
fn outside_targets_never_pass(method: &Method, target: &str) -> Result<Checked, TestCaseError> {
    let api: http::uri::Authority = "api.mypurecloud.com".parse().expect("a valid authority");
    // Only what hyper would accept reaches gcpool: a parseable URI.
    let Ok(uri) = target.parse::<Uri>() else {
        return Ok(Checked::Unparseable);
    };
    let verdict = check_target(method, &uri, http::Version::HTTP_11, &api);
    let route = RouteTable::genesys().lookup(method, uri.path());
    if verdict.is_ok() {
        prop_assert!(method != Method::CONNECT);
        prop_assert!(uri.path().starts_with("/api/v2/"), "{}", target);
        for segment in uri.path().split('/') {
            let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
            prop_assert!(
                decoded != "." && decoded != "..",
                "dot segment passed: {}",
                target
            );
        }
        if let Some(host) = uri.host() {
            prop_assert!(
                host.eq_ignore_ascii_case("api.mypurecloud.com"),
                "foreign host passed: {}",
                target
            );
        }
    }
    if let Route::Known(op) = route {
        // HEAD is the GET operation where the path has no HEAD one.
        let head_as_get = method == Method::HEAD && op.method().as_str() == "GET";
        prop_assert!(
            head_as_get || op.method().as_str() == method.as_str(),
            "{} {} matched {}",
            method,
            target,
            op
        );
        let want = op.template().split('/').count();
        prop_assert_eq!(
            uri.path().split('/').count(),
            want,
            "{} matched {}",
            target,
            op
        );
    }
    Ok(if verdict.is_ok() {
        Checked::Passed
    } else {
        Checked::Refused
    })
}

#[test]
fn targets_outside_the_api_never_pass() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seen = RefCell::new(Vec::new());
    runner
        .run(&(method(), target()), |(method, target)| {
            seen.borrow_mut()
                .push(outside_targets_never_pass(&method, &target)?);
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner();
    let count = |c: Checked| u32::try_from(seen.iter().filter(|s| **s == c).count()).unwrap();
    let (unparseable, passed) = (count(Checked::Unparseable), count(Checked::Passed));
    let total = u32::try_from(seen.len()).unwrap();
    let parsed = total - unparseable;
    eprintln!(
        "{total} targets: {unparseable} unparseable (skipped), {parsed} checked, {passed} of them passed"
    );
    assert!(
        f64::from(parsed) >= MIN_PARSED_SHARE * f64::from(total),
        "only {parsed} of {total} generated targets parsed as a URI ({unparseable} skipped): \
         the strategy no longer exercises the checks"
    );
    assert!(
        passed >= MIN_PASSED,
        "only {passed} of {total} targets passed check_target: the properties of what \
         passes were hardly checked"
    );
}
