//! Hostile callers (issue 10, items 1–5): silent sockets, stalled request bodies, idle
//! HTTP/2 connections, encoded path traversal and unknown methods. Real gcpool, the real
//! simulator, raw sockets on 127.0.0.1.

mod support;

use std::time::Duration;

use bytes::Bytes;
use gcpool::sim::{SimOptions, Simulator};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{HttpClient, eventually, metrics, read_until_closed, rejections};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const GET: &[u8] = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n";

/// gcpool in front of `sim` with `server_keys` added under `server:` and `inbound_keys`
/// under `inbound:`.
async fn start(sim: &Simulator, server_keys: &str, inbound_keys: &str) -> gcpool::app::Gcpool {
    support::start_with_keys(&sim.base_url(), server_keys, inbound_keys).await
}

/// The value of `series`; fails the test when it is not exported.
fn metric(exposition: &str, series: &str) -> f64 {
    support::metric_value(exposition, series)
        .unwrap_or_else(|| panic!("{series} must be exported:\n{exposition}"))
}

/// Reads one HTTP/1.1 answer head (and whatever body bytes came with it) within `limit`.
async fn read_answer(stream: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Item 1: a connection that never sends a byte is closed `header_read_timeout` after
/// accept, so silent sockets cannot hold `max_connections`; an idle keep-alive connection
/// closes after `idle_timeout`, not before.
#[tokio::test]
async fn silent_connections_are_closed_and_cannot_lock_callers_out() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(
        &sim,
        "  header_read_timeout: 1s\n  idle_timeout: 3s\n  max_connections: 3\n",
        "",
    )
    .await;
    let addr = gcpool.api_addr();

    // Three silent sockets fill max_connections.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    for socket in &mut silent {
        let (bytes, closed) = read_until_closed(socket, Duration::from_secs(4)).await;
        assert!(
            closed,
            "a silent connection must be closed within header_read_timeout (1 s); still open after {:?}",
            started.elapsed()
        );
        assert!(bytes.is_empty(), "nothing is answered to silence: {bytes}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before header_read_timeout: {:?}",
        started.elapsed()
    );

    // With them gone, a caller gets in again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut caller = TcpStream::connect(addr).await.unwrap();
    caller.write_all(GET).await.unwrap();
    let answer = read_answer(&mut caller, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The caller's keep-alive connection stays open while idle for less than idle_timeout
    // (and longer than header_read_timeout) …
    tokio::time::sleep(Duration::from_millis(2000)).await;
    caller.write_all(GET).await.unwrap();
    let again = read_answer(&mut caller, Duration::from_secs(3)).await;
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "an idle keep-alive connection lives until idle_timeout: {again}"
    );
    // … and is closed once idle for idle_timeout (3 s).
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut caller, Duration::from_secs(6)).await;
    assert!(
        closed,
        "an idle keep-alive connection closes after idle_timeout"
    );
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(2800) && idle < Duration::from_millis(5500),
        "closed after {idle:?} idle, want ≈ 3 s"
    );

    let text = metrics(&gcpool).await;
    assert_eq!(
        support::rejections(&text, "header_timeout"),
        3.0,
        "each silent connection is counted once:\n{text}"
    );
    assert_eq!(sim.stats().accepted, 2);
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_idle_timeout_when_it_is_the_shorter() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 5s\n  idle_timeout: 1s\n", "").await;
    let mut silent = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    let started = Instant::now();
    let (bytes, closed) = read_until_closed(&mut silent, Duration::from_secs(4)).await;
    let after = started.elapsed();
    assert!(
        closed,
        "still open after {after:?}: silent from its start, it is idle too"
    );
    assert!(bytes.is_empty(), "nothing is answered to silence: {bytes}");
    assert!(
        after >= Duration::from_millis(900),
        "not before idle_timeout: {after:?}"
    );
    // Cut as a head that did not come, as with the head deadline.
    let text = metrics(&gcpool).await;
    assert_eq!(support::rejections(&text, "header_timeout"), 1.0, "{text}");
}

/// An HTTP/2 (prior knowledge) connection to gcpool.
async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect to gcpool");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake with gcpool");
    (sender, tokio::spawn(connection))
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: std::net::SocketAddr,
) -> Result<StatusCode, String> {
    let request = Request::builder()
        .uri(format!("http://{addr}/api/v2/users/me"))
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Item 3: an idle HTTP/2 connection is not cut by the head timer: it lives until
/// `idle_timeout`, then closes with GOAWAY (the client sees a clean end), and h2
/// connections count no refusal they did not earn.
#[tokio::test]
async fn idle_h2_connections_live_until_idle_timeout_and_count_nothing() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 4s\n", "").await;
    let addr = gcpool.api_addr();

    let (mut sender, connection) = h2_connect(addr).await;
    assert_eq!(h2_get(&mut sender, addr).await, Ok(StatusCode::OK));
    // Idle for more than header_read_timeout: the connection must still serve.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h2_get(&mut sender, addr).await,
        Ok(StatusCode::OK),
        "an idle h2 connection must outlive header_read_timeout"
    );
    // Idle for idle_timeout: closed by gcpool with GOAWAY, which the client ends cleanly.
    let idle_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), connection)
        .await
        .expect("an idle h2 connection must be closed after idle_timeout");
    let idle = idle_from.elapsed();
    assert!(
        matches!(ended, Ok(Ok(()))),
        "closed with GOAWAY, not cut: {ended:?}"
    );
    assert!(
        idle >= Duration::from_millis(3800),
        "not before idle_timeout: {idle:?}"
    );

    // A churn of short h2 connections adds no refusal.
    for _ in 0..5 {
        let (mut sender, _connection) = h2_connect(addr).await;
        assert_eq!(h2_get(&mut sender, addr).await, Ok(StatusCode::OK));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics(&gcpool).await;
    for reason in ["bad_request", "header_timeout", "header_too_large"] {
        assert_eq!(
            rejections(&text, reason),
            0.0,
            "h2 connections earned no {reason}:\n{text}"
        );
    }
}

/// Item 3, on the wire: a client that sends the preface, SETTINGS and a SETTINGS ack (a
/// frame the server does not answer), then nothing, is an idle h2 connection: kept past
/// `header_read_timeout`, closed at `idle_timeout` with a GOAWAY frame, and not counted as
/// a bad request.
#[tokio::test]
async fn raw_h2_client_frames_do_not_arm_the_head_timer() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 4s\n", "").await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(support::H2_PREFACE_AND_SETTINGS)
        .await
        .unwrap();
    let (frames, closed) = support::read_h2_frames(&mut stream, Duration::from_millis(300)).await;
    assert!(
        !closed && frames.contains(&support::H2_SETTINGS),
        "server SETTINGS: {frames:?}"
    );
    // SETTINGS ack: a client-only frame the server writes nothing for.
    stream.write_all(support::H2_SETTINGS_ACK).await.unwrap();
    let (frames, closed) = support::read_h2_frames(&mut stream, Duration::from_millis(2500)).await;
    assert!(
        !closed,
        "an idle h2 connection must outlive header_read_timeout; cut after {:?} (frames {frames:?})",
        started.elapsed()
    );
    let (frames, closed) = support::read_h2_frames(&mut stream, Duration::from_secs(4)).await;
    assert!(
        closed,
        "closed by idle_timeout, {:?} after connect",
        started.elapsed()
    );
    assert!(
        frames.contains(&support::H2_GOAWAY),
        "closed with GOAWAY: {frames:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(3800),
        "{:?}",
        started.elapsed()
    );
    let text = metrics(&gcpool).await;
    assert_eq!(rejections(&text, "bad_request"), 0.0, "{text}");
}

/// Item 2: reading a request body counts against `request_timeout`: a body that stalls, or
/// drips, is answered 408 by the deadline (counted, never forwarded).
#[tokio::test]
async fn stalled_and_dripping_request_bodies_end_at_the_deadline() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(
        &sim,
        "  request_timeout: 2s\n  header_read_timeout: 1s\n",
        "",
    )
    .await;
    let addr = gcpool.api_addr();
    let head = "POST /api/v2/analytics/conversations/details/query HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n";

    // 2 bytes of 100, then nothing.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"{\"").await.unwrap();
    let started = Instant::now();
    let answer = read_answer(&mut stalled, Duration::from_secs(6)).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body is answered 408 by the deadline, got {answer:?} after {:?}",
        started.elapsed()
    );
    assert!(answer.contains("x-gcpool-reason: body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));

    // One byte every 300 ms never completes 100 bytes within 2 s.
    let mut drip = TcpStream::connect(addr).await.unwrap();
    drip.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        for _ in 0..100 {
            if drip.write_all(b" ").await.is_err() {
                break;
            }
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), drip.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let answer = tokio::time::timeout(Duration::from_secs(8), dripping)
        .await
        .expect("a dripping body must be answered by the deadline")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));

    let text = metrics(&gcpool).await;
    assert_eq!(support::rejections(&text, "body_timeout"), 2.0, "{text}");
    assert_eq!(sim.stats().accepted, 0, "nothing was forwarded");
}

/// Item 2: memory held by request bodies in flight is bounded by
/// `server.max_body_bytes_in_flight`; past it new body bytes are refused at once (503,
/// `body_memory`), and the room comes back when those requests end.
#[tokio::test]
async fn request_body_memory_is_bounded() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(
        &sim,
        "  request_timeout: 3s\n  max_body_bytes: 4000\n  max_body_bytes_in_flight: 5000\n",
        "",
    )
    .await;
    let addr = gcpool.api_addr();
    let head = |len: usize| {
        format!(
            "POST /api/v2/analytics/conversations/details/query HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };

    // Two callers hold 2,000 + 2,000 bytes of unfinished bodies.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head(4000).as_bytes()).await.unwrap();
        s.write_all(&[b' '; 2000]).await.unwrap();
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third body of 2,000 bytes no longer fits in 5,000.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(head(2000).as_bytes()).await.unwrap();
    third.write_all(&[b' '; 2000]).await.unwrap();
    let answer = read_answer(&mut third, Duration::from_secs(2)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "a body past the in-flight cap is refused at once: {answer:?}"
    );
    assert!(answer.contains("x-gcpool-reason: body_memory"), "{answer}");

    // When the holders end (timed out), there is room again.
    for mut h in holders {
        let answer = read_answer(&mut h, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let client = HttpClient::new();
    let ok = client
        .request(
            http::Method::POST,
            &format!("http://{addr}/api/v2/analytics/conversations/details/query"),
            &[("content-type", "application/json")],
            &" ".repeat(3000),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let text = metrics(&gcpool).await;
    assert_eq!(support::rejections(&text, "body_memory"), 1.0, "{text}");
}

/// Item 4: a path that leaves its place once `%2F` / `%5C` are read as separators is
/// refused (400, counted) and never forwarded, also past an allow-list; a `%2F` inside an
/// ordinary segment (a data-table row key) still goes through verbatim.
#[tokio::test]
async fn encoded_traversal_is_refused_but_encoded_slashes_in_keys_pass() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(
        &sim,
        "",
        "  allow_routes:\n    - \"GET /api/v2/users/{userId}\"\n    \
         - \"GET /api/v2/flows/datatables/{datatableId}/rows/{rowId}\"\n",
    )
    .await;
    let base = format!("http://{}", gcpool.api_addr());
    let client = HttpClient::new();
    for path in [
        "/api/v2/users/x%2F..%2F..%2Fauthorization%2Froles",
        "/api/v2/..%2f..%2fetc/passwd",
        "/api/v2/users/x%5c..%5c..%5cauthorization%5Croles",
        "/api/v2/users/%2e%2e%2F%2e%2e%2Fauthorization%2Froles",
        "/api/v2/users/.%2e",
        "/api/v2/users/x%2F.%2Fy",
        "/api/v2/users/..;/..;/authorization/roles",
    ] {
        let answer = client.get(&format!("{base}{path}")).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            answer.text()
        );
        assert_eq!(answer.header("x-gcpool-reason"), "bad_request", "{path}");
    }
    assert_eq!(sim.stats().accepted, 0, "no traversal reached the upstream");

    let row = "/api/v2/flows/datatables/dt-1/rows/key%2Fwith%2Fslashes";
    let answer = client.get(&format!("{base}{row}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json()["path"],
        row,
        "the row key is forwarded byte for byte"
    );
    let text = metrics(&gcpool).await;
    assert_eq!(support::rejections(&text, "bad_request"), 7.0, "{text}");
    // HEAD is allowed wherever GET is (it is the GET operation).
    let head = client
        .request(
            http::Method::HEAD,
            &format!("{base}/api/v2/users/u-1"),
            &[],
            "",
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
}

/// Item 5: a method no Platform API operation has for the path gets 405 (with `Allow`)
/// before admission: nothing is forwarded and no budget is spent.
#[tokio::test]
async fn methods_no_operation_has_get_405_before_admission() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "", "").await;
    let base = format!("http://{}", gcpool.api_addr());
    let client = HttpClient::new();
    let foo = http::Method::from_bytes(b"FOO").unwrap();
    for (method, path) in [
        (foo, "/api/v2/users"),
        (http::Method::TRACE, "/api/v2/users/me"),
        (http::Method::DELETE, "/api/v2/users"),
        (
            http::Method::PATCH,
            "/api/v2/analytics/conversations/details/query",
        ),
    ] {
        let answer = client
            .request(method.clone(), &format!("{base}{path}"), &[], "")
            .await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            answer.text()
        );
        assert_eq!(answer.header("x-gcpool-reason"), "method_not_allowed");
        assert!(
            !answer.header("allow").is_empty(),
            "405 names the methods allowed"
        );
    }
    let delete = client
        .request(
            http::Method::DELETE,
            &format!("{base}/api/v2/users"),
            &[],
            "",
        )
        .await;
    assert_eq!(delete.header("allow"), "GET, POST, HEAD");
    assert_eq!(sim.stats().accepted, 0, "nothing reached the upstream");

    // Known operations, HEAD where GET exists, and paths the table does not know still go.
    for (method, path) in [
        (http::Method::GET, "/api/v2/users/me"),
        (http::Method::HEAD, "/api/v2/users/me"),
        (
            http::Method::POST,
            "/api/v2/analytics/conversations/details/query",
        ),
        (http::Method::GET, "/api/v2/not/yet/in/the/table"),
    ] {
        let answer = client
            .request(method.clone(), &format!("{base}{path}"), &[], "")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {path}");
    }
    let text = metrics(&gcpool).await;
    assert_eq!(
        support::rejections(&text, "method_not_allowed"),
        5.0,
        "{text}"
    );
}

/// A head timer must not be switched off by a pipelined request: after two requests sent in
/// one write, a third head dripped a byte at a time is still cut at `header_read_timeout`.
#[tokio::test]
async fn pipelined_requests_do_not_disarm_the_next_head_timer() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 30s\n", "").await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    stream.write_all(&[GET, GET].concat()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while seen.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("both pipelined requests are answered")
            .unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let started = Instant::now();
    let mut cut = false;
    for byte in GET.iter().cycle().take(60) {
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        // A closed connection shows as EOF on read before a write fails.
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a dripped head after pipelined requests must be cut; still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A body sent after `Expect: 100-continue` is a body, not a head: it may take longer than
/// `header_read_timeout` (within `request_timeout`) and is forwarded.
#[tokio::test]
async fn a_slow_body_after_100_continue_is_not_cut_by_the_head_timer() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(
        &sim,
        "  header_read_timeout: 1s\n  request_timeout: 10s\n",
        "",
    )
    .await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /api/v2/analytics/conversations/details/query HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_answer(&mut stream, Duration::from_secs(3)).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    for byte in b"{\"a\":\"bb\"}" {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a 2.5 s body after 100-continue is forwarded: {answer:?}"
    );
}

/// A caller that does not read its answer cannot hold a connection (and the upstream
/// connection behind it) for ever: once gcpool's writes to it have made no progress for
/// `idle_timeout`, the connection is closed and counted.
#[tokio::test]
async fn a_caller_that_never_reads_its_answer_is_cut_after_idle_timeout() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  idle_timeout: 2s\n  request_timeout: 30s\n", "").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gcpool.api_addr()).await.unwrap();
    let size: usize = 40 * 1024 * 1024;
    stream
        .write_all(
            format!("GET /api/v2/users HTTP/1.1\r\nHost: x\r\nx-sim-body-bytes: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Read nothing for a while: gcpool's writes block.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1024 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => received += n,
        }
    };
    assert!(closed, "the stalled caller's connection must be closed");
    assert!(
        received < size,
        "cut midway, not served in full ({received} of {size} bytes)"
    );
    let text = metrics(&gcpool).await;
    assert_eq!(
        metric(
            &text,
            r#"gcpool_response_aborted_total{reason="caller_stalled"}"#
        ),
        1.0,
        "{text}"
    );
}

/// An HTTP/2 caller that opens streams and never grants flow-control window takes none of
/// its answers; it cannot hold them (and the upstream connections behind them) for ever:
/// after `idle_timeout` without taking anything its connection is dropped and counted.
#[tokio::test]
async fn an_h2_caller_that_grants_no_window_is_dropped_after_idle_timeout() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  idle_timeout: 2s\n  request_timeout: 30s\n", "").await;
    let addr = gcpool.api_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let request = Request::builder()
            .uri(format!("http://{addr}/api/v2/users"))
            .header("x-sim-body-bytes", "5000000")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.into_body());
    }
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), connection)
        .await
        .expect("a caller that takes nothing must be dropped within about idle_timeout");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before idle_timeout: {:?}",
        started.elapsed()
    );
    let text = metrics(&gcpool).await;
    assert_eq!(
        metric(
            &text,
            r#"gcpool_response_aborted_total{reason="caller_stalled"}"#
        ),
        5.0,
        "the five answers were cut: {text}"
    );
    drop(bodies);
}

/// One HTTP/2 answer the caller never takes (it reads nothing of that stream) while it keeps
/// the connection busy with other requests: the untaken answer still ends, with its
/// connection, after about `idle_timeout` (it would otherwise hold its upstream connection
/// for as long as the caller keeps the connection busy).
#[tokio::test]
async fn one_untaken_h2_answer_is_cut_even_while_the_connection_is_busy() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  idle_timeout: 2s\n  request_timeout: 30s\n", "").await;
    let addr = gcpool.api_addr();
    let (mut sender, connection) = h2_connect(addr).await;
    let request = Request::builder()
        .uri(format!("http://{addr}/api/v2/users"))
        .header("x-sim-body-bytes", "5000000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let untaken = sender.send_request(request).await.unwrap();
    assert_eq!(untaken.status(), StatusCode::OK);
    let started = Instant::now();
    // Small requests, read in full, on the same connection until it ends.
    let mut served = 0;
    eventually(
        "the untaken answer must end within about idle_timeout, busy connection or not",
        Duration::from_secs(8),
        async || {
            if connection.is_finished() {
                return Ok(());
            }
            if h2_get(&mut sender, addr).await.is_ok() {
                served += 1;
            }
            Err(format!(
                "connection open after {:?}, {served} other requests served",
                started.elapsed()
            ))
        },
    )
    .await;
    assert!(
        served >= 3,
        "the other requests were served meanwhile: {served}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "not before idle_timeout: {:?}",
        started.elapsed()
    );
    drop(untaken);
}

/// Issue 13 item 4: an HTTP/1 connection that rests is parked (hyper's buffers given back)
/// and serves its next request as before, whether it arrives at once or dripped (a dripped
/// head is not parked under, and its deadline still runs).
#[tokio::test]
async fn a_parked_connection_serves_its_next_requests() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 5s\n  idle_timeout: 30s\n", "").await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    for round in 0..3 {
        if round == 1 {
            for byte in GET {
                stream.write_all(&[*byte]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            stream.write_all(GET).await.unwrap();
        }
        let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        // Well past the parking delay.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 13 item 4, found by the attack on parking: a request with the start of a second
/// head behind it in the same write, then silence. The half head must be cut by
/// `header_read_timeout`, as any slow head is. (Parked with its half head handed back, the
/// connection ran no head deadline and was never cut: a few hundred such sockets held
/// every connection slot.)
#[tokio::test]
async fn a_half_head_pipelined_behind_a_request_is_cut() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 3s\n", "").await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    let started = Instant::now();
    stream.write_all(&[GET, &GET[..10]].concat()).await.unwrap();
    let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(8)).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        closed,
        "still open after {:?}: the half head was never cut",
        started.elapsed()
    );
    // Cut by the head deadline (1 s), well before the idle timeout would have (3 s).
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "cut after {:?}",
        started.elapsed()
    );
    let exposition = metrics(&gcpool).await;
    assert_eq!(support::rejections(&exposition, "header_timeout"), 1.0);
}

/// The same half head behind a refused request (no API key), then shutdown: the connection
/// is gone by then, and the drain does not wait for it.
#[tokio::test]
async fn a_half_head_behind_a_refused_request_does_not_hold_shutdown() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let yaml = support::config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &support::THREE_CLIENTS,
        "",
    )
    .replace(
        "allow_anonymous: true",
        "allow_anonymous: false\n  api_keys:\n    - name: app\n      key: \"k-0123456789abcdef0123456789abcdef\"",
    )
    .replace(
        "server:\n",
        "server:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n",
    );
    let gcpool = support::start_config(support::config(&yaml)).await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    stream.write_all(&[GET, &GET[..10]].concat()).await.unwrap();
    let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(seen.starts_with("HTTP/1.1 401"), "{seen}");
    assert!(closed, "an unauthenticated caller held its connection");
    let started = Instant::now();
    gcpool.shutdown().trigger();
    tokio::time::timeout(Duration::from_secs(20), gcpool.wait())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited {:?}",
        started.elapsed()
    );
}
