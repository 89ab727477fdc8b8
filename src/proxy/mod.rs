//! The proxy listener: the gateway's own `/wxgate/*` routes and, for every other path, the
//! WeChat API proxy.
//!
//! ```text
//!  request ──► request_filter ──► /wxgate/* ? ──yes──► routes::handle ──► reply (no upstream)
//!                                      │
//!                                      no ──► (API proxy: resolve client, scope, token — issue 4)
//! ```

mod routes;

use crate::reply::Reply;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::Arc;

pub use routes::{OwnRoutes, ROUTE_PREFIX};

/// The `ProxyHttp` of the proxy listener.
pub struct Gateway {
    routes: Arc<OwnRoutes>,
}

impl Gateway {
    pub fn new(routes: Arc<OwnRoutes>) -> Self {
        Self { routes }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        let reply = if session.req_header().uri.path().starts_with(ROUTE_PREFIX) {
            self.routes.handle(session).await
        } else {
            Reply::error(404, "API proxying is not enabled in this version")
        };
        reply.write_to(session.as_downstream_mut()).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        // request_filter answers every request itself until the API proxy exists.
        Err(Error::explain(ErrorType::InternalError, "no upstream for this request"))
    }
}
