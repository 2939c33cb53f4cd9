//! A fleet acts as one pool: three gcpool processes share their budgets through a real
//! `redis-server`, and keep serving on a local share when Redis goes away.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::StatusCode;
use support::redis::RedisServer;
use support::{GcpoolProcess, HttpClient, THREE_CLIENTS, config_yaml, eventually};
use tokio::time::Instant;

/// gcpool config for one replica: 3 clients × 5 per 2 s window, shared through `redis`.
fn replica_yaml(sim_url: &str, redis_url: &str) -> String {
    let extra = format!(
        "budgets:\n  token_per_minute: 150\n  window: 2s\n  guard: 100ms\n  queue:\n    max_wait: 3s\n\
         shared_state:\n  redis_url: \"{redis_url}\"\n  key_prefix: fleet-test\n  replicas_hint: 3\n"
    );
    config_yaml(sim_url, "{API}", "{ADMIN}", &THREE_CLIENTS, &extra)
}

async fn metric(client: &HttpClient, admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = client.get(&format!("http://{admin}/metrics")).await.text();
    support::metric_value(&text, name)
}

async fn wait_metric(
    client: &HttpClient,
    admin: std::net::SocketAddr,
    name: &str,
    want: f64,
    within: Duration,
) {
    eventually(
        &format!("{name} must read {want}"),
        within,
        async || match metric(client, admin, name).await {
            Some(value) if value == want => Ok(()),
            value => Err(format!("{name} is {value:?}")),
        },
    )
    .await;
}

/// `n` gcpool processes on `yaml`, each ready and connected to Redis.
async fn start_fleet(yaml: &str, n: usize) -> (Vec<GcpoolProcess>, HttpClient) {
    let mut replicas: Vec<GcpoolProcess> =
        (0..n).map(|_| GcpoolProcess::spawn(yaml, &[])).collect();
    let client = HttpClient::new();
    for r in &mut replicas {
        r.wait_ready().await;
        wait_metric(
            &client,
            r.admin,
            "gcpool_shared_state_up",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    }
    (replicas, client)
}

/// Three replicas, load spread over all three, saturating for 4 windows: no upstream 429,
/// no client window over its limit, and the shared budgets used to ≥ 95 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_budgets_through_redis() {
    let redis = RedisServer::start();
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(5),
    )
    .await
    .unwrap();
    let yaml = replica_yaml(&sim.base_url(), &redis.url());
    let (replicas, _client) = start_fleet(&yaml, 3).await;

    // 30 req/s offered against 7.5/s of capacity, round-robin over the replicas, for 8 s.
    let start = Instant::now();
    let mut callers = Vec::new();
    for i in 0..240u64 {
        let api = replicas[(i % 3) as usize].api;
        callers.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_millis(i * 33)).await;
            let answer = HttpClient::new()
                .get(&format!("http://{api}/api/v2/users?pageSize=1"))
                .await;
            (answer.status, start.elapsed())
        }));
    }
    let mut ok_times = Vec::new();
    for caller in callers {
        let (status, at) = caller.await.unwrap();
        match status {
            StatusCode::OK => ok_times.push(at),
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("caller got {other}"),
        }
    }
    let stats = sim.stats();
    assert_eq!(
        stats.rejected_429, 0,
        "no upstream 429 across the fleet: {stats:?}"
    );
    for (id, c) in &stats.clients {
        assert!(
            c.max_in_window <= 5,
            "{id}: {} in one window",
            c.max_in_window
        );
    }
    // Capacity used over whole windows since the first success (as `gcpool demo` measures).
    ok_times.sort();
    let first = ok_times[0];
    let windows = ((*ok_times.last().unwrap() - first).as_secs_f64() / 2.0).floor() as u32;
    assert!(windows >= 3, "saturated for {windows} windows");
    let served = ok_times
        .iter()
        .filter(|&&t| t < first + Duration::from_secs(2) * windows)
        .count();
    let used = served as f64 / f64::from(15 * windows);
    eprintln!(
        "fleet of 3: capacity used {:.1} % ({served} admitted in {windows} windows of 15), upstream 429s {}",
        used * 100.0,
        stats.rejected_429
    );
    assert!(
        used >= 0.95,
        "capacity used {:.1} % ({served} in {windows} windows)",
        used * 100.0
    );
}

/// Redis killed mid-run: every replica keeps answering, `gcpool_shared_state_up` drops to
/// 0; Redis restarted: it returns to 1 and budgets are shared again. Nobody is left
/// without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_redis_going_away_and_coming_back() {
    let mut redis = RedisServer::start();
    let sim = Simulator::start(SimOptions::with_clients(3).token_limit(1000))
        .await
        .unwrap();
    let extra = format!(
        "shared_state:\n  redis_url: \"{}\"\n  key_prefix: fail-test\n  replicas_hint: 2\n",
        redis.url()
    );
    let yaml = config_yaml(&sim.base_url(), "{API}", "{ADMIN}", &THREE_CLIENTS, &extra);
    let (replicas, client) = start_fleet(&yaml, 2).await;
    let send_all = |n: usize| {
        let apis: Vec<_> = replicas.iter().map(|r| r.api).collect();
        async move {
            let client = HttpClient::new();
            for i in 0..n {
                let api = apis[i % apis.len()];
                let answer = client.get(&format!("http://{api}/api/v2/users")).await;
                assert_eq!(
                    answer.status,
                    StatusCode::OK,
                    "every caller gets an answer: {}",
                    answer.text()
                );
            }
        }
    };
    send_all(10).await;

    redis.kill();
    send_all(20).await;
    for r in &replicas {
        wait_metric(
            &client,
            r.admin,
            "gcpool_shared_state_up",
            0.0,
            Duration::from_secs(5),
        )
        .await;
    }
    let status = client
        .get(&format!("http://{}/status", replicas[0].admin))
        .await
        .json();
    assert_eq!(status["shared_state"]["up"], false);

    redis.restart();
    for r in &replicas {
        wait_metric(
            &client,
            r.admin,
            "gcpool_shared_state_up",
            1.0,
            Duration::from_secs(15),
        )
        .await;
    }
    // Shared again: what replica 1 admits shows in replica 0's view of the org budget.
    let org_used = |admin| {
        let client = client.clone();
        async move {
            client.get(&format!("http://{admin}/status")).await.json()["org_budget"]["used"]
                .as_u64()
                .unwrap()
        }
    };
    let before = org_used(replicas[0].admin).await;
    let api = replicas[1].api;
    for _ in 0..5 {
        assert_eq!(
            client
                .get(&format!("http://{api}/api/v2/users"))
                .await
                .status,
            StatusCode::OK
        );
    }
    let after = org_used(replicas[0].admin).await;
    assert!(
        after >= before + 5,
        "replica 0 sees replica 1's admissions: {before} → {after}"
    );
    let logs = replicas[0].stderr();
    assert_eq!(
        logs.matches("shared state unreachable").count(),
        1,
        "the outage is logged once:\n{logs}"
    );
}

/// Each replica keeps its own answers (SPEC §11, README "Deploy as a fleet"): a fleet of 3
/// makes one upstream call per key per replica, and each replica's hit ratio is what its
/// own share of the requests gives. Measured here: 5 keys, 60 requests round-robin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_caches_on_its_own_and_reports_its_own_hit_ratio() {
    const KEYS: usize = 5;
    const REQUESTS: usize = 60;
    let redis = RedisServer::start();
    let sim = Simulator::start(SimOptions::with_clients(3).token_limit(1000))
        .await
        .unwrap();
    let extra = format!(
        "shared_state:\n  redis_url: \"{}\"\n  key_prefix: cache-fleet-test\n  replicas_hint: 3\n{}",
        redis.url(),
        support::cache::cache_yaml("5m", "0s", true)
    );
    let yaml = config_yaml(&sim.base_url(), "{API}", "{ADMIN}", &THREE_CLIENTS, &extra);
    let (replicas, client) = start_fleet(&yaml, 3).await;

    // One request at a time (no coalescing), request i for key i % 5 on replica i % 3: each
    // replica sees each key 4 times.
    for i in 0..REQUESTS {
        let api = replicas[i % replicas.len()].api;
        let answer = client
            .get(&format!(
                "http://{api}/api/v2/routing/queues/q-{}",
                i % KEYS
            ))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    let calls = sim.stats().accepted;
    assert_eq!(
        calls,
        (KEYS * replicas.len()) as u64,
        "one upstream call per key per replica"
    );
    let mut ratios = Vec::new();
    for r in &replicas {
        let status = client
            .get(&format!("http://{}/status", r.admin))
            .await
            .json();
        let route = &status["cache"]["routes"][0];
        assert_eq!(route["miss"], KEYS as u64, "{route}");
        assert_eq!(route["hit"], (REQUESTS / 3 - KEYS) as u64, "{route}");
        ratios.push(route["hit_ratio"].as_f64().expect("hit_ratio"));
    }
    for ratio in &ratios {
        assert!(
            (ratio - 0.75).abs() < 1e-9,
            "hit ratio per replica: {ratios:?}"
        );
    }
    eprintln!(
        "fleet of 3, {KEYS} keys, {REQUESTS} requests round-robin: {calls} upstream calls \
         (one process: {KEYS}), hit ratio per replica {ratios:?} (one process: {:.3})",
        (REQUESTS - KEYS) as f64 / REQUESTS as f64
    );
}

/// A caller's quota is exact across a fleet too (SPEC §12): it is one more budget in the
/// same Redis reservation, so two replicas admit its 5 per window between them, not 5 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_quota_holds_across_the_fleet() {
    let redis = RedisServer::start();
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(5),
    )
    .await
    .unwrap();
    let yaml = replica_yaml(&sim.base_url(), &redis.url()).replace(
        "inbound:\n  allow_anonymous: true\n",
        "inbound:\n  api_keys:\n    - {name: ivr-flows, key: ivr-key, per_minute: 150, max_wait: 100ms}\n",
    );
    let (replicas, client) = start_fleet(&yaml, 2).await;
    let mut ok = 0;
    for i in 0..12 {
        let api = replicas[i % 2].api;
        let answer = client
            .request(
                http::Method::GET,
                &format!("http://{api}/api/v2/users?pageSize=1"),
                &[("x-api-key", "ivr-key")],
                "",
            )
            .await;
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.header("x-gcpool-reason"), "caller_budget");
            }
            other => panic!("{other}: {}", answer.text()),
        }
    }
    assert_eq!(ok, 5, "the caller's 5 per window, fleet-wide");
}
