//! The proxy listener's connections: pingora's HTTP/1 keep-alive loop, with the two deadlines
//! pingora does not give (nginx's `keepalive_timeout` and `client_header_timeout`).
//!
//! pingora 0.9 times each read of a request head on its own (60 s for the first request, then
//! no limit at all once a client asked for keep-alive), so an idle connection is held for ever
//! and a head sent a byte a minute never ends. Here each connection's stream is wrapped in
//! [`Deadlined`], whose reads fail once the wait for the next request (keep-alive) or for the
//! rest of its head is over; the gateway marks the head read ([`head_read`]), after which the
//! body is under pingora's own per-read timeout.

use crate::reply::Reply;
use async_trait::async_trait;
use http::Method;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest, ALPN};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the read that finds a request begun asks for: pingora's own first read of a head.
const FIRST_READ: usize = 4096;

/// The two waits a client connection is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub keepalive: Duration,
    pub header: Duration,
}

/// Serves the proxy listener's connections with `app` (the gateway's HTTP application),
/// one request after another, each under [`Timeouts`].
pub struct Edge<A> {
    app: Arc<A>,
    timeouts: Timeouts,
}

impl<A> Edge<A> {
    pub fn new(app: A, timeouts: Timeouts) -> Self {
        Self { app: Arc::new(app), timeouts }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    /// Serves the connection in a task of its own. pingora's accepting task is a future of some
    /// 8 KiB (it has room for a TLS handshake the proxy listener never makes), held for the
    /// connection's life; this loop's task is a fifth of that, which thousands of idle
    /// keep-alive clients notice. The task stays on this worker's runtime.
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        tokio::spawn(Arc::clone(self).serve(stream, shutdown.clone()));
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Edge<A> {
    /// Between requests a connection holds only its stream: the session, pingora's request
    /// future and a read buffer are made once the next request has begun to arrive.
    async fn serve(self: Arc<Self>, stream: Stream, shutdown: ShutdownWatch) {
        let shutdown = &shutdown;
        let mut deadlined = Box::new(Deadlined::new(stream, self.timeouts));
        if !deadlined.wait_for_request(shutdown).await {
            return;
        }
        let mut session = ServerSession::new_http1(deadlined);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(self.timeouts.keepalive.as_secs()) });
        let mut result = self.app.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let Ok(mut deadlined) = stream.into_any().downcast::<Deadlined>() else { return };
            deadlined.await_next_request();
            if !deadlined.wait_for_request(shutdown).await {
                return;
            }
            let mut session = ServerSession::new_http1(deadlined);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.app.process_new_http(session, shutdown).await;
        }
    }
}

/// What the edge refuses before anything is resolved or forwarded: methods WeChat's API does
/// not use (TRACE would echo the injected token back; methods are case-sensitive, so `get` is
/// not GET), an HTTP/1.1 request without `Host`, and a request framed two ways.
pub fn check_request(session: &ServerSession) -> Result<(), Reply> {
    let req = session.req_header();
    if req.method != Method::GET && req.method != Method::POST {
        return Err(Reply::error(405, "only GET and POST are taken"));
    }
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Err(Reply::error(400, "an HTTP/1.1 request needs a Host header"));
    }
    if req.headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Err(Reply::error(400, "more than one Host header"));
    }
    // pingora drops Content-Length when Transfer-Encoding is also sent; the head as received
    // still has it. Such a request is read one way here and maybe another further on.
    if req.headers.contains_key(http::header::TRANSFER_ENCODING)
        && session.as_http1().is_some_and(|h1| has_header_line(&h1.get_headers_raw_bytes(), b"content-length"))
    {
        return Err(Reply::error(400, "both Content-Length and Transfer-Encoding"));
    }
    Ok(())
}

/// Whether a raw request head has a header line named `name` (lower case).
fn has_header_line(head: &[u8], name: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        line.iter().position(|b| *b == b':').is_some_and(|colon| line[..colon].trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// Tells the connection under `session` that its request head has been read: the body that
/// may follow is not under the header deadline.
pub fn head_read(session: &ServerSession) {
    if let Some(d) = session.stream().and_then(|s| s.as_any().downcast_ref::<Deadlined>()) {
        d.head_read.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request, until the keep-alive deadline.
    Idle,
    /// Reading a request head, until the header deadline.
    Head,
    /// Past the head: pingora's own timeouts apply.
    Body,
}

/// A client connection whose reads fail once the current deadline has passed.
#[derive(Debug)]
pub struct Deadlined {
    inner: Stream,
    timeouts: Timeouts,
    phase: Phase,
    /// When the current phase ends; `None` for a head that has begun to arrive, whose deadline
    /// starts at the first wait for more of it (the clock is not read for a head that arrives
    /// at once, the usual case).
    due: Option<Instant>,
    /// Set to `due` only when a read has to wait, and pushed back only when it fires early
    /// ([`Deadlined::poll_deadline`]).
    deadline: Pin<Box<Sleep>>,
    /// Set through a shared reference: the gateway sees the stream only behind its session.
    head_read: AtomicBool,
    /// What the read that found a request begun brought in (its head, as a rule), handed out
    /// by the reads after it. A buffer only while a request is read: the listener's own read
    /// buffer (pingora's 64 KiB by default) is off, so that an idle connection holds none.
    held: Vec<u8>,
    /// How much of `held` has been handed out.
    handed: usize,
}

impl Deadlined {
    /// A new connection: its first head is due within the header timeout, as with nginx.
    fn new(inner: Stream, timeouts: Timeouts) -> Self {
        let due = Instant::now() + timeouts.header;
        Self {
            inner,
            timeouts,
            phase: Phase::Head,
            due: Some(due),
            deadline: Box::pin(tokio::time::sleep_until(due)),
            head_read: AtomicBool::new(false),
            held: Vec::new(),
            handed: 0,
        }
    }

    /// Waits, under the current deadline, for the next request to begin, and keeps what the
    /// read brought; `false` when the connection ends first (closed, timed out, the server
    /// shutting down).
    async fn wait_for_request(&mut self, shutdown: &ShutdownWatch) -> bool {
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        if self.handed < self.held.len() {
            // The last read brought the start of this request too (pipelined).
            self.head_begun();
            return true;
        }
        let read = tokio::select! {
            read = std::future::poll_fn(|cx| self.poll_first_read(cx)) => read,
            _ = shutdown.wait_for(|stop| *stop) => return false,
        };
        match read {
            Ok(n) if n > 0 => true,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended before its request");
                false
            }
        }
    }

    /// Reads what has arrived of the next request into `held`, through a buffer on the stack:
    /// a connection waiting for its next request holds no buffer at all.
    fn poll_first_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut scratch);
        std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut buf))?;
        (self.held, self.handed) = (buf.filled().to_vec(), 0);
        Poll::Ready(Ok(self.held.len()))
    }

    fn head_begun(&mut self) {
        (self.phase, self.due) = (Phase::Head, None);
    }

    fn await_next_request(&mut self) {
        (self.phase, self.due) = (Phase::Idle, Some(Instant::now() + self.timeouts.keepalive));
        self.head_read.store(false, Ordering::Relaxed);
    }

    /// Whether the current phase's deadline has passed, for a read that has to wait.
    ///
    /// The timer is moved earlier at once, but later only when it fires: each request of a
    /// busy connection pushes the keep-alive deadline back, and moving the timer in the
    /// runtime's wheel for each one would cost a lock and two list operations per call.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let header = self.timeouts.header;
        let due = *self.due.get_or_insert_with(|| Instant::now() + header);
        if self.deadline.deadline() > due {
            self.deadline.as_mut().reset(due);
        }
        loop {
            std::task::ready!(self.deadline.as_mut().poll(cx));
            if self.deadline.deadline() >= due {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline, since pushed back.
            self.deadline.as_mut().reset(due);
        }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.handed < this.held.len() && buf.remaining() > 0 {
            let n = buf.remaining().min(this.held.len() - this.handed);
            buf.put_slice(&this.held[this.handed..this.handed + n]);
            this.handed += n;
            if this.handed == this.held.len() {
                (this.held, this.handed) = (Vec::new(), 0);
            }
            return Poll::Ready(Ok(()));
        }
        if this.phase != Phase::Body && this.head_read.load(Ordering::Relaxed) {
            this.phase = Phase::Body;
        }
        if this.phase == Phase::Body {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.phase == Phase::Idle && buf.filled().len() > before {
                    this.head_begun();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_deadline(cx) {
                // An idle connection ends as if the client had closed it: pingora closes it
                // quietly. A head cut short is an error, logged by pingora.
                Poll::Ready(()) if this.phase == Phase::Idle => Poll::Ready(Ok(())),
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head did not arrive within proxy.header_timeout_secs",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Deadlined {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Deadlined {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadlined {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadlined {
    /// Empty: pingora asks for it with every request's session (a `Vec` allocated and freed per
    /// request), and nothing here reads it.
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadlined {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Deadlined {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Deadlined {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let held = &self.held[self.handed..];
        if held.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        let n = buf.len().min(held.len());
        buf[..n].copy_from_slice(&held[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_header_lines_by_name_in_any_case_and_not_in_the_request_line() {
        let head =
            b"POST /content-length: HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(has_header_line(head, b"content-length"));
        assert!(has_header_line(head, b"transfer-encoding"));
        assert!(!has_header_line(b"GET /content-length:x HTTP/1.1\r\nHost: x\r\n\r\n", b"content-length"));
    }
}
