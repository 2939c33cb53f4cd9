//! A stalling upstream (issue 10, item 8): an answer whose body stops midway is cut after
//! `server.request_timeout` of silence, the caller sees an aborted answer (HTTP/1: the
//! connection closes short of `Content-Length`; HTTP/2: the stream is reset), and it is
//! counted.

mod support;

use std::time::Duration;

use bytes::Bytes;
use gcpool::sim::{SimOptions, Simulator};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::HttpClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn a_stalled_response_body_is_cut_and_the_caller_sees_an_abort() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = support::start_with_keys(&sim.base_url(), "  request_timeout: 2s\n", "").await;
    let addr = gcpool.api_addr();

    // HTTP/1.1: the head and the first 40 bytes come, then the upstream stops.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nx-sim-stall-body-after: 40\r\n\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(8), stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        closed,
        "a stalled body must be cut, not left hanging ({elapsed:?}): {text}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("the upstream's content-length is forwarded")
        .parse()
        .unwrap();
    assert_eq!(body.len(), 40, "what the upstream sent is passed on");
    assert!(
        body.len() < length,
        "the caller can tell the answer is incomplete"
    );
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(5),
        "cut after request_timeout (2 s) of silence, not {elapsed:?}"
    );

    // HTTP/2: the stream is reset; the body ends with an error, not a clean end.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("http://{addr}/api/v2/users/me"))
        .header("x-sim-stall-body-after", "10")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(8), response.into_body().collect())
        .await
        .expect("an h2 body must end within request_timeout of silence");
    assert!(body.is_err(), "the h2 stream is reset, not ended cleanly");

    // Counted, and the pool goes on serving.
    let client = HttpClient::new();
    let ok = client.get(&format!("http://{addr}/api/v2/users/me")).await;
    assert_eq!(ok.status, StatusCode::OK);
    let metrics = client
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert_eq!(
        support::metric_value(
            &metrics,
            r#"gcpool_response_aborted_total{reason="upstream_stalled"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
}
