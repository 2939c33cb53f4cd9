//! Tokens: refreshed before expiry so callers never see a 401; a client with rejected
//! credentials is left out and never printed.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::StatusCode;
use support::{HttpClient, THREE_CLIENTS, config_yaml, start_gcpool};
use tokio::time::Instant;

/// With 2-second tokens and 10 s of steady traffic, every caller gets 200: tokens are
/// replaced before they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_never_surface_as_401() {
    let mut options = SimOptions::with_clients(3);
    options.token_lifetime = Duration::from_secs(2);
    let sim = Simulator::start(options.token_limit(100_000))
        .await
        .unwrap();
    // Budgets far above the traffic: this test is about tokens only.
    let budgets = "budgets:\n  token_per_minute: 100000\n  org_per_minute: 300000\n";
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, budgets).await;
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

/// A token revoked upstream (401) is re-minted and the request retried once, unseen by
/// the caller.
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
    support::wait_ready(process.admin).await;

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
    let back = Instant::now() + Duration::from_secs(15);
    loop {
        if client.get(&url).await.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < back,
            "the client must come back within the refresher's backoff"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
