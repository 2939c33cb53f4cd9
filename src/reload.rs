//! Hot reload: when a new config replaces the current generation, and which keys it may
//! change.
//!
//! [`Reloader::apply`] has the generation [`Builder`] build the next generation from a new
//! config (see [`crate::generation`] for what carries over) and swaps it in. A config that
//! fails validation, or changes a key only a restart can apply (listeners, TLS files,
//! limits of the connection layer, Genesys hosts, shared state, budget window), is rejected
//! with the reason logged and counted, and the current generation stays. Which keys are
//! restart-only is decided key by key in `restart_needed`, which names every key of the
//! config: a new key does not compile until it is classified.
//! [`Reloader::watch`] applies the config file on SIGHUP and when it, or a `*_file` it
//! names, changes (polled every [`POLL_INTERVAL`]; a change is read once two polls agree,
//! so a file is not read half-written).
//!
//! Not carried over: changing an endpoint budget's `scope` (org ↔ token) changes its
//! budgets' names, so they start with empty windows, as after a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{
    BudgetsConfig, Config, ConfigErrors, GenesysConfig, ProcessEnv, ServerConfig,
    SharedStateConfig, TlsConfig,
};
use crate::generation::{Builder, Live};
use crate::metrics::Metrics;
use crate::shutdown::{Hangup, watch_reloads};

pub use crate::generation::ReloadSummary;

/// How often the config file and its secret files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Why a new config was not applied (the current one stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{path} is not a valid gcpool config:\n{errors}")]
    Invalid { path: String, errors: ConfigErrors },
    #[error("{} cannot change while gcpool runs; restart to apply", .0.join(", "))]
    RestartNeeded(Vec<&'static str>),
    #[error("gcpool was started without a config file; nothing to re-read")]
    NoFile,
}

/// Applies new configs.
#[derive(Debug)]
pub struct Reloader {
    live: Arc<Live>,
    /// `None` when started from a config built in memory (tests).
    path: Option<PathBuf>,
    metrics: Metrics,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The config of the current generation.
    config: Config,
    builder: Builder,
    /// The watched files as they were just before they were last read.
    stamps: Vec<Stamp>,
    /// Changed stamps seen by the last poll: applied once a poll sees them again (so a
    /// file caught half-written is read only once the writer is done).
    settling: Option<Vec<Stamp>>,
}

/// A file's modification time and length (`None`: unreadable).
type Stamp = (PathBuf, Option<(SystemTime, u64)>);

// === impl Reloader ===

impl Reloader {
    /// Watches over `live`, whose current generation `builder` built from `config`.
    pub fn new(config: Config, builder: Builder, live: Arc<Live>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            live,
            path: config.source.clone(),
            metrics,
            state: Mutex::new(State {
                stamps: stamps(&watched(config.source.as_ref(), &config)),
                config,
                builder,
                settling: None,
            }),
        })
    }

    /// The current generation's holder, for the request path and the admin listener.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Re-reads the config file and applies it.
    ///
    /// # Errors
    /// As [`Reloader::apply`]; [`ReloadError::Invalid`] when the file does not validate.
    pub fn reload_file(&self) -> Result<ReloadSummary, ReloadError> {
        let Some(path) = &self.path else {
            return Err(self.rejected(ReloadError::NoFile));
        };
        // Stamped before reading: a write landing during the read changes the files again
        // and the next poll reads them once more.
        let before = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let paths: Vec<PathBuf> = state.stamps.iter().map(|(p, _)| p.clone()).collect();
            stamps(&paths)
        };
        match Config::load(path, &ProcessEnv) {
            Ok(config) => self.apply_read(config, Some(before)),
            Err(errors) => {
                // Reported once per change of the files, not at every poll.
                self.state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stamps = before;
                Err(self.rejected(ReloadError::Invalid {
                    path: path.display().to_string(),
                    errors,
                }))
            }
        }
    }

    /// Applies `config`: builds the next generation and swaps it in. Requests in flight
    /// finish under the generation they started with.
    ///
    /// # Errors
    /// [`ReloadError::RestartNeeded`] when `config` changes a key only a restart applies;
    /// nothing changes then.
    pub fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        self.apply_read(config, None)
    }

    /// [`Reloader::apply`] of a config read from files whose stamps were `before` just
    /// before the read.
    fn apply_read(
        &self,
        config: Config,
        before: Option<Vec<Stamp>>,
    ) -> Result<ReloadSummary, ReloadError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let fixed = restart_needed(&state.config, &config);
        if !fixed.is_empty() {
            if let Some(before) = before {
                state.stamps = before;
            }
            return Err(self.rejected(ReloadError::RestartNeeded(fixed)));
        }
        let state = &mut *state;
        let current = self.live.current();
        let (next, summary) = state.builder.build(&config, Some(&current));
        self.live.replace(next);
        for name in &summary.removed {
            self.metrics.forget_client(name);
        }
        let mut now = stamps(&watched(self.path.as_ref(), &config));
        for (path, stamp) in &mut now {
            if let Some((_, earlier)) = before.iter().flatten().find(|(p, _)| p == path) {
                *stamp = *earlier;
            }
        }
        state.stamps = now;
        for warning in &config.warnings {
            warn!("{warning}");
        }
        state.config = config;
        self.metrics
            .config_reloads
            .with_label_values(&["applied"])
            .inc();
        self.metrics.config_last_reload_successful.set(1);
        info!(
            generation = summary.generation,
            clients = state.config.clients.len(),
            added = ?summary.added,
            removed = ?summary.removed,
            rotated = ?summary.rotated,
            budgets_changed = summary.budgets_changed,
            "config reloaded"
        );
        Ok(summary)
    }

    /// Applies the config file on SIGHUP and when a watched file changes, until `stop`.
    /// SIGHUP is caught from this call on (before, it would end the process); call it
    /// inside the runtime.
    pub fn watch(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let hangup = self
            .path
            .is_some()
            .then(|| Hangup::new("config reload on file change only"));
        async move {
            let Some(hangup) = hangup else {
                return;
            };
            let reloader = &self;
            watch_reloads(
                hangup,
                POLL_INTERVAL,
                stop,
                "config",
                || reloader.changed(),
                || {
                    let _ = reloader.reload_file();
                },
            )
            .await;
        }
    }

    /// Whether a watched file differs from when it was last read, the same way for two
    /// polls in a row.
    fn changed(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let paths: Vec<PathBuf> = state.stamps.iter().map(|(p, _)| p.clone()).collect();
        let now = stamps(&paths);
        if now == state.stamps {
            state.settling = None;
            return false;
        }
        if state.settling.as_ref() == Some(&now) {
            state.settling = None;
            return true;
        }
        state.settling = Some(now);
        false
    }

    /// Counts and logs a rejected reload.
    fn rejected(&self, error: ReloadError) -> ReloadError {
        self.metrics
            .config_reloads
            .with_label_values(&["rejected"])
            .inc();
        self.metrics.config_last_reload_successful.set(0);
        warn!("config reload rejected; keeping the current config: {error}");
        error
    }
}

/// The keys of `next` that differ from `current` and only a restart can apply.
///
/// Every key of the config is named here, restart-only or reloadable (`_`, applied by
/// [`Builder::build`]): the patterns have no `..`, so a key added to the config does not
/// compile until it is classified, and cannot be accepted on reload and then ignored.
fn restart_needed(current: &Config, next: &Config) -> Vec<&'static str> {
    let Config {
        server,
        genesys,
        clients: _,
        budgets,
        inbound: _,
        shared_state,
        cache: _,
        warnings: _,
        source: _,
        files: _,
    } = next;
    let ServerConfig {
        listen,
        admin_listen,
        tls,
        max_body_bytes: _,
        max_body_bytes_in_flight,
        max_connections,
        request_timeout: _,
        idle_timeout,
        header_read_timeout,
        shutdown_grace,
    } = server;
    let GenesysConfig {
        // The hosts below follow from it.
        region: _,
        api_base,
        login_base,
        token_remint_interval: _,
    } = genesys;
    let BudgetsConfig {
        token_per_minute: _,
        org_per_minute: _,
        window,
        guard,
        endpoints: _,
        queue: _,
    } = budgets;
    let shared = |s: &Option<SharedStateConfig>| {
        s.as_ref().map(|s| {
            let SharedStateConfig {
                redis_url,
                key_prefix,
                replicas_hint,
                timeout,
            } = s;
            (
                redis_url.expose().to_owned(),
                key_prefix.clone(),
                *replicas_hint,
                *timeout,
            )
        })
    };
    fn tls_files(tls: &Option<TlsConfig>) -> Option<(&PathBuf, &PathBuf)> {
        tls.as_ref().map(|tls| {
            let TlsConfig {
                cert_file,
                key_file,
            } = tls;
            (cert_file, key_file)
        })
    }
    let (was, was_genesys, was_budgets) = (&current.server, &current.genesys, &current.budgets);
    [
        ("server.listen", *listen != was.listen),
        ("server.admin_listen", *admin_listen != was.admin_listen),
        ("server.tls", tls_files(tls) != tls_files(&was.tls)),
        (
            "server.max_connections",
            *max_connections != was.max_connections,
        ),
        (
            "server.max_body_bytes_in_flight",
            *max_body_bytes_in_flight != was.max_body_bytes_in_flight,
        ),
        ("server.idle_timeout", *idle_timeout != was.idle_timeout),
        (
            "server.header_read_timeout",
            *header_read_timeout != was.header_read_timeout,
        ),
        (
            "server.shutdown_grace",
            *shutdown_grace != was.shutdown_grace,
        ),
        (
            "genesys",
            *api_base != was_genesys.api_base || *login_base != was_genesys.login_base,
        ),
        (
            "shared_state",
            shared(shared_state) != shared(&current.shared_state),
        ),
        ("budgets.window", *window != was_budgets.window),
        ("budgets.guard", *guard != was_budgets.guard),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// The config file gcpool re-reads, then every secret file `config` read.
fn watched(source: Option<&PathBuf>, config: &Config) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = source.into_iter().cloned().collect();
    for file in &config.files {
        if !paths.contains(file) {
            paths.push(file.clone());
        }
    }
    paths
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|path| {
            let stamp = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (path.clone(), stamp)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::num::NonZeroU32;
    use std::path::Path;

    use super::*;
    use crate::secret::Secret;

    fn config() -> Config {
        let text = "clients:\n  - name: pool-01\n    client_id: id-01\n    client_secret: s3cret-01\n\
                    inbound:\n  allow_anonymous: true\n\
                    shared_state:\n  redis_url: redis://127.0.0.1:6379\n";
        Config::from_yaml(text, Path::new("."), &HashMap::<String, String>::new())
            .expect("a valid config")
    }

    type Change = Box<dyn Fn(&mut Config)>;

    /// Each restart-only key, changed alone, is named alone.
    #[test]
    fn every_restart_only_key_is_named() {
        let base = config();
        let second = Duration::from_secs(1);
        let changes: Vec<(&str, Change)> = vec![
            ("server.listen", Box::new(|c| c.server.listen.set_port(1))),
            (
                "server.admin_listen",
                Box::new(|c| c.server.admin_listen.set_port(1)),
            ),
            (
                "server.tls",
                Box::new(|c| {
                    c.server.tls = Some(TlsConfig {
                        cert_file: "c.pem".into(),
                        key_file: "k.pem".into(),
                    });
                }),
            ),
            (
                "server.max_connections",
                Box::new(|c| c.server.max_connections += 1),
            ),
            (
                "server.max_body_bytes_in_flight",
                Box::new(|c| c.server.max_body_bytes_in_flight += 1),
            ),
            (
                "server.idle_timeout",
                Box::new(move |c| c.server.idle_timeout += second),
            ),
            (
                "server.header_read_timeout",
                Box::new(move |c| c.server.header_read_timeout += second),
            ),
            (
                "server.shutdown_grace",
                Box::new(move |c| c.server.shutdown_grace += second),
            ),
            (
                "genesys",
                Box::new(|c| c.genesys.api_base = "https://api.usw2.pure.cloud".parse().unwrap()),
            ),
            (
                "genesys",
                Box::new(|c| {
                    c.genesys.login_base = "https://login.usw2.pure.cloud".parse().unwrap()
                }),
            ),
            (
                "shared_state",
                Box::new(|c| {
                    if let Some(s) = &mut c.shared_state {
                        s.redis_url = Secret::new("redis://127.0.0.1:6380".to_owned());
                    }
                }),
            ),
            (
                "shared_state",
                Box::new(|c| {
                    if let Some(s) = &mut c.shared_state {
                        s.key_prefix.push('x');
                    }
                }),
            ),
            (
                "shared_state",
                Box::new(|c| {
                    if let Some(s) = &mut c.shared_state {
                        s.replicas_hint = NonZeroU32::MIN.saturating_add(5);
                    }
                }),
            ),
            (
                "shared_state",
                Box::new(move |c| {
                    if let Some(s) = &mut c.shared_state {
                        s.timeout += second;
                    }
                }),
            ),
            ("shared_state", Box::new(|c| c.shared_state = None)),
            (
                "budgets.window",
                Box::new(move |c| c.budgets.window += second),
            ),
            (
                "budgets.guard",
                Box::new(move |c| c.budgets.guard += second),
            ),
        ];
        for (key, change) in changes {
            let mut next = base.clone();
            change(&mut next);
            assert_eq!(restart_needed(&base, &next), [key], "changing {key}");
        }
    }

    /// Keys a reload applies are not refused.
    #[test]
    fn reloadable_keys_need_no_restart() {
        let base = config();
        let mut next = base.clone();
        next.server.max_body_bytes += 1;
        next.server.request_timeout += Duration::from_secs(1);
        next.genesys.token_remint_interval += Duration::from_secs(1);
        next.budgets.org_per_minute = NonZeroU32::MIN;
        next.budgets.queue.max_wait += Duration::from_secs(1);
        next.budgets.queue.max_pending += 1;
        next.inbound.allow_anonymous = false;
        next.clients.clear();
        assert!(restart_needed(&base, &next).is_empty());
    }
}
