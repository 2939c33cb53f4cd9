//! Attacks on the callers of issue 15 (SPEC §12): per-caller `max_wait` and
//! `x-gcpool-max-wait`, sub-pools, quotas, labels, correlation ids. Each test here failed on
//! the code it was written against (see the commit message).

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::{HttpClient, THREE_CLIENTS, config, config_yaml, eventually, start_config};

const STEP: Duration = Duration::from_millis(20);

/// One-per-10-s budgets per client, a 15 s queue, the queues route cached, and `callers`
/// (YAML lines under `api_keys:`, indented by four spaces).
fn yaml(sim: &Simulator, clients: usize, callers: &str) -> String {
    config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS[..clients],
        "budgets:\n  token_per_minute: 6\n  org_per_minute: 100000\n  window: 10s\n  \
         queue:\n    max_wait: 15s\n\
         cache:\n  routes:\n    - {route: 'GET /api/v2/routing/queues/{queueId}', ttl: 5m, \
         ignore_upstream_cache_headers: true}\n",
    )
    .replace(
        "inbound:\n  allow_anonymous: true\n",
        &format!("inbound:\n  api_keys:\n{callers}"),
    )
}

/// Waits until exactly one request waits for a slot (`what` names it in a failure).
async fn one_queued(gcpool: &gcpool::app::Gcpool, what: &str) {
    let admission = gcpool.admission();
    eventually(what, STEP, async || match admission.pending() {
        1 => Ok(()),
        n => Err(format!("{n} pending")),
    })
    .await;
}

/// A caller's `max_wait` (and a request's `x-gcpool-max-wait`) caps its wait for a slot. A
/// request that joins a cached route's flight whose leader is queued for a slot waits for
/// that slot too: it must not wait past its own cap (a Data Action with a 2 s timeout that
/// waits 10 s has failed its flow). Found: the follower waits for the leader until the
/// request deadline (`server.request_timeout`), ~10 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_follower_keeps_its_callers_max_wait() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let callers = "    - {name: ivr-flows, key: ivr-key, max_wait: 1s}\n    \
                   - {name: batch, key: batch-key}\n";
    let gcpool = start_config(config(&yaml(&sim, 1, callers))).await;
    let base = format!("http://{}", gcpool.api_addr());
    let client = HttpClient::new();

    // The window's one slot is spent; the next is ~10 s away.
    let first = client
        .request(
            Method::GET,
            &format!("{base}/api/v2/users/me"),
            &[("x-api-key", "batch-key")],
            "",
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());

    // The batch caller leads the flight of queues/q-1 and queues for that slot.
    let queue = format!("{base}/api/v2/routing/queues/q-1");
    let leader = {
        let (client, queue) = (client.clone(), queue.clone());
        tokio::spawn(async move {
            client
                .request(Method::GET, &queue, &[("x-api-key", "batch-key")], "")
                .await
        })
    };
    one_queued(&gcpool, "the leader queued").await;

    // Two followers: the ivr caller (its own max_wait 1 s) and the batch caller capping this
    // one request with the header.
    let follow = |headers: Vec<(&'static str, &'static str)>| {
        let (client, queue) = (client.clone(), queue.clone());
        tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            let answer = client.request(Method::GET, &queue, &headers, "").await;
            (answer, asked.elapsed())
        })
    };
    let ivr = follow(vec![("x-api-key", "ivr-key")]);
    let capped = follow(vec![
        ("x-api-key", "batch-key"),
        ("x-gcpool-max-wait", "1s"),
    ]);
    let mut took = Vec::new();
    for (who, follower) in [
        ("ivr-flows (max_wait 1s)", ivr),
        ("x-gcpool-max-wait: 1s", capped),
    ] {
        let (answer, elapsed) = follower.await.unwrap();
        took.push((
            who,
            answer.status,
            answer.header("x-gcpool-cache").to_owned(),
            elapsed,
        ));
    }
    let leader = leader.await.unwrap();
    assert_eq!(leader.status, StatusCode::OK, "{}", leader.text());
    assert!(
        took.iter()
            .all(|(_, _, _, elapsed)| *elapsed <= Duration::from_millis(2500)),
        "a follower waited past its 1 s cap: {took:?}"
    );
}

/// A reload that moves a caller to another sub-pool while one of its requests waits for a
/// slot: the request must not then be sent with a client the caller no longer may use (a
/// reload that changes a waiting request's budgets already makes it start over). Found: it
/// waits out its old client's slot and is sent with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_a_caller_sends_no_waiting_request_with_its_old_client() {
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let on = |client: &str| {
        yaml(
            &sim,
            2,
            &format!("    - {{name: ivr-flows, key: ivr-key, clients: [{client}]}}\n"),
        )
    };
    let gcpool = start_config(config(&on("pool-01"))).await;
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    let client = HttpClient::new();
    let ivr = [("x-api-key", "ivr-key")];

    let first = client.request(Method::GET, &url, &ivr, "").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.header("x-gcpool-client"), "pool-01");
    // pool-01's next slot is ~10 s away: the next request waits for it.
    let waiting = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.request(Method::GET, &url, &ivr, "").await })
    };
    one_queued(&gcpool, "the request queued").await;
    gcpool.reload(config(&on("pool-02"))).unwrap();

    let answer = waiting.await.unwrap();
    let stats = sim.stats();
    assert_eq!(
        (answer.status, answer.header("x-gcpool-client")),
        (StatusCode::OK, "pool-02"),
        "ivr-flows is confined to pool-02 now; sim per client: 01 {} / 02 {}",
        stats.client("sim-client-01").accepted,
        stats.client("sim-client-02").accepted
    );
}

/// A reload that renames a caller (same key, same sub-pool and quota) while one of its
/// requests waits on its quota: the waiting request starts over (its quota budget changed
/// name). Found: it started over under the old name, which the new config has no rules
/// for, so it was admitted at once on a client outside the sub-pool and outside any quota.
/// Now a caller that a reload removed or renamed is admitted nowhere: its waiting request
/// gets a 503 (Retry-After), and is never sent with a client outside the sub-pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_starts_over_after_a_rename_keeps_its_callers_sub_pool() {
    let sim = Simulator::start(SimOptions::with_clients(2)).await.unwrap();
    let named = |name: &str| {
        yaml(
            &sim,
            2,
            &format!("    - {{name: {name}, key: ivr-key, clients: [pool-02], per_minute: 6}}\n"),
        )
        .replace("token_per_minute: 6\n", "token_per_minute: 6000\n")
    };
    let gcpool = start_config(config(&named("ivr"))).await;
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    let client = HttpClient::new();
    let ivr = [("x-api-key", "ivr-key")];

    let first = client.request(Method::GET, &url, &ivr, "").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.header("x-gcpool-client"), "pool-02");
    // Its quota's next slot is ~10 s away: the next request waits for it.
    let waiting = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.request(Method::GET, &url, &ivr, "").await })
    };
    one_queued(&gcpool, "the request queued").await;
    gcpool.reload(config(&named("ivr-flows"))).unwrap();

    let answer = waiting.await.unwrap();
    assert_eq!(
        sim.stats().client("sim-client-01").accepted,
        0,
        "the renamed caller's request reached pool-01, outside its sub-pool ({} {})",
        answer.status,
        answer.text()
    );
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("x-gcpool-reason"), "no_healthy_client");
    // Its next request is the renamed caller's (a quota of a new name: a new window),
    // confined as before.
    let next = client.request(Method::GET, &url, &ivr, "").await;
    assert_eq!(
        (next.status, next.header("x-gcpool-client")),
        (StatusCode::OK, "pool-02")
    );
    assert_eq!(sim.stats().client("sim-client-01").accepted, 0);
}

/// `gcpool check` prints each caller in effect as YAML comments after the config, so that
/// stdout stays the config. A caller name is any non-empty string, line breaks included:
/// such a name must be refused by validation or printed so it stays inside its comment.
/// Found: `check` exits 0 and the name's second line is printed as live YAML after the
/// config (here a second `inbound:` that turns anonymous access off).
#[test]
fn check_keeps_a_caller_name_inside_its_comment() {
    let dir = std::env::temp_dir().join(format!("gcpool-callers-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("callers.yaml");
    std::fs::write(
        &path,
        "genesys:\n  api_base: http://127.0.0.1:9000\n  login_base: http://127.0.0.1:9000\n\
         clients:\n  - {name: pool-01, client_id: a, client_secret: b}\n\
         inbound:\n  allow_anonymous: true\n  api_keys:\n    \
         - {name: \"evil\\ninbound:\\n  allow_anonymous: false\\n#\", key: k1}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gcpool"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("the gcpool binary must run");
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.code() != Some(0) {
        return; // refused: fine
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (_, explained) = stdout
        .split_once("# callers, in effect:\n")
        .unwrap_or_else(|| panic!("no callers explained:\n{stdout}"));
    let live: Vec<&str> = explained
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        live.is_empty(),
        "check printed a caller name as live YAML after the config: {live:?}"
    );
}
