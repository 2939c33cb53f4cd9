//! Shared harness for integration tests: real simulator, real gcpool (in-process or the
//! binary), a plain HTTP client. Everything binds 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use gcpool::app::Gcpool;
use gcpool::config::{Config, Env};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

pub mod cache;
pub mod redis;

/// An environment for `${VAR}` expansion in test configs.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// One pool client of a test config: (gcpool name, client id, secret).
pub type TestClient<'a> = (&'a str, &'a str, &'a str);

/// The simulator's built-in clients, as gcpool `pool-0N` entries.
pub const THREE_CLIENTS: [TestClient<'static>; 3] = [
    ("pool-01", "sim-client-01", "sim-secret-01"),
    ("pool-02", "sim-client-02", "sim-secret-02"),
    ("pool-03", "sim-client-03", "sim-secret-03"),
];

/// Config YAML for a proxy in front of the simulator at `sim_url`, with `extra` appended
/// at the top level (e.g. a `budgets:` block).
pub fn config_yaml(
    sim_url: &str,
    listen: &str,
    admin: &str,
    clients: &[TestClient<'_>],
    extra: &str,
) -> String {
    let mut yaml = format!(
        "server:\n  listen: \"{listen}\"\n  admin_listen: \"{admin}\"\n  shutdown_grace: 10s\n\
         genesys:\n  api_base: \"{sim_url}\"\n  login_base: \"{sim_url}\"\n\
         inbound:\n  allow_anonymous: true\n\
         clients:\n"
    );
    for (name, id, secret) in clients {
        yaml.push_str(&format!(
            "  - name: {name}\n    client_id: \"{id}\"\n    client_secret: \"{secret}\"\n"
        ));
    }
    yaml.push_str(extra);
    yaml
}

/// Parses and validates `yaml` (panics with every error: a test config must be valid).
pub fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, Path::new("."), &MapEnv::default())
        .unwrap_or_else(|e| panic!("test config must be valid:\n{e}\n---\n{yaml}"))
}

/// Starts gcpool in-process on free loopback ports.
pub async fn start_gcpool(sim_url: &str, clients: &[TestClient<'_>], extra: &str) -> Gcpool {
    start_config(config(&config_yaml(
        sim_url,
        "127.0.0.1:0",
        "127.0.0.1:1",
        clients,
        extra,
    )))
    .await
}

/// Starts gcpool in front of the simulator at `sim_url` with its three clients, anonymous
/// callers, and `server_keys` / `inbound_keys` (YAML lines indented by two spaces) added
/// under `server:` and `inbound:`.
pub async fn start_with_keys(sim_url: &str, server_keys: &str, inbound_keys: &str) -> Gcpool {
    let yaml = config_yaml(sim_url, "127.0.0.1:0", "127.0.0.1:1", &THREE_CLIENTS, "")
        .replace("server:\n", &format!("server:\n{server_keys}"))
        .replace("inbound:\n", &format!("inbound:\n{inbound_keys}"));
    start_config(config(&yaml)).await
}

/// The HTTP/2 client preface followed by an empty SETTINGS frame.
pub const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// A SETTINGS frame with the ACK flag: a client-only frame the server writes nothing for.
pub const H2_SETTINGS_ACK: &[u8] = b"\0\0\0\x04\x01\0\0\0\0";
/// HTTP/2 frame types, as [`read_h2_frames`] returns them.
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_GOAWAY: u8 = 0x7;

/// Reads raw HTTP/2 frames from `stream` until `limit` passes or the peer closes; returns
/// the frame types in order and whether the connection was closed.
pub async fn read_h2_frames<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    (types, closed)
}

/// Starts gcpool in-process with `config` on free loopback ports; waits until ready.
pub async fn start_config(config: Config) -> Gcpool {
    let api = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind api listener");
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin listener");
    let gcpool = Gcpool::start_on(config, api, admin).expect("gcpool must start");
    wait_ready(gcpool.admin_addr()).await;
    gcpool
}

/// How often [`eventually`] runs its probe.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Runs `probe` every 20 ms until it returns `Ok`, and resolves to that value.
///
/// `Err` carries what the probe saw instead. If `within` passes without an `Ok`, panics
/// with the caller's location, `what` (the condition awaited) and the last observation.
/// The probe runs at least once; a probe may panic itself to fail the test at once.
#[track_caller]
pub fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> impl Future<Output = T> {
    // An `async fn` cannot be `#[track_caller]` on stable: take the location here.
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = match probe().await {
                Ok(value) => return value,
                Err(seen) => seen,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!("{caller}: not within {within:?}: {what}\nlast seen: {last}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Waits (up to 10 s) until `/readyz` answers 200.
pub async fn wait_ready(admin: SocketAddr) {
    let client = HttpClient::new();
    let url = format!("http://{admin}/readyz");
    eventually(
        &format!("gcpool at admin {admin} must become ready"),
        Duration::from_secs(10),
        async || match client.try_get(&url).await {
            Ok(rsp) if rsp.status == StatusCode::OK => Ok(()),
            Ok(rsp) => Err(format!("{} {}", rsp.status, rsp.text())),
            Err(e) => Err(e),
        },
    )
    .await;
}

/// The value of one series (`name` or `name{labels}`, exactly as exported) in a
/// Prometheus text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A free loopback port (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body must be JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header must be text"))
            .unwrap_or_else(|| panic!("header {name} missing in {:?}", self.headers))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A small keep-alive HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let response = self
            .inner
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn try_get(&self, url: &str) -> Result<Answer, String> {
        let request = Request::builder()
            .uri(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.send(request).await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.try_get(url)
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .expect("test request must be valid");
        self.send(request)
            .await
            .unwrap_or_else(|e| panic!("request to {url} failed: {e}"))
    }
}

/// The gcpool binary, started with a config file; stderr captured to a file.
#[derive(Debug)]
pub struct GcpoolProcess {
    pub child: Child,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_path: std::path::PathBuf,
    /// The config file the binary runs on (tests may rewrite it to exercise reloads).
    pub config_path: std::path::PathBuf,
    /// What it was spawned with, to start it again on other ports (see `wait_ready`).
    template: String,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl GcpoolProcess {
    /// Writes `yaml` (with `{API}` / `{ADMIN}` replaced by free ports) and runs
    /// `gcpool run --config` on it.
    pub fn spawn(yaml_template: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, api, admin) = Self::run(yaml_template, &env, dir.path());
        Self {
            child,
            api,
            admin,
            stderr_path: dir.path().join("stderr.log"),
            config_path: dir.path().join("gcpool.yaml"),
            template: yaml_template.to_owned(),
            env,
            _dir: dir,
        }
    }

    /// Writes the config with free ports into `dir` and starts the binary on it.
    fn run(
        template: &str,
        env: &[(String, String)],
        dir: &Path,
    ) -> (Child, SocketAddr, SocketAddr) {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let yaml = template
            .replace("{API}", &api.to_string())
            .replace("{ADMIN}", &admin.to_string());
        let config_path = dir.join("gcpool.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("create stderr log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gcpool"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn gcpool binary");
        (child, api, admin)
    }

    /// Waits (up to 10 s) until `/readyz` answers 200. A port `free_port` picked can be
    /// bound by another test before this process binds it: the process then exits at start
    /// (and `/readyz` on that port may be the other test's). It is started again on new
    /// ports, at most 3 times; `api`, `admin` and the config file are then the new ones.
    pub async fn wait_ready(&mut self) {
        let client = HttpClient::new();
        for _ in 0..3 {
            let url = format!("http://{}/readyz", self.admin);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let exited = loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    break status;
                }
                if let Ok(answer) = client.try_get(&url).await
                    && answer.status == StatusCode::OK
                {
                    // Ours: another process would not have exited ours.
                    if self.child.try_wait().expect("try_wait").is_none() {
                        return;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gcpool at admin {} did not become ready within 10 s:\n{}",
                    self.admin,
                    self.stderr()
                );
                tokio::time::sleep(POLL_EVERY).await;
            };
            let stderr = self.stderr();
            assert!(
                stderr.contains("in use"),
                "gcpool exited at start ({exited}):\n{stderr}"
            );
            let dir = self._dir.path().to_owned();
            (self.child, self.api, self.admin) = Self::run(&self.template, &self.env, &dir);
        }
        panic!(
            "gcpool could not bind free ports three times:\n{}",
            self.stderr()
        );
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM must succeed");
    }

    /// Waits up to `limit` for the process to exit; returns its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        eventually("gcpool must exit", limit, async || {
            child
                .try_wait()
                .expect("try_wait")
                .ok_or_else(|| "still running".to_owned())
        })
        .await
    }
}

impl Drop for GcpoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The headless browser the status-page test drives: `$GCPOOL_CHROMIUM`, else `chromium`
/// or `chromium-browser` on `PATH`. `None` when there is none and `GCPOOL_REQUIRE_CHROMIUM`
/// is unset (the caller skips, saying so); panics when it is set (CI must not skip).
pub fn chromium() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("GCPOOL_CHROMIUM")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).find_map(|dir| {
                ["chromium", "chromium-browser"]
                    .iter()
                    .map(|name| dir.join(name))
                    .find(|candidate| candidate.is_file())
            })
        });
    if found.is_none() && std::env::var_os("GCPOOL_REQUIRE_CHROMIUM").is_some() {
        panic!(
            "GCPOOL_REQUIRE_CHROMIUM is set but no chromium is installed (apt-get install chromium)"
        );
    }
    found
}

/// The DOM of `url` after the page loaded, as headless `chromium` serializes it
/// (`--dump-dom`); each run with a fresh profile, killed after 60 s.
pub async fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().expect("temp dir for the browser profile");
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("chromium must dump the DOM within 60 s")
        .expect("chromium must start");
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the DOM must be UTF-8")
}

/// gcpool's `/metrics` exposition.
pub async fn metrics(gcpool: &gcpool::app::Gcpool) -> String {
    HttpClient::new()
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text()
}

/// `gcpool_rejections_total{reason}` over every caller, 0 while absent: a series appears at
/// the first rejection for `reason`. Tests here see `bad_request` and `header_timeout`
/// counted, so a 0 for those is not a misspelt label; no test here sees `header_too_large`
/// counted.
pub fn rejections(exposition: &str, reason: &str) -> f64 {
    let label = format!(r#"reason="{reason}""#);
    exposition
        .lines()
        .filter(|line| line.starts_with("gcpool_rejections_total{"))
        .filter(|line| {
            line.split_once('}')
                .is_some_and(|(labels, _)| labels.split([',', '{']).any(|l| l == label))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Reads until the peer closes (or `limit` passes); returns what arrived and whether the
/// connection was closed (EOF or reset) within `limit`.
pub async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}
