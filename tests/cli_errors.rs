//! The binary's own errors, as an operator meets them: each names its cause (the config key,
//! the address, the host, the OS error) once, and never as Rust's `Some(…)` or an enum name.
//! Every test runs the real `gcpool` binary (and, for Redis, a real `redis-server`).

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use support::free_port;
use support::redis::RedisServer;

/// A running (or finished) `gcpool` process with stderr captured to a file.
struct Process {
    child: Child,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Runs the binary with `args`; `yaml`, when given, is written to a temp file whose path
    /// replaces `{CONFIG}` in `args`. `RUST_LOG` and `GCPOOL_*` are cleared unless `envs`
    /// sets them.
    fn spawn(args: &[&str], yaml: Option<&str>, envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("gcpool.yaml");
        if let Some(yaml) = yaml {
            std::fs::write(&config, yaml).expect("write config");
        }
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcpool"));
        for arg in args {
            cmd.arg(arg.replace("{CONFIG}", &config.display().to_string()));
        }
        for var in ["RUST_LOG", "GCPOOL_CONFIG", "GCPOOL_LOG_FORMAT"] {
            cmd.env_remove(var);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("the gcpool binary must run");
        Self {
            child,
            stderr_path,
            stdout_path,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit; `None` if it still runs.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        for _ in 0..polls(limit) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `limit` for stderr to contain `needle`; returns all of stderr.
    fn stderr_once_contains(&mut self, needle: &str, limit: Duration) -> String {
        for _ in 0..polls(limit) {
            let stderr = self.stderr();
            if stderr.contains(needle) {
                return stderr;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("gcpool exited ({status}) before writing {needle:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(POLL);
        }
        let stderr = self.stderr();
        assert!(
            stderr.contains(needle),
            "stderr must contain {needle:?} within {limit:?}; stderr:\n{stderr}"
        );
        stderr
    }
}

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Looks within `limit` (wall-clock `Instant` is banned here: sleeps are counted instead).
fn polls(limit: Duration) -> u128 {
    limit.as_millis() / POLL.as_millis()
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid config with one client; `extra` is appended at the top level.
fn config(listen: &str, admin: &str, login_base: &str, extra: &str) -> String {
    format!(
        "server:\n  listen: \"{listen}\"\n  admin_listen: \"{admin}\"\n\
         genesys:\n  api_base: \"{login_base}\"\n  login_base: \"{login_base}\"\n\
         inbound:\n  allow_anonymous: true\n\
         clients:\n  - name: pool-01\n    client_id: sim-client-01\n    client_secret: sim-secret-01\n\
         {extra}"
    )
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The log line's `error=` text, for the line containing `marker`.
fn line_with<'a>(stderr: &'a str, marker: &str) -> &'a str {
    stderr
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in:\n{stderr}"))
}

// === Redis ===

/// A Redis that requires a password, given the wrong one (or none): the log says the
/// password was refused and names `shared_state.redis_url`, not a timeout or a protocol
/// error, and not redis-rs's error kind.
#[test]
fn redis_wrong_or_missing_password_is_named() {
    let redis = RedisServer::start();
    redis.config_set("requirepass", "right-password");
    let port = redis.port();
    for (url, cause) in [
        (
            format!("redis://:wrong-password@127.0.0.1:{port}/0"),
            "authentication failed",
        ),
        (format!("redis://127.0.0.1:{port}/0"), "NOAUTH"),
    ] {
        let extra = format!("shared_state:\n  redis_url: \"{url}\"\n  timeout: 250ms\n");
        let yaml = config(&free_addr(), &free_addr(), "http://127.0.0.1:1", &extra);
        let mut gcpool = Process::spawn(&["run", "--config", "{CONFIG}"], Some(&yaml), &[]);
        let stderr = gcpool.stderr_once_contains("shared state", Duration::from_secs(10));
        let line = line_with(&stderr, "shared state");
        for needle in [cause, "shared_state.redis_url", "password"] {
            assert!(
                line.contains(needle),
                "{url}: must name {needle:?}:\n{line}"
            );
        }
        for wrong in [
            "did not answer",
            "AuthenticationFailed",
            "multibulk",
            "wrong-password",
        ] {
            assert!(
                !line.contains(wrong),
                "{url}: must not say {wrong:?}:\n{line}"
            );
        }
    }
}

// === login host ===

/// A login host that refuses connections: the warning names the host and the OS error, and
/// shows no `Some(…)`.
#[test]
fn unreachable_login_host_names_host_and_os_error() {
    let login = format!("http://{}", free_addr());
    let yaml = config(&free_addr(), &free_addr(), &login, "");
    let mut gcpool = Process::spawn(&["run", "--config", "{CONFIG}"], Some(&yaml), &[]);
    let stderr = gcpool.stderr_once_contains("token grant failed", Duration::from_secs(10));
    let line = line_with(&stderr, "token grant failed");
    let host = login.trim_start_matches("http://");
    assert!(line.contains(host), "must name {host}:\n{line}");
    assert!(
        line.contains("Connection refused") && line.contains("os error"),
        "must carry the OS error:\n{line}"
    );
    assert!(
        !line.contains("Some("),
        "no Rust Option in a log line:\n{line}"
    );
}

// === start errors ===

/// A port in use at start names the config key and the address, once (no log line plus
/// `error:` line saying the same), and exits 1.
#[test]
fn port_in_use_names_the_key_once() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    for key in ["server.listen", "server.admin_listen"] {
        let yaml = if key == "server.listen" {
            config(&taken_addr, &free_addr(), "http://127.0.0.1:1", "")
        } else {
            config(&free_addr(), &taken_addr, "http://127.0.0.1:1", "")
        };
        let mut gcpool = Process::spawn(&["run", "--config", "{CONFIG}"], Some(&yaml), &[]);
        let status = gcpool
            .exit_within(Duration::from_secs(10))
            .expect("gcpool must exit when its port is taken");
        let stderr = gcpool.stderr();
        assert_eq!(status.code(), Some(1), "{key}: stderr:\n{stderr}");
        for needle in [key, &taken_addr, "in use"] {
            assert!(
                stderr.contains(needle),
                "{key}: must name {needle:?}:\n{stderr}"
            );
        }
        assert_eq!(
            occurrences(&stderr, &taken_addr),
            1,
            "{key}: the error must be printed once:\n{stderr}"
        );
    }
}

/// The simulator's `--listen` in use names the address.
#[test]
fn simulator_port_in_use_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut sim = Process::spawn(&["simulate", "--listen", &addr], None, &[]);
    let status = sim
        .exit_within(Duration::from_secs(10))
        .expect("the simulator must exit when its port is taken");
    let stderr = sim.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    for needle in [addr.as_str(), "--listen", "in use"] {
        assert!(stderr.contains(needle), "must name {needle:?}:\n{stderr}");
    }
    assert_eq!(occurrences(&stderr, &addr), 1, "printed once:\n{stderr}");
}

/// An invalid config given to `run` is reported once.
#[test]
fn invalid_config_is_reported_once() {
    let yaml = "clients: []\n";
    let mut gcpool = Process::spawn(&["run", "--config", "{CONFIG}"], Some(yaml), &[]);
    let status = gcpool
        .exit_within(Duration::from_secs(10))
        .expect("gcpool must exit on a bad config");
    let stderr = gcpool.stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(
        occurrences(&stderr, "at least one client is required"),
        1,
        "printed once:\n{stderr}"
    );
}

// === log level ===

/// `--log-level inof` is refused with a suggestion instead of starting with every log off.
#[test]
fn misspelt_log_level_is_refused() {
    let yaml = config(&free_addr(), &free_addr(), "http://127.0.0.1:1", "");
    let mut gcpool = Process::spawn(
        &["--log-level", "inof", "run", "--config", "{CONFIG}"],
        Some(&yaml),
        &[],
    );
    let status = gcpool.exit_within(Duration::from_secs(10));
    let stderr = gcpool.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "must exit 2 at once; stderr:\n{stderr}"
    );
    for needle in ["inof", "info"] {
        assert!(stderr.contains(needle), "must name {needle:?}:\n{stderr}");
    }
}

/// `--log-level` given on the command line wins over `RUST_LOG`.
#[test]
fn log_level_flag_wins_over_rust_log() {
    let yaml = config(&free_addr(), &free_addr(), "http://127.0.0.1:1", "");
    let mut gcpool = Process::spawn(
        &["run", "--log-level", "info", "--config", "{CONFIG}"],
        Some(&yaml),
        &[("RUST_LOG", "error")],
    );
    gcpool.stderr_once_contains("gcpool listening", Duration::from_secs(10));
}

// === help ===

/// A bare `gcpool` prints help (and exits 2) instead of asking for `--config`.
#[test]
fn bare_gcpool_prints_help() {
    let mut gcpool = Process::spawn(&[], None, &[]);
    let status = gcpool
        .exit_within(Duration::from_secs(10))
        .expect("a bare gcpool must exit");
    let out = format!("{}{}", gcpool.stdout(), gcpool.stderr());
    assert_eq!(status.code(), Some(2), "{out}");
    for needle in ["Usage:", "run", "check", "simulate", "demo"] {
        assert!(out.contains(needle), "help must show {needle:?}:\n{out}");
    }
    assert!(!out.contains("is required"), "{out}");
}

/// `--config` is offered by the commands that read a config, and by no other.
#[test]
fn config_flag_only_where_used() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gcpool"))
            .args(args)
            .arg("--help")
            .env_remove("GCPOOL_CONFIG")
            .output()
            .expect("the gcpool binary must run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for cmd in [&["run"][..], &["check"]] {
        assert!(
            help(cmd).contains("--config"),
            "{cmd:?} --help:\n{}",
            help(cmd)
        );
    }
    for cmd in [&[][..], &["simulate"], &["demo"]] {
        assert!(
            !help(cmd).contains("--config"),
            "{cmd:?} --help:\n{}",
            help(cmd)
        );
    }
    // `gcpool simulate --config x` is a usage error, not silently ignored.
    let out = Command::new(env!("CARGO_BIN_EXE_gcpool"))
        .args(["simulate", "--config", "x.yaml", "--listen", "127.0.0.1:1"])
        .output()
        .expect("the gcpool binary must run");
    assert_eq!(out.status.code(), Some(2));
    // The form scripts already use still works.
    let dir = tempfile::tempdir().expect("temp dir");
    let path: &Path = &dir.path().join("c.yaml");
    std::fs::write(path, config("127.0.0.1:1", "127.0.0.1:2", "http://x", "")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gcpool"))
        .arg("--config")
        .arg(path)
        .arg("check")
        .output()
        .expect("the gcpool binary must run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
