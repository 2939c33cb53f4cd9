//! Inbound TLS: the rustls server configuration built from `server.tls` (PEM certificate
//! chain + private key), swapped in place when the files change or on SIGHUP.
//!
//! TLS 1.2 and 1.3 only, ring as the crypto provider, ALPN `h2` and `http/1.1`. A reload
//! affects new handshakes only: established connections keep the configuration they were
//! accepted with. A bad new pair is rejected and the current one stays. This module does
//! not own the accept loop (`server`) or the listener.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsConfig;
use crate::shutdown::{Hangup, watch_reloads};
use crate::telemetry::error_chain;

/// How long a caller may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the watcher compares the files' modification times (one `metadata()` each).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why a certificate/key pair could not be loaded. Messages name the file and the
/// problem, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no PEM certificate found (expected `BEGIN CERTIFICATE` blocks)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: malformed PEM certificate", path.display())]
    CertificatePem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error(
        "{}: no PEM private key found (expected PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)",
        path.display()
    )]
    NoKey { path: PathBuf },
    /// The cause is described, not attached: `pem::Error` can quote file content.
    #[error("{}: malformed PEM private key ({problem})", path.display())]
    KeyPem {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{} and {} are not a usable certificate and key", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Why one caller's handshake failed (caller side: logged at debug only).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed")]
    Failed(#[source] io::Error),
    #[error("TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
}

/// The current server configuration, shared by every worker; cheap to clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: Arc<Inner>,
}

struct Inner {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Read once per handshake; written only by a successful reload.
    current: RwLock<Arc<ServerConfig>>,
    /// The files' stamps when they were last read, so a poll reloads only on change.
    loaded: Mutex<Stamp>,
    handshake_failures: IntCounter,
}

/// Modification time and length of the certificate and key files (`None`: unreadable).
type Stamp = [Option<(SystemTime, u64)>; 2];

// === impl TlsAcceptor ===

/// Names the files only: the configuration holds the private key.
impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("cert_file", &self.inner.cert_file)
            .field("key_file", &self.inner.key_file)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Reads and checks the certificate chain and key named in `files`.
    ///
    /// # Errors
    /// When a file cannot be read, holds no PEM certificate or key, or the key does not
    /// match the first certificate.
    pub fn load(files: &TlsConfig, handshake_failures: IntCounter) -> Result<Self, TlsError> {
        let stamp = stamp(&files.cert_file, &files.key_file);
        let config = server_config(&files.cert_file, &files.key_file)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cert_file: files.cert_file.clone(),
                key_file: files.key_file.clone(),
                current: RwLock::new(config),
                loaded: Mutex::new(stamp),
                handshake_failures,
            }),
        })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads both files; on success new handshakes use them, on failure the current
    /// pair stays. Logs the outcome once.
    ///
    /// # Errors
    /// As [`TlsAcceptor::load`]; the current configuration is then unchanged.
    pub fn reload(&self) -> Result<(), TlsError> {
        let inner = &*self.inner;
        // Stamp before reading: a write that lands during the read changes the stamp
        // again, and the next poll reads the files once more.
        let stamp = stamp(&inner.cert_file, &inner.key_file);
        *inner.loaded.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        match server_config(&inner.cert_file, &inner.key_file) {
            Ok(config) => {
                *inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = config;
                info!(cert_file = %inner.cert_file.display(), "TLS certificate reloaded; new connections use it");
                Ok(())
            }
            Err(error) => {
                warn!(
                    error = %error_chain(&error),
                    "TLS certificate reload rejected; keeping the current certificate"
                );
                Err(error)
            }
        }
    }

    /// Whether either file's modification time or length differs from the last read.
    fn changed(&self) -> bool {
        let inner = &*self.inner;
        let now = stamp(&inner.cert_file, &inner.key_file);
        *inner.loaded.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Performs the server side of the handshake on `stream`, within
    /// [`HANDSHAKE_TIMEOUT`]; a failure is counted in `gcpool_tls_handshake_failures_total`.
    ///
    /// # Errors
    /// When the caller does not speak TLS 1.2+, aborts, or is too slow.
    pub async fn accept<IO>(&self, stream: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => HandshakeError::Failed(error),
            Err(_elapsed) => HandshakeError::TimedOut,
        };
        self.inner.handshake_failures.inc();
        Err(result)
    }

    /// Reloads on SIGHUP and when the files change (polled every [`POLL_INTERVAL`]) until
    /// `stop` is cancelled. Spawn it on the shutdown owner. SIGHUP is caught from this call
    /// on; call it inside the runtime.
    pub fn watch(self, stop: CancellationToken) -> impl std::future::Future<Output = ()> + Send {
        let hangup = Hangup::new("TLS reload on file change only");
        async move {
            watch_reloads(
                hangup,
                POLL_INTERVAL,
                stop,
                "TLS certificate",
                || self.changed(),
                || {
                    let _ = self.reload();
                },
            )
            .await;
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [cert, key].map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Builds the server configuration: ring, TLS 1.3 and 1.2, ALPN h2 then http/1.1.
fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertificatePem {
            path: cert_file.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key_pem = read(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_file.to_owned(),
        },
        other => TlsError::KeyPem {
            path: key_file.to_owned(),
            problem: key_pem_problem(&other),
        },
    })?;
    let pair = |source| TlsError::Pair {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(pair)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A description of a PEM error that quotes nothing from the key file.
fn key_pem_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "invalid base64",
        pem::Error::SectionTooLarge => "section too large",
        _ => "unreadable PEM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, cert: &str, key: &str) -> TlsConfig {
        let cert_file = dir.join("tls.crt");
        let key_file = dir.join("tls.key");
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        TlsConfig {
            cert_file,
            key_file,
        }
    }

    fn self_signed() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn load_err(files: &TlsConfig) -> String {
        error_chain(&TlsAcceptor::load(files, IntCounter::new("f", "f").unwrap()).unwrap_err())
    }

    #[test]
    fn loads_a_pair_with_tls12_and_tls13_and_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let acceptor = TlsAcceptor::load(
            &files(dir.path(), &cert, &key),
            IntCounter::new("f", "f").unwrap(),
        )
        .unwrap();
        let config = acceptor.current();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(
            config
                .crypto_provider()
                .cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS12)
        );
    }

    #[test]
    fn errors_name_the_file_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (other_cert, _) = self_signed();

        let missing = TlsConfig {
            cert_file: dir.path().join("nope.crt"),
            key_file: dir.path().join("nope.key"),
        };
        assert!(
            load_err(&missing).contains("cannot read") && load_err(&missing).contains("nope.crt")
        );

        let text = load_err(&files(dir.path(), "not a certificate", &key));
        assert!(text.contains("tls.crt: no PEM certificate"), "{text}");

        let text = load_err(&files(dir.path(), &cert, &cert));
        assert!(text.contains("tls.key: no PEM private key"), "{text}");

        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let broken = key.replace(&body[..20], "!!!!!!!!!!!!!!!!!!!!");
        let text = load_err(&files(dir.path(), &cert, &broken));
        assert!(
            text.contains("tls.key: malformed PEM private key"),
            "{text}"
        );
        assert!(!text.contains(&body[20..40]), "key material leaked: {text}");

        let text = load_err(&files(dir.path(), &other_cert, &key));
        assert!(
            text.contains("are not a usable certificate and key"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_reload_keeps_the_current_config_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let files = files(dir.path(), &cert, &key);
        let acceptor = TlsAcceptor::load(&files, IntCounter::new("f", "f").unwrap()).unwrap();
        let before = acceptor.current();
        assert!(!acceptor.changed());

        std::fs::write(&files.cert_file, "garbage").unwrap();
        assert!(acceptor.changed());
        assert!(acceptor.reload().is_err());
        assert!(
            Arc::ptr_eq(&before, &acceptor.current()),
            "a bad pair must not replace the good one"
        );
        assert!(
            !acceptor.changed(),
            "a rejected change is not retried until the files change again"
        );

        let (cert, key) = self_signed();
        std::fs::write(&files.cert_file, cert).unwrap();
        std::fs::write(&files.key_file, key).unwrap();
        acceptor.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &acceptor.current()));
    }
}
