//! A caller connection's IO with its head deadlines: the first request head must arrive
//! within `server.header_read_timeout` of the connection's start (a silent socket is
//! closed then), and every later HTTP/1 head within that long of its first byte
//! (slow-loris).
//!
//! hyper's own `header_read_timeout` cannot do this: hyper-util's auto builder first reads
//! the protocol preface with no deadline, and hyper's timer also runs while a keep-alive
//! connection sits idle. So hyper's is off and this wrapper times the heads: armed at the
//! start, and whenever bytes arrive while no request of the connection is in flight (they
//! can only be a new HTTP/1 head; bytes that arrive while one is in flight are its body, a
//! body after `100 Continue`, or pipelined heads hyper parses from its buffer), disarmed
//! when hyper hands the service the parsed request ([`HeadTimer::head_done`]). An HTTP/2 connection (its
//! preface seen) has no head timer: once the preface is in, its frames, whatever they are,
//! never arm one, and its lifetime is the idle timeout's business
//! ([`Activity`](super::activity::Activity)). Reads of an HTTP/1 connection count as
//! activity for that idle timeout.
//!
//! Writes have a deadline too: a caller that stops reading its answer (HTTP/1 or HTTP/2)
//! blocks gcpool's writes; once they have made no progress for `server.idle_timeout`, the
//! connection is closed (and counted), so slow readers cannot hold connections, and the
//! upstream connections behind them, for ever.
//!
//! Bytes read once can be handed back ([`ConnIo::replay`]): the first bytes read to tell
//! the protocol, and the first byte of a parked HTTP/1 connection's next request (see
//! `server`). They are read again before the socket, without counting twice.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::Activity;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener's head and write limits and its refusal counters, shared by its
/// connections' IO.
#[derive(Debug)]
pub(crate) struct IoRules {
    /// A request head is due within this (`server.header_read_timeout`).
    pub(crate) head_limit: Duration,
    /// The first head is due within this: the head limit, or the idle timeout when that is
    /// shorter (a connection silent from its start is idle too).
    pub(crate) first_head_limit: Duration,
    /// How long a write may wait for the caller to read (`server.idle_timeout`).
    pub(crate) write_limit: Duration,
    pub(crate) refusals: Option<ConnCounters>,
}

/// Counters of what a listener's connections did wrong (a listener's).
#[derive(Debug, Clone)]
pub struct ConnCounters {
    /// No complete head within the timeout (a silent connection, or a begun head).
    pub timeout: IntCounter,
    /// hyper answered 431 (too many or too large headers).
    pub too_large: IntCounter,
    /// hyper answered another error itself (a malformed request).
    pub malformed: IntCounter,
    /// The caller read nothing of an answer for the write limit.
    pub caller_stalled: IntCounter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a head (or, at the start, waiting for one): the timer runs.
    Head,
    /// An HTTP/1 head was parsed (or answered by hyper); no timer until bytes arrive while
    /// no request is in flight.
    Busy,
    /// An HTTP/2 connection: no head timer.
    H2,
}

/// An IO whose reads fail with `TimedOut` when a request head takes too long.
#[derive(Debug)]
pub(crate) struct ConnIo<T> {
    io: T,
    activity: Arc<Activity>,
    rules: Arc<IoRules>,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// Armed while a write waits; reset by any progress.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// How many leading bytes of the connection matched the HTTP/2 preface; `None` once
    /// the protocol is known.
    preface_matched: Option<usize>,
    /// Bytes already read and handed back: read again before the socket.
    replayed: Bytes,
}

/// What ended a parked connection's wait ([`ConnIo::parked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A byte arrived: the start of the next request, handed back to be read again.
    Byte,
    /// The peer closed the connection.
    Closed,
    /// Nothing arrived by the deadline.
    Idle,
}

/// Every byte value, so a parked connection's first byte is handed back without an
/// allocation.
static BYTE_VALUES: [u8; 256] = {
    let mut values = [0; 256];
    let mut i = 0;
    while i < 256 {
        values[i] = i as u8;
        i += 1;
    }
    values
};

/// The protocol a connection's first bytes show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

impl<T> ConnIo<T> {
    /// Wraps a connection that starts now: its first head is due within `first_head_limit`.
    pub(crate) fn new(io: T, activity: Arc<Activity>, rules: Arc<IoRules>) -> Self {
        Self {
            io,
            activity,
            deadline: Box::pin(tokio::time::sleep(rules.first_head_limit)),
            rules,
            phase: Phase::Head,
            write_stall: None,
            preface_matched: Some(0),
            replayed: Bytes::new(),
        }
    }

    /// Moves to `phase`, and tells the connection's [`Activity`] whether a head is on its
    /// way (an HTTP/1 connection is not parked then).
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.activity.reading_head(phase == Phase::Head);
    }

    /// The protocol, once the first bytes read show it (the whole HTTP/2 preface, or a byte
    /// that is not part of it).
    pub(crate) fn protocol(&self) -> Option<Protocol> {
        match (self.preface_matched, self.phase) {
            (Some(_), _) => None,
            (None, Phase::H2) => Some(Protocol::Http2),
            (None, _) => Some(Protocol::Http1),
        }
    }

    /// Hands back the start of a request head a hyper connection read but did not finish
    /// (pipelined behind a request, then the connection parked): the next reads return it
    /// first, and the rest of the head is due within the head limit from now.
    pub(crate) fn replay_partial_head(&mut self, bytes: Bytes) {
        self.replay(bytes);
        if self.phase != Phase::H2 {
            self.set_phase(Phase::Head);
            let deadline = Instant::now() + self.rules.head_limit;
            self.deadline.as_mut().reset(deadline);
        }
    }

    /// A parked connection's wait for its next request, until `idle_deadline` (no request is
    /// in flight and no head on its way, so the head deadline's timer is free to time it).
    pub(crate) async fn parked(&mut self, idle_deadline: Instant) -> io::Result<Wake>
    where
        T: AsyncRead + Unpin,
    {
        self.deadline.as_mut().reset(idle_deadline);
        self.next_byte().await
    }

    /// Waits for the connection's next byte with no buffer but a byte on the stack, and hands
    /// it back to be read again. While a head is due (a new connection), the head deadline
    /// bounds the wait as it bounds any read (`TimedOut`, counted); otherwise the timer as
    /// last set does ([`Wake::Idle`]).
    pub(crate) async fn next_byte(&mut self) -> io::Result<Wake>
    where
        T: AsyncRead + Unpin,
    {
        std::future::poll_fn(|cx| {
            let mut first = [0; 1];
            let mut buf = ReadBuf::new(&mut first);
            // Through `poll_read`: a byte arms the head deadline, as any other would.
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(match buf.filled() {
                    [] => Wake::Closed,
                    [byte, ..] => {
                        let byte = usize::from(*byte);
                        self.replay(Bytes::from_static(&BYTE_VALUES[byte..=byte]));
                        Wake::Byte
                    }
                })),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending if self.phase == Phase::Busy => {
                    self.deadline.as_mut().poll(cx).map(|()| Ok(Wake::Idle))
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Shuts the connection down (TLS: with its close_notify), waiting at most `grace`.
    pub(crate) async fn close(&mut self, grace: Duration)
    where
        T: AsyncWrite + Unpin,
    {
        self.deadline.as_mut().reset(Instant::now() + grace);
        std::future::poll_fn(|cx| {
            if Pin::new(&mut *self).poll_shutdown(cx).is_ready() {
                return Poll::Ready(());
            }
            self.deadline.as_mut().poll(cx)
        })
        .await;
    }

    /// Hands back bytes already read: the next reads return them first.
    pub(crate) fn replay(&mut self, bytes: Bytes) {
        if self.replayed.is_empty() {
            self.replayed = bytes;
        } else {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.replayed.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.replayed);
            self.replayed = joined.freeze();
        }
    }

    /// Passes a write's (or flush's) poll through, failing it with `TimedOut` once writes
    /// have waited `write_limit` for the caller to read.
    fn bounded_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.write_stall = None;
            return polled;
        }
        let limit = self.rules.write_limit;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.write_stall = None;
        if let Some(counters) = &self.rules.refusals {
            let answers = self.activity.answers_open().max(1) as u64;
            counters.caller_stalled.inc_by(answers);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the caller read nothing of its answer within idle_timeout",
        )))
    }

    /// Called before a write: a write while a head is still being read can only be hyper
    /// answering an error itself (the service never saw the request): count it once.
    fn before_write(&mut self, first_bytes: &[u8]) {
        self.settle();
        if self.phase == Phase::Head {
            if let Some(refusals) = &self.rules.refusals {
                if first_bytes.starts_with(b"HTTP/1.1 431") {
                    refusals.too_large.inc();
                } else {
                    refusals.malformed.inc();
                }
            }
            // Answered: whatever comes next is a new head.
            self.set_phase(Phase::Busy);
        }
    }

    /// Takes the service's word that a head arrived. The flag is consumed in every phase
    /// (a pipelined head raises it while the connection is busy), so it never switches off
    /// the timer of a later head.
    fn settle(&mut self) {
        if self.activity.take_head_done() && self.phase == Phase::Head {
            self.set_phase(Phase::Busy);
        }
    }

    /// Looks at the connection's first bytes: the HTTP/2 preface switches the head timer
    /// off for good; anything else is HTTP/1.
    fn detect_protocol(&mut self, read: &[u8]) {
        let Some(matched) = self.preface_matched else {
            return;
        };
        let wanted = &H2_PREFACE[matched..];
        let n = read.len().min(wanted.len());
        if read[..n] != wanted[..n] {
            self.preface_matched = None;
        } else if matched + n == H2_PREFACE.len() {
            self.preface_matched = None;
            self.set_phase(Phase::H2);
        } else {
            self.preface_matched = Some(matched + n);
        }
    }
}

/// Whether `bytes` are only line ends: empty lines, which may come before a request line.
pub(crate) fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|byte| matches!(byte, b'\r' | b'\n'))
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replayed.is_empty() {
            let n = this.replayed.len().min(buf.remaining());
            buf.put_slice(&this.replayed[..n]);
            this.replayed.advance(n);
            if this.replayed.is_empty() {
                // Its allocation goes now, not with the next replay.
                this.replayed = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.settle();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.detect_protocol(read);
            // Between requests, empty lines are not the start of a head (RFC 9112 §2.2: a
            // server ignores them before a request line, as hyper's parser does): they arm
            // no head deadline, and count as no activity (so dripping them keeps nothing open).
            let between = this.phase == Phase::Busy && this.activity.in_flight() == 0;
            let blank = between && is_blank(read);
            if this.phase != Phase::H2 && !blank {
                this.activity.touch();
            }
            if between && !blank {
                this.set_phase(Phase::Head);
                let deadline = Instant::now() + this.rules.head_limit;
                this.deadline.as_mut().reset(deadline);
            }
        }
        if this.phase == Phase::Head
            && polled.is_pending()
            && this.deadline.as_mut().poll(cx).is_ready()
        {
            if let Some(refusals) = &this.rules.refusals {
                refusals.timeout.inc();
            }
            this.set_phase(Phase::Busy);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received within header_read_timeout",
            )));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.before_write(buf);
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.bounded_write(cx, polled)
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
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.bounded_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.bounded_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.activity.is_parking() {
            // hyper's connection ends, the caller's stays (see `server`).
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> ConnIo<tokio::io::Empty> {
        let rules = IoRules {
            head_limit: Duration::from_secs(1),
            first_head_limit: Duration::from_secs(1),
            write_limit: Duration::from_secs(1),
            refusals: None,
        };
        ConnIo::new(tokio::io::empty(), Activity::new(), Arc::new(rules))
    }

    #[tokio::test]
    async fn the_h2_preface_is_recognised_even_byte_by_byte() {
        let mut whole = io();
        whole.detect_protocol(H2_PREFACE);
        assert_eq!(whole.phase, Phase::H2);

        let mut dripped = io();
        for byte in H2_PREFACE {
            assert_eq!(
                dripped.phase,
                Phase::Head,
                "undecided until the whole preface"
            );
            dripped.detect_protocol(&[*byte]);
        }
        assert_eq!(dripped.phase, Phase::H2);

        let mut h1 = io();
        h1.detect_protocol(b"PRI /api/v2/users HTTP/1.1\r\n");
        assert_eq!(
            h1.phase,
            Phase::Head,
            "a look-alike HTTP/1 head keeps its timer"
        );
        assert_eq!(h1.preface_matched, None);
        h1.detect_protocol(&H2_PREFACE[14..]);
        assert_eq!(h1.phase, Phase::Head, "decided once");
    }
}
