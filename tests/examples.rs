//! Every example in `config/` runs against the simulator without edits: the environment
//! variables the README's Quick start names point it there (`GCPOOL_API_BASE`,
//! `GCPOOL_LOGIN_BASE`, the simulator's client ids and secrets, an API key, a real
//! `redis-server` for the fleet), and one request through it is answered 200.
//!
//! The one thing a test changes in a copy is `server.listen` / `server.admin_listen`, set to
//! free loopback ports so tests can run in parallel; everything about Genesys, credentials
//! and Redis comes from the environment, as it would for a user.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use sha2::{Digest, Sha256};
use support::redis::RedisServer;
use support::{GcpoolProcess, HttpClient, eventually, free_port};

/// The API key the examples with `inbound.api_keys` are given (its sha256 is exported).
const API_KEY: &str = "example-api-key";

/// The four examples this test knows how to run; a new one must be added here.
const EXAMPLES: [&str; 4] = [
    "data-actions-gateway.yaml",
    "fleet-redis.yaml",
    "sidecar.yaml",
    "simulator.yaml",
];

/// `gcpool simulate` (the binary) on a free port, killed on drop.
struct Simulator {
    child: Child,
    url: String,
}

impl Simulator {
    async fn start() -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_gcpool"))
            .args(["simulate", "--listen", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the gcpool binary must run");
        let url = format!("http://{addr}");
        let client = HttpClient::new();
        let probe = format!("{url}/sim/stats");
        eventually(
            "the simulator must answer /sim/stats",
            Duration::from_secs(10),
            async || client.try_get(&probe).await.map(|_| ()),
        )
        .await;
        Self { child, url }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The variables the README's Quick start sets to try an example against the simulator.
fn simulator_env(sim_url: &str, redis_url: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("GCPOOL_API_BASE".to_owned(), sim_url.to_owned()),
        ("GCPOOL_LOGIN_BASE".to_owned(), sim_url.to_owned()),
        (
            "GCPOOL_API_KEY_SHA256".to_owned(),
            Sha256::digest(API_KEY.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        ),
        ("GCPOOL_REDIS_URL".to_owned(), redis_url.to_owned()),
    ];
    for n in 1..=3 {
        env.push((format!("GC_CLIENT_0{n}_ID"), format!("sim-client-0{n}")));
        env.push((format!("GC_CLIENT_0{n}_SECRET"), format!("sim-secret-0{n}")));
    }
    env
}

/// The example's text with the values of `listen:` and `admin_listen:` replaced by `{API}`
/// and `{ADMIN}` (for [`GcpoolProcess::spawn`]); nothing else changes.
fn with_free_ports(text: &str) -> String {
    let mut out = String::new();
    let mut replaced = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("listen:") {
            out.push_str(&format!("{indent}listen: \"{{API}}\""));
            replaced += 1;
        } else if trimmed.starts_with("admin_listen:") {
            out.push_str(&format!("{indent}admin_listen: \"{{ADMIN}}\""));
            replaced += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert_eq!(replaced, 2, "an example must set listen and admin_listen");
    out
}

/// Every file in `config/` is one of [`EXAMPLES`], so none goes untried.
#[test]
fn every_example_is_tried() {
    let mut found: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("config/ must exist")
        .map(|e| e.expect("config/ must be readable").file_name())
        .filter_map(|n| n.to_str().map(str::to_owned))
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    found.sort();
    assert_eq!(found, EXAMPLES, "add a new example to EXAMPLES");
}

/// `gcpool check` on each unchanged example, with the simulator's variables set, resolves
/// both hosts to the simulator.
#[tokio::test]
async fn every_example_checks_against_the_simulator() {
    let sim_url = "http://127.0.0.1:9";
    let env = simulator_env(sim_url, "redis://127.0.0.1:6379/0");
    for name in EXAMPLES {
        let out = Command::new(env!("CARGO_BIN_EXE_gcpool"))
            .arg("check")
            .arg("--config")
            .arg(examples_dir().join(name))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("the gcpool binary must run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        for key in ["api_base", "login_base"] {
            assert!(
                stdout.contains(&format!("{key}: {sim_url}")),
                "{name}: {key} must be the simulator:\n{stdout}"
            );
        }
    }
}

/// `gcpool run` on each example (listen ports aside, unchanged), in front of the real
/// simulator binary (and a real redis-server for the fleet): one request is answered 200
/// through a pool token.
#[tokio::test]
async fn every_example_runs_against_the_simulator() {
    let sim = Simulator::start().await;
    let redis = RedisServer::start();
    let env = simulator_env(&sim.url, &redis.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let client = HttpClient::new();
    for name in EXAMPLES {
        let text = std::fs::read_to_string(examples_dir().join(name)).expect("read example");
        let mut gcpool = GcpoolProcess::spawn(&with_free_ports(&text), &env);
        gcpool.wait_ready().await;
        // `GET /api/v2/users/{userId}` is on the gateway's allow-list; the others allow all.
        let url = format!("http://{}/api/v2/users/example-user-id", gcpool.api);
        let answer = client
            .request(Method::GET, &url, &[("x-api-key", API_KEY)], "")
            .await;
        assert_eq!(
            answer.status,
            200,
            "{name}: {}\ngcpool stderr:\n{}",
            answer.text(),
            gcpool.stderr()
        );
        let served_by = answer.json()["client"].as_str().map(str::to_owned);
        assert!(
            served_by.is_some_and(|c| c.starts_with("sim-client-0")),
            "{name}: answered through a pool token: {}",
            answer.text()
        );
        if name == "fleet-redis.yaml" {
            let status = client
                .get(&format!("http://{}/status", gcpool.admin))
                .await
                .json();
            assert_eq!(
                status["shared_state"]["up"], true,
                "{name}: the fleet example uses the real Redis: {status}"
            );
        }
    }
}
