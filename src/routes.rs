//! The gateway's own routes on the proxy listener, under `/wxgate/`: WeChat's callbacks, the
//! authorization pages, tokens for `reveal_tokens` clients and the JS-SDK config. The proxy
//! resolves every request and hands these here through [`crate::proxy::OwnRoutes`], so that it
//! knows nothing of the callbacks, the messages or the authorization flow.

use crate::authorize::{done_page, done_redirect, error_page, parse_redirect, start_page, AuthorizeLinks};
use crate::callback::{AccountReceiver, Admission, CallbackError, ComponentReceiver, PushAnswer, MAX_BODY_BYTES};
use crate::http1::Session;
use crate::metrics;
use crate::proxy::{client_from_headers, jssdk, token_endpoints, Clients, OwnRoutes, ROUTE_PREFIX};
use crate::reply::{read_body, BodyError, Reply};
use crate::tokens::TokenService;
use async_trait::async_trait;
use http::Method;
use std::sync::Arc;

pub struct GatewayRoutes {
    /// The authorization-event URL; `None` without a platform.
    pub callback: Option<ComponentReceiver>,
    /// The message-and-event URL, `callback/{appid}`: authorizers' and owned accounts' pushes.
    pub accounts: AccountReceiver,
    /// Both push URLs' pushes in flight, bounded by what the store commits in time.
    pub admission: Admission,
    pub tokens: Arc<TokenService>,
    pub links: AuthorizeLinks,
}

#[async_trait]
impl OwnRoutes for GatewayRoutes {
    async fn handle(&self, session: &mut Session<'_>, clients: &Clients) -> Reply {
        let req = session.req();
        let (method, path) = (req.method.clone(), req.uri.path().to_owned());
        let query = req.uri.query().unwrap_or_default().to_owned();
        match (&method, path.strip_prefix(ROUTE_PREFIX).unwrap_or_default()) {
            (_, "callback/component" | "authorize" | "authorize/done") if self.callback.is_none() => {
                Reply::error(404, "no third-party platform is configured ([component])")
            }
            (&Method::POST, "callback/component") => self.component_callback(session, &query).await,
            (_, "callback/component") => Reply::error(405, "the authorization-event URL takes POST"),
            (&Method::POST, p) if p.starts_with("callback/") => {
                let appid = p["callback/".len()..].to_owned();
                self.account_callback(session, &appid, &query).await
            }
            (&Method::GET, p) if p.starts_with("callback/") => self.check_url(&p["callback/".len()..], &query),
            (_, p) if p.starts_with("callback/") => {
                Reply::error(405, "the message URL takes POST (and GET for WeChat's URL check)")
            }
            (&Method::GET, "authorize") => self.authorize_page(&query).await,
            (&Method::GET, "authorize/done") => self.authorize_done(&query).await,
            (&Method::GET, p) if p.starts_with("token/") => match client_from_headers(clients, session.req()) {
                Ok(client) => token_endpoints::raw(&self.tokens, client, &p["token/".len()..]).await,
                Err(e) => Reply::error(e.status(), e),
            },
            (m, p) if p.starts_with("jssdk/") => {
                jssdk::config(session, clients, &self.tokens, m, &p["jssdk/".len()..]).await
            }
            _ => Reply::error(404, "no such route"),
        }
    }
}

impl GatewayRoutes {
    /// WeChat's authorization-event push: `success` once it is verified and durable.
    async fn component_callback(&self, session: &mut Session<'_>, query: &str) -> Reply {
        let Some(_admitted) = self.admission.admit() else { return overloaded() };
        let body = match read_body(session, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => {
                let reason = if matches!(e, BodyError::TooLarge(_)) { "too_large" } else { "read" };
                metrics::CALLBACK_REJECTED.with_label_values(&[reason]).inc();
                tracing::warn!(reason, "authorization event refused");
                return e.reply();
            }
        };
        let Some(callback) = &self.callback else {
            return Reply::error(404, "no third-party platform is configured ([component])");
        };
        match callback.receive(query, &body).await {
            Ok(received) => {
                tracing::info!(info_type = %received.info_type, new = received.new, "authorization event accepted");
                Reply::text(200, "success")
            }
            Err(e) if e.status() >= 500 => {
                tracing::error!(error = %e, "authorization event could not be recorded; WeChat will retry");
                Reply::error(e.status(), "the event could not be recorded")
            }
            Err(e) => {
                tracing::warn!(reason = e.reason(), error = %e, "authorization event refused");
                Reply::error(e.status(), format!("callback refused: {e}"))
            }
        }
    }

    /// A message or event of an authorized account: `success`, or an encrypted passive reply.
    async fn account_callback(&self, session: &mut Session<'_>, appid: &str, query: &str) -> Reply {
        let Ok(authorizer) = crate::AppId::parse(appid) else {
            metrics::CALLBACK_REJECTED.with_label_values(&["appid"]).inc();
            return Reply::error(404, "the message URL is /wxgate/callback/$APPID$ with an account's appid");
        };
        let Some(_admitted) = self.admission.admit() else { return overloaded() };
        let body = match read_body(session, MAX_BODY_BYTES).await {
            Ok(body) => body,
            Err(e) => {
                let reason = if matches!(e, BodyError::TooLarge(_)) { "too_large" } else { "read" };
                metrics::CALLBACK_REJECTED.with_label_values(&[reason]).inc();
                tracing::warn!(reason, authorizer = %authorizer, "message push refused");
                return e.reply();
            }
        };
        match self.accounts.receive(authorizer, query, &body).await {
            Ok(PushAnswer::Success) => Reply::text(200, "success"),
            Ok(PushAnswer::Xml(xml)) => Reply::xml(200, xml),
            Err(e) if e.status() >= 500 => {
                tracing::error!(authorizer = %authorizer, error = %e, "message could not be recorded; WeChat will retry");
                Reply::error(e.status(), "the message could not be recorded")
            }
            Err(e) => {
                tracing::warn!(authorizer = %authorizer, reason = e.reason(), error = %e, "message push refused");
                Reply::error(e.status(), format!("callback refused: {e}"))
            }
        }
    }

    /// WeChat's check of an owned account's server URL (服务器配置): `echostr` back when the
    /// signature holds, else 403.
    fn check_url(&self, appid: &str, query: &str) -> Reply {
        let checked = crate::AppId::parse(appid)
            .map_err(|_| CallbackError::UnknownAccount)
            .and_then(|appid| self.accounts.check_url(appid, query));
        match checked {
            Ok(echostr) => Reply::text(200, echostr),
            // Only an owned account's own server is checked this way.
            Err(CallbackError::UnknownAccount) => Reply::error(405, "the message URL takes POST"),
            Err(e) => {
                metrics::CALLBACK_REJECTED.with_label_values(&[e.reason()]).inc();
                tracing::warn!(reason = e.reason(), error = %e, "server URL check refused");
                Reply::error(403, format!("URL check refused: {e}"))
            }
        }
    }

    /// The start page, with fresh links each time it is shown.
    async fn authorize_page(&self, query: &str) -> Reply {
        let redirect = match parse_redirect(param(query, "redirect").as_deref()) {
            Ok(r) => r,
            Err(e) => return Reply::html(400, error_page(e)),
        };
        match self.links.fresh(&self.tokens, redirect.as_ref()).await {
            Ok(links) => Reply::html(200, start_page(&links)),
            Err(e) => {
                tracing::warn!(error = %e, "could not make authorization links");
                Reply::html(503, error_page("The gateway cannot reach WeChat right now; try again in a minute."))
            }
        }
    }

    /// WeChat's `redirect_uri`: exchange the code, then show success or go back to the app.
    async fn authorize_done(&self, query: &str) -> Reply {
        let Some(code) = param(query, "auth_code").filter(|c| !c.is_empty()) else {
            return Reply::html(400, error_page("The link has no auth_code: start the authorization again."));
        };
        let redirect = match parse_redirect(param(query, "redirect").as_deref()) {
            Ok(r) => r,
            Err(e) => return Reply::html(400, error_page(e)),
        };
        match self.tokens.grants().authorize(&code).await {
            Ok(appid) => match redirect {
                Some(app) => Reply::redirect(done_redirect(&app, &appid)),
                None => Reply::html(200, done_page(&appid)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "authorization code exchange failed");
                let status = e.status();
                Reply::html(status, error_page(&format!("WeChat did not accept the authorization: {e}")))
            }
        }
    }
}

/// A push past what the gateway commits in time: refused at once, so that WeChat's retry finds
/// room (its body, unread, is dropped with the session). Counted, not logged: at the rates that
/// bring this on, a line per push would be the next overload.
fn overloaded() -> Reply {
    metrics::CALLBACK_REJECTED.with_label_values(&["overload"]).inc();
    Reply::error(503, "the gateway is at capacity; WeChat retries the push").with_retry_after(1)
}

fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}
