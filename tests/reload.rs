//! Hot reload, in process: clients added, removed and rotated without dropping requests in
//! flight; budgets changed with the admissions already made still counted; API keys
//! rotated; configs that need a restart rejected with the old one kept; the same over
//! shared (Redis) budgets. `tests/reload_signal.rs` drives the binary with SIGHUP and file
//! changes.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use gcpool::app::Gcpool;
use gcpool::reload::ReloadError;
use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::redis::RedisServer;
use support::{HttpClient, TestClient, config, eventually, metric_value, start_config, wait_ready};

const API_KEY_OLD: &str = "old-key-0123456789abcdef";
const API_KEY_NEW: &str = "new-key-fedcba9876543210";

/// A config in front of `sim`: `clients`, an org cap of `org_per_window` per 10 s, no
/// queueing (a request that would wait gets a local 429), then `extra` (top level).
fn yaml(sim: &Simulator, clients: &[TestClient<'_>], org_per_window: u32, extra: &str) -> String {
    let url = sim.base_url();
    let mut yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:1\"\n  shutdown_grace: 10s\n\
         genesys:\n  api_base: \"{url}\"\n  login_base: \"{url}\"\n\
         budgets:\n  token_per_minute: 6000\n  org_per_minute: {}\n  window: 10s\n  guard: 20ms\n\
         \x20 queue:\n    max_wait: 0s\n\
         clients:\n",
        org_per_window * 6
    );
    for (name, id, secret) in clients {
        yaml.push_str(&format!(
            "  - name: {name}\n    client_id: \"{id}\"\n    client_secret: \"{secret}\"\n"
        ));
    }
    if !extra.contains("inbound:") {
        yaml.push_str("inbound:\n  allow_anonymous: true\n");
    }
    yaml.push_str(extra);
    yaml
}

fn status_url(gcpool: &Gcpool) -> String {
    format!("http://{}/status", gcpool.admin_addr())
}

fn api_url(gcpool: &Gcpool) -> String {
    format!("http://{}/api/v2/users/me", gcpool.api_addr())
}

/// Names and states of the clients `/status` lists.
async fn clients(gcpool: &Gcpool) -> Vec<(String, String)> {
    let status = HttpClient::new().get(&status_url(gcpool)).await.json();
    status["clients"]
        .as_array()
        .expect("clients array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// How long a reload may take to show its effect.
const STEP: Duration = Duration::from_secs(10);

/// Waits until `/status` lists client `index` (in config order) in state `want`.
async fn wait_client_state(gcpool: &Gcpool, index: usize, want: &str) {
    eventually(
        &format!("client #{index} must be {want}"),
        STEP,
        async || {
            let listed = clients(gcpool).await;
            match listed.get(index) {
                Some((_, state)) if state == want => Ok(()),
                _ => Err(format!("/status lists {listed:?}")),
            }
        },
    )
    .await;
}

/// Slow requests in flight while one client is removed and another rotated all answer
/// 200; afterwards only the new set serves, the rotated client with its new credentials,
/// and no request ever reached the upstream with a dead token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_come_and_go_without_dropping_requests_in_flight() {
    let sim = Simulator::start(SimOptions::with_clients(4)).await.unwrap();
    let before = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    let gcpool = start_config(config(&yaml(&sim, &before, 1000, ""))).await;
    let url = api_url(&gcpool);

    let mut slow = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        slow.push(tokio::spawn(async move {
            HttpClient::new()
                .request(Method::GET, &url, &[("x-sim-delay-ms", "1500")], "")
                .await
        }));
    }
    // Both clients are serving a slow request when the reload lands.
    eventually("4 requests in flight upstream", STEP, async || match gcpool
        .pool()
        .clients()
        .map(|(_, c)| c.in_flight())
        .sum::<u32>()
    {
        4 => Ok(()),
        n => Err(format!("{n} in flight")),
    })
    .await;

    let after = [
        ("pool-02", "sim-client-04", "sim-secret-04"),
        ("pool-03", "sim-client-03", "sim-secret-03"),
    ];
    let summary = gcpool
        .reload(config(&yaml(&sim, &after, 1000, "")))
        .expect("reload applies");
    assert_eq!(summary.generation, 2);
    assert_eq!(summary.added, ["pool-03"]);
    assert_eq!(summary.removed, ["pool-01"]);
    assert_eq!(summary.rotated, ["pool-02"]);

    let mut slow_by_01 = 0;
    for request in slow {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let client = answer.header("x-gcpool-client");
        assert!(
            ["pool-01", "pool-02"].contains(&client),
            "served by {client}"
        );
        slow_by_01 += u64::from(client == "pool-01");
    }

    // pool-02 now holds a token of sim-client-04 and pool-03 one of its own.
    let http = HttpClient::new();
    eventually(
        "pool-02 serves with its new credentials",
        STEP,
        async || {
            let answer = http.get(&url).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
            let client = answer.header("x-gcpool-client");
            assert_ne!(client, "pool-01");
            match sim.stats().client("sim-client-04").accepted {
                0 => Err(format!("served by {client}; sim-client-04 accepted none")),
                _ => Ok(()),
            }
        },
    )
    .await;
    // From now on the old credentials of pool-02 are not used any more.
    let old_02 = sim.stats().client("sim-client-02").accepted;
    let mut served = BTreeSet::new();
    for _ in 0..20 {
        let answer = http.get(&url).await;
        assert_eq!(answer.status, StatusCode::OK);
        served.insert(answer.header("x-gcpool-client").to_owned());
    }
    assert_eq!(
        served,
        BTreeSet::from(["pool-02".to_owned(), "pool-03".to_owned()])
    );
    let stats = sim.stats();
    assert_eq!(
        stats.client("sim-client-01").accepted,
        slow_by_01,
        "the removed client served only its requests in flight"
    );
    assert_eq!(stats.client("sim-client-02").accepted, old_02);
    assert_eq!(stats.rejected_401, 0, "no request carried a dead token");

    let listed: Vec<String> = clients(&gcpool).await.into_iter().map(|c| c.0).collect();
    assert_eq!(listed, ["pool-02", "pool-03"]);
    let status = http.get(&status_url(&gcpool)).await.json();
    assert_eq!(status["config_generation"], 2);
    let metrics = http
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert_eq!(
        metric_value(&metrics, "gcpool_config_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
    assert!(
        !metrics.contains("gcpool_client_healthy{client=\"pool-01\"}"),
        "a removed client's gauges go"
    );
}

/// A client started with a wrong secret fails; a reload with the right one brings it back
/// without a restart. A reload to a wrong secret fails only that client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_fixed_by_reload_brings_the_client_back() {
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let wrong = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "not-the-secret"),
    ];
    let gcpool = start_config(config(&yaml(&sim, &wrong, 1000, ""))).await;
    wait_client_state(&gcpool, 1, "failed").await;

    let right = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    gcpool
        .reload(config(&yaml(&sim, &right, 1000, "")))
        .unwrap();
    wait_client_state(&gcpool, 1, "ready").await;

    // Rotating pool-01 to a wrong secret: it fails, pool-02 serves everything.
    let rotated_wrong = [
        ("pool-01", "sim-client-01", "wrong-again"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    gcpool
        .reload(config(&yaml(&sim, &rotated_wrong, 1000, "")))
        .unwrap();
    wait_client_state(&gcpool, 0, "failed").await;
    let http = HttpClient::new();
    for _ in 0..5 {
        let answer = http.get(&api_url(&gcpool)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-gcpool-client"), "pool-02");
    }
}

/// Admissions made before a reload still count against the new limit: 6 of 10 used, the
/// cap lowered to 8, so 2 more pass and the rest get a local 429 (not 4, not 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_budget_counts_what_was_already_sent() {
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let pool = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    let gcpool = start_config(config(&yaml(&sim, &pool, 10, ""))).await;
    let http = HttpClient::new();
    let url = api_url(&gcpool);
    for _ in 0..6 {
        assert_eq!(http.get(&url).await.status, StatusCode::OK);
    }
    let summary = gcpool.reload(config(&yaml(&sim, &pool, 8, ""))).unwrap();
    assert_eq!(summary.budgets_changed, 1, "only the org budget");
    let (mut ok, mut local) = (0, 0);
    for _ in 0..5 {
        let answer = http.get(&url).await;
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.header("x-gcpool-reason"), "org_budget");
                local += 1;
            }
            other => panic!("{other}: {}", answer.text()),
        }
    }
    assert_eq!((ok, local), (2, 3));
    assert_eq!(sim.stats().accepted, 8);

    // Raised again: the window's 8 count, 4 more pass.
    gcpool.reload(config(&yaml(&sim, &pool, 12, ""))).unwrap();
    let passed = count_ok(&http, &url, 6).await;
    assert_eq!(passed, 4);
}

async fn count_ok(http: &HttpClient, url: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if http.get(url).await.status == StatusCode::OK {
            ok += 1;
        }
    }
    ok
}

/// API keys rotate: the old key is refused at once, the new one works, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let pool = [("pool-01", "sim-client-01", "sim-secret-01")];
    let keys = |key: &str| {
        format!("inbound:\n  api_keys:\n    - name: data-actions\n      key: \"{key}\"\n")
    };
    let gcpool = start_config(config(&yaml(&sim, &pool, 1000, &keys(API_KEY_OLD)))).await;
    let http = HttpClient::new();
    let url = api_url(&gcpool);
    let with_key = |key: &'static str| {
        let http = &http;
        let url = url.clone();
        async move {
            http.request(Method::GET, &url, &[("x-api-key", key)], "")
                .await
                .status
        }
    };
    assert_eq!(with_key(API_KEY_OLD).await, StatusCode::OK);
    assert_eq!(with_key(API_KEY_NEW).await, StatusCode::UNAUTHORIZED);

    gcpool
        .reload(config(&yaml(&sim, &pool, 1000, &keys(API_KEY_NEW))))
        .unwrap();
    assert_eq!(with_key(API_KEY_OLD).await, StatusCode::UNAUTHORIZED);
    assert_eq!(with_key(API_KEY_NEW).await, StatusCode::OK);
}

/// A config changing what only a restart applies is refused as a whole, naming the keys;
/// the running config (clients, budgets) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_needing_a_restart_is_refused_and_the_old_one_stays() {
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let one = [("pool-01", "sim-client-01", "sim-secret-01")];
    let two = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    let gcpool = start_config(config(&yaml(&sim, &one, 1000, ""))).await;

    let moved = yaml(&sim, &two, 1000, "").replace("127.0.0.1:0", "127.0.0.1:18080");
    let windowed = yaml(&sim, &two, 1000, "").replace("window: 10s", "window: 20s");
    for (text, key) in [(moved, "server.listen"), (windowed, "budgets.window")] {
        match gcpool.reload(config(&text)) {
            Err(error @ ReloadError::RestartNeeded(_)) => {
                assert!(error.to_string().contains(key), "{error}");
            }
            other => panic!("expected a refusal naming {key}, got {other:?}"),
        }
    }
    assert_eq!(clients(&gcpool).await.len(), 1, "pool-02 was not added");
    assert_eq!(
        gcpool.reload_file().unwrap_err().to_string(),
        ReloadError::NoFile.to_string()
    );
    let http = HttpClient::new();
    assert_eq!(http.get(&api_url(&gcpool)).await.status, StatusCode::OK);
    let metrics = http
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert_eq!(
        metric_value(&metrics, "gcpool_config_reloads_total{result=\"rejected\"}"),
        Some(3.0)
    );
    let status = http.get(&status_url(&gcpool)).await.json();
    assert_eq!(status["config_generation"], 1);
}

/// With shared budgets in Redis, a client added by a reload gets its budgets in the
/// shared store at once, and the org budget's admissions carry over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_over_shared_budgets() {
    let redis = RedisServer::start();
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let shared = format!(
        "shared_state:\n  redis_url: \"{}\"\n  key_prefix: reload-test\n",
        redis.url()
    );
    let one = [("pool-01", "sim-client-01", "sim-secret-01")];
    let two = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    let gcpool = start_config(config(&yaml(&sim, &one, 10, &shared))).await;
    let http = HttpClient::new();
    eventually("shared state up", STEP, async || {
        let shared = &http.get(&status_url(&gcpool)).await.json()["shared_state"];
        if shared["up"] == true {
            Ok(())
        } else {
            Err(format!("shared_state: {shared}"))
        }
    })
    .await;
    let url = api_url(&gcpool);
    for _ in 0..6 {
        assert_eq!(http.get(&url).await.status, StatusCode::OK);
    }
    gcpool
        .reload(config(&yaml(&sim, &two, 8, &shared)))
        .unwrap();
    wait_ready(gcpool.admin_addr()).await;
    wait_client_state(&gcpool, 1, "ready").await;
    let mut served = BTreeSet::new();
    let mut ok = 0;
    for _ in 0..5 {
        let answer = http.get(&url).await;
        if answer.status == StatusCode::OK {
            ok += 1;
            served.insert(answer.header("x-gcpool-client").to_owned());
        } else {
            assert_eq!(answer.header("x-gcpool-reason"), "org_budget");
        }
    }
    assert_eq!(ok, 2, "6 of 8 were already used in Redis");
    let status = http.get(&status_url(&gcpool)).await.json();
    assert_eq!(status["shared_state"]["up"], true, "Redis stayed in use");
    assert_eq!(status["org_budget"]["used"], 8);
    assert_eq!(status["org_budget"]["limit"], 8);
    assert!(!served.is_empty());
}

/// Requests queued under the old config are admitted again when a reload changes their
/// budgets: a route budget added while 4 requests wait for the org window lets one of
/// them through per window, not all 4 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_meet_a_budget_added_while_they_wait() {
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let pool = [
        ("pool-01", "sim-client-01", "sim-secret-01"),
        ("pool-02", "sim-client-02", "sim-secret-02"),
    ];
    // 4 per 2 s for the org; queue up to 5 s.
    let two_seconds = |extra: &str| {
        yaml(&sim, &pool, 20, extra)
            .replace("window: 10s", "window: 2s")
            .replace("max_wait: 0s", "max_wait: 5s")
    };
    let gcpool = start_config(config(&two_seconds(""))).await;
    let url = api_url(&gcpool);
    let mut callers = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        callers.push(tokio::spawn(
            async move { HttpClient::new().get(&url).await },
        ));
    }
    eventually("4 requests queued", STEP, async || {
        match gcpool.admission().pending() {
            4 => Ok(()),
            n => Err(format!("{n} pending")),
        }
    })
    .await;
    let route =
        "  endpoints:\n    - route: GET /api/v2/users/me\n      per_minute: 30\n      scope: org\n";
    let with_route = two_seconds("").replace("  queue:\n", &format!("{route}  queue:\n"));
    gcpool.reload(config(&with_route)).unwrap();

    let mut answers = Vec::new();
    for caller in callers {
        answers.push(caller.await.unwrap());
    }
    let waited = |a: &support::Answer| a.header("x-gcpool-wait-ms").parse::<u64>().unwrap_or(0);
    let first_window = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK && waited(a) < 100)
        .count();
    let next_window = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK && (100..3000).contains(&waited(a)))
        .count();
    assert_eq!(first_window, 4, "admitted before the reload");
    assert_eq!(
        next_window,
        1,
        "one per window on the new route budget: {:?}",
        answers
            .iter()
            .map(|a| (a.status, waited(a)))
            .collect::<Vec<_>>()
    );
}

/// `GcpoolQueueWaitHigh` compares waits with each gcpool's own `max_wait`: the gauge it reads
/// follows the config, at start and on reload.
#[tokio::test]
async fn the_max_wait_gauge_follows_the_config() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let pool = [("pool-01", "sim-client-01", "sim-secret-01")];
    let gcpool = start_config(config(&yaml(&sim, &pool, 10, ""))).await;
    let metrics_url = format!("http://{}/metrics", gcpool.admin_addr());
    let max_wait = || async {
        let text = HttpClient::new().get(&metrics_url).await.text();
        metric_value(&text, "gcpool_queue_max_wait_seconds")
    };
    assert_eq!(max_wait().await, Some(0.0), "max_wait: 0s at start");
    let longer = yaml(&sim, &pool, 10, "").replace("max_wait: 0s", "max_wait: 7500ms");
    gcpool.reload(config(&longer)).unwrap();
    assert_eq!(max_wait().await, Some(7.5), "the reloaded max_wait");
}
