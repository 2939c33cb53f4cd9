//! A helper's attacks on the response cache (SPEC §11), regression tests now: each failed
//! at eaf0c45 (the messages are in the commit that fixed them). Each test says
//! what it shows; the simulator's `x-sim-*` request headers stand for a request header that
//! changes Genesys' answer but is not in the key (`If-None-Match`, `Range`, …) — they are
//! not in the key either.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::StatusCode;
use support::cache::{cache_yaml, get, spawn_get, start_cached};
use support::{HttpClient, THREE_CLIENTS, config, config_yaml};

/// A conditional request leads the flight and gets 304 Not Modified; a plain GET that
/// coalesced onto it, and holds no copy to revalidate, gets that 304 (empty body) too.
/// Likewise a `Range` leader's 206 would reach followers that asked for the whole answer.
#[tokio::test]
async fn a_follower_without_if_none_match_never_gets_the_leaders_304() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    let leader = spawn_get(
        &client,
        api,
        &[
            ("if-none-match", "\"v1\""),
            // What Genesys answers a matching If-None-Match.
            ("x-sim-status", "304"),
            ("x-sim-delay-ms", "500"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let plain = get(&client, api, &[]).await;
    let leader = leader.await.expect("leader");
    assert_eq!(leader.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        plain.status,
        StatusCode::OK,
        "a caller that sent no condition got {} (x-gcpool-cache: {})",
        plain.status,
        plain.header("x-gcpool-cache")
    );
}

/// The key holds only gzip acceptance, and `storable` keeps out an answer in another
/// encoding for that reason; but the flight hands the leader's answer to its followers
/// unchecked: a follower that accepts only gzip gets `Content-Encoding: br`.
#[tokio::test]
async fn a_follower_that_accepts_only_gzip_never_gets_a_br_answer() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    let leader = spawn_get(
        &client,
        api,
        &[
            ("accept-encoding", "gzip, br"),
            ("x-sim-set-header", "content-encoding: br"),
            ("x-sim-delay-ms", "500"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let follower = get(&client, api, &[("accept-encoding", "gzip")]).await;
    leader.await.expect("leader");
    let coding = follower
        .headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert!(
        coding.is_none() || coding.as_deref() == Some("gzip"),
        "a gzip-only caller got Content-Encoding {coding:?} (x-gcpool-cache: {})",
        follower.header("x-gcpool-cache")
    );
}

/// With `stale_if_limited`, a leader whose upstream fails answers stale and drops its
/// flight; each follower then leads in turn and spends its own attempts before answering
/// stale, so N concurrent callers of a stale key wait about N times one failing call (the
/// last ones until their deadline) and the upstream gets N times the calls.
#[tokio::test]
async fn during_an_outage_followers_of_a_stale_key_get_the_stale_answer_without_queueing() {
    let (sim, _gcpool, api, client) = start_cached(&cache_yaml("1s", "1m", true)).await;
    assert_eq!(get(&client, api, &[]).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let before = sim.stats().accepted;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let answer = get(
                &client,
                api,
                &[("x-sim-status", "503"), ("x-sim-delay-ms", "200")],
            )
            .await;
            (answer, started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (answer, took) = task.await.expect("request");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-gcpool-cache"), "stale");
        slowest = slowest.max(took);
    }
    let calls = sim.stats().accepted - before;
    assert!(
        slowest < Duration::from_secs(3),
        "the slowest stale answer took {slowest:?}; upstream calls: {calls}"
    );
    assert!(
        calls <= 4,
        "one caller's attempts, got {calls} upstream calls"
    );
}

/// A reload that sets a route's `ttl` to `0s` ("coalesce, keep nothing") or shortens it
/// still serves the answers kept under the old ttl as fresh hits until that old ttl ends:
/// an entry carries its own `fresh_for` and the store outlives the reload.
#[tokio::test]
async fn a_reload_that_shortens_the_ttl_applies_to_answers_already_kept() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = |ttl: &str| {
        config_yaml(
            &sim.base_url(),
            "127.0.0.1:0",
            "127.0.0.1:1",
            &THREE_CLIENTS,
            &cache_yaml(ttl, "0s", true),
        )
    };
    let gcpool = support::start_config(config(&yaml("5m"))).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    assert_eq!(
        get(&client, api, &[]).await.header("x-gcpool-cache"),
        "miss"
    );
    assert_eq!(get(&client, api, &[]).await.header("x-gcpool-cache"), "hit");
    gcpool.reload(config(&yaml("0s"))).expect("reload applies");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = get(&client, api, &[]).await;
    assert_ne!(
        after.header("x-gcpool-cache"),
        "hit",
        "ttl is 0s now: nothing is kept, yet the answer kept under ttl 5m is served (Age {})",
        after.header("age")
    );
}

/// After a reload that removes the `cache:` section (or replaces the store with other
/// bounds), `gcpool_cache_entries` and `gcpool_cache_bytes` keep reporting the old store.
#[tokio::test]
async fn the_cache_gauges_follow_a_reload_that_drops_the_cache() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = |extra: &str| {
        config_yaml(
            &sim.base_url(),
            "127.0.0.1:0",
            "127.0.0.1:1",
            &THREE_CLIENTS,
            extra,
        )
    };
    let gcpool = support::start_config(config(&yaml(&cache_yaml("5m", "0s", true)))).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    assert_eq!(
        get(&client, api, &[]).await.header("x-gcpool-cache"),
        "miss"
    );
    gcpool.reload(config(&yaml(""))).expect("reload applies");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&client, api, &[]).await.status, StatusCode::OK);
    let metrics = support::metrics(&gcpool).await;
    assert_eq!(
        support::metric_value(&metrics, "gcpool_cache_entries"),
        Some(0.0),
        "no cache is configured any more"
    );
}
