//! What one caller connection is doing, for its idle timeout: requests in flight and the
//! last moment it did something.
//!
//! A connection is idle while no request of it is in flight (from the moment hyper hands
//! the service a request head until its response body has been written or dropped) and,
//! for HTTP/1, no byte has arrived. HTTP/2 control frames (PING, SETTINGS, WINDOW_UPDATE)
//! do not count: an h2 connection with no stream is idle however chatty its peer is.
//! [`Activity::quiet_for`] resolves once the connection has been idle for a duration; the
//! connection task then closes it gracefully (HTTP/2 with GOAWAY).
//!
//! It also resolves when the caller has stopped taking its answers: a response body that
//! has data for the caller (its last poll did not wait on the upstream) while no response
//! body of the connection has been polled for that duration. hyper polls a body only when
//! it can send what the body gives, so this is a caller that reads nothing (HTTP/2 flow
//! control held at zero, or a full socket); it would otherwise hold the request's upstream
//! connection for ever. The connection task then drops the connection.

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
    /// Response bodies handed to hyper and not yet ended or dropped.
    bodies: AtomicUsize,
    /// Of those, the ones whose last poll waited on the upstream.
    on_upstream: AtomicUsize,
    /// The last poll of any response body, in µs since `epoch`.
    pulled_us: AtomicU64,
}

/// Why a connection has nothing more to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quiet {
    /// No request in flight and nothing arrived: close it gracefully.
    Idle,
    /// The caller takes none of its answers: drop it.
    Stuck,
}

/// One request in flight; the connection counts as busy until it is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

/// A response body that keeps its request in flight until written (or dropped), and tells
/// the connection whether the caller still takes it.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    in_flight: InFlight,
    /// Its last poll waited on the upstream.
    on_upstream: bool,
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
            bodies: AtomicUsize::new(0),
            on_upstream: AtomicUsize::new(0),
            pulled_us: AtomicU64::new(0),
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

    /// Resolves with [`Quiet::Idle`] once no request has been in flight and nothing has
    /// arrived for `idle`, or with [`Quiet::Stuck`] once a response body has had data for
    /// the caller while none was polled for `idle`.
    pub(crate) async fn quiet_for(&self, idle: Duration) -> Quiet {
        loop {
            let ended = self.ended.notified();
            self.watching.store(true, Ordering::SeqCst);
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                // Busy: look again when a caller that took nothing since the last pull would
                // be stuck, or (no body waits for the caller) every half `idle`.
                let waiting_on_caller =
                    self.bodies.load(Ordering::Relaxed) > self.on_upstream.load(Ordering::Relaxed);
                let check = if waiting_on_caller {
                    let pulled = self.at(&self.pulled_us) + idle;
                    if Instant::now() >= pulled {
                        self.watching.store(false, Ordering::Relaxed);
                        return Quiet::Stuck;
                    }
                    pulled
                } else {
                    Instant::now() + idle / 2
                };
                tokio::select! {
                    () = ended => {}
                    () = tokio::time::sleep_until(check) => {}
                }
                continue;
            }
            self.watching.store(false, Ordering::Relaxed);
            let deadline = self.at(&self.last_us) + idle;
            if Instant::now() >= deadline {
                return Quiet::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn at(&self, us: &AtomicU64) -> Instant {
        self.epoch + Duration::from_micros(us.load(Ordering::Relaxed))
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
        let activity = &in_flight.0;
        activity.bodies.fetch_add(1, Ordering::Relaxed);
        activity
            .pulled_us
            .store(activity.now_us(), Ordering::Relaxed);
        Self {
            inner,
            in_flight,
            on_upstream: false,
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        let activity = &self.in_flight.0;
        if self.on_upstream {
            activity.on_upstream.fetch_sub(1, Ordering::Relaxed);
        }
        activity.bodies.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.in_flight.0;
        activity
            .pulled_us
            .store(activity.now_us(), Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let waits = polled.is_pending();
        if waits != this.on_upstream {
            this.on_upstream = waits;
            if waits {
                activity.on_upstream.fetch_add(1, Ordering::Relaxed);
            } else {
                activity.on_upstream.fetch_sub(1, Ordering::Relaxed);
            }
        }
        polled
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
                assert_eq!(activity.quiet_for(idle).await, Quiet::Idle);
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

    #[tokio::test(start_paused = true)]
    async fn a_body_the_caller_does_not_take_is_stuck_one_waiting_on_the_upstream_is_not() {
        let idle = Duration::from_secs(10);
        let activity = Activity::new();
        let started = Instant::now();
        // A body that always has data, polled once and then never again (the caller takes
        // nothing): stuck `idle` after that poll.
        let mut taken = TrackedBody::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"x")),
            activity.begin(),
        );
        let waker = std::task::Waker::noop();
        let _ = Pin::new(&mut taken).poll_frame(&mut Context::from_waker(waker));
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move { (activity.quiet_for(idle).await, Instant::now()) }
        });
        let (quiet, at) = watcher.await.unwrap();
        assert_eq!((quiet, at - started), (Quiet::Stuck, idle));
        drop(taken);

        // A body waiting on its upstream is never the caller's fault.
        let activity = Activity::new();
        let mut upstream = TrackedBody::new(Waiting, activity.begin());
        let _ = Pin::new(&mut upstream).poll_frame(&mut Context::from_waker(waker));
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move { activity.quiet_for(idle).await }
        });
        tokio::time::sleep(idle * 10).await;
        assert!(
            !watcher.is_finished(),
            "waiting on the upstream is not stuck"
        );
        watcher.abort();
    }

    /// A body whose upstream never sends.
    struct Waiting;

    impl Body for Waiting {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, std::convert::Infallible>>> {
            Poll::Pending
        }
    }
}
