//! Inbound TLS over real sockets: HTTPS through gcpool to the simulator, TLS 1.2+ only,
//! plain HTTP refused on the TLS port, and certificate reloads (in-process, on file change
//! and on SIGHUP to the binary) that reach new connections only.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gcpool::app::Gcpool;
use gcpool::sim::{SimOptions, Simulator};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};
use support::{
    GcpoolProcess, HttpClient, THREE_CLIENTS, config, config_yaml, eventually, wait_ready,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const PATH: &str = "/api/v2/users/me";

/// A test CA and a `localhost` / 127.0.0.1 server certificate it signed.
struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    /// Leaf then CA, as a server's chain file holds them.
    chain_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{name} localhost"));
        let key = KeyPair::generate().expect("leaf key");
        let leaf = leaf.signed_by(&key, &ca).expect("leaf signed by CA");
        Self {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the chain and key to `dir/tls.crt` and `dir/tls.key` (replacing by rename,
    /// as cert-manager and most deploy tools do).
    fn write(&self, dir: &Path) {
        write_atomic(&dir.join("tls.key"), &self.key_pem);
        write_atomic(&dir.join("tls.crt"), &self.chain_pem);
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// `server.tls` pointing at `dir/tls.crt` and `dir/tls.key`, added to the test config.
fn with_tls(yaml: &str, dir: &Path) -> String {
    let tls = format!(
        "server:\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    yaml.replacen("server:\n", &tls, 1)
}

/// The test config of a gcpool in front of `sim` with TLS from `dir`'s files.
fn tls_yaml(sim: &Simulator, dir: &Path) -> String {
    with_tls(
        &config_yaml(
            &sim.base_url(),
            "127.0.0.1:0",
            "127.0.0.1:1",
            &THREE_CLIENTS,
            "",
        ),
        dir,
    )
}

async fn start_tls_gcpool(sim: &Simulator, dir: &Path) -> Gcpool {
    let yaml = tls_yaml(sim, dir);
    let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let gcpool = Gcpool::start_on(config(&yaml), api, admin).expect("gcpool must start");
    // The admin listener stays plain HTTP: this is an http:// request.
    wait_ready(gcpool.admin_addr()).await;
    gcpool
}

/// One HTTPS connection to gcpool, trusting `roots` only.
struct Conn {
    tls: TlsInfo,
    http1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    http2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
    /// `scheme://authority` of HTTP/2 requests.
    h2_authority: String,
}

#[derive(Debug, PartialEq)]
struct TlsInfo {
    version: ProtocolVersion,
    alpn: Option<Vec<u8>>,
    leaf: CertificateDer<'static>,
}

async fn tls_connect(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("test CA is a valid root");
    }
    let mut client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("ring supports these versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        roots: &[&CertificateDer<'static>],
        versions: &[&'static SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Self {
        let stream = tls_connect(addr, roots, versions, alpn)
            .await
            .expect("TLS handshake with gcpool must succeed");
        let (_, session) = stream.get_ref();
        let tls = TlsInfo {
            version: session.protocol_version().expect("negotiated version"),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            leaf: session.peer_certificates().expect("server chain")[0].clone(),
        };
        let io = TokioIo::new(stream);
        if tls.alpn.as_deref() == Some(b"h2") {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("HTTP/2 handshake");
            tokio::spawn(connection);
            Self {
                tls,
                http1: None,
                http2: Some(sender),
                h2_authority: "https://localhost".to_owned(),
            }
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(connection);
            Self {
                tls,
                http1: Some(sender),
                http2: None,
                h2_authority: String::new(),
            }
        }
    }

    async fn get(&mut self, path: &str) -> StatusCode {
        let request = Request::builder()
            .uri(path)
            .header("host", "localhost")
            .body(Empty::new())
            .expect("request");
        let response = if let Some(sender) = &mut self.http1 {
            sender.ready().await.expect("connection ready");
            sender.send_request(request).await
        } else {
            let sender = self.http2.as_mut().expect("one of http1/http2");
            let mut request = request;
            // HTTP/2 always carries an authority (here gcpool's own name, as a browser or
            // SDK sends it); it is the caller's Host and must not be refused as a foreign
            // absolute-form target.
            *request.uri_mut() = format!("{}{path}", self.h2_authority).parse().expect("uri");
            request.headers_mut().remove("host");
            sender.ready().await.expect("connection ready");
            sender.send_request(request).await
        }
        .expect("request over TLS must be answered");
        let status = response.status();
        let _ = response.into_body().collect().await;
        status
    }
}

const ANY_VERSION: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[tokio::test]
async fn https_is_served_over_tls13_and_tls12_with_alpn() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("first");
    pki.write(dir.path());
    let gcpool = start_tls_gcpool(&sim, dir.path()).await;
    let addr = gcpool.api_addr();

    let mut conn = Conn::open(addr, &[&pki.ca], ANY_VERSION, &[b"http/1.1"]).await;
    assert_eq!(
        conn.get(PATH).await,
        StatusCode::OK,
        "HTTPS must reach the simulator"
    );
    assert_eq!(
        conn.tls.version,
        ProtocolVersion::TLSv1_3,
        "a modern client gets TLS 1.3"
    );
    assert_eq!(conn.tls.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        conn.tls.leaf, pki.leaf,
        "the configured certificate is served"
    );
    // Past the parking delay: hyper's connection was taken apart and comes up anew.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(conn.get(PATH).await, StatusCode::OK, "keep-alive over TLS");

    let mut conn = Conn::open(addr, &[&pki.ca], TLS12_ONLY, &[b"http/1.1"]).await;
    assert_eq!(
        conn.tls.version,
        ProtocolVersion::TLSv1_2,
        "a TLS 1.2-only client is served"
    );
    assert_eq!(conn.get(PATH).await, StatusCode::OK);

    let mut conn = Conn::open(addr, &[&pki.ca], ANY_VERSION, &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        conn.tls.alpn.as_deref(),
        Some(&b"h2"[..]),
        "ALPN prefers h2"
    );
    assert_eq!(conn.get(PATH).await, StatusCode::OK, "HTTP/2 over TLS");

    let mut conn = Conn::open(addr, &[&pki.ca], ANY_VERSION, &[]).await;
    assert_eq!(conn.tls.alpn, None, "no ALPN offered: HTTP/1.1 still works");
    assert_eq!(conn.get(PATH).await, StatusCode::OK);

    assert!(
        tls_connect(addr, &[&Pki::new("stranger").ca], ANY_VERSION, &[])
            .await
            .is_err(),
        "a client trusting another CA must reject the certificate"
    );
    assert_eq!(
        sim.stats().accepted,
        5,
        "exactly the five HTTPS GETs reached the simulator"
    );
    gcpool.shutdown().trigger();
    gcpool.wait().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_fails_and_is_counted() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("first");
    pki.write(dir.path());
    let gcpool = start_tls_gcpool(&sim, dir.path()).await;

    let answer = HttpClient::new()
        .try_get(&format!("http://{}{PATH}", gcpool.api_addr()))
        .await;
    assert!(
        answer.is_err(),
        "plain HTTP to the TLS port must fail, got {answer:?}"
    );
    // The failure is counted once the connection task has run.
    eventually(
        "the failed handshake must be counted",
        Duration::from_secs(2),
        async || match gcpool.metrics.tls_handshake_failures.get() {
            0 => Err("0 handshake failures counted".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    assert_eq!(gcpool.metrics.tls_handshake_failures.get(), 1);
    assert!(
        gcpool
            .metrics
            .encode()
            .contains("gcpool_tls_handshake_failures_total 1"),
        "exported on /metrics"
    );

    let mut conn = Conn::open(gcpool.api_addr(), &[&pki.ca], ANY_VERSION, &[]).await;
    assert_eq!(
        conn.get(PATH).await,
        StatusCode::OK,
        "HTTPS still works after"
    );
    assert_eq!(
        sim.stats().accepted,
        1,
        "the plain request never reached upstream"
    );
    gcpool.shutdown().trigger();
    gcpool.wait().await;
}

#[tokio::test]
async fn reload_reaches_new_connections_only_and_a_bad_pair_is_rejected() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (Pki::new("first"), Pki::new("second"));
    first.write(dir.path());
    let gcpool = start_tls_gcpool(&sim, dir.path()).await;
    let addr = gcpool.api_addr();
    let both = [&first.ca, &second.ca];
    let tls = gcpool.tls().expect("TLS is configured");

    let mut before = Conn::open(addr, &both, ANY_VERSION, &[]).await;
    assert_eq!(before.tls.leaf, first.leaf);
    assert_eq!(before.get(PATH).await, StatusCode::OK);

    second.write(dir.path());
    tls.reload().expect("a valid new pair must load");
    let mut after = Conn::open(addr, &both, ANY_VERSION, &[]).await;
    assert_eq!(
        after.tls.leaf, second.leaf,
        "a new connection sees the new certificate"
    );
    assert_eq!(after.get(PATH).await, StatusCode::OK);
    assert_eq!(
        before.get(PATH).await,
        StatusCode::OK,
        "a connection opened before the reload keeps working"
    );
    assert!(
        tls_connect(addr, &[&first.ca], ANY_VERSION, &[])
            .await
            .is_err(),
        "the old certificate is no longer offered"
    );

    // A bad pair: the first certificate with the second key, then garbage.
    write_atomic(&dir.path().join("tls.crt"), &first.chain_pem);
    let error = tls.reload().expect_err("mismatched pair must be rejected");
    assert!(error.to_string().contains("tls.crt"), "{error}");
    write_atomic(
        &dir.path().join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    );
    assert!(tls.reload().is_err(), "malformed PEM must be rejected");
    let mut still = Conn::open(addr, &both, ANY_VERSION, &[]).await;
    assert_eq!(
        still.tls.leaf, second.leaf,
        "a bad pair leaves the good one in place"
    );
    assert_eq!(still.get(PATH).await, StatusCode::OK);
    gcpool.shutdown().trigger();
    gcpool.wait().await;
}

/// Opens connections until one presents `leaf` (up to `limit`); fails the test with
/// `what`, what the last connection saw and `log()` (e.g. gcpool's stderr) otherwise.
async fn wait_for_leaf(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
    leaf: &CertificateDer<'static>,
    limit: Duration,
    what: &str,
    log: impl Fn() -> String,
) {
    eventually(what, limit, async || {
        let seen = match tls_connect(addr, roots, ANY_VERSION, &[]).await {
            Ok(stream) if stream.get_ref().1.peer_certificates().map(|c| &c[0]) == Some(leaf) => {
                return Ok(());
            }
            Ok(_) => "the connection presented another certificate".to_owned(),
            Err(e) => format!("connection failed: {e}"),
        };
        Err(format!("{seen}\n{}", log()))
    })
    .await;
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_signal() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (Pki::new("first"), Pki::new("second"));
    first.write(dir.path());
    let gcpool = start_tls_gcpool(&sim, dir.path()).await;

    second.write(dir.path());
    wait_for_leaf(
        gcpool.api_addr(),
        &[&first.ca, &second.ca],
        &second.leaf,
        Duration::from_secs(10),
        "the modification-time poll must load the new certificate",
        String::new,
    )
    .await;
    gcpool.shutdown().trigger();
    gcpool.wait().await;
}

/// Pads `text` to `len` bytes (PEM readers skip text between sections) so a rewrite keeps
/// the file's length, then restores `mtime`: only SIGHUP can then reveal the change.
fn write_unchanged_stamp(path: &Path, text: &str, len: usize, mtime: std::time::SystemTime) {
    let mut padded = text.to_owned();
    assert!(padded.len() <= len, "pad length too small");
    padded.extend(std::iter::repeat_n('\n', len - padded.len()));
    std::fs::write(path, padded).expect("write");
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
}

fn binary_config(sim: &Simulator, dir: &Path) -> String {
    with_tls(
        &config_yaml(&sim.base_url(), "{API}", "{ADMIN}", &THREE_CLIENTS, ""),
        dir,
    )
}

#[tokio::test]
async fn binary_reloads_on_sighup() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (Pki::new("first"), Pki::new("second"));
    let (crt, key): (PathBuf, PathBuf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let mtime = std::time::SystemTime::now() - Duration::from_secs(3600);
    write_unchanged_stamp(&crt, &first.chain_pem, 8192, mtime);
    write_unchanged_stamp(&key, &first.key_pem, 4096, mtime);
    let mut gcpool = GcpoolProcess::spawn(&binary_config(&sim, dir.path()), &[]);
    gcpool.wait_ready().await;
    let roots = [&first.ca, &second.ca];

    let mut before = Conn::open(gcpool.api, &roots, ANY_VERSION, &[]).await;
    assert_eq!(before.tls.leaf, first.leaf);
    assert_eq!(before.get(PATH).await, StatusCode::OK);

    write_unchanged_stamp(&crt, &second.chain_pem, 8192, mtime);
    write_unchanged_stamp(&key, &second.key_pem, 4096, mtime);
    // Longer than a poll: with the stamp unchanged, only a signal reloads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let unchanged = Conn::open(gcpool.api, &roots, ANY_VERSION, &[]).await;
    assert_eq!(unchanged.tls.leaf, first.leaf, "no reload before SIGHUP");

    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(gcpool.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
    wait_for_leaf(
        gcpool.api,
        &roots,
        &second.leaf,
        Duration::from_secs(5),
        "SIGHUP must load the new certificate",
        || format!("stderr:\n{}", gcpool.stderr()),
    )
    .await;
    assert_eq!(
        before.get(PATH).await,
        StatusCode::OK,
        "the old connection survives"
    );
    assert!(
        gcpool.child.try_wait().expect("try_wait").is_none(),
        "SIGHUP must not stop gcpool"
    );
    let stderr = gcpool.stderr();
    assert_eq!(
        stderr.matches("TLS certificate reloaded").count(),
        1,
        "{stderr}"
    );

    gcpool.terminate();
    assert!(gcpool.wait_exit(Duration::from_secs(15)).await.success());
}

#[tokio::test]
async fn unusable_certificate_or_key_is_a_start_error_naming_the_file() {
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (Pki::new("first"), Pki::new("second"));

    // The key file holds a certificate: no private key in it.
    std::fs::write(dir.path().join("tls.crt"), &first.chain_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &first.chain_pem).unwrap();
    let mut gcpool = GcpoolProcess::spawn(&binary_config(&sim, dir.path()), &[]);
    let status = gcpool.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{}", gcpool.stderr());
    let stderr = gcpool.stderr();
    assert!(stderr.contains("tls.key: no PEM private key"), "{stderr}");

    // A key that does not belong to the certificate: in-process start fails too.
    std::fs::write(dir.path().join("tls.key"), &second.key_pem).unwrap();
    let yaml = tls_yaml(&sim, dir.path());
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = Gcpool::start_on(config(&yaml), api, admin).expect_err("mismatched pair");
    let source = std::error::Error::source(&error)
        .expect("cause")
        .to_string();
    assert!(
        source.contains("tls.crt") && source.contains("tls.key"),
        "{source}"
    );
    assert!(
        !source.contains(second.key_pem.lines().nth(1).unwrap()),
        "no key material"
    );
}

/// Issue 10 item 3, over TLS: an h2 connection (ALPN `h2`) whose client sends the preface,
/// SETTINGS and a SETTINGS ack, then nothing, is kept past `header_read_timeout` and closed
/// at `idle_timeout` with a GOAWAY frame, counting no bad request.
#[tokio::test]
async fn idle_h2_over_tls_lives_until_idle_timeout_with_goaway() {
    use tokio::io::AsyncWriteExt;
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("h2-idle");
    pki.write(dir.path());
    let yaml = tls_yaml(&sim, dir.path()).replacen(
        "server:\n",
        "server:\n  header_read_timeout: 1s\n  idle_timeout: 4s\n",
        1,
    );
    let gcpool = support::start_config(config(&yaml)).await;
    let mut stream = tls_connect(gcpool.api_addr(), &[&pki.ca], ANY_VERSION, &[b"h2"])
        .await
        .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = tokio::time::Instant::now();

    stream
        .write_all(support::H2_PREFACE_AND_SETTINGS)
        .await
        .unwrap();
    let (types, closed) = support::read_h2_frames(&mut stream, Duration::from_millis(300)).await;
    assert!(
        !closed && types.contains(&support::H2_SETTINGS),
        "server SETTINGS: {types:?}"
    );
    stream.write_all(support::H2_SETTINGS_ACK).await.unwrap();
    let (_, closed) = support::read_h2_frames(&mut stream, Duration::from_millis(2500)).await;
    assert!(
        !closed,
        "an idle h2-over-TLS connection outlives header_read_timeout; cut after {:?}",
        started.elapsed()
    );
    let (types, closed) = support::read_h2_frames(&mut stream, Duration::from_secs(4)).await;
    assert!(closed, "closed by idle_timeout");
    assert!(
        types.contains(&support::H2_GOAWAY),
        "with GOAWAY: {types:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(3800));
    let metrics = HttpClient::new()
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert_eq!(
        support::rejections(&metrics, "bad_request"),
        0.0,
        "{metrics}"
    );
}

/// A parked HTTP/1 connection over TLS: woken by a request whose first record holds one
/// byte (the rest a record later, after the parking delay), served, then closed at
/// `idle_timeout` with a close_notify (a clean end of stream, not a cut), counting no head
/// timeout.
#[tokio::test]
async fn a_parked_http1_tls_connection_wakes_and_idles_out_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Simulator::start(SimOptions::with_clients(3)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("h1-parked");
    pki.write(dir.path());
    let yaml = tls_yaml(&sim, dir.path()).replacen(
        "server:\n",
        "server:\n  header_read_timeout: 1s\n  idle_timeout: 3s\n",
        1,
    );
    let gcpool = support::start_config(config(&yaml)).await;
    let mut stream = tls_connect(gcpool.api_addr(), &[&pki.ca], ANY_VERSION, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    let get = format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut buf = vec![0u8; 16 * 1024];
    for round in 0..3 {
        // Past the parking delay.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&get.as_bytes()[..1]).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&get.as_bytes()[1..]).await.unwrap();
        stream.flush().await.unwrap();
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
                .await
                .expect("answered")
                .expect("read");
            assert!(n > 0, "round {round}: closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            seen.starts_with(b"HTTP/1.1 200"),
            "round {round}: {}",
            String::from_utf8_lossy(&seen)
        );
    }
    // The rest of the last answer's body, then nothing until the idle timeout ends it.
    let idle_from = tokio::time::Instant::now();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(6), stream.read(&mut buf)).await {
            Err(_) => panic!("a parked TLS connection was not closed by idle_timeout"),
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => break Err(error),
        }
    };
    let idle = idle_from.elapsed();
    assert!(
        ended.is_ok(),
        "closed with a close_notify, not cut: {ended:?}"
    );
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_millis(4500),
        "closed after {idle:?}, want ≈ 3 s"
    );
    let metrics = HttpClient::new()
        .get(&format!("http://{}/metrics", gcpool.admin_addr()))
        .await
        .text();
    assert_eq!(
        support::rejections(&metrics, "header_timeout"),
        0.0,
        "{metrics}"
    );
}
