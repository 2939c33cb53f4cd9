//! Tokens: refreshed before expiry so callers never see a 401; tokens that die early are
//! re-minted at most once per interval however many 401s arrive; a client with rejected
//! credentials, or whose fresh tokens are refused, is left out and never printed.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::StatusCode;
use support::{HttpClient, THREE_CLIENTS, config_yaml, eventually, metric_value, start_gcpool};
use tokio::time::Instant;

/// Budgets far above the traffic: these tests are about tokens only.
const LARGE_BUDGETS: &str = "budgets:\n  token_per_minute: 100000\n  org_per_minute: 300000\n";

/// With 2-second tokens and 10 s of steady traffic, every caller gets 200: tokens are
/// replaced before they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_never_surface_as_401() {
    let mut options = SimOptions::with_clients(3);
    options.token_lifetime = Duration::from_secs(2);
    let sim = Simulator::start(options.token_limit(100_000))
        .await
        .unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, LARGE_BUDGETS).await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());

    let end = Instant::now() + Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let client = HttpClient::new();
            let mut statuses = Vec::new();
            while Instant::now() < end {
                statuses.push(client.get(&url).await.status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }));
    }
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        total += statuses.len();
        let bad: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
        assert!(bad.is_empty(), "callers must only see 200, saw {bad:?}");
    }
    let stats = sim.stats();
    assert!(total > 400, "steady traffic for 10 s ({total} requests)");
    assert_eq!(
        stats.rejected_401, 0,
        "no expired token was ever sent upstream"
    );
    // 3 initial grants + ≥ 4 refreshes each over 10 s of 2 s tokens.
    assert!(
        stats.token_grants >= 3 * 5,
        "tokens were really refreshed: {} grants",
        stats.token_grants
    );
}

/// A token revoked upstream (401) is re-minted and the request retried, unseen by the
/// caller: one 401 upstream, one grant.
#[tokio::test]
async fn upstream_401_refreshes_the_token_and_retries_once() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], "").await;
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    assert_eq!(client.get(&url).await.status, StatusCode::OK);
    let grants_before = sim.stats().token_grants;

    sim.revoke_tokens();
    let answer = client.get(&url).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the caller never sees the 401: {}",
        answer.text()
    );
    let stats = sim.stats();
    assert_eq!(stats.rejected_401, 1, "one 401 upstream, then the retry");
    assert_eq!(
        stats.token_grants,
        grants_before + 1,
        "exactly one new grant"
    );
}

/// One of three clients has a wrong secret: gcpool gets ready, serves through the other
/// two, shows the bad one failed, and prints neither secrets nor tokens anywhere.
#[tokio::test]
async fn wrong_secret_client_is_left_out_and_nothing_secret_is_printed() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let wrong_secret = "wrong-secret-Zq8x7-do-not-print";
    let clients = [
        THREE_CLIENTS[0],
        ("pool-02", "sim-client-02", wrong_secret),
        THREE_CLIENTS[2],
    ];
    let yaml = config_yaml(&sim.base_url(), "{API}", "{ADMIN}", &clients, "");
    let mut process = support::GcpoolProcess::spawn(&yaml, &[("RUST_LOG", "debug")]);
    process.wait_ready().await;

    let client = HttpClient::new();
    let mut tokens_seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let answer = client
            .get(&format!("http://{}/api/v2/users?pageSize=1", process.api))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_ne!(
            answer.header("x-gcpool-client"),
            "pool-02",
            "the failed client is never used"
        );
        for header in answer.json()["headers"].as_array().unwrap() {
            if header[0]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case("authorization")
            {
                let token = header[1]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("Bearer ")
                    .to_owned();
                tokens_seen.insert(token);
            }
        }
    }
    assert_eq!(tokens_seen.len(), 2, "two healthy clients, two tokens");

    let status = client
        .get(&format!("http://{}/status", process.admin))
        .await;
    let status_json = status.json();
    let bad = status_json["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pool-02")
        .unwrap();
    assert_eq!(bad["state"], "failed", "{status_json}");
    assert_eq!(bad["healthy"], false);
    let metrics = client
        .get(&format!("http://{}/metrics", process.admin))
        .await
        .text();
    assert!(
        metrics.contains(r#"gcpool_client_healthy{client="pool-02"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gcpool_token_refresh_total{client="pool-02",result="error"}"#),
        "{metrics}"
    );

    process.terminate();
    process.wait_exit(Duration::from_secs(15)).await;
    let logs = process.stderr();
    assert!(
        logs.contains("pool-02"),
        "the failure is logged by client name:\n{logs}"
    );
    let mut secrets: Vec<String> = vec![
        wrong_secret.into(),
        "sim-secret-01".into(),
        "sim-secret-03".into(),
    ];
    secrets.extend(tokens_seen);
    for secret in &secrets {
        for (place, text) in [
            ("logs", &logs),
            ("/status", &status.text()),
            ("/metrics", &metrics),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret or token appears in {place}"
            );
        }
    }
}

/// A token refused upstream whose re-mint fails (credentials briefly rejected) does not leave
/// the client out for the rest of the token's lifetime: the refresher takes over at once
/// and the client is back as soon as the login host accepts it again.
#[tokio::test]
async fn client_comes_back_after_a_failed_refresh_on_the_request_path() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], "").await;
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    assert_eq!(client.get(&url).await.status, StatusCode::OK);

    sim.revoke_tokens();
    sim.set_credentials_rejected("sim-client-01", true);
    let answer = client.get(&url).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no usable token: {}",
        answer.text()
    );

    sim.set_credentials_rejected("sim-client-01", false);
    eventually(
        "the client must come back within the refresher's backoff",
        Duration::from_secs(15),
        async || {
            let answer = client.get(&url).await;
            match answer.status {
                StatusCode::OK => Ok(()),
                status => Err(format!("{status} {}", answer.text())),
            }
        },
    )
    .await;
}

/// `state` of client `name` in `/status`.
async fn client_state(client: &HttpClient, admin: SocketAddr, name: &str) -> String {
    let status = client.get(&format!("http://{admin}/status")).await.json();
    status["clients"]
        .as_array()
        .expect("/status lists clients")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["state"].as_str())
        .unwrap_or_else(|| panic!("{name} missing from /status: {status}"))
        .to_owned()
}

/// The value of `series` on gcpool's `/metrics`; fails the test when it is not exported.
async fn metric(client: &HttpClient, admin: SocketAddr, series: &str) -> f64 {
    let text = client.get(&format!("http://{admin}/metrics")).await.text();
    metric_value(&text, series)
        .unwrap_or_else(|| panic!("{series} must be exported; /metrics:\n{text}"))
}

/// As [`metric`], 0 when not exported: for a labelled counter, which appears at its first
/// increment.
async fn count_or_zero(client: &HttpClient, admin: SocketAddr, series: &str) -> f64 {
    let text = client.get(&format!("http://{admin}/metrics")).await.text();
    metric_value(&text, series).unwrap_or(0.0)
}

/// Issue 10 item 6: every issued token dies at once (an admin revokes them, or the HIPAA
/// idle expiry) while 10 GETs/s flow through three clients of 5-second tokens. The request
/// that comes next meets a dead token on every client in turn; none of those 401s may cost
/// it an attempt or reach it. Two revocations, every answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_revoked_at_once_never_surfaces_as_401() {
    let options = SimOptions::with_clients(3)
        .token_lifetime(Duration::from_secs(5))
        .token_limit(100_000);
    let sim = Simulator::start(options).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, LARGE_BUDGETS).await;
    let url = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());
    let client = HttpClient::new();

    // One request at a time, so the first after a revocation is the one that meets the
    // dead tokens (a concurrent one could re-mint a client before it gets there).
    let revocations = [Duration::from_secs(3), Duration::from_secs(6)];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut revoked = 0;
    let mut answers = Vec::new();
    while start.elapsed() < Duration::from_secs(8) {
        tick.tick().await;
        if revocations
            .get(revoked)
            .is_some_and(|at| start.elapsed() >= *at)
        {
            sim.revoke_tokens();
            revoked += 1;
        }
        let answer = client.get(&url).await;
        answers.push((start.elapsed(), answer.status, answer.text()));
    }
    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status != StatusCode::OK)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} answers were not 200: {bad:?}",
        bad.len(),
        answers.len()
    );
    assert!(answers.len() >= 60, "10 GETs/s ({} sent)", answers.len());
    let stats = sim.stats();
    assert!(
        stats.rejected_401 >= 2,
        "each revocation was met upstream ({} 401s)",
        stats.rejected_401
    );
    // Each dead token counts once, however many requests it was refused for. A client
    // and age never refused has no series yet: it adds nothing.
    let admin = gcpool.admin_addr();
    let mut refused = 0.0;
    for name in ["pool-01", "pool-02", "pool-03"] {
        for age in ["stale", "fresh"] {
            let series = format!(r#"gcpool_token_refused_total{{age="{age}",client="{name}"}}"#);
            refused += count_or_zero(&client, admin, &series).await;
        }
    }
    assert!(
        (1.0..=6.0).contains(&refused),
        "at most the 3 live tokens per revocation were refused: {refused}"
    );
}

/// Issue 10 item 7: a 401 storm. For 5 s every token of pool-02 is refused upstream,
/// fresh ones included, while 12 callers keep the pool busy. pool-02 is re-minted at most
/// once per `genesys.token_remint_interval` (default 1 s), sits out after each fresh
/// refusal, is shown failed after repeated ones, comes back when the storm ends, and
/// callers never see a 401 (pool-01 and pool-03 serve). Every grant is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_storm_remints_a_client_at_most_once_per_interval() {
    let sim = Simulator::start(SimOptions::with_clients(3).token_limit(100_000))
        .await
        .unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, LARGE_BUDGETS).await;
    let api = format!("http://{}/api/v2/users?pageSize=1", gcpool.api_addr());
    let admin = gcpool.admin_addr();
    let client = HttpClient::new();
    assert_eq!(client.get(&api).await.status, StatusCode::OK);
    // Tokens older than the interval: the storm's first 401 on pool-02 is a stale token.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let before = sim.stats().client("sim-client-02");

    let storm = Duration::from_secs(5);
    sim.set_tokens_refused("sim-client-02", true);
    let end = Instant::now() + storm;
    let mut workers = Vec::new();
    for _ in 0..12 {
        let api = api.clone();
        workers.push(tokio::spawn(async move {
            let client = HttpClient::new();
            let mut statuses = Vec::new();
            while Instant::now() < end {
                let answer = client.get(&api).await;
                statuses.push((answer.status, answer.text()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        }));
    }
    let (mut seen_failed, mut seen_unhealthy) = (false, false);
    while Instant::now() < end {
        if client_state(&client, admin, "pool-02").await == "failed" {
            seen_failed = true;
            let healthy = r#"gcpool_client_healthy{client="pool-02"}"#;
            seen_unhealthy |= metric(&client, admin, healthy).await == 0.0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    let during = sim.stats().client("sim-client-02");
    sim.set_tokens_refused("sim-client-02", false);

    let grants = during.token_grants - before.token_grants;
    let refused = during.rejected_401 - before.rejected_401;
    eprintln!(
        "storm of {storm:?}: {} caller answers, {refused} upstream 401s on pool-02, {grants} grants of pool-02",
        answers.len()
    );
    let bad: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
        .collect();
    assert!(
        bad.is_empty(),
        "callers never see the storm: {} of {} answers were not 200: {:?}",
        bad.len(),
        answers.len(),
        bad.first()
    );
    assert!(
        refused >= 3,
        "the storm was real: {refused} 401s on pool-02"
    );
    // One grant at the storm's first (stale) 401, then at most one per interval; +1 for
    // a grant racing the end of the storm.
    let bound = storm.as_secs() + 1 + 1;
    assert!(
        grants <= bound,
        "pool-02 was granted {grants} tokens in {storm:?} ({refused} upstream 401s); at most {bound}"
    );
    assert!(
        seen_failed,
        "pool-02 is shown failed after its fresh tokens were refused again and again"
    );
    assert!(
        seen_unhealthy,
        "gcpool_client_healthy is 0 while it is failed"
    );

    // The storm is over: pool-02 comes back within its backoff, and serves.
    eventually(
        "pool-02 must come back (ready) after the storm",
        Duration::from_secs(15),
        async || match client_state(&client, admin, "pool-02").await.as_str() {
            "ready" => Ok(()),
            state => Err(format!("pool-02 is {state}")),
        },
    )
    .await;
    let mut served = false;
    for _ in 0..30 {
        let answer = client.get(&api).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        if answer.header("x-gcpool-client") == "pool-02" {
            served = true;
            break;
        }
    }
    assert!(served, "pool-02 serves again");
    assert_eq!(client_state(&client, admin, "pool-02").await, "ready");

    // Every grant of pool-02, at start, in the storm and after, was counted exactly once.
    let ok = metric(
        &client,
        admin,
        r#"gcpool_token_refresh_total{client="pool-02",result="ok"}"#,
    )
    .await;
    assert_eq!(
        ok,
        sim.stats().client("sim-client-02").token_grants as f64,
        "gcpool_token_refresh_total counts each grant once"
    );
    let fresh = metric(
        &client,
        admin,
        r#"gcpool_token_refused_total{age="fresh",client="pool-02"}"#,
    )
    .await;
    assert!(fresh >= 3.0, "fresh refusals counted: {fresh}");
}

/// Issue 10 item 7: a token younger than the re-mint interval that gets 401 is a real
/// rejection, not a reason to mint again at once. The client sits out the rest of the
/// interval (`cooling_down` in `/status`) with no grant, then re-mints; the caller waiting
/// for it is served by the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_refused_sits_out_the_interval_without_a_grant() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], "").await;
    let admin = gcpool.admin_addr();
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    assert_eq!(client.get(&url).await.status, StatusCode::OK);

    // A token older than the interval, revoked: re-minted at once.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    sim.revoke_tokens();
    assert_eq!(client.get(&url).await.status, StatusCode::OK);
    // The new token was minted before this instant.
    let minted_by = Instant::now();
    let grants = sim.stats().token_grants;

    // Revoked again at once: the token just minted is younger than the interval.
    sim.revoke_tokens();
    let sent = Instant::now();
    let waiting = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.get(&url).await })
    };
    eventually(
        "the fresh token must be refused upstream",
        Duration::from_secs(2),
        async || match sim.stats().rejected_401 {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} upstream 401s, want 2")),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let grants_now = sim.stats().token_grants;
    let state = client_state(&client, admin, "pool-01").await;
    // Checked only while the interval surely lasts (a stalled test machine could pass it).
    if minted_by.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            grants_now, grants,
            "no grant within the interval after a fresh token's 401"
        );
        assert_eq!(state, "cooling_down", "the client sits out");
    } else {
        eprintln!("too slow to check the sit-out ({:?})", minted_by.elapsed());
    }

    let answer = waiting.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the caller waits for the re-mint: {}",
        answer.text()
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "served after about one interval, not at its deadline ({:?})",
        sent.elapsed()
    );
    let waited: u64 = answer.header("x-gcpool-wait-ms").parse().unwrap();
    assert!(
        waited >= 200,
        "the wait for the token is reported: {waited} ms"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.token_grants,
        grants + 1,
        "one grant once the interval ended"
    );
    assert_eq!(stats.rejected_401, 2);
    for (age, count) in [("stale", 1.0), ("fresh", 1.0)] {
        let series = format!(r#"gcpool_token_refused_total{{age="{age}",client="pool-01"}}"#);
        assert_eq!(metric(&client, admin, &series).await, count, "{series}");
    }
}

/// When every token of the only client is refused, fresh ones included, the caller is
/// answered once the client is failed (503 `no_healthy_client`, after about two re-mint
/// intervals), not one grant per 401 and not at its deadline: the 401 on the token it
/// started with cost nothing, the three fresh ones each cost an attempt and a sit-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_every_token_is_refused_fails_without_a_grant_per_401() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS[..1], "").await;
    let admin = gcpool.admin_addr();
    let client = HttpClient::new();
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    assert_eq!(client.get(&url).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let grants = sim.stats().token_grants;

    sim.set_tokens_refused("sim-client-01", true);
    let sent = Instant::now();
    let answer = client.get(&url).await;
    let took = sent.elapsed();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("x-gcpool-reason"), "no_healthy_client");
    assert!(
        took < Duration::from_secs(5),
        "answered once the client failed, long before the 30 s deadline ({took:?})"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.rejected_401, 4,
        "the token it started with, then three fresh ones"
    );
    assert_eq!(
        stats.token_grants,
        grants + 3,
        "one re-mint for the stale token, then one per interval"
    );
    assert_eq!(client_state(&client, admin, "pool-01").await, "failed");
}

/// `genesys.token_remint_interval` is read at start and applied to every client by a
/// reload (the other `genesys` keys need a restart).
#[tokio::test]
async fn the_remint_interval_is_configured_and_reloadable() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let with_interval = |interval: &str| {
        support::config_yaml(
            &sim.base_url(),
            "127.0.0.1:0",
            "127.0.0.1:1",
            &THREE_CLIENTS[..1],
            "",
        )
        .replace(
            "genesys:\n",
            &format!("genesys:\n  token_remint_interval: {interval}\n"),
        )
    };
    let gcpool = support::start_config(support::config(&with_interval("2s"))).await;
    let interval = |gcpool: &gcpool::app::Gcpool| {
        let pool = gcpool.pool();
        let (_, client) = pool.clients().next().expect("one client");
        client.tokens.remint_interval()
    };
    assert_eq!(interval(&gcpool), Duration::from_secs(2));
    gcpool
        .reload(support::config(&with_interval("250ms")))
        .expect("the interval reloads");
    assert_eq!(interval(&gcpool), Duration::from_millis(250));
}
