//! The Genesys Cloud simulator over real TCP on 127.0.0.1: tokens, 401s, echo, limits, stats.

mod support;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use gcpool::sim::{SimOptions, SimStats, SimulateArgs, Simulator};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::eventually;
use tokio::io::{AsyncBufReadExt, BufReader};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Rsp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Rsp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body must be JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("response must carry {name}"))
            .to_str()
            .expect("simulator headers must be visible ASCII")
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Rsp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("test request must be well formed");
    let rsp = client.request(req).await.expect("simulator must answer");
    let (parts, body) = rsp.into_parts();
    let body = body
        .collect()
        .await
        .expect("simulator body must arrive whole")
        .to_bytes();
    Rsp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn grant(client: &HttpClient, sim: &Simulator, id: &str, secret: &str) -> Rsp {
    grant_at(client, &sim.base_url(), id, secret).await
}

/// A client-credentials grant from the simulator at `base` (`http://host:port`).
async fn grant_at(client: &HttpClient, base: &str, id: &str, secret: &str) -> Rsp {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    send(
        client,
        Method::POST,
        &format!("{base}/oauth/token"),
        &[
            ("authorization", &format!("Basic {basic}")),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        "grant_type=client_credentials",
    )
    .await
}

async fn token(client: &HttpClient, sim: &Simulator, n: u32) -> String {
    let rsp = grant(
        client,
        sim,
        &format!("sim-client-{n:02}"),
        &format!("sim-secret-{n:02}"),
    )
    .await;
    assert_eq!(rsp.status, StatusCode::OK, "grant must succeed");
    rsp.json()["access_token"]
        .as_str()
        .expect("grant must carry access_token")
        .to_owned()
}

async fn api(client: &HttpClient, sim: &Simulator, method: Method, path: &str, token: &str) -> Rsp {
    send(
        client,
        method,
        &format!("{}{path}", sim.base_url()),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await
}

/// Asserts a Genesys 429 with the given `limit` object and returns its Retry-After.
fn assert_429(rsp: &Rsp, key: &str, namespace: &str, value: u32) -> u64 {
    assert_eq!(rsp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rsp.header("content-type"), "application/json");
    let retry_after: u64 = rsp
        .header("retry-after")
        .parse()
        .expect("Retry-After must be whole seconds");
    assert!(retry_after >= 1, "Retry-After is at least 1");
    let id = rsp.header("inin-correlation-id").to_owned();
    assert_eq!(
        rsp.json(),
        json!({
            "message": format!("Rate limit exceeded the maximum. Retry the request in [{retry_after}] seconds"),
            "code": "too.many.requests.retry.after",
            "status": 429,
            "contextId": id,
            "details": [],
            "errors": [],
            "limit": { "key": key, "namespace": namespace, "value": value },
        })
    );
    retry_after
}

fn assert_401(rsp: &Rsp, code: &str) {
    assert_eq!(rsp.status, StatusCode::UNAUTHORIZED, "{code}");
    assert_eq!(rsp.json()["code"], code);
    assert_eq!(rsp.json()["status"], 401);
}

async fn http_stats(client: &HttpClient, sim: &Simulator) -> SimStats {
    let rsp = send(
        client,
        Method::GET,
        &format!("{}/sim/stats", sim.base_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(rsp.status, StatusCode::OK);
    serde_json::from_slice(&rsp.body).expect("stats must be SimStats JSON")
}

#[tokio::test]
async fn token_grant_returns_a_fresh_bearer_token_each_time() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let rsp = grant(&c, &sim, "sim-client-01", "sim-secret-01").await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert_eq!(rsp.header("content-type"), "application/json");
    let body = rsp.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86_400);
    let first = body["access_token"].as_str().unwrap().to_owned();
    assert!(first.len() >= 32, "token must be long and opaque");
    let second = token(&c, &sim, 1).await;
    assert_ne!(first, second, "each grant mints a new token");
    for t in [&first, &second] {
        let rsp = api(&c, &sim, Method::GET, "/api/v2/users", t).await;
        assert_eq!(rsp.status, StatusCode::OK, "both tokens stay valid");
        assert_eq!(rsp.json()["client"], "sim-client-01");
    }
    assert_eq!(sim.stats().token_grants, 2);
}

#[tokio::test]
async fn token_grant_refuses_bad_credentials_and_grant_types() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let invalid_client = json!({
        "error": "invalid_client",
        "description": "client authentication failed",
        "error_description": "client authentication failed",
    });
    for (id, secret) in [
        ("sim-client-01", "wrong"),
        ("nobody", "sim-secret-01"),
        ("", ""),
    ] {
        let rsp = grant(&c, &sim, id, secret).await;
        assert_eq!(rsp.status, StatusCode::UNAUTHORIZED, "{id}:{secret}");
        assert_eq!(rsp.json(), invalid_client);
    }
    let url = format!("{}/oauth/token", sim.base_url());
    for auth in ["Basic !!!garbage", "Bearer abc", "Basic"] {
        let rsp = send(
            &c,
            Method::POST,
            &url,
            &[("authorization", auth)],
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(rsp.status, StatusCode::UNAUTHORIZED, "{auth}");
        assert_eq!(rsp.json(), invalid_client);
    }
    let basic = base64::engine::general_purpose::STANDARD.encode("sim-client-01:sim-secret-01");
    let rsp = send(
        &c,
        Method::POST,
        &url,
        &[("authorization", &format!("Basic {basic}"))],
        "grant_type=password",
    )
    .await;
    assert_eq!(rsp.status, StatusCode::BAD_REQUEST);
    assert_eq!(rsp.json()["error"], "unsupported_grant_type");
    let stats = sim.stats();
    assert_eq!((stats.token_grants, stats.token_grant_failures), (0, 7));
}

#[tokio::test]
async fn rejected_client_gets_401_until_accepted_again() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    sim.set_credentials_rejected("sim-client-02", true);
    let rsp = grant(&c, &sim, "sim-client-02", "sim-secret-02").await;
    assert_eq!(rsp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(rsp.json()["error"], "invalid_client");
    let other = grant(&c, &sim, "sim-client-01", "sim-secret-01").await;
    assert_eq!(other.status, StatusCode::OK, "other clients are unaffected");
    sim.set_credentials_rejected("sim-client-02", false);
    let rsp = grant(&c, &sim, "sim-client-02", "sim-secret-02").await;
    assert_eq!(rsp.status, StatusCode::OK);
}

#[tokio::test]
async fn api_without_or_with_unknown_token_is_401() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let url = format!("{}/api/v2/users", sim.base_url());
    let rsp = send(&c, Method::GET, &url, &[], "").await;
    assert_401(&rsp, "authentication.required");
    assert_eq!(
        rsp.json()["message"],
        "No authentication bearer token specified in authorization header."
    );
    let rsp = send(&c, Method::GET, &url, &[("authorization", "Basic abc")], "").await;
    assert_401(&rsp, "authentication.required");
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", "made-up").await;
    assert_401(&rsp, "bad.credentials");
    assert_eq!(rsp.json()["message"], "Invalid login credentials.");
    assert_eq!(sim.stats().rejected_401, 3);
    assert_eq!(sim.stats().accepted, 0);
}

#[tokio::test]
async fn expired_token_is_401_credentials_expired() {
    let opts = SimOptions::default().token_lifetime(Duration::from_secs(1));
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let rsp = grant(&c, &sim, "sim-client-01", "sim-secret-01").await;
    assert_eq!(rsp.json()["expires_in"], 1);
    let t = rsp.json()["access_token"].as_str().unwrap().to_owned();
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    assert_eq!(rsp.status, StatusCode::OK, "fresh token works");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    assert_401(&rsp, "credentials.expired");
    assert_eq!(sim.stats().client("sim-client-01").rejected_401, 1);
}

#[tokio::test]
async fn revoked_tokens_are_401_bad_credentials_and_new_grants_work() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let t1 = token(&c, &sim, 1).await;
    let t2 = token(&c, &sim, 2).await;
    sim.revoke_tokens();
    assert_401(
        &api(&c, &sim, Method::GET, "/api/v2/users", &t1).await,
        "bad.credentials",
    );
    let fresh = token(&c, &sim, 1).await;
    assert_eq!(
        api(&c, &sim, Method::GET, "/api/v2/users", &fresh)
            .await
            .status,
        StatusCode::OK
    );
    // The HTTP control endpoint does the same.
    let rsp = send(
        &c,
        Method::POST,
        &format!("{}/sim/revoke-tokens", sim.base_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(rsp.status, StatusCode::NO_CONTENT);
    for t in [&t2, &fresh] {
        assert_401(
            &api(&c, &sim, Method::GET, "/api/v2/users", t).await,
            "bad.credentials",
        );
    }
}

#[tokio::test]
async fn echo_returns_the_request_verbatim() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 3).await;
    let url = format!(
        "{}/api/v2/analytics/conversations/details/query%2Cx?ids=a%2Cb&z=1&a=%20",
        sim.base_url()
    );
    let rsp = send(
        &c,
        Method::POST,
        &url,
        &[
            ("authorization", &format!("Bearer {t}")),
            ("content-type", "application/json"),
            ("x-first", "1"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ],
        r#"{"interval":"2024-01-01/2024-01-02","é":1}"#,
    )
    .await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert_eq!(rsp.header("content-type"), "application/json");
    let id = rsp.header("inin-correlation-id");
    assert_eq!(id.len(), 36, "uuid-like correlation id: {id}");
    let echo = rsp.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(
        echo["path"],
        "/api/v2/analytics/conversations/details/query%2Cx"
    );
    assert_eq!(echo["query"], "ids=a%2Cb&z=1&a=%20");
    assert_eq!(
        echo["body"],
        r#"{"interval":"2024-01-01/2024-01-02","é":1}"#
    );
    assert_eq!(echo["body_len"], 43, "bytes, not chars");
    assert_eq!(echo["client"], "sim-client-03");
    let headers: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let find = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(find("x-first"), ["1"]);
    assert_eq!(
        find("x-multi"),
        ["a", "b"],
        "repeated headers keep their order"
    );
    assert_eq!(find("authorization"), [format!("Bearer {t}").as_str()]);
    assert_eq!(find("content-type"), ["application/json"]);

    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    assert_eq!(rsp.json()["query"], Value::Null, "no query is null");
    let rsp = api(&c, &sim, Method::HEAD, "/api/v2/users", &t).await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert!(rsp.body.is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn x_sim_headers_set_status_headers_and_delay() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 1).await;
    let url = format!("{}/api/v2/users", sim.base_url());
    let bearer = format!("Bearer {t}");
    let started = tokio::time::Instant::now();
    let rsp = send(
        &c,
        Method::GET,
        &url,
        &[
            ("authorization", &bearer),
            ("x-sim-status", "503"),
            ("x-sim-set-header", "retry-after: 7"),
            ("x-sim-set-header", "x-extra: one"),
            ("x-sim-set-header", "x-extra: two"),
            ("x-sim-delay-ms", "150"),
        ],
        "",
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "delay applies"
    );
    assert_eq!(rsp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.header("retry-after"), "7");
    let extra: Vec<_> = rsp.headers.get_all("x-extra").iter().collect();
    assert_eq!(extra, ["one", "two"]);
    assert_eq!(
        rsp.json()["client"],
        "sim-client-01",
        "echo body still sent"
    );

    let rsp = send(
        &c,
        Method::GET,
        &url,
        &[
            ("authorization", &bearer),
            ("x-sim-set-header", "content-type: text/plain"),
        ],
        "",
    )
    .await;
    let ct: Vec<_> = rsp.headers.get_all("content-type").iter().collect();
    assert_eq!(
        ct,
        ["text/plain"],
        "a set header replaces the simulator's own"
    );

    for (name, value) in [
        ("x-sim-status", "99"),
        ("x-sim-status", "abc"),
        ("x-sim-status", "600"),
        ("x-sim-delay-ms", "soon"),
        ("x-sim-set-header", "no-colon"),
    ] {
        let rsp = send(
            &c,
            Method::GET,
            &url,
            &[("authorization", &bearer), (name, value)],
            "",
        )
        .await;
        assert_eq!(rsp.status, StatusCode::BAD_REQUEST, "{name}: {value}");
        assert_eq!(rsp.json()["status"], 400);
    }
}

#[tokio::test]
async fn token_limit_answers_genesys_429_then_recovers() {
    let opts = SimOptions::default()
        .window(Duration::from_secs(2))
        .token_limit(3);
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 1).await;
    for i in 0..3 {
        let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
        assert_eq!(rsp.status, StatusCode::OK, "request {i} is under the limit");
    }
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    let retry_after = assert_429(
        &rsp,
        "client.credentials.token.rate.per.minute",
        "oauth.client",
        90, // 3 per 2 s window, reported per minute as Genesys does
    );
    assert!(
        retry_after <= 2,
        "never longer than the window: {retry_after}"
    );
    let other = token(&c, &sim, 2).await;
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &other).await;
    assert_eq!(rsp.status, StatusCode::OK, "the limit is per token");
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(50)).await;
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    assert_eq!(
        rsp.status,
        StatusCode::OK,
        "after Retry-After a slot is free"
    );
}

#[tokio::test]
async fn hidden_limit_applies_to_one_client_only() {
    let opts = SimOptions::default().hidden_limit("sim-client-02", 1);
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let t1 = token(&c, &sim, 1).await;
    let t2 = token(&c, &sim, 2).await;
    assert_eq!(
        api(&c, &sim, Method::GET, "/api/v2/users", &t2)
            .await
            .status,
        StatusCode::OK
    );
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t2).await;
    let retry_after = assert_429(
        &rsp,
        "client.credentials.token.rate.per.minute",
        "oauth.client",
        1,
    );
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    for _ in 0..3 {
        let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t1).await;
        assert_eq!(rsp.status, StatusCode::OK);
    }
    let stats = sim.stats();
    assert_eq!(stats.client("sim-client-02").limit, 1);
    assert_eq!(stats.client("sim-client-01").limit, 300);
}

#[tokio::test]
async fn route_limit_is_org_wide_and_only_for_its_template() {
    let opts = SimOptions::default()
        .window(Duration::from_secs(2))
        .route_limit(Method::PUT, "/api/v2/architect/ivrs/{ivrId}", 2);
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let t1 = token(&c, &sim, 1).await;
    let t2 = token(&c, &sim, 2).await;
    for (t, ivr) in [(&t1, "a"), (&t2, "b")] {
        let path = format!("/api/v2/architect/ivrs/{ivr}");
        let rsp = api(&c, &sim, Method::PUT, &path, t).await;
        assert_eq!(rsp.status, StatusCode::OK);
    }
    let rsp = api(&c, &sim, Method::PUT, "/api/v2/architect/ivrs/c", &t1).await;
    let retry_after = assert_429(&rsp, "route.rate.per.minute", "architect", 60); // 2 per 2 s, per minute
    for (method, path) in [
        (Method::GET, "/api/v2/architect/ivrs/c"),
        (Method::PUT, "/api/v2/architect/ivrs"),
        (Method::PUT, "/api/v2/architect/ivrs/c/x"),
    ] {
        let rsp = api(&c, &sim, method.clone(), path, &t2).await;
        assert_eq!(
            rsp.status,
            StatusCode::OK,
            "{method} {path} is another route"
        );
    }
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(50)).await;
    let rsp = api(&c, &sim, Method::PUT, "/api/v2/architect/ivrs/c", &t1).await;
    assert_eq!(rsp.status, StatusCode::OK);
    let route = sim.stats().route("PUT /api/v2/architect/ivrs/{ivrId}");
    assert_eq!(
        (
            route.accepted,
            route.rejected_429,
            route.max_in_window,
            route.limit
        ),
        (3, 1, 3, 2)
    );
}

#[tokio::test]
async fn org_limit_spans_all_clients() {
    let opts = SimOptions::default()
        .window(Duration::from_secs(2))
        .org_limit(4);
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let tokens = [
        token(&c, &sim, 1).await,
        token(&c, &sim, 2).await,
        token(&c, &sim, 3).await,
    ];
    for i in 0..4 {
        let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &tokens[i % 3]).await;
        assert_eq!(rsp.status, StatusCode::OK, "request {i}");
    }
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &tokens[2]).await;
    let retry_after = assert_429(&rsp, "org.rate.per.minute", "organization", 120); // 4 per 2 s, per minute
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(50)).await;
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &tokens[2]).await;
    assert_eq!(rsp.status, StatusCode::OK);
    let stats = sim.stats();
    assert_eq!(stats.org.limit, Some(4));
    assert_eq!(stats.org.max_in_window, 5);
}

#[tokio::test]
async fn max_in_window_counts_arrivals_including_429s() {
    let opts = SimOptions::default()
        .token_limit(3)
        .route_limit(Method::GET, "/api/v2/users/{userId}", 10)
        .org_limit(100);
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 1).await;
    for _ in 0..5 {
        api(&c, &sim, Method::GET, "/api/v2/users/u1", &t).await;
    }
    // Unauthenticated requests are not arrivals of any client.
    api(&c, &sim, Method::GET, "/api/v2/users/u1", "unknown").await;
    let stats = sim.stats();
    let client = stats.client("sim-client-01");
    assert_eq!(
        (
            client.accepted,
            client.rejected_429,
            client.max_in_window,
            client.limit
        ),
        (3, 2, 5, 3)
    );
    assert_eq!(
        (stats.accepted, stats.rejected_429, stats.rejected_401),
        (3, 2, 1)
    );
    let route = stats.route("GET /api/v2/users/{userId}");
    assert_eq!(
        (route.accepted, route.rejected_429, route.max_in_window),
        (3, 2, 5)
    );
    assert_eq!(stats.org.max_in_window, 5);
    assert_eq!(stats.client("sim-client-02").max_in_window, 0);

    assert_eq!(
        http_stats(&c, &sim).await,
        stats,
        "GET /sim/stats is the same snapshot"
    );
    let rsp = send(
        &c,
        Method::POST,
        &format!("{}/sim/reset-stats", sim.base_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(rsp.status, StatusCode::NO_CONTENT);
    let reset = sim.stats();
    assert_eq!(reset.accepted, 0);
    assert_eq!(reset.client("sim-client-01").max_in_window, 0);
    assert_eq!(
        reset.client("sim-client-01").limit,
        3,
        "limits survive a reset"
    );
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users/u1", &t).await;
    assert_eq!(
        rsp.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a stats reset does not reset the limits"
    );
}

#[tokio::test]
async fn limit_object_can_be_left_out() {
    let opts = SimOptions::default().token_limit(1).limit_in_body(false);
    let sim = Simulator::start(opts).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 1).await;
    api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    assert_eq!(rsp.status, StatusCode::TOO_MANY_REQUESTS);
    let body = rsp.json();
    assert_eq!(body["code"], "too.many.requests.retry.after");
    assert!(body.get("limit").is_none(), "no limit object: {body}");
}

#[tokio::test]
async fn unknown_paths_are_404_and_big_bodies_413() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/oauth/token"),
        (Method::POST, "/sim/stats"),
        (Method::GET, "/api/v1/users"),
    ] {
        let rsp = send(
            &c,
            method.clone(),
            &format!("{}{path}", sim.base_url()),
            &[],
            "",
        )
        .await;
        assert_eq!(rsp.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(
            rsp.json(),
            json!({"message":"The requested resource was not found.","code":"not.found","status":404})
        );
    }
    let t = token(&c, &sim, 1).await;
    let big = "x".repeat(10 * 1024 * 1024 + 1);
    let rsp = send(
        &c,
        Method::POST,
        &format!("{}/api/v2/users", sim.base_url()),
        &[("authorization", &format!("Bearer {t}"))],
        &big,
    )
    .await;
    assert_eq!(rsp.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn many_concurrent_connections_are_served() {
    let opts = SimOptions::default().latency(Duration::from_millis(100));
    let sim = Simulator::start(opts).await.unwrap();
    let t = token(&client(), &sim, 1).await;
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        // One client per task: a connection each.
        let (url, t) = (format!("{}/api/v2/users", sim.base_url()), t.clone());
        tasks.spawn(async move {
            let bearer = format!("Bearer {t}");
            send(
                &client(),
                Method::GET,
                &url,
                &[("authorization", &bearer)],
                "",
            )
            .await
            .status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "latency overlaps across connections: {:?}",
        started.elapsed()
    );
    assert_eq!(sim.stats().accepted, 100);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_refuses() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 1).await;
    let url = format!("{}/api/v2/users", sim.base_url());
    let addr = sim.addr();
    let in_flight = tokio::spawn({
        let c = c.clone();
        let bearer = format!("Bearer {t}");
        async move {
            send(
                &c,
                Method::GET,
                &url,
                &[("authorization", &bearer), ("x-sim-delay-ms", "300")],
                "",
            )
            .await
            .status
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.shutdown().await;
    assert_eq!(
        in_flight.await.unwrap(),
        StatusCode::OK,
        "in-flight request completes"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn dropping_the_simulator_stops_it() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let addr = sim.addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(sim);
    eventually(
        "listener must close after drop",
        Duration::from_secs(2),
        async || match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Err(format!("{addr} still accepts connections")),
            Err(_) => Ok(()),
        },
    )
    .await;
}

#[tokio::test]
async fn inconsistent_options_are_refused() {
    for opts in [
        SimOptions::default().window(Duration::ZERO),
        SimOptions::default().hidden_limit("nobody", 1),
        SimOptions::default().route_limit(Method::GET, "/users/{id}", 1),
        SimOptions::default().token_lifetime(Duration::MAX),
    ] {
        let err = Simulator::start(opts.clone()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{opts:?}");
    }
}

#[tokio::test]
async fn simulate_flags_build_the_options() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let cli = Cli::try_parse_from([
        "gcpool",
        "--listen",
        "127.0.0.1:0",
        "--clients",
        "5",
        "--token-lifetime",
        "2h",
        "--window",
        "250ms",
        "--token-limit",
        "50",
        "--org-limit",
        "120",
        "--route-limit",
        "PUT /api/v2/architect/ivrs/{ivrId}=100",
        "--route-limit",
        "GET /api/v2/users/{userId}=7",
        "--hidden-token-limit",
        "sim-client-02=5",
        "--latency",
        "20ms",
        "--no-limit-in-body",
    ])
    .unwrap();
    let opts = cli.args.options();
    assert_eq!(opts.clients.len(), 5);
    assert_eq!(opts.clients[4].id, "sim-client-05");
    assert_eq!(opts.clients[4].secret, "sim-secret-05");
    assert_eq!(opts.token_lifetime, Duration::from_secs(7_200));
    assert_eq!(opts.window, Duration::from_millis(250));
    assert_eq!(opts.token_limit, 50);
    assert_eq!(opts.org_limit, Some(120));
    assert_eq!(opts.route_limits.len(), 2);
    assert_eq!(opts.route_limits[1].key(), "GET /api/v2/users/{userId}");
    assert_eq!(opts.token_limit_overrides.get("sim-client-02"), Some(&5));
    assert_eq!(opts.latency, Duration::from_millis(20));
    assert!(!opts.limit_in_body);

    let defaults = Cli::try_parse_from(["gcpool"]).unwrap().args;
    assert_eq!(defaults.listen.to_string(), "127.0.0.1:9000");
    let opts = defaults.options();
    assert_eq!(opts.clients.len(), 3);
    assert_eq!(opts.window, Duration::from_secs(60));
    assert_eq!(opts.token_limit, 300);
    assert!(opts.limit_in_body);

    for bad in [
        &["gcpool", "--clients", "0"][..],
        &["gcpool", "--clients", "51"],
        &["gcpool", "--window", "0s"],
        &["gcpool", "--window", "10"],
        &["gcpool", "--route-limit", "PUT /users=3"],
        &["gcpool", "--hidden-token-limit", "sim-client-02"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} must be refused");
    }
}

/// `gcpool simulate` reads durations with the config's grammar: the real binary given
/// `--window 1m30s` runs a 90-second window (one request per token, then a 429 whose
/// `Retry-After` is the rest of 90 s); a window it cannot read is refused, naming the value.
#[tokio::test]
async fn simulate_binary_reads_durations_like_the_config() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gcpool"))
        .args(["simulate", "--listen", "127.0.0.1:0", "--clients", "1"])
        .args(["--token-limit", "1", "--window", "1m30s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gcpool simulate");
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mut seen = String::new();
    let listening = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            seen.push_str(&line);
            seen.push('\n');
            if let Some((_, rest)) = line.split_once("listening on http://") {
                return rest.split(';').next().map(str::to_owned);
            }
        }
        None
    })
    .await;
    let addr = match listening {
        Ok(Some(addr)) => addr,
        Ok(None) => panic!("gcpool simulate --window 1m30s exited without listening:\n{seen}"),
        Err(_) => panic!("gcpool simulate printed no listening line within 10 s:\n{seen}"),
    };

    let base = format!("http://{addr}");
    let http = client();
    let rsp = grant_at(&http, &base, "sim-client-01", "sim-secret-01").await;
    assert_eq!(rsp.status, StatusCode::OK, "grant must succeed");
    let token = rsp.json()["access_token"]
        .as_str()
        .expect("grant must carry access_token")
        .to_owned();
    let bearer = format!("Bearer {token}");
    let get = async || {
        let url = format!("{base}/api/v2/users/me");
        send(&http, Method::GET, &url, &[("authorization", &bearer)], "").await
    };
    assert_eq!(get().await.status, StatusCode::OK);
    let limited = get().await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited
        .header("retry-after")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(
        (61..=90).contains(&retry_after),
        "a window of 1m30s frees its slot 90 s after the first request: Retry-After {retry_after}"
    );
    child.kill().await.expect("kill gcpool simulate");

    for (value, reason) in [
        ("1x", "unknown unit"),
        ("90", "no unit"),
        ("0s", "longer than zero"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gcpool"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--window", value])
            .output()
            .expect("run gcpool simulate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--window {value} must be refused");
        assert!(
            stderr.contains("--window") && stderr.contains(value) && stderr.contains(reason),
            "--window {value}: the error names the flag, the value and why ({reason}):\n{stderr}"
        );
    }
}

#[tokio::test]
async fn run_cli_refuses_hidden_limit_for_unknown_client() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let cli = Cli::try_parse_from([
        "gcpool",
        "--listen",
        "127.0.0.1:0",
        "--hidden-token-limit",
        "sim-client-09=5",
    ])
    .unwrap();
    let err = gcpool::sim::run_cli(cli.args, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("sim-client-09"), "{err}");
}

#[tokio::test]
async fn serve_runs_on_a_given_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gcpool::sim::serve(listener, SimOptions::default(), async {
        let _ = stopped.await;
    }));
    let c = client();
    let rsp = send(
        &c,
        Method::GET,
        &format!("http://{addr}/sim/stats"),
        &[],
        "",
    )
    .await;
    assert_eq!(rsp.status, StatusCode::OK);
    assert_eq!(rsp.json()["clients"]["sim-client-03"]["limit"], 300);
    drop(c);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve must return after shutdown")
        .unwrap()
        .unwrap();
}

/// Writes raw bytes on a fresh connection and returns everything read until the server closes.
async fn raw_exchange(sim: &Simulator, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(sim.addr())
        .await
        .expect("simulator must accept");
    stream
        .write_all(request)
        .await
        .expect("request must be written");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("simulator must answer and close")
        .expect("reading the answer");
    answer
}

#[tokio::test]
async fn bad_bytes_never_break_the_simulator() {
    let sim = Simulator::start(SimOptions::default()).await.unwrap();
    let c = client();
    let t = token(&c, &sim, 1).await;

    let garbage = raw_exchange(&sim, b"\x00\xff garbage\r\n\r\n").await;
    assert!(garbage.starts_with(b"HTTP/1.1 400"), "hyper answers 400");

    let mut req = b"GET /api/v2/users HTTP/1.1\r\nhost: x\r\nconnection: close\r\n".to_vec();
    req.extend_from_slice(b"authorization: Bearer \xff\xfe\r\n\r\n");
    let answer = raw_exchange(&sim, &req).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 401"),
        "non-utf8 bearer is no token"
    );

    let basic = b"POST /oauth/token HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
        authorization: Basic \xc3\x28\r\ncontent-length: 29\r\n\r\ngrant_type=client_credentials";
    let answer = raw_exchange(&sim, basic).await;
    assert!(answer.starts_with(b"HTTP/1.1 401"), "garbled basic is 401");

    let mut req = format!(
        "POST /api/v2/users/%E9 HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {t}\r\ncontent-length: 2\r\n"
    )
    .into_bytes();
    req.extend_from_slice(b"x-latin1: caf\xe9\r\n\r\n\xff\xfe");
    let answer = raw_exchange(&sim, &req).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "non-utf8 values are echoed"
    );
    let body_at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head must end")
        + 4;
    let echo: Value = serde_json::from_slice(&answer[body_at..]).unwrap();
    assert_eq!(echo["path"], "/api/v2/users/%E9");
    assert_eq!(echo["body"], "\u{fffd}\u{fffd}");
    assert_eq!(echo["body_len"], 2);
    let latin1 = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "x-latin1")
        .unwrap();
    assert_eq!(latin1[1], "caf\u{fffd}");

    let rsp = api(&c, &sim, Method::GET, "/api/v2/users", &t).await;
    assert_eq!(rsp.status, StatusCode::OK, "still serving");
}
