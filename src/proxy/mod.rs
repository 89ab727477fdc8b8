//! The proxy listener: the gateway's own `/wxgate/*` routes, and every other path as a WeChat
//! API call made on a client's behalf with the real token.
//!
//! ```text
//!  http1: keep-alive and header timeouts; each request read and answered by the gateway's
//!  own HTTP/1.1: one framing; here GET/POST only, one Host
//!    └─► resolve once (resolve.rs): plain path, client, scope, permission → a Route
//!          ├─► Own ────────────► /wxgate/* routes (crate::routes, through OwnRoutes)
//!          ├─► TokenEndpoint ──► answered from the cache (or 403), never forwarded
//!          ├─► Ticket ─────────► getticket, answered from the JS-SDK ticket cache
//!          └─► Api ────────────► token for the call (404 unknown or revoked), then upstream.rs:
//!                ├─ body ≤ replay_body_bytes: read first and kept; a small JSON answer is read
//!                │  whole, and on 40001/40014/42001 that token is replaced and the call replayed
//!                └─ larger body: streams through as it is sent, no replay
//! ```

mod access_log;
mod clients;
mod exchange;
pub mod jssdk;
mod resolve;
pub mod token_endpoints;
mod upstream;

pub use clients::Clients;
// Public for the fuzz targets (fuzz/), which call resolution directly.
pub use resolve::{client_from_headers, route as resolve, Route};
pub use upstream::{Upstream, UpstreamError};

use crate::config::ProxyConfig;
use crate::http1::{self, wire, Answers, H1Error, Session};
use crate::metrics;
use crate::quota::{Account, Admitted, QuotaGuard, QUOTA_REACHED};
use crate::reply::{read_body, BodyError, Reply};
use crate::tokens::{AccessToken, TokenService};
use crate::AppId;
use access_log::{AccessLog, CallCtx};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use resolve::{ApiCall, RouteKind, Scope, TokenCall};
use std::sync::Arc;
use upstream::Body;

/// A token endpoint's body is a few fields of JSON.
const TOKEN_ENDPOINT_BODY: usize = 4096;

/// The prefix of the gateway's own routes on the proxy listener.
pub const ROUTE_PREFIX: &str = "/wxgate/";

/// The gateway's own routes under [`ROUTE_PREFIX`] (WeChat's callbacks, the authorization
/// pages, tokens, the JS-SDK config): served by the layer above (`crate::routes`), which the
/// proxy knows only through this, once it has resolved a request as one of them.
#[async_trait::async_trait]
pub trait OwnRoutes: Send + Sync {
    async fn handle(&self, session: &mut Session<'_>, clients: &Clients) -> Reply;
}

/// The proxy listener's application: each request, read by the edge's own HTTP/1.1
/// ([`Session`]), is answered whole here, without pingora's proxy phases (whose per-request
/// machinery, a session of the proxy's own, a module context, boxed phase futures, cost about
/// a fifth of a call) or its server session.
pub struct Gateway {
    routes: Arc<dyn OwnRoutes>,
    tokens: Arc<TokenService>,
    /// Replaced whole by a config reload; each call reads the set current when it arrives.
    clients: Arc<ArcSwap<Clients>>,
    upstream: Arc<Upstream>,
    quota: Arc<QuotaGuard>,
    settings: ProxyConfig,
    component: AppId,
    /// `None` when `proxy.access_log` is off.
    access_log: Option<Arc<AccessLog>>,
}

impl Gateway {
    pub fn new(
        routes: Arc<dyn OwnRoutes>,
        tokens: Arc<TokenService>,
        clients: Arc<ArcSwap<Clients>>,
        upstream: Arc<Upstream>,
        quota: Arc<QuotaGuard>,
        settings: ProxyConfig,
    ) -> Self {
        let component = *tokens.component_appid();
        let access_log = settings.access_log.then(|| AccessLog::start(settings.access_log_format));
        Self { routes, tokens, clients, upstream, quota, settings, component, access_log }
    }

    /// Resolves the request once and answers it; the reply to write, if it is not written yet.
    async fn serve(&self, session: &mut Session<'_>, ctx: &mut CallCtx) -> Option<Reply> {
        let clients = self.clients.load_full();
        let route = match resolve::route(&clients, &self.component, session.req()) {
            Ok(route) => route,
            Err(e) => return Some(Reply::error(e.status(), e)),
        };
        ctx.kind = Some(route.kind());
        if self.access_log.is_some() {
            ctx.note(&route, session.req());
        }
        match route {
            // Boxed, as the other rare paths below: the future of every proxied call is as
            // large as its largest branch, and it is allocated and copied once per request.
            // Boxed by `async_trait`.
            Route::Own => Some(self.routes.handle(session, &clients).await),
            Route::TokenEndpoint(call) => Some(Box::pin(self.token_endpoint(session, &call)).await),
            Route::Ticket(call) => {
                let query = session.req().uri.query().unwrap_or_default();
                Some(Box::pin(jssdk::getticket(&self.tokens, &call.scope, query)).await)
            }
            Route::Api(call) => self.guarded_call(session, &call, ctx).await.err(),
        }
    }

    async fn token_endpoint(&self, session: &mut Session<'_>, call: &TokenCall<'_>) -> Reply {
        match read_body(session, TOKEN_ENDPOINT_BODY).await {
            Ok(body) => token_endpoints::answer(&self.tokens, call, &body).await,
            Err(e) => e.reply(),
        }
    }

    /// An API call the quota guard lets through, and what WeChat answered it told to the guard.
    /// A client without limits, while no pair is held, is not looked at further.
    async fn guarded_call(
        &self,
        session: &mut Session<'_>,
        call: &ApiCall<'_>,
        ctx: &mut CallCtx,
    ) -> Result<(), Reply> {
        let client = call.client.quota.as_deref();
        let account = match call.token {
            Scope::Authorizer(appid) => Account::Authorizer(appid),
            Scope::Component => Account::Component,
        };
        let admitted = match client.is_none() && !self.quota.holds_any() {
            true => Admitted::Free,
            // Boxed: the guard's future (a shared bucket's round trip) is the rare path.
            false => {
                let api = call.outbound.path();
                Box::pin(self.quota.admit(&call.client.name, client, account, api)).await.map_err(|r| r.reply())?
            }
        };
        let result = self.api_call(session, call, ctx).await;
        // Only a limited client's call, or WeChat's 45009, is the guard's business.
        if client.is_some() || ctx.errcode == Some(QUOTA_REACHED) {
            let api = call.outbound.path();
            self.quota.answered(client, admitted, account, api, ctx.wechat_status, ctx.errcode);
        }
        result
    }

    /// Sends an API call with the real token and passes the answer on. A body up to
    /// `replay_body_bytes` is read first and kept, so that the call can be replayed after a
    /// token error, and so that a body that cannot be read (malformed chunked encoding) is
    /// refused before anything goes out. A larger one streams through.
    async fn api_call(&self, session: &mut Session<'_>, call: &ApiCall<'_>, ctx: &mut CallCtx) -> Result<(), Reply> {
        let declared = content_length(session.req());
        let max = self.settings.max_body_bytes;
        if declared.is_some_and(|n| n > max) {
            return Err(BodyError::TooLarge(max).reply());
        }
        let token = self.token_for(&call.token).await.map_err(|e| Reply::error(e.status(), e))?;
        let chunked = session.req().headers.contains_key(http::header::TRANSFER_ENCODING);
        let replay = self.settings.replay_body_bytes;
        let (kept, whole) = match (chunked, declared.unwrap_or(0)) {
            (false, 0) => (Bytes::new(), true),
            (false, n) if n > replay => (Bytes::new(), false),
            _ => read_kept(session, replay).await.map_err(|e| e.reply())?,
        };
        if whole {
            return self.replayable(session, call, token, kept, ctx).await;
        }
        let length = if chunked { None } else { declared };
        // Boxed: a large body is the rare case, and its future would make every call's larger.
        Box::pin(self.streamed(session, call, &token, kept, length, ctx)).await
    }

    /// A call whose body streams through from the client as it is sent: `kept` was read
    /// already, and the whole is `length` bytes (chunked without one). It is not replayed.
    async fn streamed(
        &self,
        session: &mut Session<'_>,
        call: &ApiCall<'_>,
        token: &AccessToken,
        kept: Bytes,
        length: Option<usize>,
        ctx: &mut CallCtx,
    ) -> Result<(), Reply> {
        let client_req = session.req().clone();
        let limit = self.settings.max_body_bytes;
        let mut body = Body::Streamed { kept, from: session, length, limit };
        let answer = self.upstream.send(&client_req, &call.outbound, token.value.expose(), &mut body).await;
        drop(body);
        let mut answer = answer.map_err(|f| f.reply())?;
        ctx.answered(&answer);
        ctx.wechat_status = answer.header().status.as_u16();
        exchange::stream_to(session, &mut answer).await.map_err(|e| downstream_gone(&e))
    }

    async fn token_for(&self, scope: &Scope) -> std::result::Result<Arc<AccessToken>, crate::tokens::TokenError> {
        match scope {
            Scope::Authorizer(appid) => self.tokens.authorizers().token(appid).await,
            Scope::Component => self.tokens.component().token().await,
        }
    }

    async fn replace_token(
        &self,
        scope: &Scope,
        failed: &AccessToken,
    ) -> std::result::Result<Arc<AccessToken>, crate::tokens::TokenError> {
        match scope {
            Scope::Authorizer(appid) => self.tokens.authorizers().replace(appid, &failed.value).await,
            Scope::Component => self.tokens.component().replace(&failed.value).await,
        }
    }

    /// The call with its body kept: sent, and replayed once with a new token if WeChat refuses
    /// the one it got.
    async fn replayable(
        &self,
        session: &mut Session<'_>,
        call: &ApiCall<'_>,
        mut token: Arc<AccessToken>,
        body: Bytes,
        ctx: &mut CallCtx,
    ) -> Result<(), Reply> {
        let mut replayed = false;
        loop {
            let answer = self
                .upstream
                .send(session.req(), &call.outbound, token.value.expose(), &mut Body::Whole(body.clone()))
                .await;
            let mut answer = answer.map_err(|f| f.reply())?;
            ctx.answered(&answer);
            ctx.wechat_status = answer.header().status.as_u16();
            if !exchange::inspectable(answer.header()) {
                return exchange::stream_to(session, &mut answer).await.map_err(|e| downstream_gone(&e));
            }
            let whole = exchange::read_whole(&mut answer).await.map_err(|f| f.reply())?;
            let errcode = exchange::errcode(&whole);
            metrics::count_wechat_errcode(errcode);
            ctx.errcode = errcode;
            if !replayed && exchange::is_token_error(errcode) {
                drop(answer);
                metrics::TOKEN_RETRY.inc();
                tracing::info!(
                    scope = call.scope.label(),
                    "WeChat refused the token; replacing it and replaying the call once"
                );
                token =
                    Box::pin(self.replace_token(&call.token, &token)).await.map_err(|e| Reply::error(e.status(), e))?;
                replayed = true;
                ctx.retried = true;
                continue;
            }
            let header = upstream::downstream_header(answer.into_header(), Some(whole.len()));
            return session.answer_whole(&header, whole).await.map_err(|e| downstream_gone(&e));
        }
    }
}

/// Reads the request body up to `limit` bytes: all of it (`true`), or, for a larger one, what
/// was read when it passed the limit (`false`): the rest then streams.
async fn read_kept(client: &mut Session<'_>, limit: usize) -> std::result::Result<(Bytes, bool), BodyError> {
    let mut kept = BytesMut::new();
    while let Some(chunk) = client.body_piece().await.map_err(|_| BodyError::Read)? {
        kept.extend_from_slice(&chunk);
        if kept.len() > limit {
            return Ok((kept.freeze(), false));
        }
    }
    Ok((kept.freeze(), true))
}

fn downstream_gone(e: &H1Error) -> Reply {
    // The answer was cut short (the client went away, or WeChat's side broke mid-stream);
    // nothing more can be written, and this reply is not sent.
    tracing::debug!(error = %e, "the answer to the client was cut short");
    Reply::error(502, "the answer was cut short")
}

/// The request's length; the edge refused a request whose length is not one number.
fn content_length(req: &http::request::Parts) -> Option<usize> {
    wire::content_length(&req.headers).ok().flatten()
}

impl Answers for Gateway {
    fn answer(&self, session: &mut Session<'_>) -> impl std::future::Future<Output = ()> + Send {
        self.handle(session)
    }
}

impl Gateway {
    fn new_ctx(&self) -> CallCtx {
        CallCtx::new(self.access_log.is_some())
    }

    /// One request whose head was read: answered and logged. A connection whose answer was
    /// cut short is not reused.
    pub async fn handle(&self, session: &mut Session<'_>) {
        let mut ctx = self.new_ctx();
        let answered = self.answer(session, &mut ctx).await;
        self.log(session, &ctx);
        if let Err(e) = answered {
            tracing::debug!(error = %e, "the answer to the client was cut short");
            session.close_after();
        }
    }

    /// Answers the request whose head was read; an error when the answer was cut short.
    async fn answer(&self, session: &mut Session<'_>, ctx: &mut CallCtx) -> Result<(), H1Error> {
        let reply = match check_request(session.req()) {
            Ok(()) => self.serve(session, ctx).await,
            Err(reply) => {
                // Whatever body may follow is not read: the connection is not reused.
                session.close_after();
                Some(reply)
            }
        };
        match reply {
            Some(reply) if session.answered().is_none() => session.reply(reply).await,
            _ => Ok(()),
        }
    }

    fn log(&self, session: &Session<'_>, ctx: &CallCtx) {
        let status = session.answered().map_or(0, |s| s.as_u16());
        if ctx.kind != Some(RouteKind::Own) {
            metrics::count_request(RouteKind::label(ctx.kind), status);
        }
        if let Some(log) = &self.access_log {
            ctx.write(log, session.req(), status);
        }
    }
}

/// What the proxy listener refuses before anything is resolved or forwarded: methods WeChat's API does
/// not use (TRACE would echo the injected token back; methods are case-sensitive, so `get` is
/// not GET), and an HTTP/1.1 request without one Host that is a host (RFC 9112 §3.2). A request
/// framed two ways is refused as its head is read ([`Session::read`]).
fn check_request(req: &http::request::Parts) -> Result<(), Reply> {
    if req.method != http::Method::GET && req.method != http::Method::POST {
        return Err(Reply::error(405, "only GET and POST are taken"));
    }
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version == http::Version::HTTP_11 => {
            Err(Reply::error(400, "an HTTP/1.1 request needs a Host header"))
        }
        (Some(_), Some(_)) => Err(Reply::error(400, "more than one Host header")),
        (Some(host), None) if !http1::is_host(host.as_bytes()) => Err(Reply::error(400, "the Host is not a host")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, found without calling it.
    fn future_size<A, F: std::future::Future>(_f: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_requests_future_stays_small() {
        // pingora's HttpServerApp is an async_trait: each request's future is allocated and
        // copied whole, at the size of its largest branch. It was 12 KiB while a connect's
        // future (8 KiB, for the rare new connection) was inline in it, 3.2 KiB with pingora's
        // client session, 1.7 KiB since. A branch that grows it belongs in a Box of its own,
        // as the connect, refreshes, the streamed body and the gateway's own routes are.
        type Args = (&'static Gateway, &'static mut Session<'static>, &'static mut CallCtx);
        let size = future_size(|(gateway, session, ctx): Args| gateway.answer(session, ctx));
        assert!(size <= 2048, "Gateway::answer's future is {size} bytes");
    }
}
