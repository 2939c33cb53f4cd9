use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::flight::Waited;
use super::*;

fn key(target: &str) -> Key {
    Key::new(&Method::GET, target.as_bytes(), &HeaderMap::new())
}

fn gzip_key(target: &str) -> Key {
    let mut headers = HeaderMap::new();
    headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
    Key::new(&Method::GET, target.as_bytes(), &headers)
}

fn entry(body: usize, fresh_for: Duration, stale_for: Duration) -> Arc<Entry> {
    Arc::new(Entry {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: Bytes::from(vec![b'x'; body]),
        stored_at: Instant::now(),
        upstream_age: None,
        kept_against_headers: false,
        fresh_for,
        stale_for,
    })
}

fn answer_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, HeaderValue::from_static(value));
    }
    headers
}

// === storable ===

#[test]
fn only_plain_200_answers_are_kept_unless_the_operator_ignores_upstream_headers() {
    let k = key("/api/v2/routing/queues/q1");
    let ok = |pairs: &[(&'static str, &'static str)], ignore| {
        storable(&k, StatusCode::OK, &answer_headers(pairs), ignore)
    };
    assert_eq!(ok(&[("content-type", "application/json")], false), Ok(()));
    for status in [
        StatusCode::NOT_FOUND,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::NO_CONTENT,
    ] {
        assert_eq!(
            storable(&k, status, &HeaderMap::new(), true),
            Err(NotStored::Status),
            "{status}"
        );
    }
    assert_eq!(
        ok(&[("set-cookie", "a=b")], false),
        Err(NotStored::SetsCookie)
    );
    for cc in [
        "private",
        "no-store",
        "no-cache, no-store, must-revalidate",
        "max-age=0, PRIVATE=\"x-a\"",
    ] {
        let headers = answer_headers(&[("cache-control", cc)]);
        assert_eq!(
            storable(&k, StatusCode::OK, &headers, false),
            Err(NotStored::Private),
            "{cc}"
        );
        assert_eq!(storable(&k, StatusCode::OK, &headers, true), Ok(()), "{cc}");
    }
    assert_eq!(ok(&[("cache-control", "max-age=60")], false), Ok(()));
    assert_eq!(ok(&[("vary", "Accept-Encoding, Accept")], false), Ok(()));
    assert_eq!(ok(&[("vary", "Origin")], false), Err(NotStored::Varies));
    assert_eq!(ok(&[("vary", "*")], false), Err(NotStored::Varies));
    // Not text: read as no-store.
    let mut odd = HeaderMap::new();
    odd.insert(
        "cache-control",
        HeaderValue::from_bytes(b"max-age=1, \xff").expect("an opaque value"),
    );
    assert_eq!(
        storable(&k, StatusCode::OK, &odd, false),
        Err(NotStored::Private)
    );
}

#[test]
fn a_gzip_answer_is_kept_only_for_callers_that_accept_gzip() {
    let gzip = answer_headers(&[("content-encoding", "gzip")]);
    assert_eq!(
        storable(&gzip_key("/x"), StatusCode::OK, &gzip, true),
        Ok(())
    );
    assert_eq!(
        storable(&key("/x"), StatusCode::OK, &gzip, true),
        Err(NotStored::Encoding)
    );
    let br = answer_headers(&[("content-encoding", "br")]);
    assert_eq!(
        storable(&gzip_key("/x"), StatusCode::OK, &br, true),
        Err(NotStored::Encoding)
    );
    let identity = answer_headers(&[("content-encoding", "identity")]);
    assert_eq!(
        storable(&key("/x"), StatusCode::OK, &identity, false),
        Ok(())
    );
}

// === entries ===

/// How `e` is judged under the policy it was kept with.
fn judged(e: &Entry, now: Instant) -> Freshness {
    let policy = RoutePolicy {
        ttl: e.fresh_for,
        stale_if_limited: e.stale_for,
        ignore_upstream_cache_headers: false,
    };
    policy.freshness(e, now)
}

#[test]
fn an_entry_is_fresh_then_stale_then_expired() {
    let e = entry(10, Duration::from_secs(30), Duration::from_secs(300));
    let at = |secs| e.stored_at + Duration::from_secs(secs);
    assert_eq!(judged(&e, at(0)), Freshness::Fresh);
    assert_eq!(judged(&e, at(29)), Freshness::Fresh);
    assert_eq!(judged(&e, at(30)), Freshness::Stale);
    assert_eq!(judged(&e, at(329)), Freshness::Stale);
    assert_eq!(judged(&e, at(330)), Freshness::Expired);
    assert_eq!(e.age(at(42)), Duration::from_secs(42));
    let no_stale = entry(10, Duration::from_secs(30), Duration::ZERO);
    assert_eq!(
        judged(&no_stale, no_stale.stored_at + Duration::from_secs(30)),
        Freshness::Expired
    );
}

// === store ===

#[test]
fn a_flood_of_distinct_keys_never_holds_more_entries_or_bytes_than_configured() {
    let (max_entries, max_bytes) = (100, 64 * 1024);
    let store = Store::new(max_entries, max_bytes);
    let long = Duration::from_secs(600);
    for i in 0..5_000usize {
        // Tiny bodies first (the entry bound binds), then up to ~3 KiB (the byte bound).
        let body = if i < 2_500 { i % 50 } else { (i * 37) % 3_000 };
        assert!(store.put(key(&format!("/api/v2/users/u{i}")), entry(body, long, long)));
        assert!(
            store.entries() <= max_entries,
            "{} entries after {i} inserts",
            store.entries()
        );
        assert!(
            store.bytes() <= max_bytes,
            "{} bytes after {i} inserts",
            store.bytes()
        );
    }
    assert!(store.entries() > 0, "the store keeps something");
}

#[test]
fn the_byte_count_follows_replacements_and_removals() {
    let store = Store::new(1_000, 1 << 20);
    let long = Duration::from_secs(600);
    let k = key("/api/v2/routing/queues/q1");
    assert!(store.put(k.clone(), entry(1_000, long, long)));
    let one = store.bytes();
    assert_eq!(one, (k.len() + 1_000) as u64);
    assert!(store.put(k.clone(), entry(400, long, long)));
    assert_eq!(store.bytes(), (k.len() + 400) as u64, "a replacement");
    assert_eq!(store.entries(), 1);
    assert_eq!(store.get(&k).map(|e| e.body.len()), Some(400));
    store.remove(&k);
    assert_eq!(store.bytes(), 0);
    assert_eq!(store.entries(), 0);
    assert!(store.get(&k).is_none());
}

#[test]
fn an_entry_over_a_sixteenth_of_the_bytes_is_not_kept() {
    let store = Store::new(1_000, 16 * 1024);
    let long = Duration::from_secs(600);
    assert!(!store.put(key("/big"), entry(1024 + 1, long, long)));
    assert!(store.get(&key("/big")).is_none());
    assert_eq!(store.bytes(), 0);
    assert!(store.put(key("/small"), entry(900, long, long)));
}

#[test]
fn an_entry_is_gone_once_fresh_and_stale_time_are_over() {
    let store = Store::new(10, 1 << 20);
    let k = key("/api/v2/routing/queues/q1");
    assert!(store.put(
        k.clone(),
        entry(10, Duration::from_millis(40), Duration::from_millis(40))
    ));
    std::thread::sleep(Duration::from_millis(50));
    let stale = store.get(&k).expect("kept while stale");
    assert_eq!(judged(&stale, Instant::now()), Freshness::Stale);
    std::thread::sleep(Duration::from_millis(60));
    assert!(store.get(&k).is_none(), "expired");
}

// === flights ===

#[tokio::test]
async fn of_concurrent_identical_requests_one_leads_and_the_others_get_its_answer() {
    let flights = Flights::new();
    let k = key("/api/v2/routing/queues/q1");
    let mut leaders = Vec::new();
    let mut followers = Vec::new();
    for _ in 0..100 {
        match flights.join(&k, 1000) {
            Role::Leader(lead) => leaders.push(lead),
            Role::Follower(follow) => followers.push(tokio::spawn(follow.wait())),
            Role::Alone => panic!("one lane: every request leads or follows"),
        }
    }
    assert_eq!(leaders.len(), 1);
    // Another key flies on its own.
    assert!(matches!(
        flights.join(&key("/other"), 1000),
        Role::Leader(_)
    ));
    let answer = entry(5, Duration::from_secs(1), Duration::ZERO);
    leaders.pop().expect("a leader").land(answer.clone());
    for follower in followers {
        match follower.await.expect("a follower") {
            Waited::Answered(got) => assert!(Arc::ptr_eq(&got, &answer)),
            other => panic!("a follower got {other:?}"),
        }
    }
    assert_eq!(flights.flying(), 0);
    assert!(
        matches!(flights.join(&k, 1000), Role::Leader(_)),
        "once landed, the next request leads a new flight"
    );
}

#[tokio::test]
async fn a_leader_that_fails_hands_over_to_a_follower() {
    let flights = Flights::new();
    let k = key("/api/v2/routing/queues/q1");
    let Role::Leader(lead) = flights.join(&k, 1000) else {
        panic!("the first request leads");
    };
    let followers: Vec<_> = (0..3)
        .map(|_| match flights.join(&k, 1000) {
            Role::Follower(follow) => tokio::spawn(follow.wait()),
            Role::Leader(_) | Role::Alone => panic!("a second leader, or none"),
        })
        .collect();
    // The leader's caller went away, or its upstream call failed.
    drop(lead);
    for follower in followers {
        assert!(matches!(
            follower.await.expect("a follower"),
            Waited::LeaderLost
        ));
    }
    // They join again: one leads, the others follow it.
    let Role::Leader(next) = flights.join(&k, 1000) else {
        panic!("a follower takes over");
    };
    let Role::Follower(follow) = flights.join(&k, 1000) else {
        panic!("the others follow the new leader");
    };
    next.land(entry(1, Duration::ZERO, Duration::ZERO));
    assert!(matches!(follow.wait().await, Waited::Answered(_)));
}

#[tokio::test]
async fn a_declined_flight_sends_its_followers_upstream_on_their_own() {
    let flights = Flights::new();
    let k = key("/api/v2/routing/queues/q1");
    let Role::Leader(lead) = flights.join(&k, 1000) else {
        panic!("the first request leads");
    };
    let Role::Follower(follow) = flights.join(&k, 1000) else {
        panic!("the second follows");
    };
    lead.decline();
    assert!(matches!(follow.wait().await, Waited::OnYourOwn));
    assert_eq!(flights.flying(), 0);
}

#[tokio::test]
async fn a_follower_that_joins_just_before_the_landing_still_gets_it() {
    let flights = Flights::new();
    let k = key("/x");
    let Role::Leader(lead) = flights.join(&k, 1000) else {
        panic!("the first request leads");
    };
    let Role::Follower(follow) = flights.join(&k, 1000) else {
        panic!("the second follows");
    };
    // Landed before the follower starts waiting: the landing is not missed.
    lead.land(entry(1, Duration::ZERO, Duration::ZERO));
    assert!(matches!(follow.wait().await, Waited::Answered(_)));
}

/// A request follows no flight of a lower lane's leader (a smaller share of every
/// budget, SPEC §12: that leader may wait for a slot the higher lane has at once); it
/// goes alone. Lanes at or below the leader's follow it, as before.
#[test]
fn no_request_follows_a_lower_lanes_leader() {
    let flights = Flights::new();
    let k = key("/x");
    let (batch, standard) = (500, 900);
    let Role::Leader(lead) = flights.join(&k, standard) else {
        panic!("the first request leads");
    };
    assert!(matches!(flights.join(&k, 1000), Role::Alone));
    assert!(matches!(flights.join(&k, standard), Role::Follower(_)));
    assert!(matches!(flights.join(&k, batch), Role::Follower(_)));
    drop(lead);
    assert_eq!(flights.flying(), 0, "the alone ones never entered the map");
}
