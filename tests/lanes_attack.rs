//! Attacks on lanes (SPEC §12, issue 15 item 2): each lane fills at most its share of
//! every token, route and org budget. Each test here failed on the code it was written
//! against (see the commit message).

mod support;

use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use support::{HttpClient, THREE_CLIENTS, config, config_yaml, eventually, start_config};

/// A reload that moves a caller to a lane with a smaller share (here `standard`, whole
/// budgets, to `batch`, half of them) while its requests wait for slots it took under the
/// old share: they must not then all be sent into one window, past the new share (a
/// reload that changes a waiting request's budgets, limits or sub-pool already makes it
/// start over: `tests/reload.rs::queued_requests_meet_a_budget_added_while_they_wait`).
/// Found: the 4 waiting requests were sent together, filling the window the new lanes
/// leave half of to realtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_lowers_a_callers_share_holds_its_waiting_requests_to_it() {
    let sim = one_client(4).await;
    // One client of 4 per 2 s window; batch fills 2 of them; queue up to 5 s.
    let in_lane = |lane: &str| {
        one_client_config(
            &sim,
            4,
            "",
            &format!("    - {{name: export, key: export-key, lane: {lane}}}\n"),
        )
    };
    let gcpool = start_config(config(&in_lane("standard"))).await;
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    let client = HttpClient::new();

    // 8 at once: 4 fill the window now, 4 wait for the next one (~2 s).
    let started = tokio::time::Instant::now();
    let export: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let answer = client
                    .request(Method::GET, &url, &[("x-api-key", "export-key")], "")
                    .await;
                (answer.status, started.elapsed())
            })
        })
        .collect();
    until_pending(&gcpool, 4, "4 requests queued").await;
    gcpool.reload(config(&in_lane("batch"))).unwrap();

    let mut answered = Vec::new();
    for task in export {
        answered.push(task.await.unwrap());
    }
    answered.sort_by_key(|&(_, at)| at);
    let sent: Vec<Duration> = answered
        .iter()
        .filter(|&&(status, _)| status == StatusCode::OK)
        .map(|&(_, at)| at)
        .skip(4)
        .collect();
    // Batch may fill 2 of every window: no 3 of the requests sent after the reload within
    // one window (a margin of 0.5 s for scheduling).
    let crowded = sent
        .windows(3)
        .find(|three| three[2] - three[0] < Duration::from_millis(1500));
    assert!(
        crowded.is_none(),
        "3 batch requests within one 2 s window after the reload: {answered:?}"
    );
    assert_eq!(sim.stats().rejected_429, 0);
}

/// A lane whose share of a budget rounds down to nothing (`check` warns of it) is never
/// admitted where that budget applies; its local 429 must name that budget, as every other
/// local 429 names the one that binds. Found: `x-gcpool-reason: org_budget` with no `limit`,
/// for a route budget of 1 per window while the org budget was untouched, so the operator
/// looks at the wrong budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_left_nothing_of_a_budget_is_told_which() {
    let sim = Simulator::start(SimOptions::with_clients(1)).await.unwrap();
    let yaml = config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS[..1],
        "budgets:\n  window: 10s\n  queue:\n    max_wait: 5s\n  endpoints:\n    \
         - {route: 'GET /api/v2/users/me', per_minute: 6}\n",
    )
    .replace(
        "inbound:\n  allow_anonymous: true\n",
        "inbound:\n  api_keys:\n    - {name: export, key: export-key, lane: batch}\n    \
         - {name: ivr, key: ivr-key, lane: realtime}\n  lanes:\n    batch: 0.5\n",
    );
    let config = config(&yaml);
    assert!(
        config.warnings.iter().any(|w| w.contains("(export)")),
        "{:?}",
        config.warnings
    );
    let gcpool = start_config(config).await;
    let base = format!("http://{}", gcpool.api_addr());
    let client = HttpClient::new();

    let me = format!("{base}/api/v2/users/me");
    let refused = client
        .request(Method::GET, &me, &[("x-api-key", "export-key")], "")
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.header("x-gcpool-reason"),
        "endpoint_budget",
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.json()["limit"]["key"],
        "endpoint:GET /api/v2/users/me",
        "{}",
        refused.text()
    );
    // Elsewhere the lane is admitted, and the route still serves realtime.
    let users = client
        .request(
            Method::GET,
            &format!("{base}/api/v2/users"),
            &[("x-api-key", "export-key")],
            "",
        )
        .await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.text());
    let ivr = client
        .request(Method::GET, &me, &[("x-api-key", "ivr-key")], "")
        .await;
    assert_eq!(ivr.status, StatusCode::OK, "{}", ivr.text());
}

/// A realtime request on a cached route must not wait behind a batch request that leads
/// the same key's flight and is itself queued for a slot its lane's share has not got:
/// realtime's headroom is there, at once. Found: the realtime request follows the batch
/// leader and, with no wait allowed, gets a local 429 (`deadline`) at once; with a cap of
/// seconds it would wait for batch's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_does_not_follow_a_queued_batch_flight() {
    let sim = one_client(4).await;
    // One client of 4 per 2 s window; batch fills 2 of them; the queues route cached.
    let yaml = one_client_config(
        &sim,
        4,
        "cache:\n  routes:\n    - {route: 'GET /api/v2/routing/queues/{queueId}', ttl: 5m, \
         ignore_upstream_cache_headers: true}\n",
        EXPORT_AND_IVR,
    );
    let gcpool = start_config(config(&yaml)).await;
    let base = format!("http://{}", gcpool.api_addr());
    let client = HttpClient::new();
    let export = [("x-api-key", "export-key")];

    // Batch fills its share of the window.
    for _ in 0..2 {
        let answer = client
            .request(Method::GET, &format!("{base}/api/v2/users/me"), &export, "")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    // A batch request leads the flight of queues/q-1 and queues for batch's next slot.
    let queue = format!("{base}/api/v2/routing/queues/q-1");
    let leader = {
        let (client, queue) = (client.clone(), queue.clone());
        tokio::spawn(async move { client.request(Method::GET, &queue, &export, "").await })
    };
    until_pending(&gcpool, 1, "the batch leader queued").await;

    let ivr = client
        .request(
            Method::GET,
            &queue,
            &[("x-api-key", "ivr-key"), ("x-gcpool-max-wait", "0s")],
            "",
        )
        .await;
    assert_eq!(
        ivr.status,
        StatusCode::OK,
        "realtime has 2 of the window's 4 slots: {}",
        ivr.text()
    );
    assert_eq!(ivr.header("x-gcpool-wait-ms"), "0");
    let leader = leader.await.unwrap();
    assert_eq!(leader.status, StatusCode::OK, "{}", leader.text());
    assert_eq!(sim.stats().rejected_429, 0);
}

/// `queue.max_pending` bounds the requests that wait; a batch flood that fills it must not
/// refuse a realtime request that waits for nothing (its lane's headroom is free). Found:
/// every request was refused `queue_full` while `max_pending` requests waited, whatever
/// its lane, before the store was asked, so a batch flood shut realtime out entirely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_flood_that_fills_the_queue_leaves_realtime_its_headroom() {
    let sim = one_client(8).await;
    // One client of 8 per 2 s window; batch fills 4 of them; at most 4 requests wait.
    let yaml = one_client_config(&sim, 8, "    max_pending: 4\n", EXPORT_AND_IVR);
    let gcpool = start_config(config(&yaml)).await;
    let url = format!("http://{}/api/v2/users/me", gcpool.api_addr());
    let client = HttpClient::new();

    // Batch's 4 of the window, one by one (each answered at once), then 8 more at once: 4
    // wait (the queue's bound), 4 are refused queue_full.
    for n in 0..4 {
        let answer = client
            .request(Method::GET, &url, &[("x-api-key", "export-key")], "")
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "batch #{n}: {}",
            answer.text()
        );
        assert_eq!(answer.header("x-gcpool-wait-ms"), "0", "batch #{n} waited");
    }
    let batch: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .request(Method::GET, &url, &[("x-api-key", "export-key")], "")
                    .await
                    .status
            })
        })
        .collect();
    until_pending(&gcpool, 4, "the queue full").await;

    let mut realtime = Vec::new();
    for _ in 0..4 {
        let answer = client
            .request(
                Method::GET,
                &url,
                &[("x-api-key", "ivr-key"), ("x-gcpool-max-wait", "0s")],
                "",
            )
            .await;
        realtime.push((
            answer.status,
            answer
                .headers
                .get("x-gcpool-reason")
                .map(|v| v.to_str().unwrap_or_default().to_owned()),
        ));
    }
    assert_eq!(
        realtime,
        vec![(StatusCode::OK, None); 4],
        "realtime has 4 of the window's 8 slots"
    );
    // A fifth finds the window full: it would wait, and the queue is full.
    let fifth = client
        .request(Method::GET, &url, &[("x-api-key", "ivr-key")], "")
        .await;
    assert_eq!(fifth.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fifth.header("x-gcpool-reason"), "queue_full");
    for task in batch {
        let status = task.await.unwrap();
        assert!(
            [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&status),
            "{status}"
        );
    }
    assert_eq!(sim.stats().rejected_429, 0);
}

/// Waits until at least `n` requests wait for a slot (`what` names it if they never do). Generous: on
/// a loaded machine a flood's requests can be slow to arrive; once there, they wait for the
/// next window.
async fn until_pending(gcpool: &gcpool::app::Gcpool, n: usize, what: &str) {
    let admission = gcpool.admission();
    eventually(what, Duration::from_secs(15), async || {
        match admission.pending() {
            pending if pending >= n => Ok(()),
            pending => Err(format!("{pending} pending")),
        }
    })
    .await;
}

/// Two callers: `export` (key `export-key`) in lane batch, `ivr` (`ivr-key`) in realtime.
const EXPORT_AND_IVR: &str = "    - {name: export, key: export-key, lane: batch}\n    \
                              - {name: ivr, key: ivr-key, lane: realtime}\n";

/// The simulator with one client of `per_window` admissions per 2 s window.
async fn one_client(per_window: u32) -> Simulator {
    Simulator::start(
        SimOptions::with_clients(1)
            .window(Duration::from_secs(2))
            .token_limit(per_window),
    )
    .await
    .expect("simulator")
}

/// gcpool before `sim`'s one client, budgeted as the simulator (`per_window` per 2 s), queueing
/// up to 5 s; `after_queue`: more lines under `budgets.queue` (4 spaces in) or top-level
/// sections; `api_keys`: its callers (under `inbound.api_keys`), with `lanes: {batch: 0.5}`.
fn one_client_config(
    sim: &Simulator,
    per_window: u32,
    after_queue: &str,
    api_keys: &str,
) -> String {
    config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS[..1],
        &format!(
            "budgets:\n  token_per_minute: {}\n  org_per_minute: 100000\n  window: 2s\n  \
             guard: 60ms\n  queue:\n    max_wait: 5s\n{after_queue}",
            per_window * 30
        ),
    )
    .replace(
        "inbound:\n  allow_anonymous: true\n",
        &format!("inbound:\n  api_keys:\n{api_keys}  lanes:\n    batch: 0.5\n"),
    )
}
