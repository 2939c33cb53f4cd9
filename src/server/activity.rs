//! What one caller connection is doing, for its idle timeout: requests in flight and the
//! last moment it did something.
//!
//! A connection is idle while no request of it is in flight (from the moment hyper hands
//! the service a request head until its response body has been written or dropped) and,
//! for HTTP/1, no byte has arrived. HTTP/2 control frames (PING, SETTINGS, WINDOW_UPDATE)
//! do not count: an h2 connection with no stream is idle however chatty its peer is.
//! [`Activity::idle_for`] resolves once the connection has been idle for a duration; the
//! connection task then closes it gracefully (HTTP/2 with GOAWAY).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Shared by a connection's IO, its service and its response bodies.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// The last activity, in µs since `epoch`.
    last_us: AtomicU64,
    epoch: Instant,
    /// Set while the idle watcher waits for the requests in flight to end: only then does
    /// the last one to end wake it (otherwise it finds the new `last_us` when its timer
    /// fires), so a request costs no extra wake-up.
    watching: AtomicBool,
    /// Wakes the idle watcher when the last request in flight ends.
    ended: Notify,
}

/// One request in flight; the connection counts as busy until it is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

/// A response body that keeps its request in flight until written (or dropped).
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

// === impl Activity ===

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_us: AtomicU64::new(0),
            epoch: Instant::now(),
            watching: AtomicBool::new(false),
            ended: Notify::new(),
        })
    }

    /// Something arrived (an HTTP/1 connection read bytes).
    pub(crate) fn touch(&self) {
        self.last_us.store(self.now_us(), Ordering::Relaxed);
    }

    /// A request head reached the service.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Resolves once no request has been in flight and nothing has arrived for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let ended = self.ended.notified();
            self.watching.store(true, Ordering::SeqCst);
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                ended.await;
                continue;
            }
            self.watching.store(false, Ordering::Relaxed);
            let last = self.epoch + Duration::from_micros(self.last_us.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.touch();
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && activity.watching.swap(false, Ordering::SeqCst)
        {
            activity.ended.notify_one();
        }
    }
}

// === impl TrackedBody ===

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_request_or_byte() {
        let activity = Activity::new();
        let idle = Duration::from_secs(10);
        let started = Instant::now();
        let request = activity.begin();
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move {
                activity.idle_for(idle).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            !watcher.is_finished(),
            "never idle with a request in flight"
        );
        drop(request);
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.touch();
        let at = watcher.await.unwrap();
        assert_eq!(
            at - started,
            Duration::from_secs(45),
            "10 s after the last byte"
        );
    }
}
