//! Budgets against the simulator: bursts become a paced stream with zero upstream 429s,
//! shared route budgets hold, and upstream 429s cool a client down.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::{HttpClient, THREE_CLIENTS, start_gcpool};

/// gcpool budgets for a 2 s window: `per_window` admissions per client per window.
fn budgets(per_window: u32, extra: &str) -> String {
    format!(
        "budgets:\n  token_per_minute: {}\n  org_per_minute: 100000\n  window: 2s\n  guard: 60ms\n  queue:\n    max_wait: 3s\n{extra}",
        per_window * 30
    )
}

/// The simulator (3 clients of 5 per 2 s) and gcpool in front of it with `budgets(5, "")`,
/// its callers the YAML lines `api_keys` (under `inbound.api_keys`, 4 spaces in).
async fn keyed(api_keys: &str) -> (Simulator, gcpool::app::Gcpool) {
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(5),
    )
    .await
    .expect("simulator");
    let yaml = support::config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS,
        &budgets(5, ""),
    )
    .replace(
        "inbound:\n  allow_anonymous: true\n",
        &format!("inbound:\n  api_keys:\n{api_keys}"),
    );
    let gcpool = support::start_config(support::config(&yaml)).await;
    (sim, gcpool)
}

/// 100 callers ramping up within 2 s against 3 clients of 5 per 2 s: no upstream 429,
/// no window over a limit, every caller gets 200 or a local 429 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_100_callers_never_overruns_a_limit() {
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(5),
    )
    .await
    .unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, &budgets(5, "")).await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());

    let mut callers = Vec::new();
    for i in 0..100u64 {
        let url = url.clone();
        callers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 20)).await;
            HttpClient::new().get(&url).await
        }));
    }
    let (mut ok, mut local) = (0, 0);
    for caller in callers {
        let answer = caller.await.unwrap();
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                local += 1;
                let reason = answer.header("x-gcpool-reason");
                assert!(
                    ["token_budget", "deadline", "queue_full"].contains(&reason),
                    "reason {reason}"
                );
                let retry_after: u64 = answer.header("retry-after").parse().unwrap();
                assert!((1..=60).contains(&retry_after));
                let body = answer.json();
                assert_eq!(body["code"], "too.many.requests.retry.after");
                assert_eq!(body["status"], 429);
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("[{retry_after}]"))
                );
            }
            other => panic!("caller got {other}: {}", answer.text()),
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.rejected_429, 0, "no upstream 429: {stats:?}");
    for (client, c) in &stats.clients {
        assert!(
            c.max_in_window <= 5,
            "{client} saw {} in one window",
            c.max_in_window
        );
    }
    assert_eq!(ok + local, 100);
    assert_eq!(stats.accepted, ok, "every 200 was one upstream request");
    // 2 s of arrivals + 3 s of queueing covers at least 2 full windows of 15.
    assert!(ok >= 30, "capacity used: only {ok} callers served");
    assert!(
        local > 0,
        "the burst exceeds capacity, some callers are told to come back"
    );
}

/// A route budget in org scope shared by all clients is never overrun, although every
/// client's token budget still has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_scope_route_budget_is_shared_by_every_client() {
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(100)
            .route_limit(Method::PUT, "/api/v2/architect/ivrs/{ivrId}", 4),
    )
    .await
    .unwrap();
    let endpoint = "  endpoints:\n    - route: \"PUT /api/v2/architect/ivrs/{ivrId}\"\n      per_minute: 120\n      scope: org\n";
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, &budgets(100, endpoint)).await;

    let mut callers = Vec::new();
    for i in 0..12 {
        let url = format!("http://{}/api/v2/architect/ivrs/ivr-{i}", gcpool.api_addr());
        callers.push(tokio::spawn(async move {
            HttpClient::new()
                .request(
                    Method::PUT,
                    &url,
                    &[("content-type", "application/json")],
                    "{}",
                )
                .await
        }));
    }
    let mut clients = std::collections::BTreeSet::new();
    let mut ok = 0;
    for caller in callers {
        let answer = caller.await.unwrap();
        if answer.status == StatusCode::OK {
            ok += 1;
            clients.insert(answer.header("x-gcpool-client").to_owned());
        } else {
            assert_eq!(
                answer.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{}",
                answer.text()
            );
            assert_eq!(answer.header("x-gcpool-reason"), "endpoint_budget");
            assert_eq!(
                answer.json()["limit"]["key"],
                "endpoint:PUT /api/v2/architect/ivrs/{ivrId}"
            );
            assert_eq!(
                answer.json()["contextId"].as_str(),
                Some(answer.header("inin-correlation-id")),
                "a local 429's correlation id is its contextId"
            );
        }
    }
    let stats = sim.stats();
    let route = stats.route("PUT /api/v2/architect/ivrs/{ivrId}");
    assert_eq!(stats.rejected_429, 0, "{stats:?}");
    assert!(
        route.max_in_window <= 4,
        "route window overrun: {}",
        route.max_in_window
    );
    assert_eq!(
        ok, 8,
        "4 at once + 4 in the next window (max_wait 3 s), the rest refused"
    );
    assert!(
        clients.len() > 1,
        "the route budget is shared while load spreads: {clients:?}"
    );
}

/// A limit gcpool was not told about (the simulator's hidden per-token limit on one client)
/// makes the upstream answer 429: gcpool cools that client down, retries elsewhere, and
/// the caller sees 200.
#[tokio::test]
async fn upstream_429_cools_the_client_down_and_retries_elsewhere() {
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(100)
            .hidden_limit("sim-client-01", 1),
    )
    .await
    .unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, &budgets(100, "")).await;
    let client = HttpClient::new();
    for _ in 0..12 {
        let answer = client
            .get(&format!("http://{}/api/v2/users/me", gcpool.api_addr()))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "the caller never sees the upstream 429: {}",
            answer.text()
        );
    }
    let stats = sim.stats();
    assert!(
        stats.clients["sim-client-01"].rejected_429 >= 1,
        "the hidden limit fired: {stats:?}"
    );
    let metrics = client
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert!(
        metrics.contains(r#"gcpool_upstream_429_total{client="pool-01",route="/api/v2/users/me"}"#),
        "{metrics}"
    );
    let status = client
        .get(&format!("http://{}/status", gcpool.admin_addr()))
        .await
        .json();
    assert!(
        status["learned_limits"]
            .as_object()
            .is_some_and(|l| !l.is_empty()),
        "the 429's limit.value lowered the token budgets: {status}"
    );
}

/// A caller who leaves while queued gives its slot back; past max_pending, callers are
/// refused at once.
#[tokio::test]
async fn disconnected_waiter_frees_its_slot_and_queue_is_bounded() {
    let sim = Simulator::start(SimOptions::with_clients(1).window(Duration::from_secs(2)))
        .await
        .unwrap();
    let extra = "budgets:\n  token_per_minute: 30\n  window: 2s\n  queue:\n    max_wait: 5s\n    max_pending: 1\n";
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], extra).await;
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users", gcpool.api_addr());
    assert_eq!(
        client.get(&url).await.status,
        StatusCode::OK,
        "1 per 2 s: the first goes at once"
    );

    let waiting = {
        let url = url.clone();
        tokio::spawn(async move { HttpClient::new().get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let full = client.get(&url).await;
    assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(full.header("x-gcpool-reason"), "queue_full");

    let status = || async {
        client
            .get(&format!("http://{}/status", gcpool.admin_addr()))
            .await
            .json()
    };
    assert_eq!(status().await["org_budget"]["used"], 1);
    waiting.abort();
    let _ = waiting.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status().await["queue_pending"],
        0,
        "the waiter left the queue"
    );
    // The slot it held (in the next window) is free again: a new caller takes it.
    let answer = client.get(&url).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.header("x-gcpool-wait-ms").parse::<u64>().unwrap() > 1000,
        "it waited for the window"
    );
    assert_eq!(
        sim.stats().accepted,
        2,
        "the disconnected waiter was never forwarded"
    );
}

/// Upstream 503s are retried with backoff for idempotent methods only, at most 4 attempts;
/// the last answer reaches the caller.
#[tokio::test]
async fn transient_upstream_errors_retry_idempotent_methods_only() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, "").await;
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users/u1", gcpool.api_addr());

    let get = client
        .request(Method::GET, &url, &[("x-sim-status", "503")], "")
        .await;
    assert_eq!(
        get.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the last upstream answer comes back"
    );
    assert_eq!(sim.stats().accepted, 4, "GET tried 4 times in all");

    let post = client
        .request(Method::PATCH, &url, &[("x-sim-status", "503")], "{}")
        .await;
    assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sim.stats().accepted,
        5,
        "PATCH is not idempotent: sent once"
    );

    let ok = client
        .request(Method::GET, &url, &[("x-sim-status", "404")], "")
        .await;
    assert_eq!(
        ok.status,
        StatusCode::NOT_FOUND,
        "other statuses are answers, not retried"
    );
    assert_eq!(sim.stats().accepted, 6);
}

/// `x-gcpool-max-wait` (SPEC §12): a request whose slot lies past its own cap gets the local
/// 429 at once, though the config would let it wait; the header never reaches the upstream;
/// a value that is no duration is a 400 that names the header.
#[tokio::test]
async fn a_request_max_wait_header_gets_the_local_429_at_once() {
    // One client of 1 per 10 s window; the config lets a request wait 15 s.
    let sim = Simulator::start(
        SimOptions::with_clients(1)
            .window(Duration::from_secs(10))
            .token_limit(1),
    )
    .await
    .unwrap();
    let extra = "budgets:\n  token_per_minute: 6\n  org_per_minute: 100000\n  window: 10s\n  \
                 queue:\n    max_wait: 15s\n";
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], extra).await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());
    let client = HttpClient::new();

    let first = client
        .request(Method::GET, &url, &[("x-gcpool-max-wait", "5s")], "")
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let echoed = first.json()["headers"].to_string();
    assert!(
        !echoed.contains("x-gcpool-max-wait"),
        "the header stays in gcpool: {echoed}"
    );

    // The next slot is ~10 s away; this caller waits 1 s at most.
    let asked = tokio::time::Instant::now();
    let capped = client
        .request(Method::GET, &url, &[("x-gcpool-max-wait", "1s")], "")
        .await;
    let took = asked.elapsed();
    assert_eq!(
        capped.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        capped.text()
    );
    assert_eq!(capped.header("x-gcpool-reason"), "deadline");
    assert!(
        took < Duration::from_millis(500),
        "refused at once, not after its 1 s: {took:?}"
    );
    let retry_after: u64 = capped.header("retry-after").parse().expect("Retry-After");
    assert!((5..=11).contains(&retry_after), "Retry-After {retry_after}");

    let bad = client
        .request(Method::GET, &url, &[("x-gcpool-max-wait", "soon")], "")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.header("x-gcpool-reason"), "bad_request");
    let message = bad.json()["message"].to_string();
    assert!(
        message.contains("x-gcpool-max-wait") && message.contains("soon"),
        "{message}"
    );
    assert_eq!(
        sim.stats().accepted,
        1,
        "nothing refused reached the upstream"
    );
}

/// A caller confined to a sub-pool (`clients: [pool-03]`, SPEC §12) never reaches another
/// client, by the simulator's count per client; a caller without one spreads over all three.
/// When its one client is spent, it waits or gets a local 429, though the others have room.
#[tokio::test]
async fn a_caller_confined_to_a_sub_pool_uses_only_its_clients() {
    let (sim, gcpool) = keyed(
        "    - {name: ivr-flows, key: ivr-key, clients: [pool-03], max_wait: 100ms}\n    \
         - {name: batch, key: batch-key}\n",
    )
    .await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());
    let client = HttpClient::new();

    let mut local = 0;
    for _ in 0..8 {
        let answer = client
            .request(Method::GET, &url, &[("x-api-key", "ivr-key")], "")
            .await;
        match answer.status {
            StatusCode::OK => assert_eq!(answer.header("x-gcpool-client"), "pool-03"),
            StatusCode::TOO_MANY_REQUESTS => local += 1,
            other => panic!("{other}: {}", answer.text()),
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.client("sim-client-03").accepted, 5, "{stats:?}");
    assert_eq!(local, 3, "pool-03's 5 per window, then local 429s");
    for other in ["sim-client-01", "sim-client-02"] {
        assert_eq!(stats.client(other).accepted, 0, "{other}: {stats:?}");
    }

    for _ in 0..6 {
        let answer = client
            .request(Method::GET, &url, &[("x-api-key", "batch-key")], "")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_ne!(
            answer.header("x-gcpool-client"),
            "pool-03",
            "pool-03 is spent"
        );
    }
    let status = client
        .get(&format!("http://{}/status", gcpool.admin_addr()))
        .await
        .json();
    assert_eq!(status["callers"][0]["clients"][0], "pool-03", "{status}");
}

/// A caller's quota (`per_minute`, SPEC §12) is a budget like the others: exact, over every
/// client, reserved with them; past it that caller gets a local 429 that names it
/// (`caller_budget`, `limit.key: caller:<name>`) while other callers still pass.
#[tokio::test]
async fn a_caller_quota_is_exact_and_leaves_the_others_their_room() {
    // 5 per 2 s window for ivr-flows (150 a minute), 15 for the pool.
    let (sim, gcpool) = keyed(
        "    - {name: ivr-flows, key: ivr-key, per_minute: 150, max_wait: 100ms}\n    \
         - {name: batch, key: batch-key, max_wait: 100ms}\n",
    )
    .await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());
    let client = HttpClient::new();
    let send = |key: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .request(Method::GET, &url, &[("x-api-key", key)], "")
                .await
        }
    };

    let mut ok = 0;
    for _ in 0..10 {
        let answer = send("ivr-key").await;
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.header("x-gcpool-reason"), "caller_budget");
                assert_eq!(answer.json()["limit"]["key"], "caller:ivr-flows");
            }
            other => panic!("{other}: {}", answer.text()),
        }
    }
    assert_eq!(ok, 5, "exactly the caller's 5 per window");
    for _ in 0..10 {
        let answer = send("batch-key").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    assert_eq!(sim.stats().accepted, 15);
    assert_eq!(sim.stats().rejected_429, 0);
    let status = client
        .get(&format!("http://{}/status", gcpool.admin_addr()))
        .await
        .json();
    let quota = status["budgets"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "caller:ivr-flows"))
        .cloned()
        .unwrap_or_else(|| panic!("the caller's budget in /status: {status}"));
    assert_eq!(quota["kind"], "caller");
    assert_eq!(
        (quota["used"].as_u64(), quota["limit"].as_u64()),
        (Some(5), Some(5))
    );
    let ivr = &status["callers"][0];
    assert_eq!(ivr["name"], "ivr-flows");
    assert_eq!(
        ivr["quota"],
        serde_json::json!({"used": 5, "limit": 5}),
        "{status}"
    );
    assert!(
        status["callers"][1]["quota"].is_null(),
        "batch has no quota"
    );
}

/// Lanes (SPEC §12): a batch caller flooding the pool fills at most its share of each
/// budget, so a realtime caller still finds room at once: every realtime request is
/// admitted without waiting (`x-gcpool-wait-ms: 0`, asked with `x-gcpool-max-wait: 0s`, so
/// a wait would be a 429) while batch is queued or refused. Without lanes the same flood
/// takes every slot, and the same realtime requests are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_flood_leaves_realtime_its_headroom() {
    let keys = "    - {name: ivr, key: ivr-key, lane: realtime}\n    \
                - {name: export, key: export-key, lane: batch}\n";
    // 3 clients of 5 per 2 s window: batch may fill 2 of each (0.4), realtime all 5.
    let lanes = "  lanes:\n    standard: 0.8\n    batch: 0.4\n";
    let with_lanes = batch_flood_then_realtime(&format!("{keys}{lanes}")).await;
    assert_eq!(
        with_lanes.realtime,
        vec![(StatusCode::OK, Some(0)); 8],
        "realtime must never wait behind batch: {with_lanes:?}"
    );
    assert_eq!(
        with_lanes.batch_now, 6,
        "batch fills 2 of 5 per client: {with_lanes:?}"
    );
    assert_eq!(
        with_lanes.batch_queued, 6,
        "then 2 per client in the next window"
    );
    assert_eq!(with_lanes.batch_refused, 30 - 12, "{with_lanes:?}");
    assert_eq!(with_lanes.upstream_429, 0);

    let without = batch_flood_then_realtime(keys).await;
    assert_eq!(without.batch_now, 15, "batch takes every slot: {without:?}");
    assert!(
        without
            .realtime
            .iter()
            .all(|&(status, _)| status == StatusCode::TOO_MANY_REQUESTS),
        "without lanes realtime finds no room: {without:?}"
    );
}

/// What [`batch_flood_then_realtime`] saw.
#[derive(Debug)]
struct Flood {
    /// Each realtime answer's status and `x-gcpool-wait-ms`.
    realtime: Vec<(StatusCode, Option<u64>)>,
    /// Batch answers: 200 at once (wait 0), 200 after a queued wait, local 429.
    batch_now: usize,
    batch_queued: usize,
    batch_refused: usize,
    upstream_429: u64,
}

/// 30 concurrent batch requests (`export-key`, queueing up to 3 s), then, while they are
/// queued, 8 realtime requests one after the other (`ivr-key`, no wait allowed).
async fn batch_flood_then_realtime(api_keys: &str) -> Flood {
    let (sim, gcpool) = keyed(api_keys).await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());
    let client = HttpClient::new();
    let batch: Vec<_> = (0..30)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .request(Method::GET, &url, &[("x-api-key", "export-key")], "")
                    .await
            })
        })
        .collect();
    // Let the whole flood be decided first: admitted now, queued, or refused.
    let metrics_url = format!("http://{}/metrics", gcpool.admin_addr());
    support::eventually(
        "the batch flood decided",
        Duration::from_secs(5),
        async || {
            let metrics = client.get(&metrics_url).await.text();
            let queued = support::metric_value(&metrics, "gcpool_queue_pending").unwrap_or(0.0);
            let refused: f64 = metrics
                .lines()
                .filter(|l| l.starts_with("gcpool_rejections_total{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            let decided = sim.stats().accepted as f64 + queued + refused;
            if decided >= 30.0 {
                Ok(())
            } else {
                Err(format!("{decided} of 30 decided"))
            }
        },
    )
    .await;
    let mut realtime = Vec::new();
    for _ in 0..8 {
        let answer = client
            .request(
                Method::GET,
                &url,
                &[("x-api-key", "ivr-key"), ("x-gcpool-max-wait", "0s")],
                "",
            )
            .await;
        let wait = answer
            .headers
            .get("x-gcpool-wait-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        realtime.push((answer.status, wait));
    }
    let (mut batch_now, mut batch_queued, mut batch_refused) = (0, 0, 0);
    for task in batch {
        let answer = task.await.expect("a batch request task");
        match answer.status {
            StatusCode::OK
                if answer
                    .headers
                    .get("x-gcpool-wait-ms")
                    .is_some_and(|v| v == "0") =>
            {
                batch_now += 1
            }
            StatusCode::OK => batch_queued += 1,
            StatusCode::TOO_MANY_REQUESTS => batch_refused += 1,
            other => panic!("batch: {other}: {}", answer.text()),
        }
    }
    Flood {
        realtime,
        batch_now,
        batch_queued,
        batch_refused,
        upstream_429: sim.stats().rejected_429,
    }
}
