//! The proxy listener: the gateway's own `/wxgate/*` routes, and every other path as a WeChat
//! API call made on a client's behalf with the real token.
//!
//! ```text
//!  request_filter ─► /wxgate/* ──────────────────────────► routes (callback, authorize, token)
//!        │
//!        ├─► resolve: client → scope → permission (401/400/403, never forwarded)
//!        ├─► token endpoint? ────────────────────────────► answered from the cache (or 403)
//!        ├─► token for the scope (404 unknown or revoked)
//!        ├─► body ≤ replay_body_bytes ─► exchange: send, read small JSON, on 40001/40014/42001
//!        │                               replace that token once and replay; else stream back
//!        └─► larger body ─► pingora streams it: upstream_peer → upstream_request_filter (aim,
//!                           token, Host) → request_body_filter (limit) → response, no replay
//! ```

mod clients;
mod exchange;
mod resolve;
mod routes;
mod token_endpoints;
mod upstream;

pub use clients::Clients;
pub use routes::{OwnRoutes, ROUTE_PREFIX};
pub use upstream::{Upstream, UpstreamError};

use crate::config::ProxyConfig;
use crate::metrics;
use crate::reply::{read_body, token_error, Reply};
use crate::tokens::{AccessToken, TokenService};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use resolve::Scope;
use std::sync::Arc;
use std::time::Instant;

/// A token endpoint's body is a few fields of JSON.
const TOKEN_ENDPOINT_BODY: usize = 4096;

/// The `ProxyHttp` of the proxy listener.
pub struct Gateway {
    routes: Arc<OwnRoutes>,
    tokens: Arc<TokenService>,
    /// Replaced whole by a config reload; each call reads the set current when it arrives.
    clients: Arc<ArcSwap<Clients>>,
    upstream: Arc<Upstream>,
    connections: exchange::Connections,
    settings: ProxyConfig,
}

/// Per request: what the access log, the metrics and the streaming path need. The client's
/// name and the path are only kept when the access log is on.
pub struct CallCtx {
    /// When the call began, for the access log's `ms` (a clock read saved when it is off).
    started: Option<Instant>,
    scope: &'static str,
    client: Option<String>,
    /// The path WeChat sees, without the query (which carries the token).
    path: String,
    /// For calls pingora streams: the path and query with the real token, and the attempt
    /// (0 = the primary host, then the fallbacks).
    stream: Option<(String, usize)>,
    body_seen: usize,
}

impl Gateway {
    pub fn new(
        routes: Arc<OwnRoutes>,
        tokens: Arc<TokenService>,
        clients: Arc<ArcSwap<Clients>>,
        upstream: Arc<Upstream>,
        settings: ProxyConfig,
    ) -> Self {
        let connections = exchange::Connections::new(upstream.len());
        Self { routes, tokens, clients, upstream, connections, settings }
    }

    /// Resolves and answers an API call; `Ok(false)` hands it to pingora to stream.
    async fn api_call(&self, session: &mut Session, ctx: &mut CallCtx) -> std::result::Result<bool, Reply> {
        let clients = self.clients.load_full();
        let (scope, outbound, token_endpoint) = {
            let call = resolve::resolve(&clients, session.req_header()).map_err(|e| Reply::error(e.status(), e))?;
            ctx.scope = call.scope.as_ref().map_or("token_endpoint", Scope::label);
            if self.settings.access_log {
                ctx.client = Some(call.client.name.clone());
                call.path.clone_into(&mut ctx.path);
            }
            let token_endpoint = resolve::is_token_endpoint(call.path);
            let outbound = if token_endpoint { None } else { Some(call.outbound()) };
            (call.scope, outbound, token_endpoint)
        };
        let declared = content_length(session.req_header());
        if declared.is_some_and(|n| n > self.settings.max_body_bytes) {
            return Err(Reply::error(
                413,
                format!("request body is larger than {} bytes", self.settings.max_body_bytes),
            ));
        }
        if token_endpoint {
            let body = read_body(session.as_downstream_mut(), TOKEN_ENDPOINT_BODY).await.map_err(|e| e.reply())?;
            // Resolved again (the same answer): the call borrows the request, which reading the
            // body needed mutably. Token endpoints are rare.
            let req = session.req_header();
            let call = resolve::resolve(&clients, req).map_err(|e| Reply::error(e.status(), e))?;
            return Err(token_endpoints::answer(&self.tokens, &call, req.uri.query().unwrap_or_default(), &body).await);
        }
        let (Some(scope), Some(outbound)) = (scope, outbound) else { return Err(Reply::error(400, "no scope")) };
        let token = self.token_for(&scope).await.map_err(|e| token_error(&e))?;
        let chunked = session.req_header().headers.contains_key(http::header::TRANSFER_ENCODING);
        if !chunked && declared.unwrap_or(0) <= self.settings.replay_body_bytes {
            self.replayable(session, &outbound, &scope, token, declared.unwrap_or(0) > 0).await?;
            return Ok(true);
        }
        ctx.stream = Some((outbound.uri("", token.value.expose()), 0));
        Ok(false)
    }

    async fn token_for(&self, scope: &Scope) -> std::result::Result<Arc<AccessToken>, crate::tokens::TokenError> {
        match scope {
            Scope::Authorizer(appid) => self.tokens.authorizer_token(appid).await,
            Scope::Component => self.tokens.component_token().await,
        }
    }

    async fn replace_token(
        &self,
        scope: &Scope,
        failed: &AccessToken,
    ) -> std::result::Result<Arc<AccessToken>, crate::tokens::TokenError> {
        match scope {
            Scope::Authorizer(appid) => self.tokens.replace_authorizer_token(appid, &failed.value).await,
            Scope::Component => self.tokens.replace_component_token(&failed.value).await,
        }
    }

    /// The call with a body small enough to keep: sent, and replayed once with a new token if
    /// WeChat refuses the one it got.
    async fn replayable(
        &self,
        session: &mut Session,
        outbound: &resolve::Outbound,
        scope: &Scope,
        mut token: Arc<AccessToken>,
        has_body: bool,
    ) -> std::result::Result<(), Reply> {
        let body = match has_body {
            true => {
                read_body(session.as_downstream_mut(), self.settings.replay_body_bytes).await.map_err(|e| e.reply())?
            }
            false => bytes::Bytes::new(),
        };
        let mut replayed = false;
        loop {
            let mut answer = exchange::send(
                &self.connections,
                &self.upstream,
                session.req_header(),
                outbound,
                token.value.expose(),
                &body,
            )
            .await
            .map_err(|f| f.reply())?;
            let Some(header) = answer.session.response_header() else {
                return Err(Reply::error(502, "no answer header"));
            };
            if !exchange::inspectable(header) {
                let streamed = exchange::stream_to(session.as_downstream_mut(), &mut answer).await;
                self.connections.release(answer).await;
                return streamed.map_err(|e| downstream_gone(&e));
            }
            let whole = exchange::read_whole(&mut answer.session).await.map_err(|f| f.reply())?;
            if !replayed && exchange::is_token_error(&whole) {
                self.connections.release(answer).await;
                metrics::TOKEN_RETRY.inc();
                tracing::info!(
                    scope = scope.label(),
                    "WeChat refused the token; replacing it and replaying the call once"
                );
                token = self.replace_token(scope, &token).await.map_err(|e| token_error(&e))?;
                replayed = true;
                continue;
            }
            let header = answer.session.response_header().ok_or_else(|| Reply::error(502, "no answer header"))?;
            let header = exchange::downstream_header(header, Some(whole.len()))
                .map_err(|_| Reply::error(502, "a header WeChat sent cannot be passed on"))?;
            self.connections.release(answer).await;
            return write_whole(session, header, whole).await.map_err(|e| downstream_gone(&e));
        }
    }
}

fn downstream_gone(e: &pingora::Error) -> Reply {
    // The client went away mid-answer; nothing more can be written, and this reply is not sent.
    tracing::debug!(error = ?e.etype(), "client connection closed during the answer");
    Reply::error(502, "client connection closed")
}

async fn write_whole(
    session: &mut Session,
    header: pingora::http::ResponseHeader,
    body: bytes::Bytes,
) -> pingora::Result<()> {
    let client = session.as_downstream_mut();
    client.write_response_header(Box::new(header)).await?;
    client.write_response_body(body, true).await
}

fn content_length(req: &pingora::http::RequestHeader) -> Option<usize> {
    req.headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A query with the values of token and key parameters replaced by `...`, for the access log.
fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _))
                if matches!(
                    k,
                    "access_token"
                        | "component_access_token"
                        | "key"
                        | "secret"
                        | "auth_code"
                        | "pre_auth_code"
                        | "code"
                        // The sender of a pushed message: personal data.
                        | "openid"
                ) =>
            {
                format!("{k}=...")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = CallCtx;

    /// No downstream modules: the default adds a disabled compression module, whose state is
    /// built for every request and whose filters run on every answer pingora writes.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        CallCtx {
            started: self.settings.access_log.then(Instant::now),
            scope: "none",
            client: None,
            path: String::new(),
            stream: None,
            body_seen: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if session.req_header().uri.path().starts_with(ROUTE_PREFIX) {
            ctx.scope = "own";
            ctx.path = session.req_header().uri.path().to_owned();
            let clients = self.clients.load_full();
            let reply = self.routes.handle(session, &clients).await;
            reply.write_to(session.as_downstream_mut()).await?;
            return Ok(true);
        }
        match self.api_call(session, ctx).await {
            Ok(handled) => Ok(handled),
            Err(reply) => {
                if session.response_written().is_none() {
                    reply.write_to(session.as_downstream_mut()).await?;
                }
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        let attempt = ctx.stream.as_ref().map_or(0, |(_, a)| *a);
        self.upstream
            .peer(attempt)
            .map(|p| Box::new(HttpPeer::clone(&p)))
            .ok_or_else(|| Error::explain(ErrorType::ConnectError, "no WeChat host left to try"))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut pingora::http::RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let (path_and_query, attempt) =
            ctx.stream.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "not a streamed call"))?;
        let private: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| {
                exchange::is_private_request_header(n.as_str())
                    && n.as_str() != "content-length"
                    && n.as_str() != "transfer-encoding"
            })
            .cloned()
            .collect();
        for name in private {
            req.remove_header(&name);
        }
        self.upstream.aim(req, *attempt, path_and_query)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.body_seen += body.as_ref().map_or(0, |b| b.len());
        if ctx.body_seen > self.settings.max_body_bytes {
            return Err(Error::explain(ErrorType::HTTPStatus(413), "request body over proxy.max_body_bytes"));
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some((_, attempt)) = ctx.stream.as_mut() {
            if *attempt + 1 < self.upstream.len() {
                *attempt += 1;
                e.set_retry(true);
            }
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Self::CTX) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
                if e.esource() == &pingora::ErrorSource::Downstream =>
            {
                0
            }
            _ => 502,
        };
        if code > 0 && session.response_written().is_none() {
            let reply = Reply::error(
                code,
                if code == 413 { "request body is too large" } else { "WeChat could not be reached" },
            );
            let _ = reply.write_to(session.as_downstream_mut()).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if ctx.scope != "own" {
            metrics::count_request(ctx.scope, status);
        }
        if self.settings.access_log {
            let req = session.req_header();
            tracing::info!(
                target: "wxgate::access",
                method = %req.method,
                path = %ctx.path,
                query = %redacted_query(req.uri.query().unwrap_or_default()),
                status,
                scope = ctx.scope,
                client = ctx.client.as_deref().unwrap_or("-"),
                ms = ctx.started.map_or(0, |t| t.elapsed().as_millis() as u64),
            );
        }
    }

    /// pingora's error lines name the request; the query carries tokens and keys, so only the
    /// method and path are given.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_never_shows_a_token_or_key() {
        assert_eq!(
            redacted_query("openid=o&access_token=SECRET&component_access_token=C&key=K"),
            "openid=o&access_token=...&component_access_token=...&key=..."
        );
    }
}
