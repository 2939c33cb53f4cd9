//! The real Genesys SDKs through gcpool's gateway mode, end to end: the Python SDK
//! (`PureCloudPlatformClientV2`, `set_gateway` + `get_client_credentials_token`) and the
//! JavaScript SDK (`purecloud-platform-client-v2`, `setGateway` +
//! `loginClientCredentialsGrant`) log in through gcpool with their own login code and a
//! caller's name and key, then call APIs that reach the simulator on pool clients. No
//! dummy token: each SDK uses what gcpool's login answered.
//!
//! The SDKs live in `target/sdk-env` (or `$GCPOOL_SDK_ENV`), made by `scripts/sdk-env.sh`,
//! which CI runs before the tests (and sets `GCPOOL_REQUIRE_SDKS=1`, so a missing SDK fails
//! there); elsewhere a test without them says it skipped.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gcpool::sim::{SimOptions, Simulator};
use serde_json::Value;
use support::THREE_CLIENTS;
use tokio::process::Command;

const KEY: &str = "sdk-caller-key-0123456789";

/// Where `scripts/sdk-env.sh` put the SDKs, or `None` (the test skips, saying so) when it
/// did not run here; panics when `GCPOOL_REQUIRE_SDKS` is set (CI must not skip).
fn sdk_env(sdk: &str, marker: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("GCPOOL_SDK_ENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-env"),
        PathBuf::from,
    );
    let found = dir.join(sdk).join(marker).exists();
    match (found, std::env::var_os("GCPOOL_REQUIRE_SDKS")) {
        (true, _) => Some(dir),
        (false, Some(_)) => panic!(
            "GCPOOL_REQUIRE_SDKS is set but {} has no {sdk} SDK: run scripts/sdk-env.sh",
            dir.display()
        ),
        (false, None) => {
            eprintln!(
                "SKIPPED: no {sdk} SDK in {} (run scripts/sdk-env.sh)",
                dir.display()
            );
            None
        }
    }
}

/// Simulator, and gcpool in front of it with the gateway at `login_path` / `api_path` and
/// one caller, `sdk-app`, whose key is [`KEY`].
async fn start(login_path: &str, api_path: &str) -> (Simulator, gcpool::app::Gcpool) {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("simulator");
    let yaml = support::config_yaml(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:1",
        &THREE_CLIENTS,
        "",
    )
    .replace(
        "inbound:\n  allow_anonymous: true\n",
        &format!(
            "inbound:\n  api_keys:\n    - name: sdk-app\n      key: \"{KEY}\"\n  gateway:\n    \
             login_path: \"{login_path}\"\n    api_path: \"{api_path}\"\n    token_lifetime: 1h\n"
        ),
    );
    let gcpool = support::start_config(support::config(&yaml)).await;
    (sim, gcpool)
}

/// Runs an SDK script against gcpool; its JSON report.
async fn run(mut command: Command, gcpool: &gcpool::app::Gcpool, login: &str, api: &str) -> Value {
    let addr = gcpool.api_addr();
    command
        .env("GCPOOL_HOST", addr.ip().to_string())
        .env("GCPOOL_PORT", addr.port().to_string())
        .env("GCPOOL_LOGIN_PATH", login)
        .env("GCPOOL_API_PATH", api)
        .env("GCPOOL_CLIENT_ID", "sdk-app")
        .env("GCPOOL_CLIENT_SECRET", KEY)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the SDK script must finish within 120 s")
        .expect("the SDK script must start");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report:\n{stdout}\n{stderr}"));
    serde_json::from_str(report).unwrap_or_else(|e| panic!("bad report ({e}): {report}"))
}

/// What both SDKs must have seen: a wrong secret refused with Genesys' `invalid_client`, a
/// token from the login, API calls that reached the simulator on pool clients under the
/// paths they asked for, and a forged token refused with gcpool's 401.
async fn check_report(report: &Value, sim: &Simulator, gcpool: &gcpool::app::Gcpool) {
    assert_eq!(report["wrong_secret"]["status"], 401, "{report}");
    assert_eq!(
        report["wrong_secret"]["body"]["error"], "invalid_client",
        "{report}"
    );
    assert!(
        report["token_length"].as_u64().unwrap_or(0) > 40,
        "the SDK kept the token gcpool's login answered: {report}"
    );
    let calls = report["calls"].as_array().expect("calls");
    let paths: Vec<&str> = calls
        .iter()
        .map(|c| c["echo"]["path"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v2/users/u-1",
            "/api/v2/users",
            "/api/v2/routing/queues/q-1"
        ],
        "{report}"
    );
    for call in calls {
        let client = call["echo"]["client"].as_str().unwrap_or_default();
        assert!(
            client.starts_with("sim-client-0"),
            "served by a pool client: {call}"
        );
    }
    assert_eq!(report["forged"]["status"], 401, "{report}");
    assert_eq!(
        report["forged"]["body"]["code"], "authentication.required",
        "{report}"
    );

    let stats = sim.stats();
    assert_eq!(
        stats.accepted, 3,
        "exactly the three API calls went upstream"
    );
    let metrics = support::metrics(gcpool).await;
    let logins = support::metric_value(
        &metrics,
        r#"gcpool_requests_total{caller="sdk-app",method="POST",outcome="answered",route="/oauth/token",status="200"}"#,
    );
    assert_eq!(logins, Some(1.0), "{metrics}");
}

/// Python: `ApiClient().set_gateway(host, "http", port, "login", "/genesys")`, then
/// `get_client_credentials_token(caller, key)`, `UsersApi` and `RoutingApi` calls.
#[tokio::test]
async fn the_python_sdk_logs_in_and_calls_apis_through_the_gateway() {
    let Some(env) = sdk_env("py", ".installed") else {
        return;
    };
    let (sim, gcpool) = start("/login", "/genesys").await;
    let mut command = Command::new(env.join("py/bin/python"));
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/gateway.py"));
    // The SDK's own forms: no leading slash on the login prefix, one on the API prefix.
    let report = run(command, &gcpool, "login", "/genesys").await;
    check_report(&report, &sim, &gcpool).await;
    let models: Vec<&str> = report["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["model"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(models, ["User", "UserEntityListing", "Queue"], "{report}");
}

/// JavaScript: `setGateway({host, protocol: "http", port, path_params_login: "login",
/// path_params_api: ""})`, then `loginClientCredentialsGrant(caller, key)`, `UsersApi` and
/// `RoutingApi` calls.
#[tokio::test]
async fn the_javascript_sdk_logs_in_and_calls_apis_through_the_gateway() {
    let Some(env) = sdk_env("js", ".installed") else {
        return;
    };
    let (sim, gcpool) = start("/login", "").await;
    let mut command = Command::new("node");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/gateway.js"))
        .env("NODE_PATH", env.join("js/node_modules"));
    let report = run(command, &gcpool, "login", "").await;
    check_report(&report, &sim, &gcpool).await;
    let expires_in_ms = report["expires_in_ms"].as_i64().unwrap_or(0);
    assert!(
        (3_590_000..=3_600_000).contains(&expires_in_ms),
        "the SDK read expires_in: {report}"
    );
    for call in report["calls"].as_array().expect("calls") {
        assert_eq!(call["status"], 200, "{call}");
        let client = call["client"].as_str().unwrap_or_default();
        assert!(client.starts_with("pool-0"), "x-gcpool-client: {call}");
    }
}
