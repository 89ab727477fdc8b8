//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the bearer-protected `/admin/*` API.
//!
//! It reads the token service and may ask it for a refresh; it never shows a token. It lists
//! the outbox and may ask it for a redelivery; it never shows a message's content.

mod console;
mod info;
mod messages;
mod quota;
mod routes;
mod shapes;

use crate::authorize::AuthorizeLinks;
use crate::messages::outbox::Outbox;
use crate::reply::Reply;
use crate::tokens::TokenService;
use crate::wechat::QuotaApi;
use crate::Secret;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;
use std::sync::Arc;

pub struct AdminApp {
    tokens: Arc<TokenService>,
    links: AuthorizeLinks,
    /// `admin.token`, replaced by a config reload.
    token: Arc<ArcSwap<Secret>>,
    quota: Arc<dyn QuotaApi>,
    /// The outbox behind `/admin/messages`.
    outbox: Option<Arc<Outbox>>,
}

impl AdminApp {
    pub fn new(
        tokens: Arc<TokenService>,
        links: AuthorizeLinks,
        token: Arc<ArcSwap<Secret>>,
        quota: Arc<dyn QuotaApi>,
    ) -> Self {
        Self { tokens, links, token, quota, outbox: None }
    }

    pub fn with_outbox(self, outbox: Arc<Outbox>) -> Self {
        Self { outbox: Some(outbox), ..self }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let presented =
            session.get_header(http::header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        presented.is_some_and(|p| self.token.load().ct_eq(p))
    }

    async fn readyz(&self) -> Reply {
        match self.tokens.not_ready_reason().await {
            None => Reply::text(200, "ready\n"),
            Some(reason) => Reply::text(503, format!("not ready: {reason}\n")),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let reply = match (&method, path.as_str()) {
            (&http::Method::GET, "/metrics") => {
                self.tokens.update_gauges();
                return PrometheusHttpApp.response(session).await;
            }
            (&http::Method::GET, p) if console::is_asset(p) => return console::asset(p),
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
        };
        reply.into_response()
    }
}
