//! A request through gcpool reaches the simulator intact, with a pool token instead of the
//! caller's credentials, and the answer comes back intact.

mod support;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::{HttpClient, THREE_CLIENTS, start_gcpool};

#[tokio::test]
async fn request_and_response_pass_through_intact() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, "").await;
    let client = HttpClient::new();

    let body = r#"{"query":"ünïcode","n":[1,2,3]}"#;
    let answer = client
        .request(
            Method::POST,
            &format!(
                "http://{}/api/v2/users/search?expand=a%2Cb&pageSize=1&z=%20",
                gcpool.api_addr()
            ),
            &[
                ("authorization", "Bearer caller-token-must-not-leak"),
                ("x-api-key", "caller-key-must-not-leak"),
                ("content-type", "application/json"),
                ("x-custom", "one"),
                ("x-custom", "two"),
                ("accept-encoding", "gzip"),
                ("connection", "keep-alive"),
                ("x-sim-status", "201"),
                ("x-sim-set-header", "x-upstream-thing: kept"),
            ],
            body,
        )
        .await;

    assert_eq!(
        answer.status,
        StatusCode::CREATED,
        "upstream status must come back: {}",
        answer.text()
    );
    assert_eq!(
        answer.header("x-upstream-thing"),
        "kept",
        "upstream headers must come back"
    );
    assert!(
        answer.headers.contains_key("inin-correlation-id"),
        "correlation id must pass through"
    );
    let client_name = answer.header("x-gcpool-client").to_owned();
    assert!(
        client_name.starts_with("pool-0"),
        "x-gcpool-client names a pool client: {client_name}"
    );
    answer
        .header("x-gcpool-wait-ms")
        .parse::<u64>()
        .expect("x-gcpool-wait-ms is a number");

    let echo = answer.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/v2/users/search", "path verbatim");
    assert_eq!(
        echo["query"], "expand=a%2Cb&pageSize=1&z=%20",
        "query verbatim, %2C stays %2C"
    );
    assert_eq!(echo["body"], body);
    let headers: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_lowercase(),
                h[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        values("x-custom"),
        ["one", "two"],
        "repeated end-to-end headers kept in order"
    );
    assert_eq!(values("content-type"), ["application/json"]);
    assert_eq!(values("accept-encoding"), ["gzip"]);
    assert!(
        values("x-api-key").is_empty(),
        "caller's API key must not reach the upstream"
    );
    assert!(
        values("connection").is_empty(),
        "hop-by-hop headers must not be forwarded"
    );
    let auth = values("authorization");
    assert_eq!(auth.len(), 1, "exactly one Authorization upstream");
    assert!(
        auth[0].starts_with("Bearer ") && !auth[0].contains("caller-token"),
        "pool token replaces the caller's: {auth:?}"
    );
    let host = values("host");
    assert_eq!(
        host,
        [sim.addr().to_string().as_str()],
        "Host is the upstream's"
    );
    assert!(!echo.to_string().contains("caller-token-must-not-leak"));

    // The simulator attributes the request to the pool client gcpool named.
    let stats = sim.stats();
    let sim_client = THREE_CLIENTS.iter().find(|c| c.0 == client_name).unwrap().1;
    assert_eq!(echo["client"], sim_client);
    assert_eq!(stats.accepted, 1);

    let metrics = client
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert!(metrics.contains(r#"gcpool_requests_total{caller="anonymous",method="POST",outcome="forwarded",route="/api/v2/users/search",status="201"} 1"#), "{metrics}");
    assert!(
        metrics.contains(&format!(
            r#"gcpool_upstream_requests_total{{client="{client_name}",status="201"}} 1"#
        )),
        "{metrics}"
    );
    assert!(metrics.contains("gcpool_build_info{version="), "{metrics}");
    assert!(metrics.contains("gcpool_token_refresh_total"), "{metrics}");
}

#[tokio::test]
async fn get_head_and_empty_bodies_work_and_load_spreads() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, "").await;
    let client = HttpClient::new();
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let answer = client
            .get(&format!(
                "http://{}/api/v2/users?pageSize=1",
                gcpool.api_addr()
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        used.insert(answer.header("x-gcpool-client").to_owned());
    }
    assert_eq!(
        used.len(),
        3,
        "sequential requests spread over every healthy client: {used:?}"
    );
    let head = client
        .request(
            Method::HEAD,
            &format!("http://{}/api/v2/users", gcpool.api_addr()),
            &[],
            "",
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn refusals_are_genesys_shaped_and_never_reach_the_upstream() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, "").await;
    let client = HttpClient::new();
    let base = format!("http://{}", gcpool.api_addr());

    let not_api = client.get(&format!("{base}/metrics")).await;
    assert_eq!(not_api.status, StatusCode::NOT_FOUND);
    assert_eq!(not_api.json()["code"], "not.found");
    assert_eq!(not_api.json()["status"], 404);
    assert_eq!(not_api.header("x-gcpool-reason"), "not_found");
    // As on Genesys' answers: a correlation id, the body's contextId (SDKs log it).
    let context_id = not_api.json()["contextId"].as_str().map(str::to_owned);
    assert_eq!(
        Some(not_api.header("inin-correlation-id").to_owned()),
        context_id,
        "{}",
        not_api.text()
    );

    // Absolute-form (HTTP_PROXY style) for another host: no open proxy.
    let foreign = raw_request(
        gcpool.api_addr(),
        "GET http://evil.example/api/v2/users HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert!(
        foreign.starts_with("HTTP/1.1 400"),
        "foreign absolute-form host refused: {foreign}"
    );
    assert!(
        foreign.contains("x-gcpool-reason: bad_request"),
        "{foreign}"
    );

    let connect = raw_request(
        gcpool.api_addr(),
        "CONNECT api.mypurecloud.com:443 HTTP/1.1\r\nHost: api.mypurecloud.com:443\r\n\r\n",
    )
    .await;
    assert!(
        connect.starts_with("HTTP/1.1 405"),
        "CONNECT refused with 405: {connect}"
    );
    assert!(
        connect.contains("not a tunnel"),
        "the body explains why: {connect}"
    );

    let dots = raw_request(
        gcpool.api_addr(),
        "GET /api/v2/%2e%2e/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(dots.starts_with("HTTP/1.1 400"), "{dots}");

    let big = "x".repeat(512_001);
    let too_large = client
        .request(Method::POST, &format!("{base}/api/v2/users"), &[], &big)
        .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.header("x-gcpool-reason"), "body_too_large");

    let chunked_big = raw_request(
        gcpool.api_addr(),
        &format!("POST /api/v2/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
    )
    .await;
    assert!(
        chunked_big.starts_with("HTTP/1.1 413"),
        "chunked bodies past the limit refused too: {}",
        &chunked_big[..60.min(chunked_big.len())]
    );

    let chunked_ok = raw_request(
        gcpool.api_addr(),
        "POST /api/v2/users HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        chunked_ok.starts_with("HTTP/1.1 200"),
        "chunked request bodies are accepted: {chunked_ok}"
    );
    assert!(
        chunked_ok.contains(r#""body":"hello world""#),
        "{chunked_ok}"
    );

    let stats = sim.stats();
    assert_eq!(
        stats.accepted, 1,
        "only the valid chunked request reached the upstream"
    );
    let metrics = client
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert!(
        support::rejections(&metrics, "body_too_large") == 2.0,
        "{metrics}"
    );
    assert!(
        support::rejections(&metrics, "not_found") == 1.0,
        "{metrics}"
    );
}

/// Writes `raw` on a fresh connection and returns everything read until close (or 2 s).
async fn raw_request(addr: std::net::SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to gcpool");
    stream
        .write_all(raw.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(2000),
            stream.read(&mut chunk),
        )
        .await
        {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if raw.contains("Connection: close") {
                    continue;
                }
                // One answer is enough: stop once headers and a JSON body arrived.
                let text = String::from_utf8_lossy(&buf);
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text[..i].lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    });
                    if len.is_some_and(|len| buf.len() >= i + 4 + len) {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}
