//! Slow-loris protection: once the first byte of a request head arrives, the whole head
//! must arrive within `server.header_read_timeout`.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection sits idle, so
//! it cannot be shorter than `idle_timeout` without closing the idle connections Data
//! Actions reuse. This wrapper arms its timer only when bytes of a new head arrive (the
//! connection was idle, or a response has been written since the last head), and the
//! service disarms it when hyper hands it the parsed request ([`HeadTimer::head_done`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Shared between the connection's IO and its service.
#[derive(Debug, Default)]
pub(crate) struct HeadTimer {
    head_done: AtomicBool,
}

/// Counters of requests refused before they reached the service (a listener's).
#[derive(Debug, Clone)]
pub struct HeadRefusals {
    /// A begun head did not arrive within the timeout.
    pub timeout: IntCounter,
    /// hyper answered 431 (too many or too large headers).
    pub too_large: IntCounter,
    /// hyper answered another error itself (a malformed request).
    pub malformed: IntCounter,
}

impl HeadTimer {
    /// The service got a complete request head.
    pub(crate) fn head_done(&self) {
        self.head_done.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: nothing read since the last response.
    Idle,
    /// Reading a head: the timer runs.
    Head,
    /// Head parsed: reading its body or writing the response.
    Request { responded: bool },
}

/// An IO whose reads fail with `TimedOut` when a request head takes too long.
#[derive(Debug)]
pub(crate) struct HeadTimeout<T> {
    io: T,
    timer: Arc<HeadTimer>,
    limit: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    refusals: Option<HeadRefusals>,
}

impl<T> HeadTimeout<T> {
    pub(crate) fn new(
        io: T,
        timer: Arc<HeadTimer>,
        limit: Duration,
        refusals: Option<HeadRefusals>,
    ) -> Self {
        Self {
            io,
            timer,
            limit,
            phase: Phase::Idle,
            deadline: Box::pin(tokio::time::sleep(limit)),
            refusals,
        }
    }

    /// Called before a write: a write while a head is still being read can only be hyper
    /// answering an error itself (the service never saw the request): count it once.
    fn before_write(&mut self, first_bytes: &[u8]) {
        self.settle();
        match &mut self.phase {
            Phase::Request { responded } => *responded = true,
            Phase::Head => {
                if let Some(refusals) = &self.refusals {
                    if first_bytes.starts_with(b"HTTP/1.1 431") {
                        refusals.too_large.inc();
                    } else {
                        refusals.malformed.inc();
                    }
                }
                // Answered: whatever comes next is a new head.
                self.phase = Phase::Request { responded: true };
            }
            Phase::Idle => {}
        }
    }

    fn settle(&mut self) {
        if self.phase == Phase::Head && self.timer.head_done.swap(false, Ordering::Relaxed) {
            self.phase = Phase::Request { responded: false };
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.settle();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        if read {
            match this.phase {
                Phase::Idle | Phase::Request { responded: true } => {
                    this.phase = Phase::Head;
                    let deadline = Instant::now() + this.limit;
                    this.deadline.as_mut().reset(deadline);
                }
                Phase::Head | Phase::Request { responded: false } => {}
            }
        }
        if this.phase == Phase::Head
            && polled.is_pending()
            && this.deadline.as_mut().poll(cx).is_ready()
        {
            if let Some(refusals) = &this.refusals {
                refusals.timeout.inc();
            }
            this.phase = Phase::Idle;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within header_read_timeout",
            )));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.before_write(buf);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        this.before_write(first);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
