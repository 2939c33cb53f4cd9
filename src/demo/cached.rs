//! The demo's cached route (SPEC §11): after the two phases, bursts of identical lookups of
//! one queue, as a Data Action that looks the queue up on every call makes them, through a
//! gcpool that caches `GET /api/v2/routing/queues/{queueId}`, in front of a fresh simulator
//! (so the phases' figures stay as they were). What it shows is counted, not assumed: the
//! simulator's count of calls that reached it, and each answer's `x-gcpool-cache`.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde::Serialize;

use super::{HttpClient, Plan, start_gcpool};

/// The cached route, as `cache.routes[].route` names it.
pub(super) const ROUTE: &str = "GET /api/v2/routing/queues/{queueId}";
/// How long an answer stays fresh in the demo's config.
pub(super) const TTL: &str = "30s";
/// Bursts of lookups, and the pause between them.
const BURSTS: u32 = 3;
const PAUSE: Duration = Duration::from_millis(200);

/// What the cached route's lookups got.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CachedRouteReport {
    pub route: String,
    pub ttl: String,
    pub bursts: u32,
    /// Lookups sent (`bursts` × the demo's `--burst`).
    pub lookups: u64,
    /// Calls that reached the simulator.
    pub upstream_calls: u64,
    /// Answers by `x-gcpool-cache`.
    pub miss: u64,
    pub coalesced: u64,
    pub hit: u64,
    /// Answers that were not a 2xx, or had no `x-gcpool-cache` (none expected).
    pub other: u64,
}

/// Sends the lookups and counts what answered them.
pub(super) async fn run(
    args: &super::DemoArgs,
    plan: &Plan,
    http: &HttpClient,
) -> anyhow::Result<CachedRouteReport> {
    let (sim, gcpool) = start_gcpool(args, plan).await?;
    let url = format!(
        "http://{}/api/v2/routing/queues/demo-queue",
        gcpool.api_addr()
    );
    let mut report = CachedRouteReport {
        route: ROUTE.to_owned(),
        ttl: TTL.to_owned(),
        bursts: BURSTS,
        ..CachedRouteReport::default()
    };
    for burst in 0..BURSTS {
        if burst > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        let mut lookups = tokio::task::JoinSet::new();
        for _ in 0..plan.burst {
            let (http, url) = (http.clone(), url.clone());
            lookups.spawn(async move { lookup(&http, &url).await });
        }
        while let Some(result) = lookups.join_next().await {
            report.lookups += 1;
            match result.ok().flatten().as_deref() {
                Some("miss") => report.miss += 1,
                Some("coalesced") => report.coalesced += 1,
                Some("hit") => report.hit += 1,
                _ => report.other += 1,
            }
        }
    }
    report.upstream_calls = sim.stats().accepted;
    gcpool.shutdown().trigger();
    gcpool.wait().await;
    sim.shutdown().await;
    Ok(report)
}

/// One lookup's `x-gcpool-cache`, when it was answered 2xx.
async fn lookup(http: &HttpClient, url: &str) -> Option<String> {
    let request = Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let response = http.request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let result = response.headers().get(crate::proxy::CACHE_HEADER)?;
    result.to_str().ok().map(str::to_owned)
}

impl CachedRouteReport {
    /// The report's lines about the cached route (at most 100 columns).
    pub fn lines(&self) -> Vec<String> {
        let other = if self.other > 0 {
            format!(", {} other", self.other)
        } else {
            String::new()
        };
        vec![
            format!(
                "Cached route {} (ttl {}): {} identical lookups",
                self.route, self.ttl, self.lookups
            ),
            format!(
                "in {} bursts, as a Data Action that looks the queue up on each call: {} \
                 upstream call{};",
                self.bursts,
                self.upstream_calls,
                if self.upstream_calls == 1 { "" } else { "s" }
            ),
            format!(
                "{} miss, {} coalesced (waited for it), {} hits (no budget spent){other}.",
                self.miss, self.coalesced, self.hit
            ),
        ]
    }
}
