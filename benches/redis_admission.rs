//! Latency of one admission through Redis on loopback (one `EVALSHA` round trip), with 1
//! and 50 candidate clients, and with a full org window the script must read; each through
//! `RedisStore` alone and through `FallbackStore` as gcpool runs it (epoch check, fleet-wide
//! counts in the answer, the journal). Starts its own `redis-server` on a free port. Prints
//! p50 / p90 / p99 / max, which criterion does not report, so this is a plain
//! `harness = false` main. The p99 is what `shared_state.timeout` (default 50 ms) must stay
//! far above.
//!
//! `cargo bench --bench redis_admission`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use gcpool::budget::{
    AdmitRequest, BudgetDef, BudgetKind, BudgetStore, Candidate, Decision, FallbackStore,
    RedisStore, Share,
};
use gcpool::config::SharedStateConfig;
use gcpool::secret::Secret;
use tokio::time::Instant;

const SAMPLES: usize = 20_000;

/// `redis-server` on a free port, killed on Drop.
struct Server {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        Self {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Budgets: one token budget per client, an org-scope endpoint budget and the org cap.
fn setup(clients: usize, org_limit: u32) -> (Vec<BudgetDef>, Vec<String>, Vec<Candidate>) {
    let window = Duration::from_secs(61);
    let mut defs: Vec<BudgetDef> = (0..clients)
        .map(|c| BudgetDef {
            kind: BudgetKind::Token,
            name: format!("token:c{c:02}"),
            limit: 100_000_000,
            window,
        })
        .collect();
    defs.push(BudgetDef {
        kind: BudgetKind::Endpoint,
        name: "endpoint:PUT /api/v2/architect/ivrs/{ivrId}".into(),
        limit: 100_000_000,
        window,
    });
    defs.push(BudgetDef {
        kind: BudgetKind::Org,
        name: "org".into(),
        limit: org_limit,
        window,
    });
    let (endpoint, org) = (clients, clients + 1);
    let names = (0..clients).map(|c| format!("c{c:02}")).collect();
    let candidates = (0..clients)
        .map(|c| Candidate {
            client: c,
            budgets: vec![org, endpoint, c],
        })
        .collect();
    (defs, names, candidates)
}

async fn run(
    port: u16,
    label: &str,
    clients: usize,
    org_limit: u32,
    expect_admit: bool,
    fallback: bool,
) {
    let (defs, names, candidates) = setup(clients, org_limit);
    let timeout = Duration::from_secs(1);
    let config = SharedStateConfig {
        redis_url: Secret::new(format!("redis://127.0.0.1:{port}/")),
        key_prefix: format!("bench-{label}-{fallback}"),
        replicas_hint: NonZeroU32::MIN,
        timeout,
    };
    let redis = RedisStore::connect(&config, &defs, &names)
        .await
        .expect("the bench's redis-server answers");
    let stop = tokio_util::sync::CancellationToken::new();
    let store: Arc<dyn BudgetStore> = if fallback {
        let store = Arc::new(FallbackStore::new(
            &defs,
            names.len(),
            1,
            Arc::new(redis),
            timeout,
        ));
        tokio::spawn(store.clone().run_recovery(stop.clone()));
        while !store.is_up() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store
    } else {
        Arc::new(redis)
    };
    let label = format!(
        "{label}, {}",
        if fallback {
            "FallbackStore"
        } else {
            "RedisStore"
        }
    );
    let request = AdmitRequest {
        candidates: &candidates,
        route: None,
        max_wait: Duration::ZERO,
        share: Share::WHOLE,
    };
    if !expect_admit {
        // Fill the org window so every admission reads `org_limit` instants and refuses.
        for _ in 0..org_limit {
            let decision = store.admit(request).await.expect("redis answers");
            assert!(matches!(decision, Decision::Admitted(_)));
        }
    }
    for _ in 0..500 {
        black_box(store.admit(request).await.expect("redis answers"));
    }
    let mut raw = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the bench's redis-server answers");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .expect("CONFIG RESETSTAT");
    let mut samples = Vec::with_capacity(SAMPLES);
    let up_before = store.is_up();
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let decision = store.admit(request).await.expect("redis answers");
        samples.push(start.elapsed());
        assert_eq!(matches!(decision, Decision::Admitted(_)), expect_admit);
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .expect("INFO commandstats");
    let in_redis = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find(|f| f.starts_with("usec_per_call=")))
        .and_then(|f| f.trim_start_matches("usec_per_call=").parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    assert!(
        up_before && store.is_up(),
        "{label}: measured on the shared store"
    );
    stop.cancel();
    samples.sort_unstable();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{label:<52} p50 {:>5.0} µs  p90 {:>5.0} µs  p99 {:>5.0} µs  max {:>6.0} µs  (script in Redis {in_redis:.0} µs)",
        micros(q(0.50)),
        micros(q(0.90)),
        micros(q(0.99)),
        micros(samples[samples.len() - 1]),
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let server = Server::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        // Wait for the server to accept connections.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", server.port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("{SAMPLES} sequential admissions each, one EVALSHA round trip on loopback");
        for fallback in [false, true] {
            run(
                server.port,
                "1 client, admitted",
                1,
                1_000_000_000,
                true,
                fallback,
            )
            .await;
            run(
                server.port,
                "50 clients, admitted",
                50,
                1_000_000_000,
                true,
                fallback,
            )
            .await;
            run(
                server.port,
                "50 clients, org window full (1,000)",
                50,
                1_000,
                false,
                fallback,
            )
            .await;
        }
    });
}
