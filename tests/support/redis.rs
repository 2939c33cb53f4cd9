//! A real `redis-server` for tests: free loopback port, no persistence, own temp dir,
//! killed on Drop. `kill` and `restart` (same port), `pause` and `resume` (SIGSTOP and
//! SIGCONT to its PID), `flushall` and `out_of_memory` drive the failure tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `redis-server` process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port must be available")
            .port();
        let dir = tempfile::tempdir().expect("a temp dir for redis-server must be creatable");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs and starts a fresh, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT); it answers what queued up meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server must be running to be signalled")
            .id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("kill must run");
        assert!(status.success(), "kill {signal} {pid} must succeed");
    }

    /// Sends one command; returns the first line of the reply (`+OK`, `:1`, `-ERR …`).
    pub fn command(&self, args: &[&str]) -> String {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .expect("the test's redis-server must accept a connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream
            .write_all(request.as_bytes())
            .expect("the test's redis-server must take a command");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// `FLUSHALL`: every key gone, as after a restart without persistence.
    pub fn flushall(&self) {
        assert_eq!(self.command(&["FLUSHALL"]), "+OK");
    }

    /// `CONFIG SET parameter value`.
    pub fn config_set(&self, parameter: &str, value: &str) {
        assert_eq!(
            self.command(&["CONFIG", "SET", parameter, value]),
            "+OK",
            "CONFIG SET {parameter} {value}"
        );
    }

    /// Out of memory as a full Redis is: a 2 MB value, then `maxmemory 1mb` with
    /// `noeviction`. Writes fail with `-OOM`; `PING` and reads still work.
    pub fn out_of_memory(&self) {
        let filled = self.command(&[
            "EVAL",
            "redis.call('SET', KEYS[1], string.rep('x', 2000000)) return 1",
            "1",
            "test-ballast",
        ]);
        assert_eq!(filled, ":1");
        self.config_set("maxmemory-policy", "noeviction");
        self.config_set("maxmemory", "1mb");
        assert!(
            self.command(&["SET", "test-probe", "x"])
                .starts_with("-OOM"),
            "writes must now be refused"
        );
        assert_eq!(self.command(&["PING"]), "+PONG", "PING still answers");
    }

    /// Ends [`RedisServer::out_of_memory`]: no memory limit, ballast gone.
    pub fn enough_memory(&self) {
        self.config_set("maxmemory", "0");
        self.command(&["DEL", "test-ballast"]);
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs the Debian package)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..200 {
            if ping(addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "redis-server on port {} did not answer PING within 2 s",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server_binary() -> String {
    if std::path::Path::new("/usr/bin/redis-server").exists() {
        "/usr/bin/redis-server".into()
    } else {
        "redis-server".into()
    }
}

/// Whether a server on `addr` answers `PING` with `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
