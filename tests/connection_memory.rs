//! What an idle caller connection holds (issue 13, item 4): the heap bytes of connections
//! that each served one request and now wait for the next, counted by jemalloc in this
//! process. The real server type in front of the simulator, real sockets on 127.0.0.1;
//! the callers use blocking std sockets, which hold no heap memory of their own.
//!
//! `bench/memory.sh` measures the process's RSS with 10,000 such connections; this counts
//! the heap only, so it does not move with the allocator's page returns.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const GET: &[u8] = b"GET /api/v2/users/me HTTP/1.1\r\nHost: x\r\n\r\n";

/// The tests count the whole process's heap: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bytes the application holds now.
fn allocated() -> usize {
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc's epoch");
    tikv_jemalloc_ctl::stats::allocated::read().expect("jemalloc's stats")
}

/// The open-files limit (`/proc/self/limits`), for how many connections the test can hold
/// (two descriptors each: the caller's and gcpool's).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// Opens `n` connections to `addr`, one after the other; each sends one request and reads
/// its whole answer (a `Content-Length` body). They stay open.
fn used_once(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            stream.write_all(GET).expect("write the request");
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = loop {
                let read = stream.read(&mut buf).expect("read the answer");
                assert!(read > 0, "connection {i} closed before its answer");
                answer.extend_from_slice(&buf[..read]);
                let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "connection {i}: {head}");
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())
                    .expect("a content-length answer");
                break answer.len() >= end + 4 + length;
            };
            if !complete {
                // The rest of the body is still on its way.
                std::thread::sleep(Duration::from_millis(5));
            }
            stream
        })
        .collect()
}

#[tokio::test]
async fn an_idle_connection_that_served_a_request_holds_under_1280_bytes_of_heap() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let sim = Simulator::start(SimOptions {
        token_limit: 1_000_000,
        ..SimOptions::with_clients(3)
    })
    .await
    .unwrap();
    let budgets = "budgets:\n  token_per_minute: 1000000\n  org_per_minute: 1000000\n";
    let gcpool = support::start_gcpool(&sim.base_url(), &support::THREE_CLIENTS, budgets).await;
    let addr = gcpool.api_addr();
    let n = 2_000.min(open_files_limit().saturating_sub(256) / 2);
    assert!(n >= 500, "too few open files for the test: {n} connections");

    // Warm-up: tokens, the upstream connection, the budget windows.
    drop(
        tokio::task::spawn_blocking(move || used_once(addr, 20))
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = allocated();
    let callers = tokio::task::spawn_blocking(move || used_once(addr, n))
        .await
        .unwrap();
    // Parked 10 ms after their answers (`server::PARK_AFTER`).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_connection = allocated().saturating_sub(before) / n;
    // The count is jemalloc's, which sees what its thread caches take and give back in
    // batches: it moves between runs (360–920 bytes here now). 2,240–2,470 before issue
    // 13's second pass (a 1,536-byte task, and the box of hyper's connection, emptied at
    // parking but kept until the next request).
    assert!(
        per_connection < 1280,
        "{n} idle connections hold {per_connection} bytes each"
    );
    eprintln!("{n} idle connections that served a request: {per_connection} bytes of heap each");

    drop(callers);
    support::eventually(
        "closed connections give their heap back",
        Duration::from_secs(5),
        async || match allocated().saturating_sub(before) {
            left if left < n * 64 => Ok(()),
            left => Err(format!("{left} bytes still held")),
        },
    )
    .await;
}

#[tokio::test]
async fn a_silent_connection_holds_under_1536_bytes_of_heap() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = support::start_gcpool(&sim.base_url(), &support::THREE_CLIENTS, "").await;
    let addr = gcpool.api_addr();
    let n = 2_000.min(open_files_limit().saturating_sub(256) / 2);
    assert!(n >= 500, "too few open files for the test: {n} connections");
    drop(
        tokio::task::spawn_blocking(move || used_once(addr, 1))
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = allocated();
    let callers = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    // Accepted, and waiting for a first byte that does not come (the head deadline is 10 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_connection = allocated().saturating_sub(before) / n;
    eprintln!("{n} silent connections: {per_connection} bytes of heap each");
    // A silent connection waits as a parked one does: 1,220 bytes here. Before, it held the
    // box of the protocol sniff's wait too: 1,880.
    assert!(
        per_connection < 1536,
        "{n} silent connections hold {per_connection} bytes each"
    );
    drop(callers);
}

/// Bytes in the caches of freed blocks of every thread that uses `arena`.
fn cached_in_arena(arena: u32) -> usize {
    use tikv_jemalloc_ctl::{Access, AsName};
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc's epoch");
    let name = format!("stats.arenas.{arena}.tcache_bytes\0");
    name.as_bytes()
        .name()
        .read()
        .expect("jemalloc's cache stats")
}

/// Allocates and frees 200 blocks of each size from 64 bytes to 16 KiB: this thread's
/// cache keeps some of each.
fn fill_the_cache() {
    let blocks: Vec<Vec<u8>> = (6..=14)
        .flat_map(|shift| (0..200).map(move |i| vec![i as u8; 1 << shift]))
        .collect();
    drop(std::hint::black_box(blocks));
}

/// The upkeep hook the binary installs (`gcpool::upkeep`): a thread that allocated nothing
/// between two calls returns its cache of freed blocks, so the background thread can give
/// the pages back once a burst is over; a thread that allocated keeps it. Without the hook
/// (before it) the cache stayed with a quiet thread for good.
#[test]
fn a_quiet_thread_returns_its_cache_of_freed_blocks_and_a_busy_one_keeps_it() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let _alone = ONE_AT_A_TIME.blocking_lock();
    std::thread::spawn(|| {
        let arena: u32 = b"thread.arena\0"
            .name()
            .read()
            .expect("this thread's arena");

        fill_the_cache();
        let full = cached_in_arena(arena);
        assert!(
            full >= 64 * 1024,
            "the cache holds {full} bytes after a fill"
        );
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        fill_the_cache();
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        let busy = cached_in_arena(arena);
        assert!(
            busy >= full / 2,
            "a thread that allocated between two calls kept {busy} of {full} bytes"
        );

        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        let quiet = cached_in_arena(arena);
        assert!(
            quiet + 64 * 1024 <= busy,
            "a quiet thread kept {quiet} of {busy} bytes"
        );
    })
    .join()
    .expect("the test thread");
}
