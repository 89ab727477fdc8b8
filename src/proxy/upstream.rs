//! One way to reach WeChat: the configured host and its fallbacks, the idle connections to
//! each, failover, and the headers as they cross the hop. Every proxied call goes through
//! [`Upstream::send`], whether its body is kept whole (so that it can be replayed after a token
//! error) or streams through from the client.
//!
//! Failover: a call starts on the active host (the primary, unless a fallback took over) and
//! moves on to the next when a host cannot be connected to. A call that settles on another
//! host makes it the active one, counted in `wxgate_upstream_switches_total{to}`. While a
//! fallback is active, one call in every [`RETRY_PRIMARY_AFTER`] tries the primary first.
//!
//! The exchange itself is the gateway's own HTTP/1.1 client ([`wire`]): the request head is
//! written straight from the client's headers, with a small body in the same write; a body
//! that streams is read from a [`BodySource`], not from the client's session.
//!
//! The pool: pingora's own (`Connector::release_http_session`) spawns a task per released
//! connection to watch it while idle, with a timer, a oneshot channel, a `Notify` and a lock
//! the next user waits on: on a call that takes tens of microseconds that is most of the
//! gateway's own work. Here an [`Answer`] dropped pushes its connection on a stack (when its body
//! was read to the end; it is closed otherwise), so no path can forget to; one the server closed
//! while idle is noticed when taken (a read that does not block) or, at worst, when the call
//! on it fails, and the call is then made again on a new connection if that is safe. A host
//! keeps a stack per thread ([`pool`]): a connection belongs to the runtime of the worker that
//! opened it (`work_stealing: false`), and only that worker takes it again (issue 25).

mod answer;
mod egress;
mod headers;
mod pool;
mod target;

use super::resolve::Outbound;
use crate::config::EgressProxy;
use crate::http1::wire;
use crate::http1::BodySource;
pub use crate::http1::H1Error;
use crate::metrics;
pub use answer::Answer;
use answer::AnswerBody;
use base64::Engine;
use bytes::Bytes;
use egress::Egress;
pub use headers::downstream_header;
use headers::{header_line, is_hop_by_hop, OWN_REQUEST_HEADERS};
use http::request::Parts;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::tls::CertificateDer;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use pool::Owner;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{make_peer, resolve, Target};
use url::Url;

/// Pooled connections are kept this long idle; WeChat's side closes idle ones after about a minute.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// While a fallback is active, the primary is tried again this often.
pub const RETRY_PRIMARY_AFTER: Duration = Duration::from_secs(30);

/// A body up to this size goes out in the same write as the request head.
const COALESCE_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url}: cannot resolve: {reason}")]
    Resolve { url: String, reason: String },
    #[error("upstream.ca_file: cannot set up the trusted CAs: {0}")]
    Roots(String),
}

/// Why a call got no answer from WeChat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailure {
    /// No host could be connected to.
    Unreachable,
    TimedOut,
    Broken,
    /// The client's body could not be read (malformed chunked encoding, or the client left).
    BadBody,
    /// The client's body passed this many bytes.
    TooLarge(usize),
}

impl CallFailure {
    pub fn reply(&self) -> crate::reply::Reply {
        use crate::reply::Reply;
        match self {
            Self::Unreachable => Reply::error(502, "WeChat could not be reached"),
            Self::TimedOut => Reply::error(504, "WeChat did not answer in time"),
            Self::Broken => Reply::error(502, "the connection to WeChat broke"),
            Self::BadBody => Reply::error(400, "the request body could not be read"),
            Self::TooLarge(limit) => Reply::error(413, format!("request body is larger than {limit} bytes")),
        }
    }
}

/// A call's body.
pub enum Body<'s> {
    /// Kept whole (a small body, or none): the call can be sent again.
    Whole(Bytes),
    /// Streams from the client: `kept` was read already, the rest is read from `from` as it is
    /// sent, up to `limit` bytes in all. `length` is the client's `Content-Length`; without one
    /// the body goes on chunked.
    Streamed { kept: Bytes, from: &'s mut dyn BodySource, length: Option<usize>, limit: usize },
}

/// A connection to a WeChat host, the timer its reads and writes that wait share, and the
/// thread whose runtime both belong to.
#[derive(Debug)]
pub(super) struct Connection {
    stream: Stream,
    timer: wire::Timer,
    owner: Owner,
}

pub struct Upstream {
    targets: Vec<Target>,
    timeout: Duration,
    transport: TransportConnector,
    /// The host calls start on.
    active: AtomicUsize,
    /// When `active` last changed or the primary was last tried again, in ms since `epoch`.
    since_ms: AtomicU64,
    epoch: Instant,
    retry_primary_after: Duration,
}

impl Upstream {
    /// Straight to WeChat's hosts: see [`Upstream::through`].
    pub fn new(primary: &Url, fallbacks: &[Url], timeout: Duration) -> Result<Self, UpstreamError> {
        Self::through(primary, fallbacks, timeout, None)
    }

    /// Resolves every host now, so that a typo in the primary fails at start-up rather than
    /// under traffic; a fallback that does not resolve yet is resolved when it is needed. With
    /// `proxy` (`upstream.proxy`), only the proxy is resolved, and every host is reached
    /// through it.
    pub fn through(
        primary: &Url,
        fallbacks: &[Url],
        timeout: Duration,
        proxy: Option<&EgressProxy>,
    ) -> Result<Self, UpstreamError> {
        let egress = proxy.map(Egress::new).transpose()?;
        let mut targets = vec![Target::new(primary, timeout, true, egress.as_ref())?];
        for url in fallbacks {
            targets.push(Target::new(url, timeout, false, egress.as_ref())?);
        }
        Ok(Self {
            targets,
            timeout,
            transport: TransportConnector::new(None),
            active: AtomicUsize::new(0),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            retry_primary_after: RETRY_PRIMARY_AFTER,
        })
    }

    /// Trusts `extra` CA certificates (`upstream.ca_file`) for HTTPS hosts, besides the
    /// platform's roots. pingora's connector takes one CA file that replaces the platform's
    /// roots, so it is given a file holding both, written for the moment it is read.
    pub fn with_extra_roots(mut self, extra: &[CertificateDer<'static>]) -> Result<Self, UpstreamError> {
        if extra.is_empty() {
            return Ok(self);
        }
        let roots_error = |e: &dyn std::fmt::Display| UpstreamError::Roots(e.to_string());
        let mut pem = String::new();
        // The platform's roots as pingora loads them without a CA file; none is no error there.
        for cert in pingora::tls::load_native_certs().map_err(|e| roots_error(&e))?.iter().chain(extra) {
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        let dir = std::env::temp_dir();
        let path = dir.join(format!("wxgate-roots-{}-{:016x}.pem", std::process::id(), rand::random::<u64>()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, pem.as_bytes()));
        if let Err(e) = written {
            return Err(roots_error(&format_args!("cannot write {}: {e}", path.display())));
        }
        let mut options = ConnectorOptions::new(1);
        options.ca_file = Some(path.display().to_string());
        // The connector reads the file as it is built and panics on a bad one; every cert
        // was checked when the config was read, so a panic here is a bug, not an input.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| TransportConnector::new(Some(options))));
        let _ = std::fs::remove_file(&path);
        self.transport = built.map_err(|_| roots_error(&"pingora's TLS connector refused the CAs"))?;
        Ok(self)
    }

    #[cfg(test)]
    fn retrying_primary_after(mut self, after: Duration) -> Self {
        self.retry_primary_after = after;
        self
    }

    /// Sends the call with `token` and reads the answer's header, on the active host or the
    /// next that can be connected to. A pooled connection found broken is replaced by a new
    /// one once, unless the call was written whole and is not safe to send twice, or part of
    /// a streamed body is gone.
    pub async fn send(
        &self,
        client: &Parts,
        outbound: &Outbound,
        token: &str,
        body: &mut Body<'_>,
    ) -> Result<Answer<'_>, CallFailure> {
        let started = Instant::now();
        let first = self.first_target();
        for target in (first..self.targets.len()).chain(0..first) {
            let mut fresh = false;
            loop {
                let (mut conn, reused) = match self.connect(target, fresh, started).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.targets[target].unreachable(&e);
                        self.re_resolve(target).await;
                        break;
                    }
                };
                let head = self.request(client, target, outbound, token, body).ok_or(CallFailure::Broken)?;
                let no_body = client.method == http::Method::HEAD;
                match exchange(&mut conn, head, body, no_body, self.timeout).await {
                    Ok(wire::Response { header, .. }) if self.targets[target].proxy_refused(header.status.as_u16()) => {
                        return Err(CallFailure::Unreachable);
                    }
                    Ok(wire::Response { header, body: reader }) => {
                        let waited = started.elapsed();
                        metrics::UPSTREAM_DURATION.observe(waited.as_secs_f64());
                        self.settle_on(target);
                        let (home, timeout) = (&self.targets[target], self.timeout);
                        return Ok(Answer {
                            header,
                            body: AnswerBody { conn: Some(conn), reader, home, timeout, started },
                            waited,
                        });
                    }
                    Err(Failed::Client(failure)) => return Err(failure),
                    Err(Failed::Upstream { error, written, body_spent })
                        if reused && !fresh && !body_spent && (!written || replay_safe(&client.method)) =>
                    {
                        tracing::debug!(%error, "a pooled connection to WeChat was closed; retrying on a new one");
                        fresh = true;
                    }
                    Err(Failed::Upstream { error, .. }) => {
                        tracing::warn!(%error, reused, "the call to WeChat failed");
                        return Err(error.into());
                    }
                }
            }
        }
        Err(CallFailure::Unreachable)
    }

    /// The host this call starts on: the active one, or the primary when a fallback has been
    /// active for a while and no other call is trying the primary now.
    fn first_target(&self) -> usize {
        let active = self.active.load(Ordering::Relaxed);
        if active == 0 {
            return 0;
        }
        let now = self.now_ms();
        let since = self.since_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(since) >= self.retry_primary_after.as_millis() as u64;
        match due && self.since_ms.compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            true => 0,
            false => active,
        }
    }

    /// A call got its answer from `target`: it becomes the active host.
    fn settle_on(&self, target: usize) {
        let previous = self.active.swap(target, Ordering::Relaxed);
        if previous == target {
            return;
        }
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        let (from, to) = (&self.targets[previous].host, &self.targets[target].host);
        if target == 0 {
            metrics::UPSTREAM_SWITCHES.with_label_values(&["primary"]).inc();
            tracing::info!(host = %to, "the primary WeChat host answers again; calls go back to it");
        } else {
            metrics::UPSTREAM_SWITCHES.with_label_values(&["fallback"]).inc();
            tracing::warn!(from = %from, to = %to, "WeChat host could not be reached; calls go to a fallback");
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A connection to `target`: an idle one this thread opened if there is one still open
    /// (idle for less than [`IDLE_TIMEOUT`] at `now`), else a new one. The flag tells which.
    async fn connect(&self, target: usize, fresh: bool, now: Instant) -> pingora::Result<(Connection, bool)> {
        if !fresh {
            if let Some(conn) = self.targets[target].idle.take(now) {
                return Ok((conn, true));
            }
        }
        let peer = self.peer(target).await.ok_or_else(|| pingora::Error::new(ErrorType::ConnectNoRoute))?;
        // Boxed: a connect's future (TCP, then a TLS handshake) is some 8 KiB, which every
        // call's future would otherwise carry, and be copied with, for the rare new connection.
        let stream = Box::pin(self.transport.new_stream(&*peer)).await?;
        Ok((Connection { stream, timer: wire::Timer::default(), owner: Owner::current() }, false))
    }

    async fn peer(&self, target: usize) -> Option<Arc<HttpPeer>> {
        let peer = self.targets[target].peer.read().unwrap_or_else(|p| p.into_inner()).clone();
        match peer {
            Some(peer) => Some(peer),
            None => {
                self.re_resolve(target).await;
                self.targets[target].peer.read().unwrap_or_else(|p| p.into_inner()).clone()
            }
        }
    }

    /// Resolves `target` again, off the async threads: after a failed connect the host's
    /// addresses may have changed.
    async fn re_resolve(&self, target: usize) {
        let t = &self.targets[target];
        if t.egress.is_some() {
            // Through a proxy the host is the proxy's to resolve.
            return;
        }
        let (host, port) = (t.host.clone(), t.port);
        if let Ok(Ok(addr)) = tokio::task::spawn_blocking(move || resolve(&host, port)).await {
            *t.peer.write().unwrap_or_else(|p| p.into_inner()) =
                Some(Arc::new(make_peer(addr, t.tls, &t.host, self.timeout)));
        }
    }

    /// The request head WeChat gets: the client's method and headers, less this hop's and the
    /// gateway's, framed for `body`, for `outbound` with `token` on `target`, written out as it
    /// goes on the wire (with room for a small body after it). `None` for a URI that could not
    /// be sent.
    fn request(
        &self,
        client: &Parts,
        target: usize,
        outbound: &Outbound,
        token: &str,
        body: &Body<'_>,
    ) -> Option<Vec<u8>> {
        let coalesced = match body {
            Body::Whole(b) if b.len() <= COALESCE_BODY => b.len(),
            _ => 0,
        };
        let mut head = Vec::with_capacity(256 + token.len() + 48 * client.headers.len() + coalesced);
        head.extend_from_slice(client.method.as_str().as_bytes());
        head.push(b' ');
        let uri_start = head.len();
        let t = &self.targets[target];
        if let Some(via) = &t.via {
            head.extend_from_slice(via.absolute.as_bytes());
        }
        outbound.push_uri(&mut head, &t.base_path, token);
        // Built from a URI that parsed, with a token of WeChat's; a space or a line end would
        // split the request line, so it is checked rather than trusted.
        if head[uri_start..].iter().any(|b| *b <= b' ' || *b == 0x7f) {
            return None;
        }
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(self.targets[target].authority_value.as_bytes());
        head.extend_from_slice(b"\r\n");
        if let Some(auth) = t.via.as_ref().and_then(|via| via.authorization.as_ref()) {
            header_line(&mut head, b"proxy-authorization", auth.as_bytes());
        }
        let connection = client.headers.contains_key(http::header::CONNECTION);
        for (name, value) in client.headers.iter() {
            let name = name.as_str();
            let dropped = OWN_REQUEST_HEADERS.contains(&name)
                || name.starts_with("x-wxgate-")
                || is_hop_by_hop(&client.headers, connection, name);
            if !dropped {
                header_line(&mut head, name.as_bytes(), value.as_bytes());
            }
        }
        match body {
            Body::Whole(b) if !b.is_empty() || client.method == http::Method::POST => {
                header_line(&mut head, b"content-length", b.len().to_string().as_bytes());
            }
            Body::Whole(_) => {}
            Body::Streamed { length: Some(n), .. } => {
                header_line(&mut head, b"content-length", n.to_string().as_bytes())
            }
            Body::Streamed { length: None, .. } => header_line(&mut head, b"transfer-encoding", b"chunked"),
        }
        head.extend_from_slice(b"\r\n");
        Some(head)
    }
}

/// How an exchange failed.
enum Failed {
    /// On WeChat's side. `written`: the request went out whole, so WeChat may have acted on
    /// it; `body_spent`: part of a streamed body was read from the client and cannot be sent
    /// again.
    Upstream { error: H1Error, written: bool, body_spent: bool },
    /// On the client's side: its body.
    Client(CallFailure),
}

/// Sends the request, `head` then its body, and reads the answer's head. A small body goes
/// out in the same write as the head.
async fn exchange(
    conn: &mut Connection,
    mut head: Vec<u8>,
    body: &mut Body<'_>,
    no_body: bool,
    timeout: Duration,
) -> Result<wire::Response, Failed> {
    let Connection { stream, timer, .. } = conn;
    let upstream = |body_spent| move |error| Failed::Upstream { error, written: false, body_spent };
    match body {
        Body::Whole(b) if b.len() <= COALESCE_BODY => {
            head.extend_from_slice(b);
            wire::write(stream, &head, timer, timeout).await.map_err(upstream(false))?;
        }
        Body::Whole(b) => {
            wire::write(stream, &head, timer, timeout).await.map_err(upstream(false))?;
            wire::write(stream, b, timer, timeout).await.map_err(upstream(false))?;
        }
        Body::Streamed { kept, from, limit, length } => {
            let chunked = length.is_none();
            wire::write(stream, &head, timer, timeout).await.map_err(upstream(false))?;
            if !kept.is_empty() {
                wire::write_piece(stream, kept, chunked, timer, timeout).await.map_err(upstream(false))?;
            }
            let mut seen = kept.len();
            loop {
                let chunk = from.piece().await.map_err(|_| Failed::Client(CallFailure::BadBody))?;
                let Some(chunk) = chunk else { break };
                seen += chunk.len();
                if seen > *limit {
                    return Err(Failed::Client(CallFailure::TooLarge(*limit)));
                }
                wire::write_piece(stream, &chunk, chunked, timer, timeout).await.map_err(upstream(true))?;
            }
            if chunked {
                wire::write(stream, wire::LAST_CHUNK, timer, timeout).await.map_err(upstream(true))?;
            }
        }
    }
    let spent = matches!(body, Body::Streamed { .. });
    wire::Response::read(stream, timer, no_body, timeout).await.map_err(|error| Failed::Upstream {
        error,
        written: true,
        body_spent: spent,
    })
}

/// Closes a connection that is not kept, with a TLS close_notify where there is TLS; outside a
/// runtime (never on a call's path) it is just dropped.
fn close(mut stream: Stream) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { stream.shutdown().await });
    }
}

/// Whether a call may be sent again after its connection broke once it was written: only when
/// sending it twice does no harm. A message sent twice is worse than an error.
fn replay_safe(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

impl From<H1Error> for CallFailure {
    fn from(e: H1Error) -> Self {
        match e {
            H1Error::TimedOut => CallFailure::TimedOut,
            _ => CallFailure::Broken,
        }
    }
}

#[cfg(test)]
mod tests;
