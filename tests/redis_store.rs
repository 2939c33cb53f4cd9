//! `RedisStore` against a real `redis-server`: the budget property suite run through the
//! `BudgetStore` trait on Redis and on memory (same scenarios, same assertions), and the
//! Redis-only facts: NOSCRIPT recovery, cool-downs and learned limits shared by replicas,
//! release, key expiry, URL handling and errors that never show a secret, and the epoch,
//! settle pause and write-back the fallback builds on.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use gcpool::budget::fallback::{SharedAdmit, SharedStore, SyncRequest, SyncStatus};
use gcpool::budget::journal::Admission;
use gcpool::budget::window::Micros;
use gcpool::budget::{
    AdmitRequest, Binding, BudgetDef, BudgetError, BudgetKind, BudgetStore, Candidate, CoolDown,
    Decision, MemoryStore, RedisStore, Reservation, Share,
};
use gcpool::config::SharedStateConfig;
use gcpool::secret::Secret;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use redis::AsyncCommands;
use support::eventually;
use support::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(500);

fn shared_state(url: &str, prefix: &str) -> SharedStateConfig {
    SharedStateConfig {
        redis_url: Secret::new(url),
        key_prefix: prefix.into(),
        replicas_hint: NonZeroU32::MIN,
        timeout: TIMEOUT,
    }
}

fn def(kind: BudgetKind, name: &str, limit: u32, window: Duration) -> BudgetDef {
    BudgetDef {
        kind,
        name: name.into(),
        limit,
        window,
    }
}

/// token:a (2), token:b (2), org (3), 1 s windows: the memory store's unit-test table.
fn two_clients() -> (Vec<BudgetDef>, Vec<String>, Vec<Candidate>) {
    let w = Duration::from_secs(1);
    let defs = vec![
        def(BudgetKind::Token, "token:a", 2, w),
        def(BudgetKind::Token, "token:b", 2, w),
        def(BudgetKind::Org, "org", 3, w),
    ];
    let candidates = vec![
        Candidate {
            client: 0,
            budgets: vec![2, 0],
        },
        Candidate {
            client: 1,
            budgets: vec![2, 1],
        },
    ];
    (defs, vec!["a".into(), "b".into()], candidates)
}

async fn connect(
    server: &RedisServer,
    prefix: &str,
    defs: &[BudgetDef],
    clients: &[String],
) -> RedisStore {
    RedisStore::connect(&shared_state(&server.url(), prefix), defs, clients)
        .await
        .expect("a running redis-server must accept the store")
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("test URL is valid")
        .get_multiplexed_async_connection()
        .await
        .expect("the test must reach its redis-server")
}

async fn admit(store: &dyn BudgetStore, candidates: &[Candidate], max_wait: Duration) -> Decision {
    store
        .admit(AdmitRequest {
            candidates,
            route: None,
            max_wait,
            share: Share::WHOLE,
        })
        .await
        .expect("redis is up, so the store decides")
}

fn admitted(decision: Decision) -> Reservation {
    match decision {
        Decision::Admitted(r) => r,
        Decision::Refused(r) => panic!("must admit, got a refusal: {r:?}"),
    }
}

// === the property suite, on both stores ===

#[derive(Debug, Clone)]
struct Op {
    dt_ms: u64,
    /// Budgets of each candidate (bit masks; candidate k is client k).
    candidates: Vec<u8>,
    release: Option<usize>,
    max_wait_ms: u64,
}

#[derive(Debug, Clone)]
struct Scenario {
    /// (limit, window ms) of each budget.
    budgets: Vec<(u32, u64)>,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let op = (
        0u64..25,
        prop::collection::vec(1u8..16, 1..=3),
        prop::option::weighted(0.15, 0usize..8),
        0u64..1500,
    )
        .prop_map(|(dt_ms, candidates, release, max_wait_ms)| Op {
            dt_ms,
            candidates,
            release,
            max_wait_ms,
        });
    (
        prop::collection::vec((1u32..=5, 100u64..600), 1..=4),
        prop::collection::vec(op, 1..40),
    )
        .prop_map(|(budgets, ops)| Scenario { budgets, ops })
}

/// Every window `(s - W, s]` holds at most `n` of `times`: any `n + 1` consecutive span ≥ W.
fn naive_valid(times: &[Micros], n: u32, w: Micros) -> bool {
    let mut v = times.to_vec();
    v.sort_unstable();
    let n = n as usize;
    v.windows(n + 1).all(|g| g[n] - g[0] >= w)
}

fn with(times: &[Micros], t: Micros) -> Vec<Micros> {
    let mut v = times.to_vec();
    v.push(t);
    v
}

/// What the Redis run checks besides the decisions: the sorted sets themselves.
struct RedisView<'a> {
    con: redis::aio::MultiplexedConnection,
    store: &'a RedisStore,
}

/// Runs `scenario` through `store`, checking every decision against the full history:
/// no window over its limit, no candidate admitted later than the earliest instant all its
/// budgets allowed, none earlier-admissible candidate passed over (first on ties), and on
/// Redis, that the sorted sets hold exactly what they must.
async fn run_scenario(
    scenario: &Scenario,
    store: &dyn BudgetStore,
    mut redis: Option<RedisView<'_>>,
) -> Result<(), TestCaseError> {
    let nb = scenario.budgets.len();
    let w = |b: usize| scenario.budgets[b].1 * 1000;
    let mut history: Vec<Vec<Micros>> = vec![Vec::new(); nb];
    let mut pending: Vec<(Reservation, Vec<usize>)> = Vec::new();
    for op in &scenario.ops {
        tokio::time::sleep(Duration::from_millis(op.dt_ms)).await;
        if let Some(k) = op.release
            && !pending.is_empty()
        {
            let (r, used) = pending.remove(k % pending.len());
            let at = r.at_micros();
            store.release(r).await;
            for b in used {
                let i = history[b]
                    .iter()
                    .position(|&x| x == at)
                    .expect("released instant was recorded");
                history[b].remove(i);
            }
            continue;
        }
        let candidates = candidates_of(op, nb);
        let max_wait = Duration::from_millis(op.max_wait_ms);
        let decision = store
            .admit(AdmitRequest {
                candidates: &candidates,
                route: None,
                max_wait,
                share: Share::WHOLE,
            })
            .await
            .map_err(|e| TestCaseError::fail(format!("store failed: {e}")))?;
        match decision {
            Decision::Refused(refusal) => {
                let wait = refusal
                    .wait
                    .ok_or_else(|| TestCaseError::fail("limits ≥ 1 always admit some time"))?;
                prop_assert!(
                    wait > max_wait,
                    "refused although {wait:?} ≤ max_wait {max_wait:?}"
                );
            }
            Decision::Admitted(r) => {
                let t = r.at_micros();
                let wait =
                    u64::try_from(r.wait.as_micros()).expect("waits are far below u64::MAX µs");
                prop_assert!(r.wait <= max_wait);
                let now = t - wait;
                let chosen = r.candidate;
                let feasible = |c: &Candidate, x: Micros| {
                    c.budgets
                        .iter()
                        .all(|&b| naive_valid(&with(&history[b], x), scenario.budgets[b].0, w(b)))
                };
                prop_assert!(
                    feasible(&candidates[chosen], t),
                    "chosen instant {} must keep every window within its limit",
                    t
                );
                // Left edges of every candidate's feasible set: `now` and `x + W`.
                for (j, c) in candidates.iter().enumerate() {
                    let mut edges = vec![now];
                    for &b in &c.budgets {
                        edges.extend(history[b].iter().map(|x| x + w(b)));
                    }
                    for x in edges.into_iter().filter(|&x| x >= now) {
                        let too_early = if j < chosen { x <= t } else { x < t };
                        prop_assert!(
                            !(too_early && feasible(c, x)),
                            "candidate {} was free at {} but candidate {} got {} (now {})",
                            j,
                            x,
                            chosen,
                            t,
                            now
                        );
                    }
                }
                for &b in &candidates[chosen].budgets {
                    history[b].push(t);
                }
                pending.push((r, candidates[chosen].budgets.clone()));
            }
        }
        if let Some(view) = redis.as_mut() {
            check_sorted_sets(view, &history, scenario).await?;
        }
    }
    for (b, &(n, wms)) in scenario.budgets.iter().enumerate() {
        prop_assert!(
            naive_valid(&history[b], n, wms * 1000),
            "budget {} overrun: {:?}",
            b,
            history[b]
        );
    }
    Ok(())
}

fn candidates_of(op: &Op, nb: usize) -> Vec<Candidate> {
    op.candidates
        .iter()
        .enumerate()
        .map(|(client, &mask)| {
            let mut budgets: Vec<usize> = (0..nb).filter(|b| mask & (1 << b) != 0).collect();
            if budgets.is_empty() {
                budgets.push(0);
            }
            Candidate { client, budgets }
        })
        .collect()
}

/// Each sorted set holds only recorded instants, and every recorded instant that can still
/// share a window with Redis's present.
async fn check_sorted_sets(
    view: &mut RedisView<'_>,
    history: &[Vec<Micros>],
    scenario: &Scenario,
) -> Result<(), TestCaseError> {
    let (secs, us): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut view.con)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let now = secs * 1_000_000 + us;
    for (b, &(_, wms)) in scenario.budgets.iter().enumerate() {
        let key = view
            .store
            .budget_key(b)
            .expect("every budget of the scenario has a key");
        let members: Vec<(String, f64)> = view
            .con
            .zrange_withscores(key, 0, -1)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut scores: Vec<Micros> = members.iter().map(|(_, s)| *s as Micros).collect();
        scores.sort_unstable();
        let mut recorded = history[b].clone();
        recorded.sort_unstable();
        let live: Vec<Micros> = recorded
            .iter()
            .copied()
            .filter(|&t| t + wms * 1000 > now)
            .collect();
        let mut rest = recorded.clone();
        for s in &scores {
            let Some(i) = rest.iter().position(|x| x == s) else {
                return Err(TestCaseError::fail(format!(
                    "budget {b} holds {s} that no admission returned"
                )));
            };
            rest.remove(i);
        }
        for t in live {
            prop_assert!(scores.contains(&t), "budget {} lost live instant {}", b, t);
        }
    }
    Ok(())
}

/// The budgets issue's property: random budgets (1–4, limits 1–5, windows 100–600 ms),
/// random multi-budget candidates, random releases. Real time passes on Redis, so cases are
/// few; the memory store runs the same scenarios on paused time.
#[test]
fn redis_and_memory_never_over_budget_and_never_later_than_needed() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = std::cell::Cell::new(0u32);
    runner
        .run(&scenario(), |scenario| {
            case.set(case.get() + 1);
            let defs: Vec<BudgetDef> = scenario
                .budgets
                .iter()
                .enumerate()
                .map(|(i, &(n, wms))| {
                    def(
                        BudgetKind::Token,
                        &format!("b{i}"),
                        n,
                        Duration::from_millis(wms),
                    )
                })
                .collect();
            let clients: Vec<String> = (0..3).map(|c| format!("c{c}")).collect();

            let memory = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            memory.block_on(async {
                let store = MemoryStore::new(&defs, clients.len());
                run_scenario(&scenario, &store, None).await
            })?;

            rt.block_on(async {
                let prefix = format!("prop-{}", case.get());
                let store = connect(&server, &prefix, &defs, &clients).await;
                let view = RedisView {
                    con: raw(&server).await,
                    store: &store,
                };
                run_scenario(&scenario, &store, Some(view)).await
            })
        })
        .unwrap();
}

/// Windows larger than the script's read chunk (64 instants): the walk over forbidden
/// intervals fetches instants by rank as it goes, and must find the same instants.
#[tokio::test]
async fn large_windows_are_read_in_chunks_with_the_same_result() {
    let server = RedisServer::start();
    let scenario = Scenario {
        budgets: vec![(150, 400), (70, 250), (3, 100)],
        ops: (0..420u64)
            .map(|i| Op {
                dt_ms: u64::from(i % 7 == 0),
                candidates: vec![[3u8, 1, 2, 7][(i % 4) as usize], 2],
                release: (i % 13 == 0).then_some((i / 13) as usize),
                max_wait_ms: 1_500,
            })
            .collect(),
    };
    let defs: Vec<BudgetDef> = scenario
        .budgets
        .iter()
        .enumerate()
        .map(|(i, &(n, wms))| {
            def(
                BudgetKind::Token,
                &format!("b{i}"),
                n,
                Duration::from_millis(wms),
            )
        })
        .collect();
    let clients: Vec<String> = vec!["c0".into(), "c1".into()];
    let store = connect(&server, "chunks", &defs, &clients).await;
    let view = RedisView {
        con: raw(&server).await,
        store: &store,
    };
    run_scenario(&scenario, &store, Some(view)).await.unwrap();
}

/// A lane's share must not make the script walk a whole window: with a full org window
/// of 3,000, a batch request (half of it) that is refused reads as few instants as one of
/// a whole lane. Found: the walk stepped through every group of 1,500 consecutive
/// instants before `now`, fetching them 64 at a time (~50 `ZRANGE`s, 2.6 ms per call on
/// loopback against 0.3 ms), so a refused batch flood held the one-threaded Redis that
/// every replica's admissions wait on for `shared_state.timeout`.
#[tokio::test]
async fn a_lanes_share_of_a_full_window_reads_no_more_of_it() {
    let server = RedisServer::start();
    let window = Duration::from_secs(61);
    let defs = vec![
        def(BudgetKind::Token, "token:a", 100_000_000, window),
        def(BudgetKind::Org, "org", 3000, window),
    ];
    let store = connect(&server, "share-cost", &defs, &["a".into()]).await;
    let candidates = [Candidate {
        client: 0,
        budgets: vec![1, 0],
    }];
    for _ in 0..3000 {
        admitted(admit(&store, &candidates, Duration::ZERO).await);
    }
    let mut con = raw(&server).await;
    let mut reads = Vec::new();
    for share in [1000, 900, 500, 1] {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut con)
            .await
            .unwrap();
        for _ in 0..20 {
            let decision = store
                .admit(AdmitRequest {
                    candidates: &candidates,
                    route: None,
                    max_wait: Duration::ZERO,
                    share: Share::from_permille(share),
                })
                .await
                .unwrap();
            assert!(matches!(decision, Decision::Refused(_)), "{decision:?}");
        }
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .unwrap();
        let zrange = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_zrange:"))
            .and_then(|l| {
                l.split(',')
                    .find(|f| f.starts_with("cmdstat_zrange:calls="))
            })
            .and_then(|f| {
                f.trim_start_matches("cmdstat_zrange:calls=")
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        reads.push((share, zrange));
    }
    let whole = reads[0].1;
    assert!(
        reads.iter().all(|&(_, zrange)| zrange <= whole),
        "ZRANGE calls for 20 refused admissions, by share (permille): {reads:?}"
    );
}

// === Redis-only facts ===

/// The memory store's unit test, on Redis: spread over clients, then the org cap binds,
/// the request queues within max_wait, release gives the slot back.
#[tokio::test]
async fn spreads_over_clients_then_queues_under_the_org_cap() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let store = connect(&server, "spread", &defs, &clients).await;
    assert!(store.is_up());
    assert_eq!(store.backend(), "redis");
    let mut chosen = Vec::new();
    for _ in 0..3 {
        let r = admitted(admit(&store, &c, Duration::ZERO).await);
        assert_eq!(r.wait, Duration::ZERO);
        assert_eq!(r.binding, None);
        chosen.push(c[r.candidate].client);
    }
    assert_eq!(
        chosen,
        [0, 0, 1],
        "first candidate until its token budget is full"
    );
    match admit(&store, &c, Duration::ZERO).await {
        Decision::Refused(r) => {
            let wait = r.wait.expect("org cap frees a slot in a window");
            assert!(
                wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
                "{wait:?}"
            );
            assert_eq!(r.binding, Some(Binding::Budget(2)), "org named first");
        }
        other => panic!("must refuse: {other:?}"),
    }
    let r = admitted(admit(&store, &c, Duration::from_secs(2)).await);
    assert!(r.wait > Duration::from_millis(900));
    assert_eq!(store.snapshot(vec![2], 0).await.usage[0], (3, 3));
    let mut con = raw(&server).await;
    let org = store.budget_key(2).unwrap().to_owned();
    let before: usize = con.zcard(&org).await.unwrap();
    store.release(r).await;
    let after: usize = con.zcard(&org).await.unwrap();
    assert_eq!(
        (before, after),
        (4, 3),
        "release removes the queued reservation"
    );
}

#[tokio::test]
async fn noscript_is_recovered_by_loading_the_script_again() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let store = connect(&server, "noscript", &defs, &clients).await;
    admitted(admit(&store, &c, Duration::ZERO).await);
    let mut con = raw(&server).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    admitted(admit(&store, &c, Duration::ZERO).await);
    store
        .cool_down(CoolDown::Pool, Duration::from_millis(1))
        .await;
    assert!(store.is_up());
}

#[tokio::test]
async fn a_cool_down_on_one_replica_is_avoided_by_another() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let one = connect(&server, "fleet", &defs, &clients).await;
    let two = connect(&server, "fleet", &defs, &clients).await;
    one.cool_down(CoolDown::Client(0), Duration::from_secs(3))
        .await;
    let r = admitted(admit(&two, &c, Duration::ZERO).await);
    assert_eq!(
        c[r.candidate].client, 1,
        "the cooling client is avoided by every replica"
    );
    let cooling = two.snapshot(vec![], 2).await.cooling;
    assert!(cooling[0] > Duration::from_millis(2900), "{cooling:?}");
    assert_eq!(cooling[1], Duration::ZERO);
    // A shorter cool-down never shortens a longer one.
    two.cool_down(CoolDown::Client(0), Duration::from_millis(10))
        .await;
    assert!(one.snapshot(vec![], 1).await.cooling[0] > Duration::from_secs(2));

    two.cool_down(CoolDown::Pool, Duration::from_secs(5)).await;
    match admit(&one, &c, Duration::ZERO).await {
        Decision::Refused(r) => {
            assert_eq!(r.binding, Some(Binding::PoolCoolDown));
            assert!(r.wait.unwrap() > Duration::from_millis(4900));
        }
        other => panic!("pool cool-down must hold everyone back: {other:?}"),
    }
}

#[tokio::test]
async fn a_route_cool_down_holds_the_route_back() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let store = connect(&server, "route", &defs, &clients).await;
    let route = gcpool::routes::RouteTable::genesys()
        .find_template(&http::Method::PUT, "/api/v2/architect/ivrs/{ivrId}")
        .unwrap();
    store
        .cool_down(CoolDown::Route(route), Duration::from_secs(2))
        .await;
    let decision = store
        .admit(AdmitRequest {
            candidates: &c,
            route: Some(route),
            max_wait: Duration::ZERO,
            share: Share::WHOLE,
        })
        .await
        .unwrap();
    match decision {
        Decision::Refused(r) => assert_eq!(r.binding, Some(Binding::RouteCoolDown)),
        other => panic!("route cool-down must hold it back: {other:?}"),
    }
    admitted(admit(&store, &c, Duration::ZERO).await);
}

#[tokio::test]
async fn a_learned_limit_is_shared_and_only_ever_lowered() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let one = connect(&server, "learn", &defs, &clients).await;
    let two = connect(&server, "learn", &defs, &clients).await;
    assert!(one.lower_limit(0, 1).await);
    assert!(
        !two.lower_limit(0, 2).await,
        "2 is not lower than the learned 1"
    );
    assert!(!two.lower_limit(0, 1).await, "equal is not lower");
    assert_eq!(two.snapshot(vec![0, 1], 0).await.usage, [(0, 1), (0, 2)]);
    let only_a = &c[..1];
    admitted(admit(&two, only_a, Duration::ZERO).await);
    match admit(&two, only_a, Duration::ZERO).await {
        Decision::Refused(r) => assert_eq!(r.binding, Some(Binding::Budget(0))),
        other => panic!("learned limit 1 must bind: {other:?}"),
    }
    assert!(one.lower_limit(1, 0).await);
    match admit(&one, &c[1..], Duration::from_secs(60)).await {
        Decision::Refused(r) => assert_eq!(r.wait, None, "limit 0 never admits"),
        other => panic!("must refuse: {other:?}"),
    }
}

#[tokio::test]
async fn release_frees_a_slot_for_the_next_request() {
    let server = RedisServer::start();
    let w = Duration::from_secs(10);
    let defs = vec![def(BudgetKind::Token, "token:a", 1, w)];
    let clients = vec!["a".to_owned()];
    let c = vec![Candidate {
        client: 0,
        budgets: vec![0],
    }];
    let store = connect(&server, "release", &defs, &clients).await;
    let first = admitted(admit(&store, &c, Duration::ZERO).await);
    assert!(matches!(
        admit(&store, &c, Duration::ZERO).await,
        Decision::Refused(_)
    ));
    store.release(first).await;
    let again = admitted(admit(&store, &c, Duration::ZERO).await);
    assert_eq!(
        again.wait,
        Duration::ZERO,
        "the released slot is free at once"
    );
}

#[tokio::test]
async fn every_key_carries_a_ttl() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let store = connect(&server, "ttl", &defs, &clients).await;
    admitted(admit(&store, &c, Duration::ZERO).await);
    store
        .cool_down(CoolDown::Client(1), Duration::from_secs(1))
        .await;
    assert!(store.lower_limit(2, 2).await);
    let mut con = raw(&server).await;
    let mut keys = vec![store.budget_key(0).unwrap(), store.budget_key(2).unwrap()];
    keys.extend(store.shared_keys().iter().map(|k| (*k).to_owned()));
    for key in keys {
        let ttl: i64 = con.pttl(&key).await.unwrap();
        assert!(ttl > 0, "{key} must expire (PTTL {ttl})");
        assert!(
            ttl <= 7 * 24 * 3600 * 1000,
            "{key}: no key lives longer than a week (PTTL {ttl})"
        );
    }
    let org_ttl: i64 = con.pttl(store.budget_key(2).unwrap()).await.unwrap();
    assert!(
        org_ttl <= 21_000 + 100,
        "window + twice the margin: {org_ttl}"
    );
    let stray: Vec<String> = con.keys("{ttl}*").await.unwrap();
    assert_eq!(stray.len(), 5, "only the layout's keys: {stray:?}");
}

#[tokio::test]
async fn errors_never_show_the_url_or_its_password() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (defs, clients, _) = two_clients();
    for scheme in ["redis", "rediss"] {
        let url = format!("{scheme}://gcpool:hunter2@127.0.0.1:{free}/0");
        let err = RedisStore::connect(&shared_state(&url, "x"), &defs, &clients)
            .await
            .expect_err("nothing listens");
        let text = format!("{err} {err:?}");
        assert!(
            matches!(err, BudgetError::Unavailable(_) | BudgetError::Timeout(_)),
            "{scheme}: {text}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }
    let err = RedisStore::connect(
        &shared_state("http://:hunter2@redis/", "x"),
        &defs,
        &clients,
    )
    .await
    .expect_err("not a redis URL");
    assert!(matches!(err, BudgetError::InvalidUrl(_)), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    let lazy = RedisStore::lazy(
        &shared_state("rediss://u:hunter2@redis.example:6380/", "x"),
        &defs,
        &clients,
    )
    .expect("a rediss:// URL parses without connecting");
    assert!(!lazy.is_up(), "not up before a call succeeded");
    assert!(!format!("{lazy:?}").contains("hunter2"));
}

#[tokio::test]
async fn rediss_against_a_plain_server_fails_the_handshake_cleanly() {
    let server = RedisServer::start();
    let (defs, clients, _) = two_clients();
    let url = format!("rediss://:hunter2@127.0.0.1:{}/", server.port());
    let err = RedisStore::connect(&shared_state(&url, "x"), &defs, &clients)
        .await
        .expect_err("a plain server cannot complete a TLS handshake");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
}

#[tokio::test]
async fn goes_down_with_redis_and_comes_back_by_itself() {
    let mut server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let store = Arc::new(connect(&server, "flap", &defs, &clients).await);
    server.kill();
    let started = tokio::time::Instant::now();
    let result = store
        .admit(AdmitRequest {
            candidates: &c,
            route: None,
            max_wait: Duration::ZERO,
            share: Share::WHOLE,
        })
        .await;
    assert!(result.is_err(), "no decision without Redis");
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_millis(200),
        "bounded by the timeout"
    );
    assert!(!store.is_up());
    assert_eq!(
        store.snapshot(vec![2], 2).await.usage,
        [(0, 3)],
        "configured limits while down"
    );
    server.restart();
    eventually(
        "the connection manager reconnects by itself",
        Duration::from_secs(5),
        async || store.ping().await.map_err(|e| format!("PING: {e}")),
    )
    .await;
    assert!(store.is_up());
    admitted(admit(store.as_ref(), &c, Duration::ZERO).await);
}

// === epoch, settle pause and write-back (what `FallbackStore` builds on) ===

fn sync_request(adopt: bool, epoch: Option<&str>, admissions: Vec<Admission>) -> SyncRequest {
    static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SyncRequest {
        adopt,
        epoch: epoch.map(str::to_owned),
        new_epoch: format!("epoch-{n}"),
        settle: Duration::from_millis(300),
        set_settle: false,
        admissions,
        usage: vec![0, 2],
    }
}

/// The scripts' contract: a fresh state admits at once; a write-back's settle pause makes
/// admissions wait, not fail; an admission into another state is refused as stale; a
/// flushed state is refilled by a write-back, which is idempotent; and out of memory, the
/// probe fails as admissions do while PING still answers.
#[tokio::test]
async fn shared_store_epoch_settle_and_write_back() {
    let server = RedisServer::start();
    let (defs, clients, c) = two_clients();
    let store = connect(&server, "sync", &defs, &clients).await;
    let request = AdmitRequest {
        candidates: &c,
        route: None,
        max_wait: Duration::from_secs(1),
        share: Share::WHOLE,
    };

    let created = store
        .sync(sync_request(true, None, Vec::new()))
        .await
        .expect("redis is up");
    assert_eq!(created.status, SyncStatus::Created);
    let epoch = created.epoch.clone();
    let Ok(SharedAdmit::Decided {
        decision: Decision::Admitted(cold),
        ..
    }) = store.admit_shared(request, &epoch).await
    else {
        panic!("a cold start does not pause");
    };
    store.release(cold).await;
    let mut paused = sync_request(false, Some(&epoch), Vec::new());
    paused.set_settle = true;
    store.sync(paused).await.expect("redis is up");
    let Ok(SharedAdmit::Settling { wait }) = store.admit_shared(request, &epoch).await else {
        panic!("a write-back pauses admissions");
    };
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(300),
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;
    let Ok(SharedAdmit::Decided {
        decision: Decision::Admitted(first),
        usage,
        ..
    }) = store.admit_shared(request, &epoch).await
    else {
        panic!("admitted once the pause is over");
    };
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.budget, u.count))
            .collect::<Vec<_>>(),
        [(2, 1), (0, 1)],
        "fleet-wide counts of the chosen candidate's budgets (org, token:a)"
    );
    assert_eq!(
        store.admit_shared(request, "another").await.ok(),
        Some(SharedAdmit::Stale {
            epoch: Some(epoch.clone())
        })
    );

    let mut con = raw(&server).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    assert_eq!(
        store.admit_shared(request, &epoch).await.ok(),
        Some(SharedAdmit::Stale { epoch: None }),
        "a flushed state is noticed, nothing admitted"
    );
    let journal = vec![
        Admission {
            member: "from-redis".into(),
            at: first.at_micros(),
            budgets: vec![2, 0],
        },
        Admission {
            member: "local-1".into(),
            at: first.at_micros() + 1,
            budgets: vec![2, 1],
        },
    ];
    let restored = store
        .sync(sync_request(true, Some(&epoch), journal.clone()))
        .await
        .unwrap();
    assert_eq!(
        restored.status,
        SyncStatus::Created,
        "a new state, new epoch"
    );
    assert_ne!(restored.epoch, epoch);
    assert_eq!(restored.written, 4, "two admissions in two budgets each");
    assert_eq!(
        restored
            .usage
            .iter()
            .map(|u| (u.budget, u.count))
            .collect::<Vec<_>>(),
        [(0, 1), (2, 2)]
    );
    let again = store
        .sync(sync_request(false, Some(&restored.epoch), journal))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.written),
        (SyncStatus::InSync, 0),
        "idempotent"
    );

    server.out_of_memory();
    let probe = store
        .sync(sync_request(false, Some(&restored.epoch), Vec::new()))
        .await;
    assert!(
        probe.is_err(),
        "the probe writes, so it fails out of memory: {probe:?}"
    );
    assert!(store.ping().await.is_ok(), "while PING answers");
    server.enough_memory();
    assert!(
        store
            .sync(sync_request(false, Some(&restored.epoch), Vec::new()))
            .await
            .is_ok()
    );
}

// === the script's choice, against window.rs ===

/// The admission script before issue 13 read every candidate (commit 3f7ea49), kept to
/// show that the reference below is its behaviour too.
const ADMIT_BEFORE: &str = include_str!("fixtures/admit_before_issue13.lua");

fn us(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).expect("test durations are far below u64::MAX µs")
}

/// One random state of budgets and cool-downs, and a request against it.
#[derive(Debug)]
struct ChoiceCase {
    defs: Vec<BudgetDef>,
    clients: Vec<String>,
    candidates: Vec<Candidate>,
    /// Reserved instants of each budget (µs), past and future.
    instants: Vec<Vec<Micros>>,
    /// Learned lower limit of each budget, if any (0: admits nothing).
    learned: Vec<Option<u32>>,
    /// "Not before" (µs) of each client, of the route and of the pool.
    client_cool: Vec<Option<Micros>>,
    route_cool: Option<Micros>,
    pool_cool: Option<Micros>,
    max_wait: Duration,
    /// The request's lane's share (issue 15): of every budget but a caller's quota.
    share: Share,
}

/// What the request of `case` may fill of budget `b`: its effective limit (configured or
/// learned, the lower), times the lane's share unless it is a caller's quota.
fn fill_limit(case: &ChoiceCase, b: usize) -> u32 {
    let d = &case.defs[b];
    let limit = case.learned[b].map_or(d.limit, |l| l.min(d.limit));
    if Share::applies_to(d.kind) {
        case.share.of(limit)
    } else {
        limit
    }
}

/// What window.rs decides for `case` at `now`: the chosen candidate, its instant, the
/// binding kind and position as the script numbers them (1 budget, 2 client, 3 route,
/// 4 pool cool-down); `None` when no candidate is ever admitted.
fn reference(case: &ChoiceCase, now: Micros) -> Option<(usize, Micros, i64, usize)> {
    use gcpool::budget::window::{Window, joint_earliest};
    let windows: Vec<Window> = case
        .defs
        .iter()
        .enumerate()
        .map(|(b, d)| {
            let limit = case.learned[b].map_or(d.limit, |l| l.min(d.limit));
            let length = us(d.window);
            let mut w = Window::new(limit, length);
            for &t in &case.instants[b] {
                w.reserve(t);
            }
            w.prune(now);
            w
        })
        .collect();
    let mut best: Option<(usize, Micros, i64, usize)> = None;
    for (c, candidate) in case.candidates.iter().enumerate() {
        let (mut from, mut kind) = (now, 0);
        for (cool, k) in [
            (case.client_cool[candidate.client], 2),
            (case.route_cool, 3),
            (case.pool_cool, 4),
        ] {
            if let Some(until) = cool.filter(|&u| u > from) {
                (from, kind) = (until, k);
            }
        }
        let within = candidate
            .budgets
            .iter()
            .map(|&b| (&windows[b], fill_limit(case, b)));
        let Some((at, binding)) = joint_earliest(within, from) else {
            continue;
        };
        let (kind, pos) = binding.map_or((kind, 0), |pos| (1, pos));
        if best.is_none_or(|(_, best_at, _, _)| at < best_at) {
            best = Some((c, at, kind, pos));
        }
    }
    best
}

/// A random case: 1–12 clients (or 50), each with a token budget, under 0–2 shared
/// budgets (org, org-scope route), sometimes an own extra budget or its shared ones in
/// another order; candidates a random subset in random order; windows full or not, with
/// future reservations; learned limits; client, route and pool cool-downs.
fn choice_case(seed: u64, now: Micros) -> ChoiceCase {
    use rand::rngs::StdRng;
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng, seq::SliceRandom};
    let mut rng = StdRng::seed_from_u64(seed);
    let n = if rng.random_bool(0.25) {
        50
    } else {
        rng.random_range(1..=12)
    };
    let clients: Vec<String> = (0..n).map(|c| format!("c{c}")).collect();
    let mut defs = Vec::new();
    let budget = |defs: &mut Vec<BudgetDef>, rng: &mut StdRng, kind, name: String| {
        let limit = rng.random_range(1..=5);
        let window = Duration::from_millis(rng.random_range(100..2_000));
        defs.push(def(kind, &name, limit, window));
        defs.len() - 1
    };
    let mut shared: Vec<usize> = (0..rng.random_range(0..=2))
        .map(|i| {
            let (kind, name) = if i == 0 {
                (BudgetKind::Org, "org".to_owned())
            } else {
                (BudgetKind::Endpoint, "endpoint:PUT /x/{id}".to_owned())
            };
            budget(&mut defs, &mut rng, kind, name)
        })
        .collect();
    if rng.random_bool(0.3) {
        // A caller's quota comes first; no lane's share applies to it.
        let quota = budget(
            &mut defs,
            &mut rng,
            BudgetKind::Caller,
            "caller:c".to_owned(),
        );
        shared.insert(0, quota);
    }
    let tokens: Vec<usize> = (0..n)
        .map(|c| {
            budget(
                &mut defs,
                &mut rng,
                BudgetKind::Token,
                format!("token:c{c}"),
            )
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order.truncate(rng.random_range(1..=n));
    let candidates: Vec<Candidate> = order
        .into_iter()
        .map(|client| {
            let mut budgets = shared.clone();
            budgets.push(tokens[client]);
            if rng.random_bool(0.1) {
                let extra = budget(
                    &mut defs,
                    &mut rng,
                    BudgetKind::Endpoint,
                    format!("x:{client}"),
                );
                budgets.push(extra);
            }
            if rng.random_bool(0.1) {
                budgets.shuffle(&mut rng);
            }
            Candidate { client, budgets }
        })
        .collect();
    let instants = defs
        .iter()
        .map(|d| {
            let w = us(d.window);
            let count = rng.random_range(0..=d.limit as usize + 2);
            (0..count)
                .map(|_| now - w + rng.random_range(0..2 * w))
                .collect()
        })
        .collect();
    let learned = defs
        .iter()
        .map(|d| rng.random_bool(0.15).then(|| rng.random_range(0..=d.limit)))
        .collect();
    let cool = |p: f64, rng: &mut StdRng| {
        rng.random_bool(p)
            .then(|| now - 500_000 + rng.random_range(0..2_000_000))
    };
    let share = if rng.random_bool(0.5) {
        Share::WHOLE
    } else {
        Share::from_permille(*[900u16, 500, 334, 250].choose(&mut rng).expect("not empty"))
    };
    ChoiceCase {
        share,
        client_cool: (0..n).map(|_| cool(0.3, &mut rng)).collect(),
        route_cool: cool(0.15, &mut rng),
        pool_cool: cool(0.1, &mut rng),
        max_wait: Duration::from_millis(rng.random_range(0..2_000)),
        defs,
        clients,
        candidates,
        instants,
        learned,
    }
}

/// Writes `case`'s state under `store`'s prefix.
async fn write_state(
    con: &mut redis::aio::MultiplexedConnection,
    store: &RedisStore,
    case: &ChoiceCase,
    route: gcpool::routes::RouteId,
) {
    let [cool, limits, _] = store.shared_keys();
    let mut pipe = redis::pipe();
    for (b, instants) in case.instants.iter().enumerate() {
        let key = store
            .budget_key(b)
            .expect("every budget of the case has a key");
        for (i, &t) in instants.iter().enumerate() {
            pipe.zadd(&key, format!("{t}-s{i}"), t).ignore();
        }
        if let Some(l) = case.learned[b] {
            pipe.hset(limits, &case.defs[b].name, l).ignore();
        }
    }
    for (c, until) in case.client_cool.iter().enumerate() {
        if let Some(until) = until {
            pipe.hset(cool, format!("client:c{c}"), until).ignore();
        }
    }
    if let Some(until) = case.route_cool {
        pipe.hset(cool, format!("route:{}", route.index()), until)
            .ignore();
    }
    if let Some(until) = case.pool_cool {
        pipe.hset(cool, "pool", until).ignore();
    }
    let () = pipe
        .query_async(con)
        .await
        .expect("the test's redis-server takes the state");
}

/// `(count from now - window on, latest)` of each of `budgets` in `case` after an
/// admission at `admitted` (if any), as the script reports them: a budget whose window it
/// found full was pruned first, so its latest may be gone.
fn expected_usage(
    case: &ChoiceCase,
    budgets: &[usize],
    now: Micros,
    admitted: Option<Micros>,
) -> Vec<(u32, Micros)> {
    budgets
        .iter()
        .map(|&b| {
            let w = us(case.defs[b].window);
            let pruned = case.instants[b].len() >= fill_limit(case, b) as usize;
            let all: Vec<Micros> = case.instants[b]
                .iter()
                .copied()
                .filter(|&t| !pruned || t + w > now)
                .chain(admitted)
                .collect();
            let count = all.iter().filter(|&&t| t + w > now).count();
            (
                u32::try_from(count).expect("a handful of instants"),
                all.into_iter().max().unwrap_or(0),
            )
        })
        .collect()
}

/// The old script on `case`, called as `RedisStore` called it (every candidate's budgets in
/// full): its raw answer.
async fn admit_before(
    con: &mut redis::aio::MultiplexedConnection,
    store: &RedisStore,
    case: &ChoiceCase,
    route: Option<gcpool::routes::RouteId>,
) -> Vec<redis::Value> {
    let [cool, limits, seq] = store.shared_keys();
    let mut touched: Vec<usize> = Vec::new();
    for c in &case.candidates {
        for &b in &c.budgets {
            if !touched.contains(&b) {
                touched.push(b);
            }
        }
    }
    let position = |b: usize| touched.iter().position(|&t| t == b).expect("touched") + 1;
    let script = redis::Script::new(ADMIT_BEFORE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(cool)
        .key(limits)
        .key(seq)
        .key(store.sync_key());
    for &b in &touched {
        invocation.key(
            store
                .budget_key(b)
                .expect("every budget of the case has a key"),
        );
    }
    invocation
        .arg("*")
        .arg(us(case.max_wait))
        .arg(
            route
                .map(|r| format!("route:{}", r.index()))
                .unwrap_or_default(),
        )
        .arg(touched.len());
    for &b in &touched {
        let d = &case.defs[b];
        invocation.arg(&d.name).arg(d.limit).arg(us(d.window));
    }
    invocation.arg(case.candidates.len());
    for c in &case.candidates {
        invocation
            .arg(format!("client:c{}", c.client))
            .arg(c.budgets.len());
        for &b in &c.budgets {
            invocation.arg(position(b));
        }
    }
    invocation
        .invoke_async(con)
        .await
        .expect("the script before runs on the test's redis-server")
}

/// Reads an integer out of a script reply (an integer, or a number as a string).
fn int_of(value: &redis::Value) -> i64 {
    match value {
        redis::Value::Int(i) => *i,
        redis::Value::BulkString(b) => {
            let text = std::str::from_utf8(b).expect("numbers are ASCII");
            text.parse()
                .unwrap_or_else(|_| text.parse::<f64>().expect("a number").round() as i64)
        }
        other => panic!("not a number: {other:?}"),
    }
}

/// Issue 13 reads only the candidates that can win; the choice must stay the old one: on
/// varied states (full and free windows, future reservations, learned limits, cool-downs,
/// 1 to 50 candidates, shared budgets first or not), the store and the script it replaced
/// both decide as window.rs does at the instant each read from Redis: the soonest joint
/// instant, ties to the first candidate, the same binding, the same fleet-wide counts.
#[tokio::test]
async fn the_script_chooses_as_window_rs_and_as_the_script_before() {
    let server = RedisServer::start();
    let mut con = raw(&server).await;
    let route = gcpool::routes::RouteTable::genesys()
        .find_template(&http::Method::PUT, "/api/v2/architect/ivrs/{ivrId}")
        .unwrap();
    let mut read_more = 0;
    for seed in 0..150u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
        let case = choice_case(seed, secs * 1_000_000 + micros);
        let route_asked = (seed % 3 == 0).then_some(route);
        let ctx = format!("seed {seed}: {case:?}");

        let store = connect(
            &server,
            &format!("choice-{seed}"),
            &case.defs,
            &case.clients,
        )
        .await;
        write_state(&mut con, &store, &case, route).await;
        let answer = store
            .admit_shared(
                AdmitRequest {
                    candidates: &case.candidates,
                    route: route_asked,
                    max_wait: case.max_wait,
                    share: case.share,
                },
                "*",
            )
            .await
            .unwrap();
        let SharedAdmit::Decided {
            decision,
            now,
            usage,
        } = answer
        else {
            panic!("{ctx}: a store on its own always decides, got {answer:?}");
        };
        let case_route = ChoiceCase {
            route_cool: case.route_cool.filter(|_| route_asked.is_some()),
            ..case
        };
        let case = &case_route;
        let expected = reference(case, now);
        let name = |c: usize, kind: i64, pos: usize| match kind {
            1 => Some(Binding::Budget(case.candidates[c].budgets[pos])),
            2 => Some(Binding::ClientCoolDown),
            3 => Some(Binding::RouteCoolDown),
            4 => Some(Binding::PoolCoolDown),
            _ => None,
        };
        match (expected, &decision) {
            (None, Decision::Refused(r)) => {
                assert_eq!((r.wait, r.binding), (None, None), "{ctx}");
                assert!(usage.is_empty(), "{ctx}");
            }
            (Some((c, at, kind, pos)), _) => {
                let wait = Duration::from_micros(at - now);
                let admitted = wait <= case.max_wait;
                match &decision {
                    Decision::Admitted(r) if admitted => {
                        assert_eq!(r.candidate, c, "{ctx}");
                        assert_eq!((r.at_micros(), r.wait), (at, wait), "{ctx}");
                        let binding = if at > now { name(c, kind, pos) } else { None };
                        assert_eq!(r.binding, binding, "{ctx}");
                    }
                    Decision::Refused(r) if !admitted => {
                        assert_eq!(
                            (r.wait, r.binding),
                            (Some(wait), name(c, kind, pos)),
                            "{ctx}"
                        );
                    }
                    other => panic!("{ctx}: expected {expected:?} at now {now}, got {other:?}"),
                }
                let got: Vec<(u32, Micros)> = usage.iter().map(|u| (u.count, u.last)).collect();
                assert_eq!(
                    got,
                    expected_usage(
                        case,
                        &case.candidates[c].budgets,
                        now,
                        admitted.then_some(at)
                    ),
                    "{ctx}"
                );
                if c > 0 {
                    read_more += 1;
                }
            }
            (None, other) => panic!("{ctx}: no candidate can ever be admitted, got {other:?}"),
        }

        if case.share != Share::WHOLE {
            // The script before knew no lanes.
            continue;
        }
        let before = connect(
            &server,
            &format!("before-{seed}"),
            &case.defs,
            &case.clients,
        )
        .await;
        write_state(&mut con, &before, case, route).await;
        let reply = admit_before(&mut con, &before, case, route_asked).await;
        let now = u64::try_from(int_of(&reply[7])).unwrap();
        let status = int_of(&reply[0]);
        match reference(case, now) {
            None => assert_eq!(status, -1, "{ctx}"),
            Some((c, at, kind, pos)) => {
                let admitted = at - now <= us(case.max_wait);
                let got: Vec<i64> = reply[..5].iter().map(int_of).collect();
                let wanted = [
                    i64::from(admitted),
                    c as i64,
                    (at - now) as i64,
                    kind,
                    pos as i64,
                ];
                assert_eq!(got, wanted, "{ctx}: the script before, at now {now}");
            }
        }
    }
    assert!(
        read_more > 10,
        "cases must also choose past the first candidate"
    );
}

/// The lane rule on Redis (issue 15): requests of random lanes (shares 1.0, 0.9, 0.5, 1/3),
/// some queued, some given back, over a caller's quota, the org cap, a route budget and two
/// tokens: in every window of every budget, requests whose share fills `k` of it never hold
/// more than `k` (counted over every reservation the script made, whatever its lane), and
/// the caller's quota, which no share shrinks, never more than its limit.
#[tokio::test]
async fn no_lane_fills_more_than_its_share_on_redis() {
    use gcpool::budget::window::share_overrun;
    use rand::rngs::StdRng;
    use rand::seq::IndexedRandom;
    use rand::{Rng, SeedableRng};
    let server = RedisServer::start();
    let w = Duration::from_millis(300);
    let defs = vec![
        def(BudgetKind::Caller, "caller:x", 9, w),
        def(BudgetKind::Org, "org", 10, w),
        def(BudgetKind::Endpoint, "endpoint:GET /x", 7, w),
        def(BudgetKind::Token, "token:a", 4, w),
        def(BudgetKind::Token, "token:b", 5, w),
    ];
    let clients = vec!["a".to_owned(), "b".to_owned()];
    let mut refused_by_share = 0;
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let store = connect(&server, &format!("lanes-{seed}"), &defs, &clients).await;
        let mut admitted: Vec<Vec<(Micros, u32)>> = vec![Vec::new(); defs.len()];
        let mut live: Vec<(Reservation, Vec<usize>)> = Vec::new();
        for _ in 0..70 {
            if rng.random_bool(0.1) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
            }
            if rng.random_bool(0.08) && !live.is_empty() {
                let (reservation, budgets) = live.swap_remove(rng.random_range(0..live.len()));
                let at = reservation.at_micros();
                store.release(reservation).await;
                for b in budgets {
                    let i = admitted[b]
                        .iter()
                        .position(|&(t, _)| t == at)
                        .expect("a reservation given back was admitted");
                    admitted[b].remove(i);
                }
                continue;
            }
            let share = Share::from_permille(
                *[1000u16, 900, 500, 334]
                    .choose(&mut rng)
                    .expect("not empty"),
            );
            let quota: Vec<usize> = if rng.random_bool(0.5) {
                vec![0]
            } else {
                vec![]
            };
            let candidates: Vec<Candidate> = [(0, 3), (1, 4)]
                .into_iter()
                .map(|(client, token)| Candidate {
                    client,
                    budgets: quota.iter().copied().chain([1, 2, token]).collect(),
                })
                .collect();
            let max_wait = *[Duration::ZERO, Duration::from_millis(250)]
                .choose(&mut rng)
                .expect("not empty");
            let decision = store
                .admit(AdmitRequest {
                    candidates: &candidates,
                    route: None,
                    max_wait,
                    share,
                })
                .await
                .expect("the test's redis-server answers");
            match decision {
                Decision::Admitted(reservation) => {
                    let budgets = candidates[reservation.candidate].budgets.clone();
                    for &b in &budgets {
                        let d = &defs[b];
                        let fill = if Share::applies_to(d.kind) {
                            share.of(d.limit)
                        } else {
                            d.limit
                        };
                        admitted[b].push((reservation.at_micros(), fill));
                    }
                    live.push((reservation, budgets));
                }
                Decision::Refused(_) if share != Share::WHOLE => refused_by_share += 1,
                Decision::Refused(_) => {}
            }
        }
        for (b, admissions) in admitted.iter().enumerate() {
            assert!(
                admissions.len() > 3,
                "seed {seed}: budget {} saw too few admissions to test anything",
                defs[b].name
            );
            if let Some(overrun) = share_overrun(admissions, us(w)) {
                panic!("seed {seed}, budget {}: {overrun}", defs[b].name);
            }
        }
    }
    assert!(
        refused_by_share > 20,
        "the shares must bind: {refused_by_share}"
    );
}
