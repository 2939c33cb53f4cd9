//! Parked HTTP/1 connections (issue 13, item 4) under attack: a parked connection waits
//! on its IO's own timer for the next request's first byte, then comes up as a new hyper
//! connection. Its head deadline, its half-closes, its partial and pipelined heads and
//! shutdown while parked. Real gcpool, the real simulator, raw sockets on 127.0.0.1.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use support::{metrics, read_until_closed, rejections};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const GET: &[u8] = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n";

/// gcpool in front of `sim` with `server_keys` added under `server:`.
async fn start(sim: &Simulator, server_keys: &str) -> gcpool::app::Gcpool {
    support::start_with_keys(&sim.base_url(), server_keys, "").await
}

/// Reads one whole answer (head and `Content-Length` body) within `limit`.
async fn read_answer(stream: &mut TcpStream, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + len {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A connection that served one request and has been parked since (300 ms, past the 10 ms).
async fn parked(gcpool: &gcpool::app::Gcpool) -> TcpStream {
    let mut stream = TcpStream::connect(gcpool.api_addr())
        .await
        .expect("connect to gcpool");
    stream.write_all(GET).await.expect("send the request");
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
}

/// The parked wait runs on the head deadline's timer, set to the idle deadline: the first
/// byte of the next head must set it back to `header_read_timeout`, so a head dripped into
/// a parked connection is cut (and counted) as any slow head is, not at `idle_timeout`.
#[tokio::test]
async fn slow_loris_after_a_park_is_cut_by_the_head_deadline() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 30s\n").await;
    let mut stream = parked(&gcpool).await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let mut cut = false;
    for byte in GET.iter().cycle().take(100) {
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "not cut after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rejections(&metrics(&gcpool).await, "header_timeout"), 1.0);
}

/// A caller that shuts its write side while parked: the connection is closed at once (not
/// held until `idle_timeout`).
#[tokio::test]
async fn half_close_while_parked_closes() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 30s\n").await;
    let mut stream = parked(&gcpool).await;
    stream.shutdown().await.unwrap();
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    assert!(closed && rest.is_empty(), "{rest:?} {closed}");
}

/// Shutdown with 100 parked connections and one woken by a slow request: the parked ones
/// are closed at once, the request in flight is answered, and the drain ends with it.
#[tokio::test]
async fn shutdown_closes_parked_connections_and_finishes_the_one_in_flight() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 5s\n  idle_timeout: 60s\n").await;
    let addr = gcpool.api_addr();
    let mut parked = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(GET).await.unwrap();
        let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        parked.push(stream);
    }
    // One parked, then woken by a request that takes 1.5 s upstream.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(GET).await.unwrap();
    let _ = read_answer(&mut slow, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow.write_all(b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nx-sim-delay-ms: 1500\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    gcpool.shutdown().trigger();
    for stream in &mut parked {
        let (rest, closed) = read_until_closed(stream, Duration::from_secs(2)).await;
        assert!(
            closed && rest.is_empty(),
            "parked: {rest:?} closed {closed}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed);
    tokio::time::timeout(Duration::from_secs(5), gcpool.wait())
        .await
        .expect("drained");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drained after {:?}",
        started.elapsed()
    );
}

/// Heads across parks: a half head pipelined behind a request and completed after the
/// parking delay, a head split after its first byte, three pipelined into a parked
/// connection, and `Connection: close` after a park (answered, then closed).
#[tokio::test]
async fn split_and_pipelined_heads_across_parks_are_served() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 2s\n  idle_timeout: 30s\n").await;
    let mut stream = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    // Full + half, the half completed after the parking delay.
    stream.write_all(&[GET, &GET[..10]].concat()).await.unwrap();
    let a = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&GET[10..]).await.unwrap();
    let b = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    // Parked; one byte, a pause, the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&GET[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&GET[1..]).await.unwrap();
    let c = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(c.starts_with("HTTP/1.1 200"), "{c}");
    // Parked; three pipelined at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&[GET, GET, GET].concat()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while seen.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the three pipelined requests are answered")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // The last answer's body is in by the time the next request is sent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tokio::time::timeout(Duration::from_millis(10), stream.read(&mut buf)).await;
    // Parked; Connection: close is answered and closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream
        .write_all(b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (e, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(e.starts_with("HTTP/1.1 200") && closed, "{e} {closed}");
    assert_eq!(rejections(&metrics(&gcpool).await, "header_timeout"), 0.0);
}

/// Empty lines after a request (some clients end a POST body with an extra CRLF) are
/// ignored, as RFC 9112 §2.2 asks of a server: they start no head, so a keep-alive
/// connection is not cut by `header_read_timeout`, in the request's own segment or later.
/// Dripped, they keep nothing open past `idle_timeout`.
#[tokio::test]
async fn empty_lines_between_requests_start_no_head() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start(&sim, "  header_read_timeout: 1s\n  idle_timeout: 3s\n").await;
    const GET: &[u8] = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut same_segment = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    same_segment
        .write_all(&[GET, b"\r\n"].concat())
        .await
        .unwrap();
    let mut later = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    later.write_all(GET).await.unwrap();
    for caller in [&mut same_segment, &mut later] {
        let answer = read_answer(caller, Duration::from_secs(3)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Parked by now: the empty line wakes it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    later.write_all(b"\r\n").await.unwrap();
    // Past header_read_timeout, within idle_timeout: both still serve.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    for caller in [&mut same_segment, &mut later] {
        caller.write_all(GET).await.unwrap();
        let again = read_answer(caller, Duration::from_secs(3)).await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    }

    // Dripped every 300 ms, empty lines do not hold a connection past idle_timeout.
    let mut dripper = TcpStream::connect(gcpool.api_addr()).await.unwrap();
    dripper.write_all(GET).await.unwrap();
    let answer = read_answer(&mut dripper, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let idle_from = Instant::now();
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if dripper.write_all(b"\r\n").await.is_err() || idle_from.elapsed() > Duration::from_secs(6)
        {
            break read_until_closed(&mut dripper, Duration::from_millis(500))
                .await
                .1;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), dripper.read(&mut byte)).await
        {
            break true;
        }
    };
    let after = idle_from.elapsed();
    assert!(closed, "still open after {after:?} of empty lines");
    assert!(
        after >= Duration::from_millis(2800) && after < Duration::from_millis(4500),
        "closed after {after:?}, want ≈ idle_timeout (3 s)"
    );

    let text = metrics(&gcpool).await;
    assert_eq!(rejections(&text, "header_timeout"), 0.0, "{text}");
}
