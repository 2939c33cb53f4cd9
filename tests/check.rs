//! `gcpool check --config F` against the real binary: one fixture per failure mode under
//! `tests/fixtures/config/`, each test asserting the exit code and that stderr names the
//! cause; plus every example in `config/`, which must pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// Runs `gcpool check --config <path>` with `envs` set for the child process.
/// `gcpool check` on `path` (no variables set) passes; its stdout.
fn check_passes(path: &Path) -> String {
    let out = check(path, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(path: &Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcpool"));
    cmd.arg("check").arg("--config").arg(path);
    // Variables the fixtures and examples read: unset unless the test sets them.
    for n in 1..=3 {
        cmd.env_remove(format!("GC_CLIENT_0{n}_ID"));
        cmd.env_remove(format!("GC_CLIENT_0{n}_SECRET"));
    }
    cmd.env_remove("GCPOOL_TEST_SURELY_UNSET_VAR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("the gcpool binary must run")
}

/// Checks `name` and asserts it is rejected (exit 1, nothing on stdout); returns stderr.
fn rejected(name: &str) -> String {
    let out = check(&fixture(name), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name} must be rejected; stderr:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{name}: nothing is printed on stdout for a bad config"
    );
    assert!(
        stderr.contains("is not a valid gcpool config"),
        "{name}: stderr must say the config is invalid:\n{stderr}"
    );
    stderr
}

fn assert_names(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr must contain {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn valid_config_passes_and_prints_no_secret() {
    let env_secret = "fixture-env-secret-value";
    let out = check(
        &fixture("valid.yaml"),
        &[("GCPOOL_TEST_CLIENT_SECRET", env_secret)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");

    // The resolved config is printed, defaults filled in and secrets redacted.
    assert_names(
        &stdout,
        &[
            "name: pool-03",
            "client_id: fixture-client-03",
            "client_secret: <redacted>",
            "key_sha256: <redacted>",
            "requests_per_minute: 100",
            "idle_timeout: 2m",
            "request_timeout: 20s",
            "api_base: https://api.euw2.pure.cloud",
            "route: PUT /api/v2/architect/ivrs/{ivrId}",
        ],
    );
    let key_digest = format!("{:x}", Sha256::digest(b"fixture-api-key-value"));
    for secret in [
        "fixture-inline-secret-value",
        env_secret,
        "fixture-file-secret-value",
        "fixture-api-key-value",
        key_digest.as_str(),
    ] {
        assert!(
            !stdout.contains(secret),
            "stdout leaks {secret:?}:\n{stdout}"
        );
        assert!(
            !stderr.contains(secret),
            "stderr leaks {secret:?}:\n{stderr}"
        );
    }
}

#[test]
fn malformed_yaml_names_the_line() {
    let stderr = rejected("malformed.yaml");
    assert_names(&stderr, &["(line 4)", "did not find expected key"]);
}

#[test]
fn unknown_key_names_the_key_path_and_line() {
    let stderr = rejected("unknown_key.yaml");
    assert_names(
        &stderr,
        &[
            "clients[0].requests_per_minut (line 6)",
            "unknown key `requests_per_minut`",
            "requests_per_minute",
        ],
    );
}

#[test]
fn missing_env_names_the_variable_and_key_path() {
    let stderr = rejected("missing_env.yaml");
    assert_names(
        &stderr,
        &[
            "clients[0].client_secret",
            "environment variable GCPOOL_TEST_SURELY_UNSET_VAR is not set",
        ],
    );
}

#[test]
fn duplicate_client_names_both_entries() {
    let stderr = rejected("duplicate_client.yaml");
    assert_names(
        &stderr,
        &[
            "clients[1].name",
            "duplicate client name \"pool-01\"",
            "clients[0].name",
        ],
    );
}

#[test]
fn too_many_clients_names_the_limit() {
    let stderr = rejected("too_many_clients.yaml");
    assert_names(&stderr, &["clients: 51 clients given", "at most 50"]);
}

#[test]
fn empty_secret_names_the_key_path() {
    let stderr = rejected("empty_secret.yaml");
    assert_names(&stderr, &["clients[1].client_secret: is empty"]);
    assert!(
        !stderr.contains("clients[0]"),
        "only the second client is wrong:\n{stderr}"
    );
}

#[test]
fn bad_listen_names_the_address() {
    let stderr = rejected("bad_listen.yaml");
    assert_names(
        &stderr,
        &[
            "server.listen",
            "\"localhost:8080\" is not an address",
            "not resolved",
        ],
    );
}

#[test]
fn anonymous_on_public_listener_explains_why() {
    let stderr = rejected("anonymous_on_public_listener.yaml");
    assert_names(
        &stderr,
        &[
            "inbound.allow_anonymous",
            "loopback",
            "0.0.0.0:8080",
            "add inbound.api_keys",
        ],
    );
}

#[test]
fn bad_duration_names_the_value() {
    let stderr = rejected("bad_duration.yaml");
    assert_names(
        &stderr,
        &[
            "budgets.queue.max_wait",
            "\"10 minutes\"",
            "use ms, s, m or h",
        ],
    );
}

#[test]
fn missing_secret_file_names_key_and_file() {
    let stderr = rejected("missing_secret_file.yaml");
    assert_names(
        &stderr,
        &[
            "clients[0].client_secret_file",
            "secrets/does-not-exist.secret does not exist",
        ],
    );
}

#[test]
fn empty_file_is_a_clear_error() {
    let stderr = rejected("empty.yaml");
    assert_names(&stderr, &["the config file is empty"]);
}

#[test]
fn every_error_is_reported_in_one_run() {
    let stderr = rejected("many_errors.yaml");
    assert_names(
        &stderr,
        &[
            "server.admin_listen: 127.0.0.1:8080 collides with server.listen",
            "clients[0].name: \"Pool 01\" is not a valid name",
            "budgets.window: must be greater than 0",
            "budgets.endpoints[0].route: path \"/users/{userId}\" does not start with /api/v2/",
        ],
    );
}

#[test]
fn unknown_route_names_route_key_and_suggestion() {
    let stderr = rejected("unknown_route.yaml");
    assert_names(
        &stderr,
        &[
            "budgets.endpoints[0].route: unknown route \"PUT /api/v2/architect/ivr/{ivrId}\" \
             (not a Genesys Platform API operation); did you mean \"PUT /api/v2/architect/ivrs/{ivrId}\"?",
            "inbound.allow_routes[0]: unknown route \"GET /api/v2/users/{id}\"",
            "did you mean \"GET /api/v2/users/{userId}\"?",
        ],
    );
}

#[test]
fn missing_config_file_names_it() {
    let out = check(&fixture("no-such-file.yaml"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert_names(&stderr, &["cannot read", "no-such-file.yaml"]);
}

/// Every example in `config/` passes `gcpool check` with the variables it documents set, and
/// none of their values reaches the output.
#[test]
fn every_example_config_passes() {
    let secrets = [
        ("GC_CLIENT_01_ID", "example-id-01"),
        ("GC_CLIENT_01_SECRET", "example-secret-value-01"),
        ("GC_CLIENT_02_ID", "example-id-02"),
        ("GC_CLIENT_02_SECRET", "example-secret-value-02"),
        ("GC_CLIENT_03_ID", "example-id-03"),
        ("GC_CLIENT_03_SECRET", "example-secret-value-03"),
        (
            "GCPOOL_API_KEY_SHA256",
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        ),
        (
            "GCPOOL_REDIS_URL",
            "redis://:example-redis-password@redis:6379/0",
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("config/ must exist")
        .map(|entry| entry.expect("config/ must be readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    examples.sort();
    let names: Vec<_> = examples
        .iter()
        .filter_map(|p| p.file_name()?.to_str())
        .collect();
    for expected in [
        "simulator.yaml",
        "sidecar.yaml",
        "data-actions-gateway.yaml",
        "fleet-redis.yaml",
    ] {
        assert!(
            names.contains(&expected),
            "config/{expected} is missing: {names:?}"
        );
    }

    for path in &examples {
        let out = check(path, &secrets);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} must pass gcpool check:\n{stderr}",
            path.display()
        );
        assert!(
            stderr.is_empty(),
            "{} must pass without warnings:\n{stderr}",
            path.display()
        );
        assert!(
            stdout.contains("clients:"),
            "{}: nothing printed",
            path.display()
        );
        for (_, value) in &secrets[..] {
            if value.contains("secret") || value.contains("password") || value.len() == 64 {
                assert!(
                    !stdout.contains(value),
                    "{} leaks {value:?}:\n{stdout}",
                    path.display()
                );
            }
        }
    }

    // The simulator example needs nothing from the environment.
    let out = check(&dir.join("simulator.yaml"), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_names(
        &stdout,
        &[
            "client_id: sim-client-01",
            "api_base: http://127.0.0.1:9000",
            "window: 1m",
        ],
    );
    assert!(!stdout.contains("sim-secret-01"), "{stdout}");
}

#[test]
fn tab_indentation_says_tab() {
    let stderr = rejected("tab.yaml");
    assert_names(&stderr, &["line 3", "tab character"]);
}

#[test]
fn unknown_region_suggests_the_nearest() {
    let stderr = rejected("unknown_region.yaml");
    assert_names(
        &stderr,
        &[
            "genesys.region",
            "mypurecloud.comm",
            "not a Genesys Cloud region",
            "did you mean mypurecloud.com?",
            "genesys.api_base",
        ],
    );
}

#[test]
fn region_given_as_api_host_suggests_the_domain() {
    let stderr = rejected("region_with_host.yaml");
    assert_names(
        &stderr,
        &["genesys.region", "api.mypurecloud.com", "mypurecloud.com"],
    );
    assert!(stderr.contains("did you mean mypurecloud.com?"), "{stderr}");
}

/// The escape hatch: a region gcpool does not know passes when both hosts are given.
#[test]
fn unknown_region_with_both_bases_passes() {
    let out = check(&fixture("new_region_with_bases.yaml"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
}

/// A secret from an unset variable: the hint is to export it, never to give it a default.
#[test]
fn missing_secret_variable_suggests_exporting_it() {
    let stderr = rejected("missing_env.yaml");
    assert_names(&stderr, &["export GCPOOL_TEST_SURELY_UNSET_VAR="]);
    assert!(!stderr.contains(":-default"), "{stderr}");
}

#[test]
fn a_cache_route_that_depends_on_the_token_or_writes_is_refused() {
    let stderr = rejected("cache_identity_route.yaml");
    assert_names(
        &stderr,
        &[
            "cache.routes[0].route",
            "GET /api/v2/users/me",
            "`me` segment",
            "cache.routes[1].route",
            "only GET and HEAD",
        ],
    );
}

/// `check` explains each caller in effect (SPEC §12): its clients, its longest wait, its
/// routes; as YAML comments, so stdout stays the config.
#[test]
fn check_explains_each_caller() {
    let stdout = check_passes(&fixture("callers.yaml"));
    assert_names(
        &stdout,
        &[
            "# callers, in effect:",
            "#   ivr-flows: clients pool-02; lane realtime (fills whole budgets); waits at most 2s; only GET /api/v2/users/{userId}",
            "#   batch: all 2 clients; a quota of 120 a minute; lane batch (fills 0.5 of each token, route and org budget); waits at most 10s (budgets.queue.max_wait); every route",
            "#   anonymous: all 2 clients; lane standard (fills 0.9 of each token, route and org budget); waits at most 10s (budgets.queue.max_wait); every route",
        ],
    );
    let parsed: serde_yaml::Value = serde_yaml::from_str(&stdout).expect("still YAML");
    let inbound = parsed.get("inbound").expect("the inbound section");
    let lanes = &inbound["lanes"];
    assert_eq!(
        (&lanes["realtime"], &lanes["standard"], &lanes["batch"]),
        (
            &serde_yaml::Value::from("1.0"),
            &serde_yaml::Value::from("0.9"),
            &serde_yaml::Value::from("0.5")
        ),
        "{stdout}"
    );
    assert_eq!(inbound["api_keys"][1]["lane"], "batch", "{stdout}");
}

/// `check` prints `inbound.gateway` and explains it: where the SDKs log in, for whom, for
/// how long, and where API calls go.
#[test]
fn check_explains_the_gateway() {
    let stdout = check_passes(&fixture("gateway.yaml"));
    assert_names(
        &stdout,
        &[
            "  gateway:\n    login_path: /login\n    api_path: /genesys\n    token_lifetime: 8h\n",
            "# gateway: POST /login/oauth/token answers tokens valid 8h to callers reporting-app, \
             terraform (client id: the caller's name, secret: its key); API calls at \
             /genesys/api/v2/... and /api/v2/...",
        ],
    );
    assert!(!stdout.contains("k1") && !stdout.contains("k2"), "{stdout}");
    let parsed: serde_yaml::Value = serde_yaml::from_str(&stdout).expect("still YAML");
    assert!(parsed["inbound"].get("gateway").is_some());
}

/// Gateway paths that could match something else are refused, each with its key path.
#[test]
fn gateway_paths_are_refused_by_name() {
    let stderr = rejected("gateway_bad_paths.yaml");
    assert_names(
        &stderr,
        &[
            "inbound.gateway.login_path",
            "an empty, . or .. segment",
            "inbound.gateway.api_path",
            "starts with /",
            "inbound.gateway.token_lifetime",
            "longer than 48h",
        ],
    );
}
