//! The `/admin/*` routes, once the bearer token has been checked.

use super::AdminApp;
use crate::authorize::{parse_redirect, Links};
use crate::http1::Session;
use crate::reply::{read_body, Reply};
use crate::tokens::TokenError;
use crate::wechat::ApiErrorKind;
use crate::{AppId, Secret};
use http::Method;
use serde_json::json;

/// An import body is one refresh token; anything bigger is not one.
const MAX_ADMIN_BODY: usize = 4096;
const DEFAULT_PAGE: usize = 1000;

pub(super) async fn handle(app: &AdminApp, session: &mut Session<'_>, method: &Method, path: &str) -> Reply {
    let query = session.req().uri.query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    match (method, segments.as_slice()) {
        (_, ["component", ..]) if !app.tokens.has_platform() => {
            Reply::error(404, "no third-party platform is configured ([component])")
        }
        (&Method::GET, ["component"]) => Reply::json(200, &super::shapes::component(&app.tokens.component().status())),
        (_, ["accounts", rest @ ..]) => super::accounts::handle(app, method, rest).await,
        (_, ["releases", rest @ ..]) => super::releases::handle(app, session, method, rest).await,
        (&Method::GET, ["authorizers"]) => list(app, &query).await,
        (&Method::GET, ["authorize-url"]) => authorize_url(app, &query).await,
        (&Method::POST, ["reconcile"]) => super::info::reconcile(app).await,
        (&Method::POST, ["component", "clear-quota"]) => super::quota::clear_component(app).await,
        (&Method::GET, ["quota"]) => match &app.guard {
            Some(guard) => Reply::json(200, &super::shapes::quota(&guard.status())),
            None => Reply::error(404, "no quota guard runs here"),
        },
        (_, ["messages", rest @ ..]) => super::messages::handle(app, method, rest, &query).await,
        (&Method::GET, ["events"]) => match app.tokens.events().pending().await {
            Ok(events) => Reply::json(200, &super::shapes::pending_events(&events)),
            Err(e) => Reply::error(e.status(), e),
        },
        (&Method::GET, ["authorize-qr"]) => authorize_qr(app, &query).await,
        (_, ["authorizers", appid, rest @ ..]) => match AppId::parse(appid) {
            Ok(appid) => authorizer(app, session, method, &appid, rest).await,
            Err(e) => Reply::error(400, e),
        },
        _ => Reply::error(404, "no such admin route"),
    }
}

async fn authorizer(app: &AdminApp, session: &mut Session<'_>, method: &Method, appid: &AppId, rest: &[&str]) -> Reply {
    match (method, rest) {
        (&Method::GET, []) => super::info::one(app, appid).await,
        (&Method::GET, ["quota"]) => super::quota::get(app, appid, session.req().uri.query().unwrap_or_default()).await,
        (&Method::POST, ["clear-quota"]) => super::quota::clear_authorizer(app, appid).await,
        (&Method::PUT, []) => import(app, session, appid).await,
        (&Method::DELETE, []) => match app.tokens.forget_authorizer(appid).await {
            Ok(true) => Reply::json(200, &json!({ "deleted": appid.as_str() })),
            Ok(false) => Reply::error(404, "unknown authorizer"),
            Err(e) => Reply::error(e.status(), e),
        },
        (&Method::POST, ["refresh"]) => match app.tokens.authorizers().refresh_now(appid).await {
            Ok(status) => Reply::json(200, &super::shapes::authorizer(&status)),
            Err(e) => Reply::error(e.status(), e),
        },
        _ => Reply::error(404, "no such admin route"),
    }
}

/// `?offset=N&limit=N` pages through every authorizer by appid, with each one's info; `q=TEXT`
/// keeps those whose appid or account names contain it (ignoring case, from the index in
/// memory: `tokens/search.rs`), and `total` counts those.
async fn list(app: &AdminApp, query: &str) -> Reply {
    let text = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<usize>().ok());
    let (offset, limit) = (number("offset").unwrap_or(0), number("limit").unwrap_or(DEFAULT_PAGE).min(10_000));
    let q = text("q").map(|q| q.trim().to_lowercase()).unwrap_or_default();
    if q.is_empty() {
        return super::info::page(app, offset, limit).await;
    }
    super::info::found(app, &q, offset, limit).await
}

/// Imports an authorizer by its refresh token. WeChat is asked first; a token it refuses is
/// the caller's mistake (400) and nothing is stored.
async fn import(app: &AdminApp, session: &mut Session<'_>, appid: &AppId) -> Reply {
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
    match app.tokens.grants().import(appid, refresh_token).await {
        Ok(status) => {
            tracing::info!(authorizer = %appid, "authorizer imported");
            Reply::json(200, &super::shapes::authorizer(&status))
        }
        Err(TokenError::Wechat(e))
            if matches!(e.kind(), Some(ApiErrorKind::RefreshTokenInvalid | ApiErrorKind::NotAuthorized)) =>
        {
            Reply::error(400, format!("WeChat refused the refresh token: {e}"))
        }
        Err(e) => Reply::error(e.status(), e),
    }
}

/// Both links with fresh pre_auth_codes, and the mobile link's QR code as SVG text.
async fn authorize_url(app: &AdminApp, query: &str) -> Reply {
    match fresh_links(app, query).await {
        Ok(links) => {
            let qr = super::console::qr_svg(&links.mobile_url);
            Reply::json(200, &json!({ "pc_url": links.pc_url, "mobile_url": links.mobile_url, "mobile_qr_svg": qr }))
        }
        Err(reply) => reply,
    }
}

/// `GET /admin/authorize-qr?redirect=URL`: the QR code of a fresh mobile link alone, as SVG.
async fn authorize_qr(app: &AdminApp, query: &str) -> Reply {
    match fresh_links(app, query).await.map(|links| super::console::qr_svg(&links.mobile_url)) {
        Ok(Some(svg)) => Reply { content_type: "image/svg+xml", ..Reply::text(200, svg) },
        Ok(None) => Reply::error(500, "the mobile link does not fit in a QR code"),
        Err(reply) => reply,
    }
}

async fn fresh_links(app: &AdminApp, query: &str) -> Result<Links, Reply> {
    let redirect =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "redirect").map(|(_, v)| v.into_owned());
    let redirect = parse_redirect(redirect.as_deref()).map_err(|e| Reply::error(400, e))?;
    app.links.fresh(&app.tokens, redirect.as_ref()).await.map_err(|e| Reply::error(e.status(), e))
}
