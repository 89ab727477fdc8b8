//! The replayable call: a request whose body is small enough to keep is sent with pingora's
//! connector, and a small JSON answer is read before anything reaches the client, so that a
//! token error (40001, 40014, 42001) can be answered by replacing that exact token (single-
//! flight, compare-and-swap) and replaying the call once. Large answers stream through.

use super::upstream::Upstream;
use crate::metrics;
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorType, Result};
use std::time::Instant;

/// Only answers up to this size are read whole and checked for a token error; WeChat's error
/// answers are a few dozen bytes.
const INSPECT_LIMIT: usize = 64 * 1024;

/// Request headers that are the gateway's or the hop's, not WeChat's.
pub fn is_private_request_header(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "host" | "content-length" | "connection" | "keep-alive" | "proxy-connection"
            | "proxy-authorization" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "expect"
    ) || name.starts_with("x-wxgate-")
}

/// What the upstream answered, with the connection it came on.
pub struct Answer {
    pub session: HttpSession,
    pub peer: HttpPeer,
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

/// The upstream request for `path_and_query` (which carries the real token), with the client's
/// headers less the private ones.
pub fn upstream_request(client_req: &RequestHeader, upstream: &Upstream, target: usize, path_and_query: &str, body_len: usize) -> Result<RequestHeader> {
    let mut req = RequestHeader::build(client_req.method.clone(), b"/", Some(client_req.headers.len() + 2))?;
    for (name, value) in client_req.headers.iter() {
        if !is_private_request_header(name.as_str()) {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    if body_len > 0 || matches!(client_req.method, http::Method::POST | http::Method::PUT | http::Method::PATCH) {
        req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    }
    upstream.aim(&mut req, target, path_and_query)?;
    Ok(req)
}

/// Sends the request to the first target that takes it. A pooled connection that turns out to
/// be closed is replaced by a new one once.
pub async fn send(connector: &Connector, upstream: &Upstream, client_req: &RequestHeader, path_and_query: &str, body: &Bytes) -> std::result::Result<Answer, CallFailure> {
    let started = Instant::now();
    let mut target = 0;
    let mut fresh_retry = true;
    while let Some(peer) = upstream.peer(target) {
        let (mut session, reused) = match connector.get_http_session(&peer).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target_index = target, error = ?e.etype(), "could not connect to WeChat; trying the next host");
                upstream.re_resolve(target).await;
                target += 1;
                continue;
            }
        };
        let req = upstream_request(client_req, upstream, target, path_and_query, body.len()).map_err(|_| CallFailure::Broken)?;
        match exchange(&mut session, req, body).await {
            Ok(()) => {
                metrics::UPSTREAM_DURATION.observe(started.elapsed().as_secs_f64());
                return Ok(Answer { session, peer });
            }
            Err(e) if reused && fresh_retry => {
                tracing::debug!(error = ?e.etype(), "a pooled connection to WeChat was closed; retrying on a new one");
                fresh_retry = false;
            }
            Err(e) => {
                tracing::warn!(error = ?e.etype(), source = ?e.esource(), reused, "the call to WeChat failed");
                return Err(failure(&e));
            }
        }
    }
    Err(CallFailure::Unreachable)
}

async fn exchange(session: &mut HttpSession, req: RequestHeader, body: &Bytes) -> Result<()> {
    session.write_request_header(Box::new(req)).await?;
    if !body.is_empty() {
        session.write_request_body(body.clone(), true).await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await
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

/// Reads an inspectable answer's body whole.
pub async fn read_whole(session: &mut HttpSession) -> std::result::Result<Bytes, CallFailure> {
    let mut body = BytesMut::new();
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
    if !body.windows(7).any(|w| w == b"errcode") {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Errcode {
        errcode: Option<i64>,
    }
    serde_json::from_slice::<Errcode>(body).ok().and_then(|e| e.errcode).is_some_and(|c| matches!(c, 40001 | 40014 | 42001))
}

/// The answer's header as the client gets it: without hop-by-hop headers.
pub fn downstream_header(upstream: &ResponseHeader, whole_body: Option<usize>) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(upstream.status, Some(upstream.headers.len()))?;
    for (name, value) in upstream.headers.iter() {
        let hop = matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade");
        let framing = whole_body.is_some() && matches!(name.as_str(), "content-length" | "transfer-encoding");
        if !hop && !framing {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    if let Some(len) = whole_body {
        resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    }
    Ok(resp)
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

/// Gives the connection back to the pool when the exchange ended cleanly.
pub async fn release(connector: &Connector, answer: Answer) {
    let Answer { mut session, peer } = answer;
    if session.response_done() {
        connector.release_http_session(session, &peer, peer.options.idle_timeout).await;
    } else {
        session.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_are_recognised_and_nothing_else() {
        assert!(is_token_error(br#"{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 1"}"#));
        assert!(is_token_error(br#"{"errcode":42001,"errmsg":"access_token expired"}"#));
        assert!(is_token_error(br#"{"errmsg":"x","errcode":40014}"#));
        assert!(!is_token_error(br#"{"errcode":0,"errmsg":"ok"}"#));
        assert!(!is_token_error(br#"{"errcode":45009,"errmsg":"reach max api daily quota limit"}"#));
        assert!(!is_token_error(br#"{"subscribe":1,"nickname":"40001"}"#));
        assert!(!is_token_error(b"not json errcode 40001"));
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
