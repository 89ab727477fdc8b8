//! The browser side of authorization: WeChat's consent page stand-in and the redirect back.
//!
//! `GET /cgi-bin/componentloginpage` and `GET /safe/bindcomponent` check the link as WeChat would
//! and show a page whose button goes to `GET /sandbox/consent`, which authorizes, pushes
//! `authorized` and sends the browser to `redirect_uri?auth_code=..&expires_in=600`.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use tokio::time::Instant;

use super::config::DEMO_AUTHORIZER_APPID;
use super::ledger::CODE_LIFETIME;
use super::server::query_param;
use super::Sandbox;
use crate::appid::AppId;

pub(super) fn login(sandbox: &Sandbox, req: Request) -> Response {
    if req.method() != Method::GET {
        return error_page(StatusCode::METHOD_NOT_ALLOWED, "the authorization page is opened with GET");
    }
    let query = req.uri().query().unwrap_or_default();
    let param = |name| query_param(query, name).unwrap_or_default();
    let (appid, pre_auth, redirect) = (param("component_appid"), param("pre_auth_code"), param("redirect_uri"));
    if appid != sandbox.inner.config.component_appid.as_str() {
        return error_page(StatusCode::BAD_REQUEST, "component_appid is not this platform's appid");
    }
    if redirect.is_empty() {
        return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing");
    }
    if let Err(why) = sandbox.ledger().use_pre_auth(&pre_auth, Instant::now(), false) {
        return error_page(StatusCode::BAD_REQUEST, why);
    }
    // biz_appid pins the account to authorize, as on WeChat's page.
    let authorizer =
        Some(param("biz_appid")).filter(|a| AppId::is_valid(a)).unwrap_or_else(|| DEMO_AUTHORIZER_APPID.to_owned());
    Html(consent_page(&appid, &pre_auth, &redirect, &authorizer)).into_response()
}

fn consent_page(component: &str, pre_auth: &str, redirect: &str, authorizer: &str) -> String {
    let link = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("pre_auth_code", pre_auth)
        .append_pair("redirect_uri", redirect)
        .append_pair("authorizer", authorizer)
        .finish();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Authorize (wxgate sandbox)</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\">\
         <h1>Authorize a third-party platform</h1>\
         <p>This is the wxgate sandbox standing in for WeChat's authorization page. The platform \
         <code>{component}</code> asks to manage an account on its owner's behalf.</p>\
         <form method=\"get\" action=\"/sandbox/consent\">\
         <input type=\"hidden\" name=\"pre_auth_code\" value=\"{pre}\">\
         <input type=\"hidden\" name=\"redirect_uri\" value=\"{redirect}\">\
         <label>Account appid <input name=\"authorizer\" value=\"{authorizer}\" size=\"20\"></label> \
         <button type=\"submit\">Authorize</button></form>\
         <p><a id=\"consent\" href=\"/sandbox/consent?{link}\">Authorize {authorizer}</a></p></body></html>",
        component = escape(component),
        pre = escape(pre_auth),
        redirect = escape(redirect),
        authorizer = escape(authorizer),
        link = escape(&link),
    )
}

/// The owner pressed "Authorize": uses up the pre_auth_code, authorizes, pushes, redirects.
/// A failed push is logged, not shown: WeChat too redirects whether or not the gateway got it.
pub(super) async fn consent(State(sandbox): State<Sandbox>, uri: Uri) -> Response {
    let query = uri.query().unwrap_or_default();
    let param = |name| query_param(query, name).unwrap_or_default();
    let (pre_auth, redirect) = (param("pre_auth_code"), param("redirect_uri"));
    let authorizer = Some(param("authorizer")).filter(|a| !a.is_empty());
    let authorizer = authorizer.as_deref().unwrap_or(DEMO_AUTHORIZER_APPID);
    let Ok(authorizer) = AppId::parse(authorizer) else {
        return error_page(StatusCode::BAD_REQUEST, "authorizer is not an appid (wx + 16 hex digits)");
    };
    if redirect.is_empty() {
        return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing");
    }
    if let Err(why) = sandbox.ledger().use_pre_auth(&pre_auth, Instant::now(), true) {
        return error_page(StatusCode::BAD_REQUEST, why);
    }
    let event = sandbox.authorize_event(&authorizer, Some(pre_auth));
    let _ = sandbox.push_event(&authorizer, &event).await;
    let sep = if redirect.contains('?') { '&' } else { '?' };
    // WeChat puts the code in unencoded; it is letters, digits and '@', all legal in a query.
    let location = format!("{redirect}{sep}auth_code={}&expires_in={}", event.code, CODE_LIFETIME.as_secs());
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn error_page(status: StatusCode, why: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Authorization failed</title></head>\
         <body><h1>Authorization failed</h1><p>{}</p></body></html>",
        escape(why)
    );
    (status, Html(body)).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_escapes_and_links() {
        let page = consent_page("wx0000000000000001", "pre@@@x", "http://a/b?c=1&d=\"<", "wx1111111111111111");
        assert!(page.contains("value=\"http://a/b?c=1&amp;d=&quot;&lt;\""));
        assert!(page.contains("href=\"/sandbox/consent?pre_auth_code=pre%40%40%40x&amp;redirect_uri=http%3A%2F%2Fa%2Fb%3Fc%3D1%26d%3D%22%3C&amp;authorizer=wx1111111111111111\""));
        assert!(!page.contains("<\"") && !page.contains("d=\"<"));
    }
}
