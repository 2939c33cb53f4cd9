//! The response cache (SPEC §11) from outside: the real server type in front of the
//! simulator, real sockets on 127.0.0.1. The simulator counts the calls that reach it and,
//! like Genesys, marks its answers `Cache-Control: no-cache, no-store, must-revalidate`.

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::cache::{QUEUE, cache_result, cache_yaml, get, spawn_get, start_cached};
use support::{Answer, HttpClient, THREE_CLIENTS, start_gcpool};

#[tokio::test]
async fn a_hundred_concurrent_identical_gets_make_one_upstream_call_and_then_hit() {
    let (sim, gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;

    let answers = futures_join_all((0..100).map(|_| {
        let client = client.clone();
        // The upstream takes 300 ms: every request arrives while the first is in flight.
        async move { get(&client, api, &[("x-sim-delay-ms", "300")]).await }
    }))
    .await;
    assert_eq!(
        sim.stats().accepted,
        1,
        "one upstream call for 100 requests"
    );
    let first = &answers[0];
    // The simulator's answer to gcpool's one call: its echo of that request, and the
    // correlation id Genesys puts on every answer.
    let echo = first.json();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], QUEUE);
    let correlation = first.header("inin-correlation-id");
    assert!(!correlation.is_empty(), "the upstream's correlation id");
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, first.body, "every caller gets the same answer");
        assert_eq!(
            answer.header("inin-correlation-id"),
            correlation,
            "the same upstream answer, headers included"
        );
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(answer.header("x-gcpool-wait-ms"), "0");
        assert!(
            !answer.headers.contains_key("age"),
            "an answer fetched for this request has no Age ({})",
            cache_result(answer)
        );
    }
    let results: Vec<&str> = answers.iter().map(cache_result).collect();
    assert_eq!(
        results.iter().filter(|r| **r == "miss").count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| **r == "coalesced").count(),
        99,
        "{results:?}"
    );

    let hit = get(&client, api, &[]).await;
    assert_eq!(cache_result(&hit), "hit");
    assert_eq!(hit.body, first.body);
    assert!(hit.header("age").parse::<u64>().expect("Age in seconds") < 30);
    assert_eq!(hit.headers.get_all("age").iter().count(), 1, "one Age");
    assert_eq!(hit.headers.get_all("x-gcpool-cache").iter().count(), 1);
    assert!(
        !hit.headers.contains_key("x-gcpool-client"),
        "a hit used no pool client"
    );
    assert_eq!(sim.stats().accepted, 1, "a hit makes no upstream call");

    // Another query is another answer; a caller's no-cache goes upstream and refreshes.
    let other = client
        .request(
            Method::GET,
            &format!("http://{api}{QUEUE}?expand=a"),
            &[],
            "",
        )
        .await;
    assert_eq!(cache_result(&other), "miss");
    let bypass = get(&client, api, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache_result(&bypass), "bypass");
    assert_eq!(sim.stats().accepted, 3);

    let metrics = support::metrics(&gcpool).await;
    let series = |result: &str| {
        support::metric_value(
            &metrics,
            &format!(
                "gcpool_cache_requests_total{{result=\"{result}\",route=\"/api/v2/routing/queues/{{queueId}}\"}}"
            ),
        )
    };
    assert_eq!(series("coalesced"), Some(99.0), "{metrics}");
    assert_eq!(series("hit"), Some(1.0));
    assert_eq!(
        support::metric_value(&metrics, "gcpool_cache_entries"),
        Some(2.0)
    );

    // /status lists the route with its counts and hit ratio (hits and coalesced over all).
    let status = client
        .get(&format!("http://{}/status", gcpool.admin_addr()))
        .await
        .json();
    let route = &status["cache"]["routes"][0];
    assert_eq!(
        route["route"], "GET /api/v2/routing/queues/{queueId}",
        "{status}"
    );
    assert_eq!(route["ttl_ms"], 30_000);
    assert_eq!(route["hit"], 1);
    assert_eq!(route["coalesced"], 99);
    assert_eq!(route["miss"], 2);
    assert_eq!(route["bypass"], 1);
    let ratio = route["hit_ratio"].as_f64().expect("a ratio");
    assert!((ratio - 100.0 / 103.0).abs() < 1e-9, "{ratio}");
    assert_eq!(status["cache"]["entries"], 2);
    let page = client
        .get(&format!("http://{}/", gcpool.admin_addr()))
        .await
        .text();
    assert!(
        page.contains("id=\"cache-0-hit-ratio\">97.1 %"),
        "the status page shows the hit ratio"
    );
}

#[tokio::test]
async fn an_answer_is_refetched_once_after_its_ttl() {
    let (sim, _gcpool, api, client) = start_cached(&cache_yaml("1s", "0s", true)).await;
    assert_eq!(cache_result(&get(&client, api, &[]).await), "miss");
    assert_eq!(cache_result(&get(&client, api, &[]).await), "hit");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let answers = futures_join_all((0..10).map(|_| {
        let client = client.clone();
        async move { get(&client, api, &[("x-sim-delay-ms", "200")]).await }
    }))
    .await;
    assert_eq!(
        sim.stats().accepted,
        2,
        "one more upstream call after the ttl"
    );
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
}

#[tokio::test]
async fn a_leader_that_fails_hands_over_and_no_follower_hangs() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    // The leader's upstream answers 503 on every attempt (after 300 ms); the followers,
    // whose requests would get 200, take over.
    let leader = spawn_get(
        &client,
        api,
        &[("x-sim-delay-ms", "300"), ("x-sim-status", "503")],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers = futures_join_all((0..5).map(|_| {
        let client = client.clone();
        async move { get(&client, api, &[("x-sim-delay-ms", "100")]).await }
    }));
    let followers = tokio::time::timeout(Duration::from_secs(20), followers)
        .await
        .expect("no follower hangs");
    let leader = leader.await.expect("the leader's request");
    assert_eq!(leader.status, StatusCode::SERVICE_UNAVAILABLE);
    for answer in &followers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    let results: Vec<&str> = followers.iter().map(cache_result).collect();
    assert_eq!(
        results.iter().filter(|r| **r == "miss").count(),
        1,
        "one follower took over: {results:?}"
    );
}

#[tokio::test]
async fn answers_upstream_marks_private_or_no_store_or_that_set_cookies_are_not_kept() {
    let (sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", false)).await;
    // The simulator's own no-store.
    for _ in 0..2 {
        assert_eq!(cache_result(&get(&client, api, &[]).await), "miss");
    }
    assert_eq!(sim.stats().accepted, 2);
    for header in [
        "cache-control: private, max-age=60",
        "set-cookie: session=abc",
    ] {
        let path = format!("{QUEUE}?case={}", header.len());
        for _ in 0..2 {
            let answer = client
                .request(
                    Method::GET,
                    &format!("http://{api}{path}"),
                    &[
                        ("x-sim-set-header", "cache-control: max-age=60"),
                        ("x-sim-set-header", header),
                    ],
                    "",
                )
                .await;
            assert_eq!(cache_result(&answer), "miss", "{header}");
        }
    }
    assert_eq!(sim.stats().accepted, 6);
    // With none of them, an answer is kept.
    let kept = format!("http://{api}{QUEUE}?case=plain");
    let headers = [("x-sim-set-header", "cache-control: max-age=60")];
    assert_eq!(
        cache_result(&client.request(Method::GET, &kept, &headers, "").await),
        "miss"
    );
    assert_eq!(
        cache_result(&client.request(Method::GET, &kept, &headers, "").await),
        "hit"
    );
}

#[tokio::test]
async fn a_stale_answer_stands_in_for_an_upstream_503_or_429_until_its_limit() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("1s", "3s", true)).await;
    let good = get(&client, api, &[]).await;
    assert_eq!(cache_result(&good), "miss");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for status in ["503", "429"] {
        let answer = get(&client, api, &[("x-sim-status", status)]).await;
        assert_eq!(answer.status, StatusCode::OK, "upstream {status}");
        assert_eq!(cache_result(&answer), "stale", "upstream {status}");
        assert_eq!(answer.body, good.body);
        assert!(answer.header("age").parse::<u64>().expect("Age") >= 1);
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let past = get(&client, api, &[("x-sim-status", "503")]).await;
    assert_eq!(
        past.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "past the stale limit"
    );
}

#[tokio::test]
async fn a_gzip_answer_goes_only_to_callers_that_accept_gzip() {
    let (_sim, _gcpool, api, client) = start_cached(&cache_yaml("30s", "0s", true)).await;
    // An upstream that gzips for callers that accept it (the body is not really gzip: the
    // header is what a cache must not hand to the wrong caller).
    let gzip = [
        ("accept-encoding", "gzip"),
        ("x-sim-set-header", "content-encoding: gzip"),
    ];
    assert_eq!(cache_result(&get(&client, api, &gzip).await), "miss");
    let hit = get(&client, api, &[("accept-encoding", "gzip, deflate")]).await;
    assert_eq!(cache_result(&hit), "hit");
    assert_eq!(hit.header("content-encoding"), "gzip");
    let identity = get(&client, api, &[("accept-encoding", "identity")]).await;
    assert_eq!(cache_result(&identity), "miss");
    assert!(!identity.headers.contains_key("content-encoding"));
    let none = get(&client, api, &[]).await;
    assert_eq!(cache_result(&none), "hit", "the identity answer, kept");
    assert!(!none.headers.contains_key("content-encoding"));
}

#[tokio::test]
async fn a_hit_reaches_only_callers_that_pass_the_checks() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let key = "k-0123456789abcdef";
    let keys =
        format!("  allow_anonymous: false\n  api_keys:\n    - name: flows\n      key: {key}\n");
    let yaml = support::config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS,
        &cache_yaml("30s", "0s", true),
    )
    .replace("  allow_anonymous: true\n", &keys);
    let config = support::config(&yaml);
    let gcpool = support::start_config(config).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    assert_eq!(
        cache_result(&get(&client, api, &[("x-api-key", key)]).await),
        "miss"
    );
    assert_eq!(
        cache_result(&get(&client, api, &[("x-api-key", key)]).await),
        "hit"
    );
    let refused = get(&client, api, &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(!refused.headers.contains_key("x-gcpool-cache"));
    let wrong = get(&client, api, &[("x-api-key", "not-the-key")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

/// Joins futures concurrently on this task (no extra crate).
async fn futures_join_all<F: std::future::Future<Output = Answer> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Answer> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut answers = Vec::with_capacity(handles.len());
    for handle in handles {
        answers.push(handle.await.expect("a request task"));
    }
    answers
}

#[tokio::test]
async fn an_answer_longer_than_the_store_keeps_streams_whole_and_its_followers_go_upstream() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    // The largest kept answer is a sixteenth of max_bytes: 1 KiB.
    let yaml = cache_yaml("30s", "0s", true).replace("cache:\n", "cache:\n  max_bytes: 16384\n");
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, &yaml).await;
    let api = gcpool.api_addr();
    let client = HttpClient::new();
    let answers = futures_join_all((0..3).map(|_| {
        let client = client.clone();
        async move {
            get(
                &client,
                api,
                &[("x-sim-body-bytes", "20000"), ("x-sim-delay-ms", "300")],
            )
            .await
        }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.body.len() >= 20_000,
            "the whole body: {} bytes",
            answer.body.len()
        );
        assert_eq!(
            answer
                .header("content-length")
                .parse::<usize>()
                .expect("a length"),
            answer.body.len()
        );
        assert_eq!(cache_result(answer), "miss");
    }
    // The leader streamed; the two that waited went upstream on their own.
    assert_eq!(sim.stats().accepted, 3);
    assert_eq!(
        cache_result(&get(&client, api, &[("x-sim-body-bytes", "20000")]).await),
        "miss",
        "not kept"
    );
}

/// Requests that arrive just as a flight lands make no second upstream call: one that looked
/// in the store before the leader kept its answer, and joined the flights after the leader
/// left, looks again once it leads. Before that second look it led a flight of its own.
/// Many rounds of concurrent requests for a new key each, the upstream answering at once,
/// so that some arrive while the answer lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_as_the_answer_lands_make_no_second_upstream_call() {
    const ROUNDS: u64 = 100;
    let (sim, _gcpool, api, client) = start_cached(&cache_yaml("5m", "0s", true)).await;
    for round in 0..ROUNDS {
        let url = format!("http://{api}/api/v2/routing/queues/race-{round}");
        // Spread over ~6 ms: some arrive while the first is upstream, some as it lands.
        let answers = futures_join_all((0..24u64).map(|j| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                tokio::time::sleep(Duration::from_micros(j * 250)).await;
                client.request(Method::GET, &url, &[], "").await
            }
        }))
        .await;
        for answer in &answers {
            assert_eq!(answer.status, StatusCode::OK);
        }
        let misses = answers.iter().filter(|a| cache_result(a) == "miss").count();
        assert_eq!(
            sim.stats().accepted,
            round + 1,
            "round {round}: one upstream call per key ({misses} misses)"
        );
    }
}

/// Both bounds hold through the real server under a flood of distinct keys: large answers
/// fill `max_bytes` before `max_entries`; the gauges, read at each scrape, never show more
/// than the config allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_keeps_both_bounds() {
    const MAX_ENTRIES: f64 = 20.0;
    const MAX_BYTES: f64 = 131_072.0;
    let yaml = format!(
        "cache:\n  max_entries: {MAX_ENTRIES}\n  max_bytes: {MAX_BYTES}\n  routes:\n    \
         - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      ttl: 5m\n      \
         ignore_upstream_cache_headers: true\n"
    );
    let (_sim, gcpool, api, client) = start_cached(&yaml).await;
    // 150 answers of 7 KiB (under max_bytes / 16, so each may be kept) into the empty store:
    // max_bytes binds. Then 150 small ones: max_entries binds (TinyLFU may refuse keys asked
    // for once when full; the bounds hold either way).
    for (batch, body_bytes) in [
        (0, "7168"),
        (1, "7168"),
        (2, "7168"),
        (3, "0"),
        (4, "0"),
        (5, "0"),
    ] {
        let answers = futures_join_all((0..50).map(|i| {
            let client = client.clone();
            async move {
                let url = format!("http://{api}/api/v2/routing/queues/flood-{batch}-{i}");
                client
                    .request(Method::GET, &url, &[("x-sim-body-bytes", body_bytes)], "")
                    .await
            }
        }))
        .await;
        assert!(answers.iter().all(|a| a.status == StatusCode::OK));
        let metrics = support::metrics(&gcpool).await;
        let entries = support::metric_value(&metrics, "gcpool_cache_entries").expect("entries");
        let bytes = support::metric_value(&metrics, "gcpool_cache_bytes").expect("bytes");
        assert!(
            entries <= MAX_ENTRIES && bytes <= MAX_BYTES,
            "after batch {batch}: {entries} entries, {bytes} bytes"
        );
        eprintln!("after batch {batch}: {entries} entries, {bytes} bytes");
        // Once the large answers came (batch 0 of 50 × 7 KiB already exceeds max_bytes), they
        // fill it; the small ones after may evict some (TinyLFU), so this says nothing then.
        if body_bytes != "0" {
            assert!(
                bytes > MAX_BYTES * 0.75,
                "the large answers fill max_bytes: {bytes}"
            );
        }
    }
}
