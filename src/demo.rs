//! `gcpool demo`: the simulator, the proxy and a bursty load generator in one process.
//!
//! Two phases with the same load: first straight at the simulator through one OAuth client
//! ("without gcpool"), then through gcpool in front of a fresh simulator with the whole
//! pool. A live summary is redrawn every second (plain lines when stdout is not a
//! terminal), and a closing report puts the two side by side: requests served, upstream
//! 429s, local 429s, and capacity used. Uses only the public API of `sim` and `app`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::app::Gcpool;
use crate::budget::per_window;
use crate::config::{Config, Env, parse_duration};
use crate::sim::{SimOptions, Simulator};

/// Flags of `gcpool demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// OAuth clients in the pool.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    pub clients: u8,
    /// Length of every limit window (simulator and gcpool alike).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub window: Duration,
    /// Requests per token per window (the simulator's limit and gcpool's token budget).
    #[arg(long, default_value_t = 10)]
    pub token_limit: u32,
    /// How long each phase sends load.
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
    /// Skip the "without gcpool" phase.
    #[arg(long)]
    pub skip_baseline: bool,
}

/// What one phase measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub sent: u64,
    pub served: u64,
    pub upstream_429: u64,
    pub local_429: u64,
    pub other_errors: u64,
    /// Served in whole windows since the first success ÷ what an exact sliding-window
    /// admitter could admit in them; `None` when the run covered less than one window.
    pub capacity_used: Option<f64>,
    pub windows_measured: u64,
    pub queue_wait_p50_ms: Option<u64>,
    pub queue_wait_p99_ms: Option<u64>,
    pub served_per_client: BTreeMap<String, u64>,
}

/// The closing report.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub window_s: f64,
    pub pool_capacity_per_window: u64,
    pub without_gcpool: Option<PhaseReport>,
    pub with_gcpool: PhaseReport,
}

/// Where the load goes.
#[derive(Debug, Clone)]
enum Target {
    /// Straight at the simulator with one client's token.
    Direct { base: String, token: String },
    /// Through gcpool (no credentials).
    Gcpool { base: String },
}

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    served: u64,
    local_429: u64,
    upstream_429: u64,
    other: u64,
    ok_times: Vec<Duration>,
    waits_ms: Vec<u64>,
    per_client: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _name: &str) -> Option<String> {
        None
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs the demo and prints its report.
///
/// # Errors
/// When the simulator or gcpool cannot start, or the flags make no sense.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.burst > 0,
        "--rate and --burst must be positive"
    );
    anyhow::ensure!(args.token_limit > 0, "--token-limit must be positive");
    let window_ms = u64::try_from(args.window.as_millis())?;
    anyhow::ensure!(window_ms >= 100, "--window must be at least 100ms");
    let per_minute = u32::try_from(u64::from(args.token_limit) * 60_000 / window_ms)?;
    anyhow::ensure!(
        per_minute > 0 && per_window(per_minute, args.window) == args.token_limit,
        "--token-limit {} per {:?} is no whole rate per minute; pick a window that divides a minute",
        args.token_limit,
        args.window
    );
    let live = if args.json {
        Display::Stderr
    } else if !args.plain && std::io::stdout().is_terminal() {
        Display::Redraw
    } else {
        Display::Lines
    };
    let clients = usize::from(args.clients);
    let capacity = u64::from(args.token_limit) * clients as u64;
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    say(
        args.json,
        &format!(
            "gcpool demo: {clients} clients × {} requests per {:?}; load {:.1} req/s in bursts of {} for {:?} per phase",
            args.token_limit, args.window, args.rate, args.burst, args.duration
        ),
    );

    let without = if args.skip_baseline {
        None
    } else {
        let sim = Simulator::start(sim_options(&args)).await?;
        let token = grant(&http, &sim.base_url()).await?;
        let target = Target::Direct {
            base: sim.base_url(),
            token,
        };
        let report = phase(
            "without gcpool",
            target,
            &args,
            &http,
            &sim,
            None,
            live,
            args.token_limit.into(),
        )
        .await;
        sim.shutdown().await;
        Some(report)
    };

    let sim = Simulator::start(sim_options(&args)).await?;
    let config = proxy_config(&args, &sim.base_url(), per_minute)?;
    let gcpool = Gcpool::start_on(
        config,
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    )?;
    wait_ready(&gcpool).await?;
    let target = Target::Gcpool {
        base: format!("http://{}", gcpool.api_addr()),
    };
    let with = phase(
        "with gcpool",
        target,
        &args,
        &http,
        &sim,
        Some(&gcpool),
        live,
        capacity,
    )
    .await;
    gcpool.shutdown().trigger();
    gcpool.wait().await;
    sim.shutdown().await;

    let report = DemoReport {
        window_s: args.window.as_secs_f64(),
        pool_capacity_per_window: capacity,
        without_gcpool: without,
        with_gcpool: with,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn sim_options(args: &DemoArgs) -> SimOptions {
    SimOptions::with_clients(usize::from(args.clients))
        .window(args.window)
        .token_limit(args.token_limit)
}

fn proxy_config(args: &DemoArgs, sim_url: &str, per_minute: u32) -> anyhow::Result<Config> {
    let mut yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0\"\n  request_timeout: {}ms\n\
         genesys:\n  api_base: \"{sim_url}\"\n  login_base: \"{sim_url}\"\n\
         inbound:\n  allow_anonymous: true\n\
         budgets:\n  token_per_minute: {per_minute}\n  org_per_minute: {}\n  window: {}ms\n  queue:\n    max_wait: {}ms\n\
         clients:\n",
        args.max_wait.as_millis() + 5000,
        u64::from(per_minute) * u64::from(args.clients),
        args.window.as_millis(),
        args.max_wait.as_millis(),
    );
    if let Some(guard) = args.guard {
        yaml = yaml.replace(
            "  queue:\n",
            &format!("  guard: {}ms\n  queue:\n", guard.as_millis()),
        );
    }
    for i in 1..=args.clients {
        yaml.push_str(&format!(
            "  - name: pool-{i:02}\n    client_id: sim-client-{i:02}\n    client_secret: sim-secret-{i:02}\n"
        ));
    }
    Config::from_yaml(&yaml, Path::new("."), &NoEnv)
        .map_err(|e| anyhow::anyhow!("demo config: {e}"))
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

/// One token for the "without gcpool" phase, the way an integration without a pool works.
async fn grant(http: &HttpClient, sim_url: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("sim-client-01:sim-secret-01");
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
        .ok_or_else(|| anyhow::anyhow!("simulator answered no token"))
}

/// Sends the bursty load at `target` for `args.duration`, redraws the live summary, waits
/// for the last answers, and reports.
#[allow(clippy::too_many_arguments)]
async fn phase(
    name: &str,
    target: Target,
    args: &DemoArgs,
    http: &HttpClient,
    sim: &Simulator,
    gcpool: Option<&Gcpool>,
    live: Display,
    capacity: u64,
) -> PhaseReport {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let burst_every = Duration::from_secs_f64(f64::from(args.burst) / args.rate);
    let mut next_burst = start;
    let mut next_draw = start + Duration::from_secs(1);
    let mut tasks = tokio::task::JoinSet::new();
    while start.elapsed() < args.duration {
        let now = Instant::now();
        if now >= next_burst {
            for _ in 0..args.burst {
                tasks.spawn(one_request(
                    http.clone(),
                    target.clone(),
                    tally.clone(),
                    start,
                ));
            }
            next_burst += burst_every;
        }
        if now >= next_draw {
            draw(name, &tally, sim, gcpool, start, live).await;
            next_draw += Duration::from_secs(1);
        }
        tokio::time::sleep_until(next_burst.min(next_draw).min(start + args.duration)).await;
    }
    // Let queued requests finish; keep the summary moving meanwhile.
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = tokio::time::sleep_until(next_draw) => {
                draw(name, &tally, sim, gcpool, start, live).await;
                next_draw += Duration::from_secs(1);
            }
        }
    }
    draw(name, &tally, sim, gcpool, start, live).await;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let stats = sim.stats();
    let (capacity_used, windows_measured) = capacity_used(&tally.ok_times, args.window, capacity);
    let mut waits = tally.waits_ms.clone();
    waits.sort_unstable();
    PhaseReport {
        name: name.into(),
        sent: tally.sent,
        served: tally.served,
        upstream_429: stats.rejected_429,
        local_429: tally.local_429,
        other_errors: tally.other,
        capacity_used,
        windows_measured,
        queue_wait_p50_ms: quantile(&waits, 0.50),
        queue_wait_p99_ms: quantile(&waits, 0.99),
        served_per_client: tally.per_client,
    }
}

async fn one_request(http: HttpClient, target: Target, tally: Arc<Mutex<Tally>>, start: Instant) {
    let (url, token) = match &target {
        Target::Direct { base, token } => (format!("{base}/api/v2/users?pageSize=1"), Some(token)),
        Target::Gcpool { base } => (format!("{base}/api/v2/users?pageSize=1"), None),
    };
    let mut builder = Request::get(url);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let Ok(request) = builder.body(Full::new(Bytes::new())) else {
        return;
    };
    tally.lock().unwrap_or_else(|e| e.into_inner()).sent += 1;
    let result = http.request(request).await;
    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(response) = result else {
        t.other += 1;
        return;
    };
    let header_text = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match response.status() {
        StatusCode::OK => {
            t.served += 1;
            t.ok_times.push(start.elapsed());
            if let Some(wait) = header_text("x-gcpool-wait-ms").and_then(|v| v.parse().ok()) {
                t.waits_ms.push(wait);
            }
            let client = header_text("x-gcpool-client").unwrap_or_else(|| "sim-client-01".into());
            *t.per_client.entry(client).or_default() += 1;
        }
        StatusCode::TOO_MANY_REQUESTS if header_text("x-gcpool-reason").is_some() => {
            t.local_429 += 1
        }
        StatusCode::TOO_MANY_REQUESTS => t.upstream_429 += 1,
        _ => t.other += 1,
    }
}

/// Served in whole windows since the first success ÷ (capacity per window × windows).
/// An exact sliding-window admitter with a permanent backlog admits `capacity` at the first
/// instant and again each window later, so that is what it could have served.
fn capacity_used(ok_times: &[Duration], window: Duration, capacity: u64) -> (Option<f64>, u64) {
    let mut times = ok_times.to_vec();
    times.sort_unstable();
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return (None, 0);
    };
    let windows = ((last - first).as_secs_f64() / window.as_secs_f64()).floor() as u64;
    if windows == 0 || capacity == 0 {
        return (None, windows);
    }
    let end = first + window.saturating_mul(u32::try_from(windows).unwrap_or(u32::MAX));
    let served = times.iter().filter(|&&t| t < end).count() as f64;
    (Some(served / (capacity * windows) as f64), windows)
}

fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied()
}

/// Where the live summary goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Display {
    /// Redrawn in place on a terminal.
    Redraw,
    /// One line a second on stdout.
    Lines,
    /// One line a second on stderr (stdout carries the JSON report).
    Stderr,
}

async fn draw(
    name: &str,
    tally: &Mutex<Tally>,
    sim: &Simulator,
    gcpool: Option<&Gcpool>,
    start: Instant,
    display: Display,
) {
    let live = display == Display::Redraw;
    let usage = match gcpool {
        Some(g) => g.admission().snapshot(&g.pool()).await.0,
        None => Vec::new(),
    };
    let stats = sim.stats();
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    let secs = start.elapsed().as_secs_f64().max(0.001);
    let mut waits = t.waits_ms.clone();
    waits.sort_unstable();
    let mut line = format!(
        "[{name}] t={secs:>4.0}s sent {:>4}  served {:>4} ({:>5.1}/s)  upstream 429 {:>4}  local 429 {:>4}",
        t.sent,
        t.served,
        t.served as f64 / secs,
        stats.rejected_429,
        t.local_429,
    );
    if let Some(gcpool) = gcpool {
        let pending = gcpool.admission().pending();
        let p50 = quantile(&waits, 0.5).unwrap_or(0);
        let p99 = quantile(&waits, 0.99).unwrap_or(0);
        line.push_str(&format!(
            "  queued {pending:>3}  wait p50 {p50}ms p99 {p99}ms"
        ));
        let uses: Vec<String> = gcpool
            .pool()
            .clients()
            .zip(&usage)
            .map(|((_, c), (used, limit))| format!("{} {used}/{limit}", c.name))
            .collect();
        if live {
            line.push_str(&format!(
                "\n  budgets in the current window: {}",
                uses.join("  ")
            ));
        } else {
            line.push_str(&format!("  [{}]", uses.join(", ")));
        }
    }
    drop(t);
    match display {
        Display::Redraw => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "\x1b[2J\x1b[H{line}");
            let _ = out.flush();
        }
        Display::Lines => println!("{line}"),
        Display::Stderr => eprintln!("{line}"),
    }
}

fn print_report(report: &DemoReport) {
    let fmt_cap = |p: &PhaseReport| {
        p.capacity_used.map_or_else(
            || "n/a".to_owned(),
            |c| format!("{:.1} % ({} windows)", c * 100.0, p.windows_measured),
        )
    };
    println!();
    println!(
        "gcpool demo report — window {:.1}s, pool capacity {} requests per window",
        report.window_s, report.pool_capacity_per_window
    );
    println!("{:<28} {:>18} {:>18}", "", "without gcpool", "with gcpool");
    let without = report.without_gcpool.as_ref();
    let col = |f: &dyn Fn(&PhaseReport) -> String| without.map_or_else(|| "-".to_owned(), f);
    let with = &report.with_gcpool;
    let rows: [(&str, String, String); 6] = [
        (
            "requests sent",
            col(&|p| p.sent.to_string()),
            with.sent.to_string(),
        ),
        (
            "served (200)",
            col(&|p| p.served.to_string()),
            with.served.to_string(),
        ),
        (
            "upstream 429s",
            col(&|p| p.upstream_429.to_string()),
            with.upstream_429.to_string(),
        ),
        (
            "local 429s (Retry-After)",
            col(&|p| p.local_429.to_string()),
            with.local_429.to_string(),
        ),
        ("capacity used", col(&|p| fmt_cap(p)), fmt_cap(with)),
        (
            "queue wait p50 / p99",
            "-".into(),
            format!(
                "{} / {} ms",
                with.queue_wait_p50_ms.unwrap_or(0),
                with.queue_wait_p99_ms.unwrap_or(0)
            ),
        ),
    ];
    for (label, a, b) in rows {
        println!("{label:<28} {a:>18} {b:>18}");
    }
    println!(
        "served per client (with gcpool): {:?}",
        with.served_per_client
    );
    println!(
        "Without gcpool one OAuth client takes the whole burst and Genesys answers 429; with gcpool the pool's \
         budgets are spent to the last slot, bursts wait their turn, and the upstream never answers 429."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_counts_whole_windows_only() {
        let w = Duration::from_secs(1);
        let at = |ms: u64| Duration::from_millis(ms);
        // 3 per window at 0, 1.005, 2.010, plus a partial last group at 3.015.
        let mut times = Vec::new();
        for base in [0, 1005, 2010] {
            times.extend([at(base), at(base + 1), at(base + 2)]);
        }
        times.push(at(3015));
        let (used, windows) = capacity_used(&times, w, 3);
        assert_eq!(windows, 3);
        assert!((used.unwrap() - 1.0).abs() < 1e-9);
        let (used, _) = capacity_used(&times[1..], w, 3);
        assert!(used.unwrap() < 1.0);
        assert_eq!(capacity_used(&[], w, 3), (None, 0));
    }
}
