//! The replayable call: a request whose body is small enough to keep is sent with pingora's
//! connector, and a small JSON answer is read before anything reaches the client, so that a
//! token error (40001, 40014, 42001) can be answered by replacing that exact token (single-
//! flight, compare-and-swap) and replaying the call once. Large answers stream through.

use super::resolve::Outbound;
use super::upstream::Upstream;
use crate::metrics;
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as H1Session;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorType, Result};
use std::sync::Mutex;
use std::time::Instant;
use tokio::io::AsyncReadExt;

/// Only answers up to this size are read whole and checked for a token error; WeChat's error
/// answers are a few dozen bytes.
const INSPECT_LIMIT: usize = 64 * 1024;

/// Request headers that are the gateway's or the hop's, not WeChat's.
pub fn is_private_request_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    ) || name.starts_with("x-wxgate-")
}

/// Idle connections kept per WeChat host; pingora's connector keeps 128 in all.
const MAX_IDLE_PER_TARGET: usize = 128;

/// What the upstream answered, with the connection it came on.
pub struct Answer {
    pub session: HttpSession,
    /// Which upstream target (0 = the primary host) the connection goes to.
    target: usize,
}

/// The connections to WeChat: new ones through pingora's transport connector (TCP, TLS,
/// timeouts), idle ones kept here, most recently used first.
///
/// pingora's own pool (`Connector::release_http_session`) spawns a task per released
/// connection to watch it while idle, with a timer, a oneshot channel, a `Notify` and a lock
/// that the next user waits on: on a call that takes tens of microseconds that is most of the
/// gateway's own work. Here a released connection is pushed on a stack; a connection the
/// server closed while idle is noticed when it is taken (a read that does not block) or, at
/// worst, when the call on it fails, and the call is then made again on a new connection.
pub struct Connections {
    transport: TransportConnector,
    idle: Vec<Mutex<Vec<(Stream, Instant)>>>,
}

impl Connections {
    pub fn new(targets: usize) -> Self {
        Self { transport: TransportConnector::new(None), idle: (0..targets).map(|_| Mutex::new(Vec::new())).collect() }
    }

    fn idle(&self, target: usize) -> std::sync::MutexGuard<'_, Vec<(Stream, Instant)>> {
        self.idle[target].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `target`: an idle one if there is one still open, else a new one. The
    /// flag tells which.
    async fn get(&self, upstream: &Upstream, target: usize, fresh: bool) -> Result<(HttpSession, bool)> {
        let peer = upstream.peer(target).ok_or_else(|| pingora::Error::new(ErrorType::ConnectNoRoute))?;
        if !fresh {
            loop {
                let Some((mut stream, since)) = self.idle(target).pop() else { break };
                if since.elapsed() < upstream.idle_timeout() && still_open(&mut stream) {
                    return Ok((session_on(stream, &peer), true));
                }
            }
        }
        let stream = self.transport.new_stream(&*peer).await?;
        Ok((session_on(stream, &peer), false))
    }

    /// Keeps the connection for the next call when the exchange ended cleanly and the server
    /// keeps it alive; closes it otherwise.
    pub async fn release(&self, answer: Answer) {
        let Answer { mut session, target } = answer;
        if !session.response_done() {
            session.shutdown().await;
            return;
        }
        let HttpSession::H1(mut h1) = session else {
            session.shutdown().await;
            return;
        };
        h1.respect_keepalive();
        if let Some(stream) = h1.reuse().await {
            let mut idle = self.idle(target);
            if idle.len() >= MAX_IDLE_PER_TARGET {
                idle.remove(0);
            }
            idle.push((stream, Instant::now()));
        }
    }
}

/// An HTTP/1 client session on `stream`, with the upstream timeout on every read and write, so
/// that a WeChat that stops answering cannot hold a client for ever.
fn session_on(stream: Stream, peer: &HttpPeer) -> HttpSession {
    let mut session = HttpSession::H1(H1Session::new_with_options(stream, peer));
    session.set_read_timeout(peer.options.read_timeout);
    session.set_write_timeout(peer.options.write_timeout);
    session
}

/// Whether an idle connection is still usable: reading must find nothing (no end of stream,
/// no unexpected data) and not block. Readiness is the runtime's cached state: no system call
/// unless the server did something.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut byte)).now_or_never().is_none()
}

/// Why a call got no answer from WeChat.
#[derive(Debug)]
pub enum CallFailure {
    /// No target could be connected to.
    Unreachable,
    TimedOut,
    Broken,
}

impl CallFailure {
    pub fn reply(&self) -> Reply {
        match self {
            Self::Unreachable => Reply::error(502, "WeChat could not be reached"),
            Self::TimedOut => Reply::error(504, "WeChat did not answer in time"),
            Self::Broken => Reply::error(502, "the connection to WeChat broke"),
        }
    }
}

/// The upstream request for `uri` (the path and query with the real token), with the
/// client's headers less the private ones. Built as plain `http` parts: no header is parsed
/// again and no header-case map is kept (header names are case-insensitive).
pub fn upstream_request(
    client_req: &RequestHeader,
    upstream: &Upstream,
    target: usize,
    uri: String,
    body_len: usize,
) -> Result<RequestHeader> {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = client_req.method.clone();
    parts.headers.reserve(client_req.headers.len() + 2);
    for (name, value) in client_req.headers.iter() {
        if !is_private_request_header(name.as_str()) {
            parts.headers.append(name.clone(), value.clone());
        }
    }
    if body_len > 0 || matches!(client_req.method, http::Method::POST | http::Method::PUT | http::Method::PATCH) {
        parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body_len));
    }
    let mut req = RequestHeader::from(parts);
    upstream.aim_owned(&mut req, target, uri)?;
    Ok(req)
}

/// Sends the call with `token` to the first target that takes it. A pooled connection that
/// turns out to be closed is replaced by a new one once, unless the call was written whole and
/// is not safe to send twice.
pub async fn send(
    connections: &Connections,
    upstream: &Upstream,
    client_req: &RequestHeader,
    outbound: &Outbound,
    token: &str,
    body: &Bytes,
) -> std::result::Result<Answer, CallFailure> {
    let started = Instant::now();
    let mut target = 0;
    let mut fresh = false;
    while target < upstream.len() {
        let (mut session, reused) = match connections.get(upstream, target, fresh).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target_index = target, error = ?e.etype(), "could not connect to WeChat; trying the next host");
                upstream.re_resolve(target).await;
                target += 1;
                fresh = false;
                continue;
            }
        };
        let uri = outbound.uri(upstream.base_path(target), token);
        let req = upstream_request(client_req, upstream, target, uri, body.len()).map_err(|_| CallFailure::Broken)?;
        match exchange(&mut session, req, body).await {
            Ok(()) => {
                metrics::UPSTREAM_DURATION.observe(started.elapsed().as_secs_f64());
                return Ok(Answer { session, target });
            }
            Err((e, written)) if reused && !fresh && (!written || replay_safe(&client_req.method)) => {
                tracing::debug!(error = ?e.etype(), "a pooled connection to WeChat was closed; retrying on a new one");
                fresh = true;
            }
            Err((e, _)) => {
                tracing::warn!(error = ?e.etype(), source = ?e.esource(), reused, "the call to WeChat failed");
                return Err(failure(&e));
            }
        }
    }
    Err(CallFailure::Unreachable)
}

/// Sends the request and reads the answer's header. On failure, says whether the request had
/// been written whole: WeChat may then have acted on it.
async fn exchange(
    session: &mut HttpSession,
    req: RequestHeader,
    body: &Bytes,
) -> std::result::Result<(), (Box<pingora::Error>, bool)> {
    let sent = async {
        session.write_request_header(Box::new(req)).await?;
        if !body.is_empty() {
            session.write_request_body(body.clone(), true).await?;
        }
        session.finish_request_body().await
    };
    sent.await.map_err(|e| (e, false))?;
    session.read_response_header().await.map_err(|e| (e, true))
}

/// Whether a call may be sent again after its connection broke once it was written: only when
/// sending it twice does no harm. A message sent twice is worse than an error.
fn replay_safe(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

fn failure(e: &pingora::Error) -> CallFailure {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout => CallFailure::TimedOut,
        _ => CallFailure::Broken,
    }
}

/// Whether the answer is worth reading whole before the client sees it: small JSON (or the
/// text/plain WeChat sometimes labels JSON with).
pub fn inspectable(resp: &ResponseHeader) -> bool {
    let small = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= INSPECT_LIMIT);
    let textual = resp.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/json") || v.starts_with(b"text/plain")
    });
    small && textual
}

/// Reads an inspectable answer's body whole. A body that arrives in one piece (a small
/// answer) is returned as it is, without a copy.
pub async fn read_whole(session: &mut HttpSession) -> std::result::Result<Bytes, CallFailure> {
    let Some(first) = session.read_response_body().await.map_err(|e| failure(&e))? else { return Ok(Bytes::new()) };
    if first.len() > INSPECT_LIMIT {
        return Err(CallFailure::Broken);
    }
    let Some(second) = session.read_response_body().await.map_err(|e| failure(&e))? else { return Ok(first) };
    let mut body = BytesMut::with_capacity(first.len() + second.len());
    body.extend_from_slice(&first);
    if body.len() + second.len() > INSPECT_LIMIT {
        return Err(CallFailure::Broken);
    }
    body.extend_from_slice(&second);
    while let Some(chunk) = session.read_response_body().await.map_err(|e| failure(&e))? {
        if body.len() + chunk.len() > INSPECT_LIMIT {
            return Err(CallFailure::Broken);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Whether WeChat refused the token: 40001 (invalid or not the latest), 40014 (invalid),
/// 42001 (expired). Parsed only when the body mentions an errcode at all.
pub fn is_token_error(body: &[u8]) -> bool {
    errcode(body).is_some_and(|c| matches!(c, 40001 | 40014 | 42001))
}

/// The errcode of a JSON answer, if it has one. Parsed only when the body mentions an errcode.
pub fn errcode(body: &[u8]) -> Option<i64> {
    if !body.windows(7).any(|w| w == b"errcode") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Errcode {
        errcode: Option<i64>,
    }
    serde_json::from_slice::<Errcode>(body).ok().and_then(|e| e.errcode)
}

/// The answer's header as the client gets it: without hop-by-hop headers. For an answer read
/// whole, the length is `whole_body` (the server's own `Content-Length` when it says the same).
pub fn downstream_header(upstream: &ResponseHeader, whole_body: Option<usize>) -> Result<ResponseHeader> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = upstream.status;
    parts.headers.reserve(upstream.headers.len() + 1);
    let mut length_kept = false;
    for (name, value) in upstream.headers.iter() {
        let hop =
            matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade");
        if hop {
            continue;
        }
        if let Some(len) = whole_body {
            if *name == http::header::TRANSFER_ENCODING {
                continue;
            }
            if *name == http::header::CONTENT_LENGTH {
                if !length_kept && value.to_str().ok().and_then(|v| v.parse::<usize>().ok()) == Some(len) {
                    length_kept = true;
                    parts.headers.append(name.clone(), value.clone());
                }
                continue;
            }
        }
        parts.headers.append(name.clone(), value.clone());
    }
    if let (Some(len), false) = (whole_body, length_kept) {
        parts.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    Ok(ResponseHeader::from(parts))
}

/// Streams the rest of the answer to the client, chunk by chunk: memory stays flat whatever
/// the size (a media download).
pub async fn stream_to(client: &mut ServerSession, answer: &mut Answer) -> Result<()> {
    let header = answer.session.response_header().ok_or_else(|| pingora::Error::new(ErrorType::InvalidHTTPHeader))?;
    client.write_response_header(Box::new(downstream_header(header, None)?)).await?;
    while let Some(chunk) = answer.session.read_response_body().await? {
        client.write_response_body(chunk, false).await?;
    }
    client.finish_body().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_are_recognised_and_nothing_else() {
        assert!(is_token_error(
            br#"{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 1"}"#
        ));
        assert!(is_token_error(br#"{"errcode":42001,"errmsg":"access_token expired"}"#));
        assert!(is_token_error(br#"{"errmsg":"x","errcode":40014}"#));
        assert!(!is_token_error(br#"{"errcode":0,"errmsg":"ok"}"#));
        assert!(!is_token_error(br#"{"errcode":45009,"errmsg":"reach max api daily quota limit"}"#));
        assert!(!is_token_error(br#"{"subscribe":1,"nickname":"40001"}"#));
        assert!(!is_token_error(b"not json errcode 40001"));
    }

    /// A server that answers one call per connection with keep-alive, then closes it: every
    /// pooled connection is dead by the next call, which must still succeed, on a new one.
    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /x?a=1&access_token=T "));
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"errcode\":0}").await;
            }
        });
        let upstream = Upstream::new(&url, &[], std::time::Duration::from_secs(3)).unwrap();
        let connections = Connections::new(upstream.len());
        let client_req = RequestHeader::build("GET", b"/ignored", None).unwrap();
        let outbound = Outbound::for_test("/x", "a=1");
        for wait in [0, 50, 0] {
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            let mut answer = send(&connections, &upstream, &client_req, &outbound, "T", &Bytes::new()).await.unwrap();
            assert!(inspectable(answer.session.response_header().unwrap()));
            assert_eq!(&read_whole(&mut answer.session).await.unwrap()[..], br#"{"errcode":0}"#);
            connections.release(answer).await;
        }
    }

    #[test]
    fn private_headers_stay_home() {
        for h in ["authorization", "x-wxgate-key", "x-wxgate-authorizer", "connection", "host", "transfer-encoding"] {
            assert!(is_private_request_header(h), "{h}");
        }
        for h in ["content-type", "user-agent", "accept"] {
            assert!(!is_private_request_header(h), "{h}");
        }
    }
}
