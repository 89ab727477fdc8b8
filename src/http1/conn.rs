//! A client connection: its stream, what has been read of it and not yet used, and nginx's two
//! deadlines, `keepalive_timeout` (for the next request to begin) and `client_header_timeout`
//! (for its head to arrive whole).
//!
//! Between requests a connection holds its stream and a timer, and no buffer: the read that
//! finds the next request begun reads onto the stack, and only what it brought is kept.

use super::wire::{self, H1Error};
use bytes::BytesMut;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the read that finds a request begun asks for: most heads come whole in it.
const FIRST_READ: usize = 4096;
/// A read of more of a head asks for at least this.
const HEAD_READ: usize = 4096;
/// How long, and for how many bytes, a connection closed with some of its request unread is
/// still read from after the answer (nginx's `lingering_time`, and a bound of its own).
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 16 << 20;

/// The two waits a client connection is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub keepalive: Duration,
    pub header: Duration,
}

/// Where a connection is: what its current deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request, until the keep-alive deadline.
    Idle,
    /// Reading a request head, until the header deadline.
    Head,
    /// Past the head: each read and write has its own timeout.
    Body,
}

/// A client connection: its stream, what has been read of it and not yet used (the start of
/// a request, or of its body), and its deadline.
pub struct Conn {
    stream: Stream,
    buf: BytesMut,
    timeouts: Timeouts,
    phase: Phase,
    /// When the current phase ends; `None` until a read has to wait (the clock is not read for
    /// a head that arrives at once, the usual case).
    due: Option<Instant>,
    /// Set to `due` only when a read has to wait, and pushed back only when it fires early
    /// ([`poll_deadline`]).
    deadline: Pin<Box<Sleep>>,
    /// The connection closes with some of a request not read: see [`Conn::linger`].
    pub(super) unread: bool,
    /// For the reads and writes past the head that have to wait: a request's body, an answer.
    timer: wire::Timer,
}

impl Conn {
    /// A new connection: its first head is due within the header timeout, as with nginx.
    pub(super) fn new(stream: Stream, timeouts: Timeouts) -> Self {
        let due = Instant::now() + timeouts.header;
        Self {
            stream,
            buf: BytesMut::new(),
            timeouts,
            phase: Phase::Head,
            due: Some(due),
            deadline: Box::pin(tokio::time::sleep_until(due)),
            unread: false,
            timer: wire::Timer::default(),
        }
    }

    /// The stream, and the timer its reads and writes past the head share.
    pub fn io(&mut self) -> (&mut Stream, &mut wire::Timer) {
        (&mut self.stream, &mut self.timer)
    }

    /// What has been read and not yet used.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Waits, under the current deadline, for the next request to begin; `false` when the
    /// connection ends first (closed, timed out, the server shutting down).
    pub(super) async fn wait_for_request(
        &mut self,
        shutdown: &ShutdownWatch,
        stop: Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        if *shutdown.borrow() {
            return false;
        }
        if !self.buf.is_empty() {
            // The last read brought the start of this request too (pipelined).
            self.head_begun();
            return true;
        }
        let read = tokio::select! {
            // The read first: a request already there is served before a stop is looked at
            // (the stop was checked above), and no random order is drawn per request.
            biased;
            read = std::future::poll_fn(|cx| self.poll_first_read(cx)) => read,
            () = stop => return false,
        };
        match read {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended before its request");
                false
            }
        }
    }

    /// Reads what has arrived of the next request through a buffer on the stack, and keeps
    /// that much: a connection waiting for its next request holds no buffer at all.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut scratch);
        std::task::ready!(self.poll_read_timed(cx, &mut buf))?;
        if !buf.filled().is_empty() {
            self.buf.extend_from_slice(buf.filled());
            self.head_begun();
        }
        Poll::Ready(Ok(self.buf.len()))
    }

    /// Reads more of a request head, under the header deadline; 0 at the connection's end.
    pub async fn fill_head(&mut self) -> Result<usize, H1Error> {
        let wait = self.wait();
        let Self { stream, buf, due, deadline, .. } = self;
        if buf.capacity() - buf.len() < HEAD_READ {
            buf.reserve(HEAD_READ);
        }
        let mut read = std::pin::pin!(stream.read_buf(buf));
        std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
            Poll::Ready(read) => Poll::Ready(read.map_err(|e| H1Error::Io(e.kind()))),
            Poll::Pending => poll_deadline(deadline, due, wait, cx).map(|()| Err(H1Error::TimedOut)),
        })
        .await
    }

    /// Reads more of a request body within `timeout`; 0 at the connection's end.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, H1Error> {
        self.phase = Phase::Body;
        wire::read(&mut self.stream, &mut self.buf, &mut self.timer, timeout).await
    }

    /// The request was answered and its body read: the connection waits for the next one,
    /// holding no buffer if nothing of it has arrived.
    pub fn request_done(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        (self.phase, self.due) = (Phase::Idle, None);
    }

    /// The connection will close with some of the request not read.
    pub fn left_unread(&mut self) {
        self.unread = true;
    }

    /// Closes a connection whose client may still be sending: the write side first (after the
    /// answer), then what still arrives is read and dropped for a while. Closed at once, the
    /// socket would be reset with data unread, and the client could lose the answer before
    /// reading it (nginx's lingering close).
    pub(super) async fn linger(mut self) {
        if self.timer.within(LINGER, self.stream.shutdown()).await.is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut scratch = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match tokio::time::timeout_at(until, self.stream.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => read += n,
                _ => return,
            }
        }
    }

    fn head_begun(&mut self) {
        if self.phase != Phase::Head {
            (self.phase, self.due) = (Phase::Head, None);
        }
    }

    /// A read under the current phase's deadline: an idle connection whose deadline passed
    /// reads as closed, a head cut short as timed out.
    fn poll_read_timed(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let wait = self.wait();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Pending => match poll_deadline(&mut self.deadline, &mut self.due, wait, cx) {
                Poll::Ready(()) if self.phase == Phase::Idle => Poll::Ready(Ok(())),
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head did not arrive within proxy.header_timeout_secs",
                ))),
                Poll::Pending => Poll::Pending,
            },
            done => done,
        }
    }

    /// How long the current phase may last.
    fn wait(&self) -> Duration {
        if self.phase == Phase::Idle {
            self.timeouts.keepalive
        } else {
            self.timeouts.header
        }
    }
}

/// Whether a phase's deadline (`due`, read off the clock now if not yet) has passed, for a
/// read that has to wait.
///
/// The timer is moved earlier at once, but later only when it fires: each request of a busy
/// connection pushes the keep-alive deadline back, and moving the timer in the runtime's wheel
/// for each one would cost a lock and two list operations per call.
fn poll_deadline(
    deadline: &mut Pin<Box<Sleep>>,
    due: &mut Option<Instant>,
    wait: Duration,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let due = *due.get_or_insert_with(|| Instant::now() + wait);
    if deadline.deadline() > due {
        deadline.as_mut().reset(due);
    }
    loop {
        std::task::ready!(deadline.as_mut().poll(cx));
        if deadline.deadline() >= due {
            return Poll::Ready(());
        }
        // Fired for an earlier deadline, since pushed back.
        deadline.as_mut().reset(due);
    }
}
