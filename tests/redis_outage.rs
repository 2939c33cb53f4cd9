//! A Redis that stops, loses its state, runs out of memory or hangs never takes a fleet
//! over a budget, is seen as down once per real outage, and delays no caller past
//! `shared_state.timeout` (issue 10, items 9 to 11). Real gcpool binaries, a real
//! `redis-server`, the simulator as the upstream, everything on 127.0.0.1; and `gcpool
//! check` on the new key.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gcpool::sim::{SimOptions, SimStats, Simulator};
use http::StatusCode;
use support::redis::RedisServer;
use support::{GcpoolProcess, HttpClient, TestClient, config_yaml, eventually, metric_value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

/// One fleet at a time: each test runs two or three processes on a 2-core CI machine.
static FLEET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Per 2 s window, as the simulator enforces them.
const TOKEN_LIMIT: u32 = 5;
const ORG_LIMIT: u32 = 12;

/// gcpool config of one replica: `budgets` and `shared` (extra `shared_state` keys) as given.
fn replica_yaml(
    sim: &Simulator,
    redis: &RedisServer,
    clients: &[TestClient<'_>],
    budgets: &str,
    shared: &str,
) -> String {
    let extra = format!(
        "budgets:\n  window: 2s\n  guard: 100ms\n{budgets}\
         shared_state:\n  redis_url: \"{}\"\n  key_prefix: outage\n{shared}",
        redis.url()
    );
    config_yaml(&sim.base_url(), "{API}", "{ADMIN}", clients, &extra)
}

/// The fleet budgets of the binding-load tests: the simulator's real limits.
fn binding_budgets() -> String {
    format!(
        "  token_per_minute: {}\n  org_per_minute: {}\n  queue:\n    max_wait: 1s\n",
        TOKEN_LIMIT * 30,
        ORG_LIMIT * 30
    )
}

async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let text = HttpClient::new()
        .try_get(&format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text();
    metric_value(&text, name)
}

async fn wait_shared_up(admin: SocketAddr, want: f64, within: Duration) {
    eventually(
        &format!("gcpool_shared_state_up must read {want}"),
        within,
        async || match metric(admin, "gcpool_shared_state_up").await {
            Some(value) if value == want => Ok(()),
            value => Err(format!("gcpool_shared_state_up is {value:?}")),
        },
    )
    .await;
}

/// `n` replicas of `yaml`, each ready and on the shared budgets.
async fn start_fleet(yaml: &str, n: usize) -> Vec<GcpoolProcess> {
    let mut replicas: Vec<GcpoolProcess> =
        (0..n).map(|_| GcpoolProcess::spawn(yaml, &[])).collect();
    for r in &mut replicas {
        r.wait_ready().await;
        wait_shared_up(r.admin, 1.0, Duration::from_secs(10)).await;
    }
    replicas
}

/// What callers got: (status, how long the answer took).
type Answers = Vec<(StatusCode, Duration)>;

/// `rate` GETs per second for `duration`, round-robin over `apis`, each in its own task.
fn offer(apis: Vec<SocketAddr>, rate: u32, duration: Duration) -> JoinHandle<Answers> {
    tokio::spawn(async move {
        let client = HttpClient::new();
        let start = Instant::now();
        let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
        let mut callers = Vec::new();
        for i in 0..total {
            let api = apis[(i % apis.len() as u64) as usize];
            let client = client.clone();
            let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            callers.push(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let sent = Instant::now();
                let answer = client
                    .get(&format!("http://{api}/api/v2/users?pageSize=1"))
                    .await;
                (answer.status, sent.elapsed())
            }));
        }
        let mut answers = Vec::new();
        for caller in callers {
            answers.push(caller.await.expect("a caller task must not panic"));
        }
        answers
    })
}

fn count(answers: &Answers, status: StatusCode) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

/// No upstream 429 and no window over a limit, for every client and the org.
fn assert_within_budgets(stats: &SimStats, token_limit: u32, org_limit: Option<u32>) {
    assert_eq!(
        stats.rejected_429, 0,
        "no upstream 429 may come from the fleet: {stats:#?}"
    );
    for (id, c) in &stats.clients {
        assert!(
            c.max_in_window <= u64::from(token_limit),
            "{id}: {} admissions in one window, limit {token_limit}: {stats:#?}",
            c.max_in_window
        );
    }
    if let Some(limit) = org_limit {
        assert!(
            stats.org.max_in_window <= u64::from(limit),
            "org: {} admissions in one window, limit {limit}: {stats:#?}",
            stats.org.max_in_window
        );
    }
}

/// What happens to Redis mid-run.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// SIGSTOP for 3 s (longer than a window), then SIGCONT.
    Stop,
    /// FLUSHALL.
    Flush,
    /// SIGKILL, and an empty server on the same port 0.5 s later.
    Restart,
}

/// The simulator with the binding-load limits, and the config of a replica of a fleet on
/// `redis` with `replicas_hint`.
async fn binding_fleet(redis: &RedisServer, replicas_hint: u32) -> (Simulator, String) {
    let sim = Simulator::start(
        SimOptions::with_clients(3)
            .window(Duration::from_secs(2))
            .token_limit(TOKEN_LIMIT)
            .org_limit(ORG_LIMIT),
    )
    .await
    .expect("simulator starts");
    let yaml = replica_yaml(
        &sim,
        redis,
        &support::THREE_CLIENTS,
        &binding_budgets(),
        &format!("  replicas_hint: {replicas_hint}\n"),
    );
    (sim, yaml)
}

/// Two replicas under binding load (16 requests/s against 6/s of org budget, 2 s
/// windows), Redis loses its state or stops answering at 3 s, load goes on to 10 s.
async fn fleet_through(loss: Loss) {
    let _one_fleet = FLEET.lock().await;
    let mut redis = RedisServer::start();
    let (sim, yaml) = binding_fleet(&redis, 2).await;
    let replicas = start_fleet(&yaml, 2).await;
    sim.reset_stats();

    let load = offer(
        replicas.iter().map(|r| r.api).collect(),
        16,
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    match loss {
        Loss::Stop => {
            info!("SIGSTOP redis-server for 3 s");
            redis.pause();
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.resume();
        }
        Loss::Flush => {
            info!("FLUSHALL");
            redis.flushall();
        }
        Loss::Restart => {
            info!("redis-server killed; an empty one starts 0.5 s later");
            redis.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            redis.restart();
        }
    }
    let answers = load.await.expect("load task");
    let stats = sim.stats();
    eprintln!(
        "{loss:?}: callers got {} × 200, {} × 429 (local); upstream accepted {}, 429 {}, org max in a window {}, clients {:?}",
        count(&answers, StatusCode::OK),
        count(&answers, StatusCode::TOO_MANY_REQUESTS),
        stats.accepted,
        stats.rejected_429,
        stats.org.max_in_window,
        stats
            .clients
            .values()
            .map(|c| c.max_in_window)
            .collect::<Vec<_>>()
    );
    assert_within_budgets(&stats, TOKEN_LIMIT, Some(ORG_LIMIT));
    assert_eq!(
        count(&answers, StatusCode::OK) + count(&answers, StatusCode::TOO_MANY_REQUESTS),
        answers.len(),
        "every caller gets 200 or a local 429: {answers:?}"
    );
    assert!(
        stats.accepted >= 30,
        "the load must have been served (binding, not starved): {} accepted",
        stats.accepted
    );
    // The loss was noticed (else the test proved nothing) by every replica.
    let noticed = match loss {
        Loss::Stop | Loss::Restart => "shared state unreachable",
        Loss::Flush => "shared state was emptied",
    };
    for r in &replicas {
        wait_shared_up(r.admin, 1.0, Duration::from_secs(5)).await;
        let logs = r.stderr();
        assert!(
            logs.contains(noticed),
            "{noticed:?} in every replica:\n{logs}"
        );
    }
}

/// Item 9: SIGSTOP then SIGCONT under binding load: the admissions each replica made
/// locally are written back before anyone admits through Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_stays_within_budgets_through_a_redis_stop() {
    fleet_through(Loss::Stop).await;
}

/// Item 9: FLUSHALL under binding load: the emptied state is noticed (epoch) and refilled
/// from every replica's journal before anyone admits through it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_stays_within_budgets_through_a_flushall() {
    fleet_through(Loss::Flush).await;
}

/// Item 9: a restart without persistence under binding load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_stays_within_budgets_through_a_restart_without_persistence() {
    fleet_through(Loss::Restart).await;
}

/// Item 9, a replica that starts while Redis is stopped knows nothing of what the fleet
/// admitted: it must not take a fresh share of every budget (two replicas that had used
/// the org budget up plus a new one's share went over it), so it admits nothing locally
/// until a window has passed or Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_during_an_outage_takes_no_unknown_share() {
    let _one_fleet = FLEET.lock().await;
    let redis = RedisServer::start();
    let (sim, yaml) = binding_fleet(&redis, 3).await;
    let running = start_fleet(&yaml, 2).await;
    sim.reset_stats();
    let load = offer(
        running.iter().map(|r| r.api).collect(),
        16,
        Duration::from_secs(2),
    );
    let _ = load.await.expect("load task");
    info!("the org window is used up; Redis stops and a third replica starts");
    redis.pause();
    let mut late = GcpoolProcess::spawn(&yaml, &[]);
    late.wait_ready().await;
    let mut apis: Vec<SocketAddr> = running.iter().map(|r| r.api).collect();
    apis.push(late.api);
    let load = offer(apis, 18, Duration::from_secs(2));
    let answers = load.await.expect("load task");
    redis.resume();
    let stats = sim.stats();
    eprintln!(
        "late replica: callers got {} × 200 during the stop; org max in a window {}, upstream 429 {}",
        count(&answers, StatusCode::OK),
        stats.org.max_in_window,
        stats.rejected_429
    );
    assert_within_budgets(&stats, TOKEN_LIMIT, Some(ORG_LIMIT));
    assert!(
        late.stderr().contains("shared state unreachable at start"),
        "{}",
        late.stderr()
    );
}

/// Item 9, the local share: replica A used 4 of a client's 5, replica B 1, then Redis
/// stops. A fixed half each (2) counted against each replica's own use lets B send one
/// more (6 in the window); seeded with the fleet-wide count, neither sends more until the
/// window moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_shares_stay_exact_after_uneven_use() {
    let _one_fleet = FLEET.lock().await;
    let redis = RedisServer::start();
    let sim = Simulator::start(
        SimOptions::with_clients(1)
            .window(Duration::from_secs(2))
            .token_limit(TOKEN_LIMIT),
    )
    .await
    .expect("simulator starts");
    let yaml = replica_yaml(
        &sim,
        &redis,
        &support::THREE_CLIENTS[..1],
        &format!(
            "  token_per_minute: {}\n  queue:\n    max_wait: 0s\n",
            TOKEN_LIMIT * 30
        ),
        "  replicas_hint: 2\n",
    );
    let replicas = start_fleet(&yaml, 2).await;
    let (a, b) = (replicas[0].api, replicas[1].api);
    let client = HttpClient::new();
    sim.reset_stats();
    info!("4 admissions through replica A, then 1 through replica B");
    for api in [a, a, a, a, b] {
        let answer = client.get(&format!("http://{api}/api/v2/users")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    redis.pause();
    info!("Redis stopped; both replicas asked for more, 10 per second each, for 3 s");
    let load = offer(vec![a, b], 20, Duration::from_secs(3));
    let answers = load.await.expect("load task");
    redis.resume();
    let stats = sim.stats();
    eprintln!(
        "uneven use: callers got {} × 200 during the stop; client max in a window {}, upstream 429 {}",
        count(&answers, StatusCode::OK),
        stats.client("sim-client-01").max_in_window,
        stats.rejected_429
    );
    assert_within_budgets(&stats, TOKEN_LIMIT, None);
    assert!(
        count(&answers, StatusCode::OK) >= 1,
        "the local shares serve once the window has moved"
    );
}

/// Item 10: out of memory (writes refused, PING answered) is down, once: the gauge reads 0
/// all along, one "unreachable" line and one "reachable again" line, no flapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_is_down_once_not_flapping() {
    let _one_fleet = FLEET.lock().await;
    let redis = RedisServer::start();
    let sim = Simulator::start(SimOptions::with_clients(3).token_limit(1000))
        .await
        .expect("simulator starts");
    let yaml = replica_yaml(
        &sim,
        &redis,
        &support::THREE_CLIENTS,
        "",
        "  replicas_hint: 3\n",
    );
    let replicas = start_fleet(&yaml, 1).await;
    let replica = &replicas[0];
    let client = HttpClient::new();
    let api = replica.api;
    let get = |client: HttpClient| async move {
        client
            .get(&format!("http://{api}/api/v2/users"))
            .await
            .status
    };
    assert_eq!(get(client.clone()).await, StatusCode::OK);

    // Transitions are counted from here: on a loaded machine one admission before the test
    // proper may miss the 50 ms store timeout, a real (and reported) transition of its own.
    wait_shared_up(replica.admin, 1.0, Duration::from_secs(5)).await;
    let logged_before = replica.stderr().len();
    info!("Redis out of memory for 10 s; 5 requests per second meanwhile");
    redis.out_of_memory();
    let load = offer(vec![api], 5, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut gauge = Vec::new();
    for _ in 0..18 {
        gauge.push(metric(replica.admin, "gcpool_shared_state_up").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let answers = load.await.expect("load task");
    redis.enough_memory();
    wait_shared_up(replica.admin, 1.0, Duration::from_secs(5)).await;
    assert_eq!(get(client).await, StatusCode::OK);

    let all_logs = replica.stderr();
    let logs = all_logs.get(logged_before..).unwrap_or(&all_logs);
    let down = logs.matches("shared state unreachable").count();
    let back = logs.matches("shared state reachable again").count();
    eprintln!(
        "out of memory: {down} unreachable + {back} reachable-again lines; gauge samples {gauge:?}"
    );
    assert!(
        gauge.iter().all(|g| *g == Some(0.0)),
        "gcpool_shared_state_up must read 0 while admissions fail: {gauge:?}"
    );
    assert!(
        down + back <= 2,
        "one line per real transition, got {down} + {back}:\n{logs}"
    );
    assert_eq!((down, back), (1, 1), "down once, back once:\n{logs}");
    assert_eq!(
        count(&answers, StatusCode::OK),
        answers.len(),
        "callers are served on the local share"
    );
}

/// Item 11: while Redis hangs (SIGSTOP), requests are decided within about
/// `shared_state.timeout` (40 ms here; the old fixed deadline was 250 ms), and the local
/// share is exact: 10 per 2 s for the client, replicas_hint 2, so at most 5 in the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_left_within_the_configured_deadline() {
    let _one_fleet = FLEET.lock().await;
    let redis = RedisServer::start();
    let sim = Simulator::start(
        SimOptions::with_clients(1)
            .window(Duration::from_secs(2))
            .token_limit(10),
    )
    .await
    .expect("simulator starts");
    let yaml = replica_yaml(
        &sim,
        &redis,
        &support::THREE_CLIENTS[..1],
        "  token_per_minute: 300\n  queue:\n    max_wait: 0s\n",
        "  replicas_hint: 2\n  timeout: 40ms\n",
    );
    let replicas = start_fleet(&yaml, 1).await;
    let replica = &replicas[0];
    // The same burst once through Redis first, so that what is measured below is the
    // deadline, not 20 cold connections; then a window passes (its count no longer binds).
    let warm = offer(vec![replica.api], 20_000, Duration::from_millis(1));
    let warm = warm.await.expect("load task");
    let warm_max = warm.iter().map(|(_, d)| *d).max().unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sim.reset_stats();

    redis.pause();
    info!("Redis stopped: a burst of 20 concurrent requests");
    let load = offer(vec![replica.api], 20_000, Duration::from_millis(1));
    let answers = load.await.expect("load task");
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, d)| *d).collect();
    latencies.sort_unstable();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let max = latencies[latencies.len() - 1];
    let stats = sim.stats();
    let logs = replica.stderr();
    redis.resume();
    eprintln!(
        "hung Redis: {} requests, p99 {p99:?}, max {max:?} (through Redis before: max {warm_max:?}); {} × 200, upstream max in a window {}",
        answers.len(),
        count(&answers, StatusCode::OK),
        stats.client("sim-client-01").max_in_window
    );
    assert_eq!(answers.len(), 20);
    assert!(
        logs.contains("did not answer within 40ms"),
        "the fallback is taken on the configured deadline:\n{logs}"
    );
    assert!(
        max < Duration::from_millis(200),
        "decided within about the 40 ms deadline, far from the old 250 ms: p99 {p99:?}, max {max:?}"
    );
    assert!(
        count(&answers, StatusCode::OK) <= 5,
        "no more than the local share (10 / 2): {answers:?}"
    );
    assert_within_budgets(&stats, 5, None);
    assert!(
        count(&answers, StatusCode::OK) >= 1,
        "the local share serves"
    );
}

/// `shared_state.timeout`: `gcpool check` prints its default (50ms) and refuses 0 with an
/// error naming the key and the accepted range.
#[test]
fn check_names_the_redis_timeout() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let valid = dir.path().join("fleet.yaml");
    std::fs::write(
        &valid,
        "clients:\n  - {name: pool-01, client_id: a, client_secret: s}\n\
         inbound: {allow_anonymous: true}\n\
         shared_state:\n  redis_url: redis://127.0.0.1:6379/0\n",
    )
    .expect("write a config");
    let check = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_gcpool"))
            .arg("check")
            .arg("--config")
            .arg(path)
            .output()
            .expect("the gcpool binary must run")
    };
    let out = check(&valid);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("timeout: 50ms"),
        "the default is shown:\n{stdout}"
    );

    let out = check(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config/redis_timeout_zero.yaml"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("shared_state.timeout") && stderr.contains("between 1ms and 1s"),
        "{stderr}"
    );
}
