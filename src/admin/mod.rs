//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the bearer-protected `/admin/*` API.
//!
//! It reads the token service and may ask it for a refresh; it never shows a token. It lists
//! the outbox and may ask it for a redelivery; it never shows a message's content.

mod accounts;
mod console;
mod info;
mod messages;
mod quota;
mod releases;
mod routes;
mod shapes;

use crate::authorize::AuthorizeLinks;
use crate::http1::{Answers, Session};
use crate::messages::outbox::Outbox;
use crate::quota::QuotaGuard;
use crate::reply::Reply;
use crate::tokens::TokenService;
use crate::wechat::QuotaApi;
use crate::Secret;
use arc_swap::ArcSwap;
use std::sync::Arc;

pub struct AdminApp {
    tokens: Arc<TokenService>,
    links: AuthorizeLinks,
    /// `admin.token`, replaced by a config reload.
    token: Arc<ArcSwap<Secret>>,
    quota: Arc<dyn QuotaApi>,
    /// The outbox behind `/admin/messages`.
    outbox: Option<Arc<Outbox>>,
    /// The quota guard behind `/admin/quota`, told of cleared quotas.
    guard: Option<Arc<QuotaGuard>>,
    /// The release jobs behind `/admin/releases`.
    releases: Option<Arc<crate::releases::Releases>>,
}

impl AdminApp {
    pub fn new(
        tokens: Arc<TokenService>,
        links: AuthorizeLinks,
        token: Arc<ArcSwap<Secret>>,
        quota: Arc<dyn QuotaApi>,
    ) -> Self {
        Self { tokens, links, token, quota, outbox: None, guard: None, releases: None }
    }

    pub fn with_releases(self, releases: Arc<crate::releases::Releases>) -> Self {
        Self { releases: Some(releases), ..self }
    }

    pub fn with_guard(self, guard: Arc<QuotaGuard>) -> Self {
        Self { guard: Some(guard), ..self }
    }

    pub fn with_outbox(self, outbox: Arc<Outbox>) -> Self {
        Self { outbox: Some(outbox), ..self }
    }

    fn authorized(&self, session: &Session<'_>) -> bool {
        let presented =
            session.req().headers.get(http::header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        presented.is_some_and(|p| self.token.load().ct_eq(p))
    }

    async fn readyz(&self) -> Reply {
        match self.tokens.not_ready_reason().await {
            None => Reply::text(200, "ready\n"),
            Some(reason) => Reply::text(503, format!("not ready: {reason}\n")),
        }
    }
}

impl AdminApp {
    async fn route(&self, session: &mut Session<'_>) -> Reply {
        let method = session.req().method.clone();
        let path = session.req().uri.path().to_owned();
        match (&method, path.as_str()) {
            (&http::Method::GET, "/metrics") => {
                self.tokens.update_gauges();
                metrics_text()
            }
            (&http::Method::GET, p) if console::is_asset(p) => console::asset(p),
            (&http::Method::GET, "/healthz") => Reply::text(200, "ok\n"),
            (&http::Method::GET, "/readyz") => self.readyz().await,
            (_, p) if p.starts_with("/admin/") => {
                if self.authorized(session) {
                    routes::handle(self, session, &method, &path).await
                } else {
                    Reply::error(401, "admin routes need Authorization: Bearer <admin.token>")
                }
            }
            _ => Reply::error(404, "no such route"),
        }
    }
}

/// The admin listener is served by the same HTTP/1.1 as the proxy listener (`proxy::Edge`).
impl Answers for AdminApp {
    async fn answer(&self, session: &mut Session<'_>) {
        let reply = self.route(session).await;
        if session.answered().is_none() && session.reply(reply).await.is_err() {
            session.close_after();
        }
    }
}

/// Every registered metric in Prometheus's text format.
fn metrics_text() -> Reply {
    let mut body = Vec::new();
    if let Err(e) = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &prometheus::gather(), &mut body) {
        tracing::error!(error = %e, "metrics could not be encoded");
        return Reply::error(500, "metrics could not be encoded");
    }
    Reply { content_type: "text/plain; version=0.0.4", body: body.into(), ..Reply::text(200, "") }
}
