//! The `/admin/*` routes, once the bearer token has been checked.

use super::AdminApp;
use crate::authorize::parse_redirect;
use crate::reply::{read_body, token_error, Reply};
use crate::tokens::TokenError;
use crate::wechat::ApiErrorKind;
use crate::{AppId, Secret};
use http::Method;
use pingora::protocols::http::ServerSession;
use serde_json::json;

/// An import body is one refresh token; anything bigger is not one.
const MAX_ADMIN_BODY: usize = 4096;
const DEFAULT_PAGE: usize = 1000;

pub(super) async fn handle(app: &AdminApp, session: &mut ServerSession, method: &Method, path: &str) -> Reply {
    let query = session.req_header().uri.query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["component"]) => Reply::json(200, &json!(app.tokens.component_status())),
        (&Method::GET, ["authorizers"]) => list(app, &query),
        (&Method::GET, ["authorize-url"]) => authorize_url(app, &query).await,
        (_, ["messages", rest @ ..]) => super::messages::handle(app, method, rest, &query).await,
        (_, ["authorizers", appid, rest @ ..]) => match AppId::parse(appid) {
            Ok(appid) => authorizer(app, session, method, &appid, rest).await,
            Err(e) => Reply::error(400, e),
        },
        _ => Reply::error(404, "no such admin route"),
    }
}

async fn authorizer(
    app: &AdminApp,
    session: &mut ServerSession,
    method: &Method,
    appid: &AppId,
    rest: &[&str],
) -> Reply {
    match (method, rest) {
        (&Method::GET, []) => match app.tokens.authorizer_status(appid) {
            Some(status) => Reply::json(200, &json!(status)),
            None => Reply::error(404, "unknown authorizer"),
        },
        (&Method::PUT, []) => import(app, session, appid).await,
        (&Method::DELETE, []) => match app.tokens.forget_authorizer(appid).await {
            Ok(true) => Reply::json(200, &json!({ "deleted": appid.as_str() })),
            Ok(false) => Reply::error(404, "unknown authorizer"),
            Err(e) => token_error(&e),
        },
        (&Method::POST, ["refresh"]) => match app.tokens.refresh_now(appid).await {
            Ok(status) => Reply::json(200, &json!(status)),
            Err(e) => token_error(&e),
        },
        _ => Reply::error(404, "no such admin route"),
    }
}

fn list(app: &AdminApp, query: &str) -> Reply {
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let (offset, limit) = (param("offset").unwrap_or(0), param("limit").unwrap_or(DEFAULT_PAGE).min(10_000));
    let (total, page) = app.tokens.authorizer_statuses(offset, limit);
    Reply::json(200, &json!({ "total": total, "offset": offset, "authorizers": page }))
}

/// Imports an authorizer by its refresh token. WeChat is asked first; a token it refuses is
/// the caller's mistake (400) and nothing is stored.
async fn import(app: &AdminApp, session: &mut ServerSession, appid: &AppId) -> Reply {
    let body = match read_body(session, MAX_ADMIN_BODY).await {
        Ok(body) => body,
        Err(e) => return e.reply(),
    };
    let refresh_token = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => v.get("refresh_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()).map(Secret::new),
        Err(_) => None,
    };
    let Some(refresh_token) = refresh_token else {
        return Reply::error(400, "the body must be JSON: {\"refresh_token\": \"...\"}");
    };
    match app.tokens.import_authorizer(appid, refresh_token).await {
        Ok(status) => {
            tracing::info!(authorizer = %appid, "authorizer imported");
            Reply::json(200, &json!(status))
        }
        Err(TokenError::Wechat(e))
            if matches!(e.kind(), Some(ApiErrorKind::RefreshTokenInvalid | ApiErrorKind::NotAuthorized)) =>
        {
            Reply::error(400, format!("WeChat refused the refresh token: {e}"))
        }
        Err(e) => token_error(&e),
    }
}

async fn authorize_url(app: &AdminApp, query: &str) -> Reply {
    let redirect =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "redirect").map(|(_, v)| v.into_owned());
    let redirect = match parse_redirect(redirect.as_deref()) {
        Ok(r) => r,
        Err(e) => return Reply::error(400, e),
    };
    match app.links.fresh(&app.tokens, redirect.as_ref()).await {
        Ok(links) => Reply::json(200, &json!(links)),
        Err(e) => token_error(&e),
    }
}
