//! Config hot reload of the real binary: SIGHUP and file-change reloads add clients, a bad
//! config or one changing a restart-only key is rejected with its reason and the current
//! config stays, a request in flight during a reload finishes, no secret reaches the log.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use gcpool::sim::{SimOptions, Simulator};
use http::{Method, StatusCode};
use serde_json::Value;
use support::{GcpoolProcess, HttpClient, THREE_CLIENTS, TestClient, config_yaml, eventually};
use tokio::time::Instant;

/// How long any one step may take to show its effect.
const STEP: Duration = Duration::from_secs(10);

/// Trailing newlines in the first config: room for later configs of the same length.
const PADDING: usize = 2048;

/// A running binary in front of the simulator, and what it takes to rewrite its config.
struct Harness {
    process: GcpoolProcess,
    sim_url: String,
    http: HttpClient,
    /// The config file's length and modification time at start, which
    /// [`Harness::write_hidden`] keeps.
    len: u64,
    mtime: SystemTime,
}

impl Harness {
    /// Starts the binary with `clients`, its config followed by [`PADDING`] newlines.
    async fn start(sim: &Simulator, clients: &[TestClient<'_>]) -> Self {
        let sim_url = sim.base_url();
        let mut yaml = config_yaml(&sim_url, "{API}", "{ADMIN}", clients, "");
        yaml.extend(std::iter::repeat_n('\n', PADDING));
        let mut process = GcpoolProcess::spawn(&yaml, &[]);
        process.wait_ready().await;
        let meta = std::fs::metadata(&process.config_path).expect("config metadata");
        let (len, mtime) = (meta.len(), meta.modified().expect("config mtime"));
        Self {
            process,
            sim_url,
            http: HttpClient::new(),
            len,
            mtime,
        }
    }

    /// The config YAML for `clients` on the running ports, with `extra` appended.
    fn yaml(&self, clients: &[TestClient<'_>], extra: &str) -> String {
        config_yaml(
            &self.sim_url,
            &self.process.api.to_string(),
            &self.process.admin.to_string(),
            clients,
            extra,
        )
    }

    /// Rewrites the config keeping its length and modification time, so that the file
    /// poll cannot see the change: only SIGHUP applies it.
    fn write_hidden(&self, yaml: &str) {
        let path = &self.process.config_path;
        write_atomically(path, &padded(yaml, self.len));
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(self.mtime))
            .expect("restore the config's mtime");
        let meta = std::fs::metadata(path).expect("config metadata");
        assert_eq!(
            (meta.len(), meta.modified().expect("mtime")),
            (self.len, self.mtime),
            "the rewrite must keep the file's stamp"
        );
    }

    /// Rewrites the config with a new length and modification time (what an editor does).
    fn write_visible(&self, yaml: &str) {
        let path = &self.process.config_path;
        let before = std::fs::metadata(path).expect("config metadata");
        assert_ne!(
            before.len(),
            yaml.len() as u64,
            "the new content must change the file's length"
        );
        write_atomically(path, yaml);
    }

    /// Sends SIGHUP to the binary.
    fn hangup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.process.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP must succeed");
    }

    async fn status(&self) -> Value {
        let answer = self
            .http
            .get(&format!("http://{}/status", self.process.admin))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        answer.json()
    }

    /// Polls `/status` until it shows `generation` and `clients`, in that order.
    async fn wait_status(&self, generation: u64, clients: &[&str]) -> Value {
        eventually(
            &format!("/status must show generation {generation} with clients {clients:?}"),
            STEP,
            async || {
                let status = self.status().await;
                if status["config_generation"] == generation && client_names(&status) == clients {
                    return Ok(status);
                }
                Err(format!("{status:#}\nstderr:\n{}", self.process.stderr()))
            },
        )
        .await
    }

    /// Polls stderr until "config reload rejected" appears `count` times; returns the
    /// text from the last occurrence on.
    async fn wait_rejections(&self, count: usize) -> String {
        eventually(
            &format!("stderr must show {count} rejected reloads"),
            STEP,
            async || {
                let stderr = self.process.stderr();
                let found: Vec<_> = stderr.match_indices("config reload rejected").collect();
                if found.len() < count {
                    return Err(stderr);
                }
                assert_eq!(
                    found.len(),
                    count,
                    "one rejection per signal, no more:\n{stderr}"
                );
                Ok(stderr[found[count - 1].0..].to_owned())
            },
        )
        .await
    }

    /// `gcpool_config_reloads_total{result}`. Both results are exported from the start, so
    /// a missing series fails the test rather than reading as 0.
    async fn reloads(&self, result: &str) -> f64 {
        let answer = self
            .http
            .get(&format!("http://{}/metrics", self.process.admin))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let text = answer.text();
        let series = format!("gcpool_config_reloads_total{{result=\"{result}\"}}");
        support::metric_value(&text, &series)
            .unwrap_or_else(|| panic!("{series} must be exported; /metrics:\n{text}"))
    }

    /// A request through the proxy must be answered 200.
    async fn assert_serves(&self) {
        let answer = self
            .http
            .request(
                Method::GET,
                &format!("http://{}/api/v2/users", self.process.api),
                &[],
                "",
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }

    /// The binary still runs and has never logged a client secret.
    fn assert_alive_without_secrets(&mut self) {
        assert!(
            self.process.child.try_wait().expect("try_wait").is_none(),
            "gcpool must keep running:\n{}",
            self.process.stderr()
        );
        let stderr = self.process.stderr();
        assert!(
            !stderr.contains("sim-secret-0"),
            "a client secret reached the log:\n{stderr}"
        );
    }

    async fn stop(mut self) {
        self.assert_alive_without_secrets();
        self.process.terminate();
        let exit = self.process.wait_exit(STEP).await;
        assert!(exit.success(), "{exit:?}\n{}", self.process.stderr());
    }
}

/// `yaml` with trailing newlines up to `len` bytes (YAML ignores them).
fn padded(yaml: &str, len: u64) -> String {
    let len = usize::try_from(len).expect("a small config");
    assert!(yaml.len() <= len, "config longer than the padding");
    let mut text = yaml.to_owned();
    text.extend(std::iter::repeat_n('\n', len - yaml.len()));
    text
}

/// Writes `text` to a sibling file and renames it over `path`, so the poll never reads a
/// half-written config.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write the new config");
    std::fs::rename(&tmp, path).expect("rename the new config into place");
}

fn client_names(status: &Value) -> Vec<&str> {
    status["clients"]
        .as_array()
        .map(|clients| {
            clients
                .iter()
                .map(|c| c["name"].as_str().unwrap_or("<no name>"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_the_config() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("start the simulator");
    let [one, two, three] = THREE_CLIENTS;

    // 1. One client.
    let h = Harness::start(&sim, &[one]).await;
    let status = h.wait_status(1, &["pool-01"]).await;
    assert!(
        status["clients"][0]["state"].is_string(),
        "each client has a state: {status:#}"
    );
    assert_eq!(h.reloads("applied").await, 0.0);

    // 2. A request is in flight (1.5 s upstream) while SIGHUP adds pool-02.
    let api = h.process.api;
    let slow = tokio::spawn(async move {
        HttpClient::new()
            .request(
                Method::GET,
                &format!("http://{api}/api/v2/users"),
                &[("x-sim-delay-ms", "1500")],
                "",
            )
            .await
    });
    // The slow request reaches the simulator before the reload.
    eventually(
        "the slow request must reach the simulator",
        STEP,
        async || match sim.stats().accepted {
            0 => Err("0 requests accepted upstream".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    let reload_started = Instant::now();
    h.write_hidden(&h.yaml(&[one, two], ""));
    h.hangup();
    let status = h.wait_status(2, &["pool-01", "pool-02"]).await;
    assert!(
        reload_started.elapsed() < Duration::from_millis(1500),
        "the reload must not wait for the request in flight"
    );
    assert!(
        status["clients"][1]["state"].is_string(),
        "the added client has a state: {status:#}"
    );
    let answer = slow.await.expect("slow request task");
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the request in flight during the reload finishes: {}",
        answer.text()
    );
    assert!(h.process.stderr().contains("config reloaded"));
    assert_eq!(h.reloads("applied").await, 1.0);
    assert_eq!(h.reloads("rejected").await, 0.0);

    // 3. An unknown key: rejected, naming it; generation 2 keeps serving.
    h.write_hidden(&h.yaml(&[one, two], "budgets:\n  bogus: 1\n"));
    h.hangup();
    let rejection = h.wait_rejections(1).await;
    assert!(
        rejection.contains("budgets.bogus"),
        "the reason names the unknown key:\n{rejection}"
    );
    h.wait_status(2, &["pool-01", "pool-02"]).await;
    h.assert_serves().await;
    assert_eq!(h.reloads("rejected").await, 1.0);
    assert_eq!(h.reloads("applied").await, 1.0);

    // 4. Another listen port needs a restart: rejected, naming `server.listen`.
    let moved = h.yaml(&[one, two], "").replace(
        &format!("listen: \"{}\"", h.process.api),
        &format!("listen: \"127.0.0.1:{}\"", support::free_port()),
    );
    assert!(moved.contains("admin_listen"), "only server.listen moves");
    h.write_hidden(&moved);
    h.hangup();
    let rejection = h.wait_rejections(2).await;
    assert!(
        rejection.contains("server.listen"),
        "the reason names the restart-only key:\n{rejection}"
    );
    assert!(
        !rejection
            .lines()
            .next()
            .unwrap_or_default()
            .contains("admin_listen"),
        "only the changed key is named:\n{rejection}"
    );
    h.wait_status(2, &["pool-01", "pool-02"]).await;
    h.assert_serves().await;
    assert_eq!(h.reloads("rejected").await, 2.0);

    assert!(
        !h.process.stderr().contains("config file changed"),
        "the rewrites so far kept the file's stamp: only SIGHUP reloaded:\n{}",
        h.process.stderr()
    );

    // 5. No signal: the file poll applies a new file adding pool-03.
    h.write_visible(&h.yaml(&[one, two, three], ""));
    h.wait_status(3, &["pool-01", "pool-02", "pool-03"]).await;
    h.assert_serves().await;
    assert_eq!(h.reloads("applied").await, 2.0);
    assert_eq!(h.reloads("rejected").await, 2.0);
    assert!(
        h.process.stderr().contains("config file changed"),
        "the poll, not a signal, reloaded:\n{}",
        h.process.stderr()
    );

    // 6. Still running; no secret in the log.
    h.stop().await;
}

/// A bad file that is both edited (new stamp) and signalled is reported once: the
/// rejection records the file's stamp, so the next poll does not re-read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_file_is_not_reloaded_again_by_the_poll() {
    let sim = Simulator::start(SimOptions::with_clients(3))
        .await
        .expect("start the simulator");
    let [one, two, _] = THREE_CLIENTS;
    let h = Harness::start(&sim, &[one]).await;
    h.wait_status(1, &["pool-01"]).await;

    h.write_visible(&h.yaml(&[one, two], "budgets:\n  bogus: 1\n"));
    h.hangup();
    h.wait_rejections(1).await;
    // Had the poll seen the file before the signal, it would have logged that first.
    let stderr = h.process.stderr();
    let rejected_at = stderr
        .find("config reload rejected")
        .expect("one rejection");
    if stderr[..rejected_at].contains("config file changed") {
        eprintln!("the poll saw the file before SIGHUP; nothing to check");
        return h.stop().await;
    }

    // Longer than a poll interval: the poll must not re-read the rejected file.
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        let stderr = h.process.stderr();
        assert!(
            !stderr[rejected_at..].contains("config file changed"),
            "the poll re-read a file SIGHUP already rejected:\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.reloads("rejected").await, 1.0);
    h.wait_status(1, &["pool-01"]).await;
    h.stop().await;
}
