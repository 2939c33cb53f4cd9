//! `gcpool demo`: the simulator, the proxy and a bursty load generator in one process.
//!
//! Two phases with the same clients, the same load and the same measured time: first the
//! load generator uses the pool's OAuth clients round-robin straight at a simulator
//! ("without gcpool"), then it sends the same load through gcpool in front of a fresh
//! simulator ("with gcpool"). Then bursts of identical lookups show the response cache
//! (`cached`). Uses only the public API of `sim`, `app` and `proxy`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::app::Gcpool;
use crate::budget::per_window;
use crate::config::{Config, Env, parse_duration};
use crate::sim::{SimOptions, Simulator};

mod cached;
mod live;
mod report;
mod svg;

pub use cached::CachedRouteReport;
pub use report::{AfterEnd, CapacityFigures, DemoReport, PhaseReport, Second};

use live::{Display, Live};

/// Flags of `gcpool demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// OAuth clients in the pool (both phases use the same ones).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub clients: u8,
    /// Length of every limit window (simulator and gcpool alike).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub window: Duration,
    /// Requests per token per window (the simulator's limit and gcpool's token budget).
    #[arg(long, default_value_t = 10)]
    pub token_limit: u32,
    /// How long each phase sends load and is measured.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered load, requests per second on average.
    #[arg(long, default_value_t = 12.0)]
    pub rate: f64,
    /// Requests per burst: the load arrives in bursts of this size.
    #[arg(long, default_value_t = 24)]
    pub burst: u32,
    /// gcpool's guard time (see `budgets.guard`); default: the config default.
    #[arg(long, value_parser = parse_duration)]
    pub guard: Option<Duration>,
    /// Longest a request waits in gcpool's queue.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// Plain lines instead of a redrawn summary.
    #[arg(long)]
    pub plain: bool,
    /// Print the closing report as JSON on stdout (for scripts).
    #[arg(long)]
    pub json: bool,
    /// Also write the per-second timeline of both phases to FILE as an SVG picture.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Skip the "without gcpool" phase.
    #[arg(long)]
    pub skip_baseline: bool,
}

/// What the demo needs from the flags, checked once.
#[derive(Debug, Clone)]
struct Plan {
    clients: usize,
    window: Duration,
    token_limit: u32,
    per_minute: u32,
    duration: Duration,
    burst: u32,
    burst_every: Duration,
}

/// Where the load goes.
#[derive(Debug, Clone)]
enum Target {
    /// Straight at the simulator; request `n` carries `tokens[n % tokens.len()]`.
    Direct { base: String, tokens: Arc<[String]> },
    /// Through gcpool (no credentials); `names` are its client names, in order.
    Gcpool { base: String, names: Arc<[String]> },
}

/// How one request ended, from the caller's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    Upstream429,
    Local429,
    Other,
}

/// One answer the load generator got.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// Since the phase started.
    at: Duration,
    outcome: Outcome,
    /// Index of the client that carried it, when known.
    client: Option<usize>,
    /// From sending to the answer's head.
    latency: Duration,
    /// gcpool's `x-gcpool-wait-ms`: the part of `latency` spent in its queue.
    queued_ms: Option<u64>,
}

/// Everything a phase observed; shared by the request tasks and the live view.
#[derive(Debug, Default)]
struct Record {
    sent: Vec<Duration>,
    answers: Vec<Answer>,
    /// The simulator's upstream 429 count at each whole second inside the measured time.
    upstream_429_each_second: Vec<u64>,
    /// … when the measured time ended, and once the last answer arrived.
    upstream_429_at_end: u64,
    upstream_429_after_drain: u64,
}

#[derive(Debug)]
struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type Shared = Arc<Mutex<Record>>;

/// Runs the demo and prints its report.
///
/// # Errors
/// When the simulator or gcpool cannot start, the flags make no sense, or the SVG cannot be
/// written.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let display = if args.json {
        Display::Stderr
    } else if args.plain || !live::is_terminal() {
        Display::Lines
    } else {
        Display::Redraw
    };
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    live::header(display, &plan, args.rate, args.max_wait);

    let without = if args.skip_baseline {
        None
    } else {
        let sim = Simulator::start(sim_options(&plan)).await?;
        let mut tokens = Vec::with_capacity(plan.clients);
        for n in 1..=plan.clients {
            tokens.push(grant(&http, &sim.base_url(), n).await?);
        }
        let target = Target::Direct {
            base: sim.base_url(),
            tokens: tokens.into(),
        };
        let report = phase("without gcpool", target, &plan, &http, &sim, display).await;
        sim.shutdown().await;
        Some(report)
    };

    let (sim, gcpool) = start_gcpool(&args, &plan).await?;
    let target = Target::Gcpool {
        base: format!("http://{}", gcpool.api_addr()),
        names: client_names(plan.clients).into(),
    };
    let with = phase("with gcpool", target, &plan, &http, &sim, display).await;
    gcpool.shutdown().trigger();
    gcpool.wait().await;
    sim.shutdown().await;
    let cached_route = cached::run(&args, &plan, &http).await?;

    let report = DemoReport::new(&plan, args.rate, without, with, cached_route);
    if let Some(path) = &args.svg {
        std::fs::write(path, svg::render(&report))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for line in report.lines() {
            println!("{line}");
        }
        if let Some(path) = &args.svg {
            println!("timeline picture: {}", path.display());
        }
    }
    Ok(())
}

fn sim_options(plan: &Plan) -> SimOptions {
    SimOptions::with_clients(plan.clients)
        .window(plan.window)
        .token_limit(plan.token_limit)
}

/// Client names as the load generator and gcpool both show them: `client-01` …
fn client_names(clients: usize) -> Vec<String> {
    (1..=clients).map(|n| format!("client-{n:02}")).collect()
}

fn proxy_config(args: &DemoArgs, plan: &Plan, sim_url: &str) -> anyhow::Result<Config> {
    let mut yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\n  request_timeout: {}ms\n\
         genesys:\n  api_base: \"{sim_url}\"\n  login_base: \"{sim_url}\"\n\
         inbound:\n  allow_anonymous: true\n\
         budgets:\n  token_per_minute: {}\n  org_per_minute: {}\n  window: {}ms\n  queue:\n    max_wait: {}ms\n\
         clients:\n",
        args.max_wait.as_millis() + 5000,
        plan.per_minute,
        u64::from(plan.per_minute) * plan.clients as u64,
        plan.window.as_millis(),
        args.max_wait.as_millis(),
    );
    if let Some(guard) = args.guard {
        yaml = yaml.replace(
            "  queue:\n",
            &format!("  guard: {}ms\n  queue:\n", guard.as_millis()),
        );
    }
    for (i, name) in client_names(plan.clients).iter().enumerate() {
        let n = i + 1;
        yaml.push_str(&format!(
            "  - name: {name}\n    client_id: sim-client-{n:02}\n    client_secret: sim-secret-{n:02}\n"
        ));
    }
    // The phases never ask for a queue; the cached route's step does.
    yaml.push_str(&format!(
        "cache:\n  routes:\n    - route: \"{}\"\n      ttl: {}\n      \
         ignore_upstream_cache_headers: true\n",
        cached::ROUTE,
        cached::TTL
    ));
    Config::from_yaml(&yaml, Path::new("."), &NoEnv)
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))
}

/// A fresh simulator, and gcpool in front of it with the demo's config, ready.
async fn start_gcpool(args: &DemoArgs, plan: &Plan) -> anyhow::Result<(Simulator, Gcpool)> {
    let sim = Simulator::start(sim_options(plan)).await?;
    let config = proxy_config(args, plan, &sim.base_url())?;
    let gcpool = Gcpool::start_on(
        config,
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    )?;
    wait_ready(&gcpool).await?;
    Ok((sim, gcpool))
}

async fn wait_ready(gcpool: &Gcpool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gcpool.pool().is_ready(Instant::now()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "gcpool got no token from the simulator"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Client `n`'s token for the "without gcpool" phase, minted the way an integration without
/// a pool does it: a client-credentials grant of its own.
async fn grant(http: &HttpClient, sim_url: &str, n: usize) -> anyhow::Result<String> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("sim-client-{n:02}:sim-secret-{n:02}"));
    let request = Request::post(format!("{sim_url}/oauth/token"))
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(
            b"grant_type=client_credentials",
        )))?;
    let response = http.request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    json["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("simulator answered no token for client {n}"))
}

/// Sends the bursty load at `target` for exactly `plan.duration`, sampling the simulator's
/// 429 count every whole second, then waits for the last answers (the drain, reported
/// apart). The live view is redrawn every second throughout.
async fn phase(
    name: &'static str,
    target: Target,
    plan: &Plan,
    http: &HttpClient,
    sim: &Simulator,
    display: Display,
) -> PhaseReport {
    let record: Shared = Arc::default();
    let mut live = Live::new(name, display, plan);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let end = start + plan.duration;
    let mut next_burst = start;
    let mut next_second = start + Duration::from_secs(1);
    let mut sent = 0_usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Close the second before a burst due at the same instant can be answered in it.
        if now >= next_second {
            let count = sim.stats().rejected_429;
            lock(&record).upstream_429_each_second.push(count);
            live.draw(&lock(&record), start.elapsed(), count);
            next_second += Duration::from_secs(1);
        }
        if now >= next_burst {
            for _ in 0..plan.burst {
                tasks.spawn(one_request(
                    http.clone(),
                    target.clone(),
                    sent,
                    record.clone(),
                    start,
                ));
                sent += 1;
            }
            next_burst += plan.burst_every;
        }
        tokio::time::sleep_until(next_burst.min(next_second).min(end)).await;
    }
    // The measured time is over: one last sample closes the timeline.
    let measured = start.elapsed();
    let count = sim.stats().rejected_429;
    lock(&record).upstream_429_at_end = count;
    live.draw(&lock(&record), measured, count);
    // Let answers still on their way (gcpool's queue) arrive; they are reported apart.
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = tokio::time::sleep_until(next_second) => {
                live.draw(&lock(&record), start.elapsed(), sim.stats().rejected_429);
                next_second += Duration::from_secs(1);
            }
        }
    }
    let drained = start.elapsed().saturating_sub(measured);
    let mut record = std::mem::take(&mut *lock(&record));
    record.upstream_429_after_drain = sim.stats().rejected_429;
    live.finish(&record, start.elapsed(), record.upstream_429_after_drain);
    PhaseReport::new(name, plan, &record, measured, drained)
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|e| e.into_inner())
}

async fn one_request(http: HttpClient, target: Target, n: usize, record: Shared, start: Instant) {
    let path = "/api/v2/users?pageSize=1";
    let (request, client) = match &target {
        Target::Direct { base, tokens } => {
            let i = n % tokens.len().max(1);
            let request = tokens.get(i).map(|token| {
                Request::get(format!("{base}{path}"))
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
            });
            (request, Some(i))
        }
        Target::Gcpool { base, .. } => (Some(Request::get(format!("{base}{path}"))), None),
    };
    let Some(Ok(request)) = request.map(|b| b.body(Full::new(Bytes::new()))) else {
        return;
    };
    let sent_at = start.elapsed();
    lock(&record).sent.push(sent_at);
    let result = http.request(request).await;
    let at = start.elapsed();
    let (outcome, client, queued_ms) = match result {
        Ok(response) => {
            let text = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let outcome = match response.status() {
                s if s.is_success() => Outcome::Answered,
                StatusCode::TOO_MANY_REQUESTS if text("x-gcpool-reason").is_some() => {
                    Outcome::Local429
                }
                StatusCode::TOO_MANY_REQUESTS => Outcome::Upstream429,
                _ => Outcome::Other,
            };
            let client = match &target {
                Target::Direct { .. } => client,
                Target::Gcpool { names, .. } => {
                    text("x-gcpool-client").and_then(|name| names.iter().position(|n| *n == name))
                }
            };
            let queued_ms = text("x-gcpool-wait-ms").and_then(|v| v.parse().ok());
            (outcome, client, queued_ms)
        }
        Err(_) => (Outcome::Other, client, None),
    };
    lock(&record).answers.push(Answer {
        at,
        outcome,
        client,
        latency: at.saturating_sub(sent_at),
        queued_ms,
    });
}

// === impl Plan ===

impl Plan {
    fn new(args: &DemoArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(
            args.rate.is_finite() && args.rate > 0.0 && args.burst > 0,
            "--rate and --burst must be positive"
        );
        anyhow::ensure!(args.token_limit > 0, "--token-limit must be positive");
        anyhow::ensure!(
            args.duration >= Duration::from_secs(1),
            "--duration must be at least 1s"
        );
        let window_ms = u64::try_from(args.window.as_millis())?;
        anyhow::ensure!(window_ms >= 100, "--window must be at least 100ms");
        let per_minute = u32::try_from(u64::from(args.token_limit) * 60_000 / window_ms)?;
        anyhow::ensure!(
            per_minute > 0 && per_window(per_minute, args.window) == args.token_limit,
            "--token-limit {} per {:?} is no whole rate per minute; pick a window that divides a minute",
            args.token_limit,
            args.window
        );
        let burst_every = Duration::try_from_secs_f64(f64::from(args.burst) / args.rate)
            .map_err(|e| anyhow::anyhow!("--burst / --rate: {e}"))?;
        anyhow::ensure!(
            burst_every >= Duration::from_millis(1),
            "--rate is too high for --burst"
        );
        Ok(Self {
            clients: usize::from(args.clients),
            window: args.window,
            token_limit: args.token_limit,
            per_minute,
            duration: args.duration,
            burst: args.burst,
            burst_every,
        })
    }

    /// Requests the pool may answer in one window.
    fn capacity_per_window(&self) -> u64 {
        u64::from(self.token_limit) * self.clients as u64
    }

    /// Windows that start inside the measured time: from an idle start, an exact
    /// sliding-window limit admits a full window's capacity at 0, W, 2W, … and no more.
    fn windows(&self) -> u64 {
        let (d, w) = (self.duration.as_nanos(), self.window.as_nanos().max(1));
        u64::try_from(d.div_ceil(w)).unwrap_or(u64::MAX)
    }

    /// Whole or partial seconds in the measured time: the timeline's length.
    fn seconds(&self) -> usize {
        usize::try_from(self.duration.as_millis().div_ceil(1000)).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))?;
        Plan::new(&cli.demo)
    }

    #[test]
    fn the_denominator_counts_windows_that_start_in_the_measured_time() {
        let p = plan(&[]).unwrap();
        assert_eq!(
            (p.capacity_per_window(), p.windows(), p.seconds()),
            (30, 3, 15)
        );
        let p = plan(&["--duration", "16s"]).unwrap();
        assert_eq!((p.windows(), p.seconds()), (4, 16));
        let p = plan(&[
            "--duration",
            "2500ms",
            "--window",
            "1s",
            "--token-limit",
            "4",
        ])
        .unwrap();
        assert_eq!(
            (p.capacity_per_window(), p.windows(), p.seconds()),
            (12, 3, 3)
        );
    }

    #[test]
    fn flags_that_make_no_sense_are_refused() {
        assert!(plan(&["--rate", "0"]).is_err());
        assert!(plan(&["--token-limit", "0"]).is_err());
        assert!(plan(&["--window", "50ms"]).is_err());
        assert!(plan(&["--window", "7s", "--token-limit", "10"]).is_err());
        assert!(plan(&["--duration", "500ms"]).is_err());
    }
}
