//! The admin listener: `/metrics`, `/healthz`, `/readyz` and the bearer-protected `/admin/*` API.

use crate::reply::Reply;
use crate::tokens::TokenService;
use crate::Secret;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;
use serde_json::json;
use std::sync::Arc;

pub struct AdminApp {
    tokens: Arc<TokenService>,
    token: Secret,
}

impl AdminApp {
    pub fn new(tokens: Arc<TokenService>, token: Secret) -> Self {
        Self { tokens, token }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let presented = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        presented.is_some_and(|p| self.token.ct_eq(p))
    }

    async fn readyz(&self) -> Reply {
        match self.tokens.not_ready_reason().await {
            None => Reply::text(200, "ready\n"),
            Some(reason) => Reply::text(503, format!("not ready: {reason}\n")),
        }
    }

    fn component(&self) -> Reply {
        let ticket = self.tokens.ticket_status();
        Reply::json(
            200,
            &json!({
                "component_appid": self.tokens.component().as_str(),
                "store": self.tokens.store_backend(),
                "ticket": ticket.map(|t| json!({
                    "create_time": t.create_time,
                    "received_at": t.received_at,
                    "age_secs": self.tokens.ticket_age_secs(),
                })),
                "component_token": null,
            }),
        )
    }

    async fn admin(&self, session: &ServerSession, method: &http::Method, path: &str) -> Reply {
        if !self.authorized(session) {
            return Reply::error(401, "admin routes need Authorization: Bearer <admin.token>");
        }
        match (method, path) {
            (&http::Method::GET, "/admin/component") => self.component(),
            _ => Reply::error(404, "no such admin route"),
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
                self.tokens.update_ticket_age();
                return PrometheusHttpApp.response(session).await;
            }
            (&http::Method::GET, "/healthz") => Reply::text(200, "ok\n"),
            (&http::Method::GET, "/readyz") => self.readyz().await,
            (_, p) if p.starts_with("/admin/") => self.admin(session, &method, p).await,
            _ => Reply::error(404, "no such route"),
        };
        reply.into_response()
    }
}
