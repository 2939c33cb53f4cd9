//! A second helper's attacks on the response cache (SPEC §11, issue 14), as regression
//! tests: each failed at 5c3b96a (the failure messages are in the commit that adds them).
//! The simulator's `x-sim-*` request headers are not in the cache key, so a leader can
//! shape the upstream answer that its followers and later hits get.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::cache::{QUEUE, cache_yaml, get, start_cached};
use support::{Answer, HttpClient, THREE_CLIENTS, config, config_yaml};

fn values(answer: &Answer, name: &str) -> Vec<String> {
    answer
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect()
}

/// The leader's answer, which upstream (a CDN, another cache) marked `Age: 100`, reaches
/// the leader's caller with that Age; the same answer handed to a follower lost it: the
/// entry's `age: 0` placeholder (5e3bd74) overwrote upstream's value, and a coalesced
/// answer removes the placeholder. The 100 answers of a burst are no longer identical.
#[tokio::test]
async fn a_coalesced_answer_keeps_the_age_upstream_sent() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    let leader = {
        let client = client.clone();
        tokio::spawn(async move {
            get(
                &client,
                api,
                &[("x-sim-set-header", "age: 100"), ("x-sim-delay-ms", "400")],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let follower = get(&client, api, &[]).await;
    let leader = leader.await.expect("leader");
    assert_eq!(leader.header("x-gcpool-cache"), "miss");
    assert_eq!(follower.header("x-gcpool-cache"), "coalesced");
    assert_eq!(
        values(&follower, "age"),
        values(&leader, "age"),
        "the leader's caller got Age {:?}, its follower the same answer with Age {:?}",
        values(&leader, "age"),
        values(&follower, "age"),
    );
}

/// RFC 9111 §4.2.3: a cache's `Age` is the age the answer had when it arrived plus its
/// time in the cache. An answer upstream said was 100 s old is served from the store as
/// `Age: 0` (and as stale with `Age: 0`): the cache makes old data look fresh.
#[tokio::test]
async fn a_hit_adds_its_time_in_the_cache_to_the_age_upstream_sent() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    let miss = get(&client, api, &[("x-sim-set-header", "age: 100")]).await;
    assert_eq!(miss.header("age"), "100");
    let hit = get(&client, api, &[]).await;
    assert_eq!(hit.header("x-gcpool-cache"), "hit");
    let age: u64 = hit.header("age").parse().expect("Age in seconds");
    assert!(
        age >= 100,
        "upstream answered Age: 100, the hit says Age: {age}"
    );
}

/// `storable` reads only the first `Content-Encoding` line: an answer with
/// `content-encoding: identity` and `content-encoding: br` (a br body) is kept, and a
/// caller that sent no Accept-Encoding gets br from the store.
#[tokio::test]
async fn an_answer_whose_second_content_encoding_line_says_br_is_not_kept() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    get(
        &client,
        api,
        &[
            ("x-sim-set-header", "content-encoding: identity"),
            ("x-sim-set-header", "content-encoding: br"),
        ],
    )
    .await;
    let plain = get(&client, api, &[]).await;
    let codings = values(&plain, "content-encoding");
    assert!(
        codings.iter().all(|c| c.eq_ignore_ascii_case("identity")),
        "a caller that accepts no encoding got Content-Encoding {codings:?} (x-gcpool-cache: {})",
        plain.header("x-gcpool-cache")
    );
}

/// Without `stale_if_limited`, a leader whose upstream answers 503 dropped its flight; each
/// follower then led in turn and spent a whole failing call (with its retries) before the
/// next started: 6 concurrent callers waited 1, 2, … 6 times one call, and the later ones of
/// a larger burst got a 429 at their deadline instead of the 503. Now one follower takes
/// over once, and when it fails too the rest call upstream on their own, all at once: 12
/// callers wait about three calls' time, not twelve.
#[tokio::test]
async fn during_an_outage_without_stale_followers_do_not_queue_behind_each_failing_leader() {
    const CALLERS: usize = 12;
    let (sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    let failing = [("x-sim-status", "503"), ("x-sim-delay-ms", "200")];
    // One failing call alone (another key), retries included: the unit of time.
    let alone = tokio::time::Instant::now();
    let answer = client
        .request(
            http::Method::GET,
            &format!("http://{api}/api/v2/routing/queues/alone"),
            &failing,
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let one_call = alone.elapsed();
    let calls_alone = sim.stats().accepted;

    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let answer = get(&client, api, &failing).await;
            (answer.status, started.elapsed())
        }));
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (status, took) = task.await.expect("request");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        slowest = slowest.max(took);
    }
    assert!(
        slowest < one_call * 5,
        "the slowest of {CALLERS} coalesced callers took {slowest:?}, one failing call alone \
         {one_call:?}; upstream calls: {}",
        sim.stats().accepted - calls_alone
    );
}

/// The store's weigher clips an entry's weight to `u32::MAX`, while the weight that keeps
/// `max_entries` is `max_bytes / max_entries`: above 4 GiB per entry the floor is lost and
/// the store holds more entries than `max_entries`.
#[tokio::test]
async fn entries_stay_within_max_entries_when_max_bytes_per_entry_exceeds_4_gib() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let cache = "cache:\n  max_entries: 1\n  max_bytes: 8589934592\n  routes:\n    \
                 - route: \"GET /api/v2/routing/queues/{queueId}\"\n      ttl: 30s\n      \
                 ignore_upstream_cache_headers: true\n";
    let yaml = config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &THREE_CLIENTS,
        cache,
    );
    let gcpool = support::start_config(config(&yaml)).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    for i in 0..4 {
        let answer = client
            .get(&format!("http://{api}/api/v2/routing/queues/q{i}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let metrics = support::metrics(&gcpool).await;
    let entries = support::metric_value(&metrics, "gcpool_cache_entries").expect("gauge");
    assert!(
        entries <= 1.0,
        "cache.max_entries is 1, the store holds {entries} entries"
    );
}

/// `x-gcpool-cache` is gcpool's header, yet it is not among the upstream headers gcpool
/// strips (`x-gcpool-client`, `-wait-ms`, `-reason` are): a request of a cached route that
/// the cache does not serve (a conditional one) passes upstream's `x-gcpool-cache: hit`
/// on, for an answer that came from upstream through a pool client.
#[tokio::test]
async fn an_upstream_cannot_forge_x_gcpool_cache() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    let answer = client
        .request(
            Method::GET,
            &format!("http://{api}{QUEUE}"),
            &[
                ("if-none-match", "\"v1\""),
                ("x-sim-set-header", "x-gcpool-cache: hit"),
            ],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        !answer.headers.contains_key("x-gcpool-cache"),
        "an answer from upstream (x-gcpool-client: {:?}) says x-gcpool-cache: {:?}",
        values(&answer, "x-gcpool-client"),
        values(&answer, "x-gcpool-cache"),
    );
}

/// A reload that stops ignoring the upstream's cache headers stops serving the answers
/// kept only because they were ignored (the simulator, like Genesys, says `no-store`).
/// Before, the answer kept under `ignore_upstream_cache_headers: true` went on as a hit.
#[tokio::test]
async fn a_reload_that_heeds_upstream_cache_headers_again_stops_serving_what_they_forbade() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = |ignore: bool| {
        config_yaml(
            &sim.base_url(),
            "127.0.0.1:0",
            "127.0.0.1:1",
            &THREE_CLIENTS,
            &cache_yaml("5m", "0s", ignore),
        )
    };
    let gcpool = support::start_config(config(&yaml(true))).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    assert_eq!(
        get(&client, api, &[]).await.header("x-gcpool-cache"),
        "miss"
    );
    assert_eq!(get(&client, api, &[]).await.header("x-gcpool-cache"), "hit");
    gcpool.reload(config(&yaml(false))).expect("reload applies");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = get(&client, api, &[]).await;
    assert_eq!(
        after.header("x-gcpool-cache"),
        "miss",
        "the upstream said no-store and the route heeds it now"
    );
}

/// A leader whose answer's body stalls is an upstream failure like a 5xx: where the route
/// allows stale answers, the last good one stands in. Before, the caller got a 504.
#[tokio::test]
async fn a_stalled_body_on_a_route_with_stale_answers_gets_the_stale_answer() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS,
        &cache_yaml("1s", "5m", true),
    )
    .replace(
        "  shutdown_grace: 10s\n",
        "  shutdown_grace: 10s\n  request_timeout: 1500ms\n",
    );
    let gcpool = support::start_config(config(&yaml)).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    let fresh = get(&client, api, &[]).await;
    assert_eq!(fresh.header("x-gcpool-cache"), "miss");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stalled = get(&client, api, &[("x-sim-stall-body-after", "5")]).await;
    assert_eq!(
        (stalled.status, stalled.header("x-gcpool-cache")),
        (StatusCode::OK, "stale"),
        "{}",
        stalled.text()
    );
    assert_eq!(stalled.body, fresh.body, "the last good answer");
}
