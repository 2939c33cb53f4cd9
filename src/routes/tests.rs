//! Route table tests: the shipped list loads, every template finds itself, literals beat
//! parameters, garbage is `Other`.

use std::collections::HashSet;

use http::Method;

use super::*;

fn table() -> &'static RouteTable {
    RouteTable::genesys()
}

/// The label of `METHOD path`, for compact assertions.
fn label(method: Method, path: &str) -> &'static str {
    table().lookup(&method, path).label()
}

/// `template` with every `{param}` replaced by `value`.
fn fill(template: &str, value: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { value } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn shipped_list_parses_with_every_line() {
    let t = RouteTable::from_tsv(GENESYS_OPERATIONS).expect("the embedded list must parse");
    assert_eq!(t.len(), 3355);
    assert_eq!(GENESYS_OPERATIONS.lines().count(), 3355);
    let mut per_method = [0usize; 6];
    for op in t.operations() {
        per_method[op.method() as usize] += 1;
    }
    // GET POST PUT PATCH DELETE HEAD, as counted in the facts (§7).
    assert_eq!(per_method, [1557, 899, 276, 260, 361, 2]);
    // Dense ids in list order.
    for (i, op) in t.operations().enumerate() {
        assert_eq!(op.id().index(), i);
        assert_eq!(t.operation(op.id()), op);
        assert_eq!(t.template(op.id()), op.template());
        assert_eq!(t.method(op.id()), op.method());
    }
    assert_eq!(table().len(), 3355);
}

/// Every template, its parameters filled with a sample value, maps back to itself. The
/// samples are chosen to be no literal segment of the list: a sample that equals a literal
/// sibling (say `me` for `/api/v2/users/{userId}`) would rightly match the literal route.
#[test]
fn every_template_matches_itself() {
    let literals: HashSet<&str> = table()
        .operations()
        .flat_map(|op| op.template().split('/'))
        .filter(|s| !s.starts_with('{'))
        .collect();
    for sample in ["x1", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "a%2Fb", "é"] {
        assert!(!literals.contains(sample), "{sample} is a literal segment");
        let mut mismatches = Vec::new();
        for op in table().operations() {
            let path = fill(op.template(), sample);
            let found = table().lookup(&op.method().to_http(), &path);
            if found != Route::Known(op) {
                mismatches.push(format!("{op} ({path}) -> {}", found.label()));
            }
        }
        assert!(
            mismatches.is_empty(),
            "sample {sample:?}: {} mismatches:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
}

/// The template text itself is a valid request path, and it too finds its own operation
/// (a parameter segment `{userId}` is never a literal of the list).
#[test]
fn template_text_matches_itself() {
    for op in table().operations() {
        let found = table().lookup(&op.method().to_http(), op.template());
        assert_eq!(found, Route::Known(op), "{op}");
        assert_eq!(
            table().find_template(&op.method().to_http(), op.template()),
            Some(op.id())
        );
    }
}

#[test]
fn literal_segments_win_over_parameters() {
    assert_eq!(label(Method::GET, "/api/v2/users/me"), "/api/v2/users/me");
    assert_eq!(
        label(Method::GET, "/api/v2/users/abc"),
        "/api/v2/users/{userId}"
    );
    assert_eq!(
        label(Method::GET, "/api/v2/users/search"),
        "/api/v2/users/search"
    );
    assert_eq!(
        label(Method::POST, "/api/v2/users/search"),
        "/api/v2/users/search"
    );
    // `me` as a prefix of a longer value is still the parameter.
    assert_eq!(
        label(Method::GET, "/api/v2/users/meX"),
        "/api/v2/users/{userId}"
    );
    // Backtracking: `me` is a literal, but `/users/me/roles` exists only as `{subjectId}`.
    assert_eq!(
        label(Method::GET, "/api/v2/users/me/roles"),
        table()
            .lookup(&Method::GET, "/api/v2/users/abc/roles")
            .label()
    );
    assert_eq!(
        label(Method::GET, "/api/v2/users/abc/roles"),
        "/api/v2/users/{subjectId}/roles"
    );
    assert_eq!(
        label(Method::PUT, "/api/v2/architect/ivrs/5b2d"),
        "/api/v2/architect/ivrs/{ivrId}"
    );
}

/// The three template pairs that differ only in parameter names have different methods,
/// and each method finds its own name (facts §7).
#[test]
fn same_shape_pairs_resolve_per_method() {
    for (method, path, template) in [
        (
            Method::GET,
            "/api/v2/chats/rooms/r1/messages/m1",
            "/api/v2/chats/rooms/{roomJid}/messages/{messageIds}",
        ),
        (
            Method::DELETE,
            "/api/v2/chats/rooms/r1/messages/m1",
            "/api/v2/chats/rooms/{roomJid}/messages/{messageId}",
        ),
        (
            Method::PATCH,
            "/api/v2/chats/rooms/r1/messages/m1",
            "/api/v2/chats/rooms/{roomJid}/messages/{messageId}",
        ),
        (
            Method::GET,
            "/api/v2/chats/rooms/r1/participants/p1",
            "/api/v2/chats/rooms/{roomJid}/participants/{participantJid}",
        ),
        (
            Method::POST,
            "/api/v2/chats/rooms/r1/participants/p1",
            "/api/v2/chats/rooms/{roomJid}/participants/{userId}",
        ),
        (
            Method::DELETE,
            "/api/v2/chats/rooms/r1/participants/p1",
            "/api/v2/chats/rooms/{roomJid}/participants/{userId}",
        ),
        (
            Method::GET,
            "/api/v2/chats/users/u1/messages/m1",
            "/api/v2/chats/users/{userId}/messages/{messageIds}",
        ),
        (
            Method::DELETE,
            "/api/v2/chats/users/u1/messages/m1",
            "/api/v2/chats/users/{userId}/messages/{messageId}",
        ),
    ] {
        assert_eq!(label(method.clone(), path), template, "{method} {path}");
    }
    // A literal sibling under the same parameter: POST has `messages/pins`, GET has not.
    assert_eq!(
        label(Method::POST, "/api/v2/chats/rooms/r1/messages/pins"),
        "/api/v2/chats/rooms/{roomJid}/messages/pins"
    );
    assert_eq!(
        label(Method::GET, "/api/v2/chats/rooms/r1/messages/pins"),
        "/api/v2/chats/rooms/{roomJid}/messages/{messageIds}"
    );
}

#[test]
fn route_accessors() {
    let route = table().lookup(&Method::GET, "/api/v2/users/abc");
    let id = route
        .id()
        .expect("GET /api/v2/users/{userId} is an operation");
    assert_eq!(route.method(), Some(RouteMethod::Get));
    assert_eq!(table().template(id), "/api/v2/users/{userId}");
    assert_eq!(table().method(id), RouteMethod::Get);
    let op = route.operation().expect("known");
    assert_eq!(op.to_string(), "GET /api/v2/users/{userId}");
    assert_eq!(Route::Other.label(), "other");
    assert_eq!((Route::Other.id(), Route::Other.method()), (None, None));
    // Same path, different methods: different ids.
    let put = table().lookup(&Method::PUT, "/api/v2/users/abc").id();
    assert!(put.is_none() || put != Some(id));
}

#[test]
fn query_and_fragment_are_ignored() {
    assert_eq!(
        label(Method::GET, "/api/v2/users/me?expand=presence"),
        "/api/v2/users/me"
    );
    assert_eq!(
        label(Method::GET, "/api/v2/users?pageSize=25"),
        "/api/v2/users"
    );
    assert_eq!(
        label(Method::GET, "/api/v2/users/abc#x"),
        "/api/v2/users/{userId}"
    );
    assert_eq!(label(Method::GET, "/api/v2/users/?x"), OTHER);
}

#[test]
fn unknown_paths_and_methods_are_other() {
    for (method, path) in [
        (Method::GET, "/api/v2/nonexistent"),
        (Method::GET, "/api/v2/users/abc/nonexistent"),
        (Method::GET, "/api/v1/users/me"),
        (Method::GET, "/API/v2/users/me"),
        (Method::GET, "/api/v2/Users/me"),
        (Method::GET, "api/v2/users/me"),
        (Method::GET, "/api/v2/users/me/"),
        (Method::GET, "/api/v2/users//"),
        (Method::GET, "/api/v2//users/me"),
        (Method::GET, "/api/v2/users/"),
        (Method::POST, "/api/v2/users/me"),
        (Method::OPTIONS, "/api/v2/users/me"),
        (Method::TRACE, "/api/v2/users/me"),
        (Method::CONNECT, "/api/v2/users/me"),
        (
            Method::from_bytes(b"FETCH").expect("token"),
            "/api/v2/users/me",
        ),
        // HEAD where neither a HEAD nor a GET operation is.
        (
            Method::HEAD,
            "/api/v2/analytics/conversations/details/query",
        ),
    ] {
        assert_eq!(label(method.clone(), path), OTHER, "{method} {path}");
    }
    assert_eq!(
        label(Method::HEAD, "/api/v2/tokens/me"),
        "/api/v2/tokens/me"
    );
    let table = RouteTable::genesys();
    let head = table.lookup(&Method::HEAD, "/api/v2/users/me");
    assert_eq!(
        head,
        table.lookup(&Method::GET, "/api/v2/users/me"),
        "HEAD is the GET operation where no HEAD operation is"
    );
}

#[test]
fn garbage_is_other_without_panic() {
    let long = "/api/v2/users/".to_owned() + &"a".repeat(100_000);
    let deep = "/x".repeat(10_000);
    let many_params = "/api/v2/".to_owned() + &"{p}/".repeat(50) + "x";
    for path in [
        "",
        "/",
        "//",
        "///",
        "%",
        "/%",
        "/api/v2/%",
        "/api/v2/users/%ZZ/roles/%",
        "?",
        "#",
        "/api/v2/users/{userId}/{",
        "/api/v2/{*rest}",
        "/api/v2/ü/me",
        "/ünïcödé/🦀",
        "\0",
        "/api/v2/\0/me",
        deep.as_str(),
        many_params.as_str(),
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::HEAD] {
            assert_eq!(label(method.clone(), path), OTHER, "{method} {path:?}");
        }
    }
    // A long parameter value is still one segment.
    assert_eq!(label(Method::GET, &long), "/api/v2/users/{userId}");
    // Parameters are not decoded: one encoded segment is one parameter.
    assert_eq!(
        label(Method::GET, "/api/v2/users/a%2Fb"),
        "/api/v2/users/{userId}"
    );
    assert_eq!(
        label(Method::GET, "/api/v2/users/ü"),
        "/api/v2/users/{userId}"
    );
    assert_eq!(
        label(Method::GET, "/api/v2/users/me\0"),
        "/api/v2/users/{userId}"
    );
}

/// Mutated copies of real paths (bytes inserted, deleted, replaced, segments doubled) never
/// panic, and whatever they match is an operation of the requested method. Deterministic.
#[test]
fn mutated_paths_never_panic() {
    let alphabet: &[u8] = b"/{}%?#.az09*:-_ \x7f";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n as u64).expect("below n")
    };
    let ops: Vec<Operation> = table().operations().collect();
    for _ in 0..20_000 {
        let op = ops[next(ops.len())];
        let mut bytes = fill(op.template(), "x1").into_bytes();
        for _ in 0..=next(3) {
            let at = next(bytes.len() + 1);
            match next(3) {
                0 => bytes.insert(at, alphabet[next(alphabet.len())]),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ if at < bytes.len() => bytes[at] = alphabet[next(alphabet.len())],
                _ => bytes.push(b'/'),
            }
        }
        let path = String::from_utf8_lossy(&bytes);
        let method = RouteMethod::ALL[next(6)];
        if let Route::Known(found) = table().lookup(&method.to_http(), &path) {
            // HEAD falls back to the GET operation where the path has no HEAD one.
            let expected = if method == RouteMethod::Head && found.method() == RouteMethod::Get {
                RouteMethod::Get
            } else {
                method
            };
            assert_eq!(found.method(), expected, "{path}");
        }
    }
}

/// A few thousand lookups on the hot path's shapes; no timing asserted.
#[test]
fn many_lookups() {
    let paths = [
        "/api/v2/users/me",
        "/api/v2/users/3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "/api/v2/analytics/conversations/details/query",
        "/api/v2/routing/queues/q1/members",
        "/api/v2/nonexistent/path",
    ];
    let mut known = 0;
    for i in 0..5_000 {
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        if table()
            .lookup(&method, paths[i % paths.len()])
            .id()
            .is_some()
        {
            known += 1;
        }
    }
    assert!(known > 0);
}

#[test]
fn find_template_is_exact() {
    let t = table();
    let ivr = t
        .find_template(&Method::PUT, "/api/v2/architect/ivrs/{ivrId}")
        .expect("PUT /api/v2/architect/ivrs/{ivrId} is an operation");
    assert_eq!(t.template(ivr), "/api/v2/architect/ivrs/{ivrId}");
    assert_eq!(
        t.find_template(&Method::PUT, "/api/v2/architect/ivrs/{id}"),
        None
    );
    assert_eq!(
        t.find_template(&Method::PUT, "/api/v2/architect/ivr/{ivrId}"),
        None
    );
    assert_eq!(
        t.find_template(&Method::PUT, "/api/v2/architect/ivrs/abc"),
        None
    );
    assert_eq!(
        t.find_template(&Method::OPTIONS, "/api/v2/architect/ivrs/{ivrId}"),
        None
    );
    assert_eq!(
        t.find_template(&Method::PATCH, "/api/v2/architect/ivrs/{ivrId}"),
        None
    );
}

#[test]
fn suggestions() {
    let t = table();
    let suggest = |m: Method, s: &str| t.suggest(&m, s).map(|op| op.to_string());
    // Other parameter names → the real ones.
    assert_eq!(
        suggest(Method::PUT, "/api/v2/architect/ivrs/{id}").as_deref(),
        Some("PUT /api/v2/architect/ivrs/{ivrId}")
    );
    // A typo in one literal segment.
    assert_eq!(
        suggest(Method::PUT, "/api/v2/architect/ivr/{ivrId}").as_deref(),
        Some("PUT /api/v2/architect/ivrs/{ivrId}")
    );
    // A value in place of a parameter.
    assert_eq!(
        suggest(Method::GET, "/api/v2/users/abc").as_deref(),
        Some("GET /api/v2/users/{userId}")
    );
    assert_eq!(
        suggest(Method::GET, "/api/v2/nothing/like/this/at/all"),
        None
    );
    assert_eq!(
        t.methods_at("/api/v2/architect/ivrs/{ivrId}"),
        [RouteMethod::Get, RouteMethod::Put, RouteMethod::Delete]
    );
}

#[test]
fn bad_lists_are_errors() {
    for (text, why) in [
        ("GET /api/v2/a", "METHOD<TAB>PATH"),
        ("FETCH\t/api/v2/a", "unsupported method"),
        ("GET\t/api/v1/a", "/api/v2/"),
        ("GET\t/api/v2/a/", "neither a literal"),
        ("GET\t/api/v2/{*rest}", "neither a literal"),
        ("GET\t/api/v2/a{id}", "neither a literal"),
        ("GET\t/api/v2/a\nGET\t/api/v2/a", "listed twice"),
        (
            "GET\t/api/v2/a/{x}\nGET\t/api/v2/a/{y}",
            "GET /api/v2/a/{y}",
        ),
    ] {
        let err = RouteTable::from_tsv(text).expect_err(text);
        assert!(err.to_string().contains(why), "{text:?}: {err}");
    }
    let t = RouteTable::from_tsv("\nGET\t/api/v2/a\n\n").expect("blank lines are skipped");
    assert_eq!((t.len(), t.is_empty()), (1, false));
    assert!(RouteTable::from_tsv("").expect("empty").is_empty());
}
