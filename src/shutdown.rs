//! Process shutdown: the signal future and the owner of every background task.
//!
//! On SIGTERM or Ctrl-C the token is cancelled: listeners stop accepting, `/readyz`
//! answers 503, in-flight requests finish within the grace period, then tasks stop.
//! Also here: [`Hangup`], the SIGHUP stream, and [`watch_reloads`], the loop the config and
//! TLS reloads share.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owns the cancellation token and every background task.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Starts shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown starts.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// Spawns a background task owned by this shutdown; it must watch [`Shutdown::token`].
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Waits for every spawned task to end (after [`Shutdown::trigger`]).
    pub async fn wait_tasks(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, where there is one; pending forever otherwise.
#[derive(Debug)]
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Listens for SIGHUP; `otherwise` says in the warning what still works if it cannot.
    pub fn new(otherwise: &str) -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| tracing::warn!(%error, "cannot watch SIGHUP; {otherwise}"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next SIGHUP.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Calls `reload` on SIGHUP, and when `changed` says so at a poll every `interval`, until
/// `stop`. `what` names the files in the log: "`what` file changed; reloading".
pub async fn watch_reloads(
    mut hangup: Hangup,
    interval: Duration,
    stop: CancellationToken,
    what: &str,
    changed: impl Fn() -> bool,
    reload: impl Fn(),
) {
    let mut poll = tokio::time::interval(interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = hangup.recv() => {
                tracing::info!("SIGHUP received; reloading the {what}");
                reload();
            }
            _ = poll.tick() => {
                if changed() {
                    tracing::info!("{what} file changed; reloading");
                    reload();
                }
            }
        }
    }
}
