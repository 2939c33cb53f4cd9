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
//! It also resolves when the caller has stopped taking an answer: a response body handed
//! hyper data and has not been polled again for that duration. hyper polls a body only when
//! it can send what the body gives, so this is a caller that takes nothing of that answer
//! (an HTTP/2 stream whose flow-control window it never opens, or a full socket), however
//! busy its other streams are; it would otherwise hold the request's upstream connection
//! for ever. A body waiting on its upstream is not the caller's doing and never counts.
//! The connection task then drops the connection.
//!
//! The check costs two atomic operations per frame: a body that hands over data and has
//! more to come is counted in the bucket of the current *tick*; its next poll takes it out.
//! While requests are in flight, the watcher ticks every half idle timeout; a bucket still
//! holding bodies three ticks after it was filled holds an answer not taken for at least
//! the idle timeout.

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
    /// An HTTP/1 request head is on its way (or the first one is awaited): the connection
    /// does not count as rested (see [`Activity::rested_for`]).
    head_pending: AtomicBool,
    /// hyper's HTTP/1 connection is being ended to park the caller's: the IO's shutdown is
    /// skipped.
    parking: AtomicBool,
    /// The service got a request head, not yet taken by the connection's IO (which stops
    /// the head's timer then).
    head_done: AtomicBool,
    /// The stuck check's clock: advanced by the watcher every half idle timeout.
    tick: AtomicUsize,
    /// Bodies that handed hyper data (with more to come) and were not polled since, by
    /// `tick % BUCKETS` at that moment.
    awaiting: [AtomicUsize; BUCKETS],
}

/// Buckets of the stuck check: a tick's bucket is checked three ticks later, before it is
/// filled again.
const BUCKETS: usize = 4;

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
    /// The bucket it is counted in while hyper holds data it gave and has not polled again.
    awaiting: Option<usize>,
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
            head_pending: AtomicBool::new(true),
            parking: AtomicBool::new(false),
            head_done: AtomicBool::new(false),
            tick: AtomicUsize::new(0),
            awaiting: Default::default(),
        })
    }

    /// Something arrived (an HTTP/1 connection read bytes).
    pub(crate) fn touch(&self) {
        self.last_us.store(self.now_us(), Ordering::Relaxed);
    }

    /// The last moment something arrived or a request ended.
    pub(crate) fn last_active(&self) -> Instant {
        self.at(&self.last_us)
    }

    /// Whether a request head is on its way (told by the connection's IO).
    pub(crate) fn reading_head(&self, pending: bool) {
        self.head_pending.store(pending, Ordering::Relaxed);
    }

    /// The service got a complete request head.
    pub(crate) fn head_done(&self) {
        self.head_done.store(true, Ordering::Relaxed);
    }

    /// Whether a head reached the service since the last call. Consumed every time (a
    /// pipelined head raises it while the connection is busy), so it never switches off
    /// the timer of a later head.
    pub(crate) fn take_head_done(&self) -> bool {
        self.head_done.swap(false, Ordering::Relaxed)
    }

    /// Whether hyper's connection is being ended to park the caller's.
    pub(crate) fn parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    pub(crate) fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
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

    /// Answers (response bodies) of this connection not yet ended.
    pub(crate) fn answers_open(&self) -> usize {
        self.bodies.load(Ordering::Relaxed)
    }

    /// Resolves with [`Quiet::Idle`] once no request has been in flight and nothing has
    /// arrived for `idle`, or with [`Quiet::Stuck`] once a response body has handed hyper
    /// data and not been polled again for at least `idle` (at most 1.5 × `idle`).
    pub(crate) async fn quiet_for(&self, idle: Duration) -> Quiet {
        self.rested_for(idle, idle).await
    }

    /// As [`quiet_for`](Self::quiet_for), but resolves with [`Quiet::Idle`] once no request
    /// has been in flight, no request head is on its way and nothing has arrived for `rest`
    /// (an HTTP/1 connection then gives back its buffers; a head that trickles in keeps
    /// them until it is answered); `idle` still bounds it all, and the stuck check.
    pub(crate) async fn rested_for(&self, rest: Duration, idle: Duration) -> Quiet {
        loop {
            let ended = self.ended.notified();
            self.watching.store(true, Ordering::SeqCst);
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::select! {
                    () = ended => {}
                    () = tokio::time::sleep(idle / 2) => {
                        // The bucket filled three ticks ago: two whole ticks (`idle`) untaken.
                        let tick = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
                        let oldest = &self.awaiting[(tick + 1) % BUCKETS];
                        if oldest.load(Ordering::Relaxed) > 0 {
                            self.watching.store(false, Ordering::Relaxed);
                            return Quiet::Stuck;
                        }
                    }
                }
                continue;
            }
            if rest < idle && self.head_pending.load(Ordering::Relaxed) {
                // Rested only once the head has been answered: the end of its request wakes
                // this watcher again.
                let deadline = self.at(&self.last_us) + idle;
                if Instant::now() >= deadline {
                    self.watching.store(false, Ordering::Relaxed);
                    return Quiet::Idle;
                }
                tokio::select! {
                    () = ended => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
                continue;
            }
            self.watching.store(false, Ordering::Relaxed);
            let deadline = self.at(&self.last_us) + rest;
            if Instant::now() >= deadline {
                return Quiet::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn at(&self, us: &AtomicU64) -> Instant {
        self.epoch + Duration::from_micros(us.load(Ordering::Relaxed))
    }

    fn await_caller(&self) -> usize {
        let bucket = self.tick.load(Ordering::Relaxed) % BUCKETS;
        self.awaiting[bucket].fetch_add(1, Ordering::Relaxed);
        bucket
    }

    fn taken(&self, bucket: usize) {
        self.awaiting[bucket].fetch_sub(1, Ordering::Relaxed);
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
        in_flight.0.bodies.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            in_flight,
            awaiting: None,
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        let activity = &self.in_flight.0;
        if let Some(bucket) = self.awaiting {
            activity.taken(bucket);
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
        if let Some(bucket) = this.awaiting.take() {
            activity.taken(bucket);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // Data handed over with more to come: hyper polls again once the caller took it.
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.inner.is_end_stream() {
            this.awaiting = Some(activity.await_caller());
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
    async fn an_answer_the_caller_does_not_take_is_stuck_one_waiting_on_the_upstream_is_not() {
        let idle = Duration::from_secs(10);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);

        // One answer hands over its first frame and is never polled again, while another
        // keeps being polled (a busy h2 connection): stuck after `idle` to 1.5 × `idle`.
        let activity = Activity::new();
        let started = Instant::now();
        let mut untaken = TrackedBody::new(Frames(3), activity.begin());
        let mut busy = TrackedBody::new(Waiting, activity.begin());
        assert!(Pin::new(&mut untaken).poll_frame(&mut cx).is_ready());
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move { (activity.quiet_for(idle).await, Instant::now()) }
        });
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(Pin::new(&mut busy).poll_frame(&mut cx).is_pending());
            if watcher.is_finished() {
                break;
            }
        }
        let (quiet, at) = watcher.await.unwrap();
        assert_eq!(quiet, Quiet::Stuck);
        assert!(
            at - started >= idle && at - started <= idle * 3 / 2,
            "{:?}",
            at - started
        );

        // Taken steadily, however slowly within `idle`: never stuck.
        let activity = Activity::new();
        let mut slow = TrackedBody::new(Frames(100), activity.begin());
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move { activity.quiet_for(idle).await }
        });
        for _ in 0..20 {
            assert!(Pin::new(&mut slow).poll_frame(&mut cx).is_ready());
            tokio::time::sleep(idle * 9 / 10).await;
        }
        assert!(
            !watcher.is_finished(),
            "a slow but steady caller is not stuck"
        );
        watcher.abort();

        // A body waiting on its upstream is never the caller's fault.
        let activity = Activity::new();
        let mut upstream = TrackedBody::new(Waiting, activity.begin());
        assert!(Pin::new(&mut upstream).poll_frame(&mut cx).is_pending());
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

    /// A body of `n` one-byte data frames.
    struct Frames(u32);

    impl Body for Frames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, std::convert::Infallible>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"x")))))
        }

        fn is_end_stream(&self) -> bool {
            self.0 == 0
        }
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
