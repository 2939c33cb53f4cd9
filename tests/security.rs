//! Only the right callers get in, and nothing secret comes out: API keys, the route
//! allow-list, and a grep of everything a real run prints or serves for secrets.

mod support;

use base64::Engine;
use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::{GcpoolProcess, HttpClient, THREE_CLIENTS, config, config_yaml};

const API_KEY: &str = "da-key-7Hq2-must-never-be-printed";

/// Test config with an API key (given as `key:`, hashed at load) instead of anonymous access.
fn keyed_yaml(sim_url: &str, listen: &str, admin: &str, extra: &str) -> String {
    config_yaml(sim_url, listen, admin, &THREE_CLIENTS, extra).replace(
        "inbound:\n  allow_anonymous: true\n",
        &format!("inbound:\n  api_keys:\n    - name: data-actions\n      key: \"{API_KEY}\"\n"),
    )
}

async fn start_keyed(sim: &Simulator, extra: &str) -> gcpool::app::Gcpool {
    support::start_config(config(&keyed_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        extra,
    )))
    .await
}

#[tokio::test]
async fn callers_need_the_api_key_in_a_header_or_as_basic_password() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start_keyed(&sim, "").await;
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users/u1", gcpool.api_addr());

    for headers in [
        vec![],
        vec![("x-api-key", "wrong")],
        vec![("authorization", "Bearer ")],
    ] {
        let answer = client.request(Method::GET, &url, &headers, "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(answer.header("x-gcpool-reason"), "unauthorized");
        assert_eq!(answer.json()["code"], "authentication.required");
        assert!(!answer.text().contains(API_KEY));
    }
    assert_eq!(
        sim.stats().accepted,
        0,
        "refused callers never reach the upstream"
    );

    let by_header = client
        .request(Method::GET, &url, &[("x-api-key", API_KEY)], "")
        .await;
    assert_eq!(by_header.status, StatusCode::OK);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("data-action:{API_KEY}"));
    let by_basic = client
        .request(
            Method::GET,
            &url,
            &[("authorization", &format!("Basic {basic}"))],
            "",
        )
        .await;
    assert_eq!(
        by_basic.status,
        StatusCode::OK,
        "Data Actions' Basic credential works"
    );
    let echo = by_basic.json().to_string();
    assert!(
        !echo.contains(API_KEY) && !echo.contains(&basic),
        "the caller's key is not forwarded"
    );
    assert_eq!(sim.stats().accepted, 2);

    let metrics = client
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert!(
        support::rejections(&metrics, "unauthorized") == 3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn routes_off_the_allow_list_are_refused_before_the_upstream() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let extra = "";
    let config_text = keyed_yaml(&sim.base_url(), "127.0.0.1:0", "127.0.0.1:1", extra).replace(
        "inbound:\n",
        "inbound:\n  allow_routes:\n    - \"GET /api/v2/users/{userId}\"\n",
    );
    let gcpool = support::start_config(config(&config_text)).await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());
    let key = [("x-api-key", API_KEY)];

    assert_eq!(
        client
            .request(Method::GET, &format!("{base}/api/v2/users/abc"), &key, "")
            .await
            .status,
        StatusCode::OK
    );
    for (method, path) in [
        (Method::GET, "/api/v2/users"),
        (Method::DELETE, "/api/v2/users/abc"),
        (Method::GET, "/api/v2/not/an/operation"),
    ] {
        let answer = client
            .request(method.clone(), &format!("{base}{path}"), &key, "")
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(answer.header("x-gcpool-reason"), "route_not_allowed");
        assert_eq!(answer.json()["status"], 403);
    }
    assert_eq!(
        sim.stats().accepted,
        1,
        "refused routes never reach the upstream"
    );
}

/// Each caller's own rules (SPEC §12) on top of the global ones: one caller may read users
/// only and waits at most 1 s for a slot, the other may call anything (here the queues
/// too, and its cached answers are not a way round the first one's list).
#[tokio::test]
async fn each_caller_has_its_own_routes_and_max_wait() {
    let sim = Simulator::start(
        SimOptions::with_clients(1)
            .window(std::time::Duration::from_secs(10))
            .token_limit(2),
    )
    .await
    .unwrap();
    let yaml = config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS[..1],
        "budgets:\n  token_per_minute: 12\n  window: 10s\n  queue:\n    max_wait: 15s\n\
         cache:\n  routes:\n    - {route: 'GET /api/v2/routing/queues/{queueId}', ttl: 5m, \
         ignore_upstream_cache_headers: true}\n",
    )
    .replace(
        "inbound:\n  allow_anonymous: true\n",
        "inbound:\n  api_keys:\n    - {name: ivr-flows, key: ivr-key, max_wait: 1s, \
         allow_routes: ['GET /api/v2/users/{userId}']}\n    - {name: batch, key: batch-key}\n",
    );
    let gcpool = support::start_config(config(&yaml)).await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());
    let (ivr, batch) = ([("x-api-key", "ivr-key")], [("x-api-key", "batch-key")]);
    let queue = format!("{base}/api/v2/routing/queues/q-1");

    // The batch caller fills the cache and the window's 2 slots.
    let kept = client.request(Method::GET, &queue, &batch, "").await;
    assert_eq!(kept.status, StatusCode::OK);
    let refused = client.request(Method::GET, &queue, &ivr, "").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert_eq!(refused.header("x-gcpool-reason"), "route_not_allowed");
    let message = refused.json()["message"].to_string();
    assert!(
        message.contains("GET /api/v2/routing/queues/{queueId}") && message.contains("ivr-flows"),
        "{message}"
    );
    let user = client
        .request(Method::GET, &format!("{base}/api/v2/users/u1"), &ivr, "")
        .await;
    assert_eq!(user.status, StatusCode::OK);

    // The window is spent; the next slot is ~10 s away. The ivr caller's 1 s is its
    // limit, even when its request asks for more.
    let asked = tokio::time::Instant::now();
    let capped = client
        .request(
            Method::GET,
            &format!("{base}/api/v2/users/u2"),
            &[("x-api-key", "ivr-key"), ("x-gcpool-max-wait", "5s")],
            "",
        )
        .await;
    assert_eq!(
        capped.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        capped.text()
    );
    assert!(
        asked.elapsed() < std::time::Duration::from_millis(500),
        "refused at once: {:?}",
        asked.elapsed()
    );
    assert_eq!(
        sim.stats().accepted,
        2,
        "refused requests never reach the upstream"
    );

    // Each request counted under its caller; one without a key under `unknown`.
    let nobody = client
        .request(Method::GET, &format!("{base}/api/v2/users/u3"), &[], "")
        .await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    let metrics = support::metrics(&gcpool).await;
    for series in [
        r#"gcpool_requests_total{caller="batch",method="GET",outcome="forwarded",route="/api/v2/routing/queues/{queueId}",status="200"}"#,
        r#"gcpool_requests_total{caller="ivr-flows",method="GET",outcome="forwarded",route="/api/v2/users/{userId}",status="200"}"#,
        r#"gcpool_rejections_total{caller="ivr-flows",reason="route_not_allowed"}"#,
        r#"gcpool_rejections_total{caller="unknown",reason="unauthorized"}"#,
    ] {
        assert_eq!(
            support::metric_value(&metrics, series),
            Some(1.0),
            "{series} in:\n{metrics}"
        );
    }

    // /status lists each caller with its rules and counts (no anonymous one here).
    let status = client
        .get(&format!("http://{}/status", gcpool.admin_addr()))
        .await
        .json();
    let callers = status["callers"].as_array().expect("callers");
    assert_eq!(callers.len(), 2, "{status}");
    let ivr = &callers[0];
    assert_eq!(ivr["name"], "ivr-flows");
    assert_eq!(ivr["max_wait_ms"], 1000);
    assert_eq!(ivr["allow_routes"][0], "GET /api/v2/users/{userId}");
    // users/u1 answered, users/u2 a local 429, the queue refused.
    assert_eq!(
        (ivr["requests"].as_u64(), ivr["rejected"].as_u64()),
        (Some(3), Some(2))
    );
    let batch = &callers[1];
    assert_eq!(batch["name"], "batch");
    assert!(
        batch["max_wait_ms"].is_null()
            && batch["allow_routes"].as_array().is_some_and(Vec::is_empty)
    );
    assert_eq!(batch["requests"], 1);
    let page = client
        .get(&format!("http://{}/", gcpool.admin_addr()))
        .await
        .text();
    assert!(
        page.contains("<td id=\"caller-0-name\">ivr-flows</td>"),
        "{page}"
    );
}

/// A real run with real secrets, tokens and an API key, at debug level: none of them
/// appears in stderr, `/status`, `/metrics`, the status page or any answer.
#[tokio::test]
async fn no_secret_in_logs_status_metrics_or_answers() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let yaml = keyed_yaml(&sim.base_url(), "{API}", "{ADMIN}", "");
    let mut process = GcpoolProcess::spawn(&yaml, &[("RUST_LOG", "debug")]);
    process.wait_ready().await;
    let client = HttpClient::new();
    let mut seen = String::new();
    let mut tokens = std::collections::BTreeSet::new();
    for (headers, path) in [
        (vec![("x-api-key", API_KEY)], "/api/v2/users/me"),
        (vec![("x-api-key", "bad-key")], "/api/v2/users/me"),
        (vec![("x-api-key", API_KEY)], "/metrics"),
        (
            vec![("x-api-key", API_KEY), ("x-sim-status", "500")],
            "/api/v2/users/me",
        ),
    ] {
        let answer = client
            .request(
                Method::GET,
                &format!("http://{}{path}", process.api),
                &headers,
                "",
            )
            .await;
        seen.push_str(&format!("{:?}{}", answer.headers, answer.text()));
        if answer.status == StatusCode::OK {
            for h in answer.json()["headers"].as_array().unwrap() {
                if h[0] == "authorization" {
                    tokens.insert(
                        h[1].as_str()
                            .unwrap()
                            .trim_start_matches("Bearer ")
                            .to_owned(),
                    );
                }
            }
        }
    }
    assert!(!tokens.is_empty());
    let status = client
        .get(&format!("http://{}/status", process.admin))
        .await
        .text();
    let metrics = client
        .get(&format!("http://{}/metrics", process.admin))
        .await
        .text();
    let page = client
        .get(&format!("http://{}/", process.admin))
        .await
        .text();
    assert!(
        page.contains("config generation"),
        "the status page: {page}"
    );
    process.terminate();
    process.wait_exit(std::time::Duration::from_secs(15)).await;
    let logs = process.stderr();
    assert!(logs.contains("gcpool listening"), "the run logged:\n{logs}");
    let credentials = [API_KEY, "sim-secret-01", "sim-secret-02", "sim-secret-03"];
    for secret in credentials
        .iter()
        .copied()
        .chain(tokens.iter().map(String::as_str))
    {
        for (place, text) in [
            ("stderr", &logs),
            ("/status", &status),
            ("/metrics", &metrics),
            ("the status page", &page),
        ] {
            assert!(
                !text.contains(secret),
                "a secret or token appears in {place}"
            );
        }
    }
    // Answers echo what the upstream received (the simulator shows the pool token it got),
    // but never the caller's key or a client secret.
    for secret in credentials {
        assert!(!seen.contains(secret), "a credential appears in an answer");
    }
}

/// Past `server.max_connections` a new caller connection is closed at once (and counted);
/// once one closes, there is room again. Oversized or too many headers get hyper's 431.
#[tokio::test]
async fn connection_cap_and_header_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let yaml = config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS,
        "",
    )
    .replace("server:\n", "server:\n  max_connections: 2\n");
    let gcpool = support::start_config(config(&yaml)).await;
    let addr = gcpool.api_addr();
    let request = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n";

    async fn answer(stream: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(request).await.unwrap();
        assert!(
            answer(s).await.starts_with("HTTP/1.1 200"),
            "two connections fit"
        );
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(request).await;
    assert_eq!(
        answer(&mut third).await,
        "",
        "the third connection is closed without an answer"
    );

    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    fourth.write_all(request).await.unwrap();
    assert!(
        answer(&mut fourth).await.starts_with("HTTP/1.1 200"),
        "room again after one closed"
    );

    // 100 headers are served; 101 are too many (hyper parses heads into arrays of 100 on
    // the stack; more would cost two heap arrays on every request).
    let with_headers = |n: usize| {
        let mut head = String::from("GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n");
        for i in 1..n {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head + "\r\n"
    };
    // (Forwarded, it carries gcpool's token too: the simulator, a hyper server with the
    // same limit, may answer 431 itself; what counts here is that gcpool forwarded it.)
    second
        .write_all(with_headers(100).as_bytes())
        .await
        .unwrap();
    let forwarded = answer(&mut second).await;
    assert!(
        forwarded.contains("x-gcpool-client:"),
        "100 headers are forwarded: {forwarded}"
    );
    second
        .write_all(with_headers(101).as_bytes())
        .await
        .unwrap();
    let refused = answer(&mut second).await;
    assert!(
        refused.starts_with("HTTP/1.1 431") && !refused.contains("x-gcpool-client:"),
        "101 headers are too many: {refused}"
    );
    let huge = format!(
        "GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(1_000_000)
    );
    fourth.write_all(huge.as_bytes()).await.unwrap();
    // hyper answers 431 and closes; with bytes still unread the kernel may reset the
    // connection first, so the client sees either the 431 or nothing — never a forward.
    let big = answer(&mut fourth).await;
    assert!(
        big.is_empty() || big.starts_with("HTTP/1.1 431"),
        "head too large: {big}"
    );
    // (The forwarded 100-header request is the simulator's hyper's to refuse: not counted.)
    assert_eq!(
        sim.stats().accepted,
        3,
        "refused requests never reach the upstream"
    );

    let metrics = HttpClient::new()
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert!(
        support::rejections(&metrics, "connection_limit") == 1.0,
        "{metrics}"
    );
}

/// Slow-loris: a request head that has begun must arrive within `header_read_timeout`,
/// while an idle keep-alive connection stays open for `idle_timeout`.
#[tokio::test]
async fn slow_request_heads_are_cut_but_idle_connections_stay() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let yaml = config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS,
        "",
    )
    .replace(
        "server:\n",
        "server:\n  header_read_timeout: 1s\n  idle_timeout: 10s\n",
    );
    let gcpool = support::start_config(config(&yaml)).await;
    let addr = gcpool.api_addr();
    let request = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n";
    let read = |mut s: tokio::net::TcpStream| async move {
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf))
            .await
            .expect("the server must answer or close within 4 s")
            .unwrap_or(0);
        (String::from_utf8_lossy(&buf[..n]).into_owned(), s)
    };

    // Idle for twice the header timeout between two requests on one connection: still open.
    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(request).await.unwrap();
    let (first, mut kept) = read(kept).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    kept.write_all(request).await.unwrap();
    let (second, _kept) = read(kept).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "an idle keep-alive connection is not cut: {second}"
    );

    // A head that starts and stalls is cut after ~1 s, and never forwarded.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /api/v2/users/me HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let (cut, _) = read(slow).await;
    assert!(
        !cut.contains("200 OK"),
        "a stalled head is never served: {cut}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after header_read_timeout"
    );

    // Dripping a byte at a time does not keep a head alive past the timeout either.
    let mut drip = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut closed = false;
    for byte in
        b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nx-a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
    {
        if drip.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !closed {
        let (rest, _) = read(drip).await;
        assert!(!rest.contains("200 OK"), "{rest}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        sim.stats().accepted,
        2,
        "only the two complete requests reached the upstream"
    );
}
