//! Shared pieces of the response-cache tests (`tests/cache.rs`, `tests/cache_attack.rs`):
//! a cached route's config, a simulator with gcpool in front, a GET of the cached queue.

use std::net::SocketAddr;

use gcpool::app::Gcpool;
use gcpool::sim::{SimOptions, Simulator};
use http::Method;

use super::{Answer, HttpClient, THREE_CLIENTS, start_gcpool};

/// A path of the cached route.
pub const QUEUE: &str = "/api/v2/routing/queues/q-1";

/// `cache:` with the queue route at `ttl` and `stale`; upstream cache headers (the
/// simulator's no-store, as Genesys') ignored when `ignore`.
pub fn cache_yaml(ttl: &str, stale: &str, ignore: bool) -> String {
    format!(
        "cache:\n  routes:\n    - route: \"GET /api/v2/routing/queues/{{queueId}}\"\n      \
         ttl: {ttl}\n      stale_if_limited: {stale}\n      \
         ignore_upstream_cache_headers: {ignore}\n"
    )
}

/// The simulator (3 clients), gcpool in front of it with `extra` config, its API address
/// and a client.
pub async fn start_cached(extra: &str) -> (Simulator, Gcpool, SocketAddr, HttpClient) {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let gcpool = start_gcpool(&sim.base_url(), &THREE_CLIENTS, extra).await;
    let api = gcpool.api_addr();
    (sim, gcpool, api, HttpClient::new())
}

/// `GET {QUEUE}` through gcpool at `api` with `headers`.
pub async fn get(client: &HttpClient, api: SocketAddr, headers: &[(&str, &str)]) -> Answer {
    client
        .request(Method::GET, &format!("http://{api}{QUEUE}"), headers, "")
        .await
}

/// `GET {QUEUE}` with `headers` in a task of its own (a flight's leader, say), started now.
pub fn spawn_get(
    client: &HttpClient,
    api: SocketAddr,
    headers: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<Answer> {
    let client = client.clone();
    tokio::spawn(async move { get(&client, api, headers).await })
}

/// `x-gcpool-cache` of an answer.
pub fn cache_result(answer: &Answer) -> &str {
    answer.header("x-gcpool-cache")
}
