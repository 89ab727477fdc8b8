//! The HTTP side: which path goes to which handler, and the server task.
//!
//! | path | handler |
//! |---|---|
//! | `/cgi-bin/component/api_*` (the seven component endpoints) | [`super::component`] |
//! | `GET /cgi-bin/componentloginpage`, `GET /safe/bindcomponent`, `GET /sandbox/consent` | [`super::pages`] |
//! | `/cgi-bin/openapi/quota/get`, `/cgi-bin/clear_quota`, `/cgi-bin/component/clear_quota/v2` | [`super::quota`] |
//! | `/cgi-bin/component/fastregisterweapp` (a push of `notify_third_fasteregister` follows) | [`super::fastreg`] |
//! | `POST /cgi-bin/stable_token`, `/cgi-bin/token` (owned accounts) | [`super::owned`] |
//! | `/wxa/` gettemplatelist, commit, getversioninfo, submit_audit, get_latest_auditstatus, release, queryquota | [`super::wxa`] (verdicts: [`super::audit`]) |
//! | `/sandbox/*` control routes | [`super::control`] |
//! | anything else | an app's API call: [`super::api`] (`/cgi-bin/ticket/getticket` issues JS-SDK tickets) |

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

use super::{api, component, control, fastreg, owned, pages, quota, wxa, Sandbox};

pub(super) fn spawn(sandbox: Sandbox, listener: tokio::net::TcpListener, mut shutdown: watch::Receiver<bool>) {
    let app = router(sandbox);
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "sandbox: server stopped");
        }
    });
}

fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/sandbox/authorize", post(control::authorize))
        .route("/sandbox/unauthorize", post(control::unauthorize))
        .route("/sandbox/account", post(control::account))
        .route("/sandbox/revoke", post(control::revoke))
        .route("/sandbox/faults", post(control::faults))
        .route("/sandbox/stats", get(control::stats))
        .route("/sandbox/ticket", post(control::ticket))
        .route("/sandbox/pushes", post(control::pushes))
        .route("/sandbox/message", post(control::message))
        .route("/sandbox/release-check", post(control::release_check))
        .route("/sandbox/account-message", post(control::account_message))
        .route("/sandbox/account-urlcheck", post(control::account_urlcheck))
        .route("/sandbox/audit-quota", post(control::audit_quota))
        .route("/sandbox/submit-limit", post(control::submit_limit))
        .route("/sandbox/audit-push", post(control::audit_push))
        .route("/sandbox/audit-plan", post(control::audit_plan))
        .route("/sandbox/profile", post(control::profile))
        .route("/sandbox/code", get(control::code))
        .route("/sandbox/consent", get(pages::consent))
        .fallback(dispatch)
        .with_state(sandbox)
}

async fn dispatch(State(sandbox): State<Sandbox>, req: Request) -> Response {
    let path = req.uri().path();
    if let Some(name) = path.strip_prefix(component::PREFIX).filter(|n| component::ENDPOINTS.contains(n)) {
        let name = name.to_owned();
        return component::handle(&sandbox, &name, req).await;
    }
    if let Some(call) = wxa::Call::of(path) {
        return wxa::handle(&sandbox, call, req).await;
    }
    match path {
        fastreg::PATH => fastreg::handle(&sandbox, req).await,
        owned::STABLE_TOKEN_PATH => owned::stable_token(&sandbox, req).await,
        owned::TOKEN_PATH => owned::token(&sandbox, req).await,
        "/cgi-bin/openapi/quota/get" => quota::get(&sandbox, req).await,
        "/cgi-bin/clear_quota" => quota::clear(&sandbox, req).await,
        "/cgi-bin/component/clear_quota/v2" => quota::clear_v2(&sandbox, req).await,
        "/cgi-bin/componentloginpage" | "/safe/bindcomponent" => pages::login(&sandbox, req),
        p if p.starts_with("/sandbox/") => (StatusCode::NOT_FOUND, "no such sandbox route\n").into_response(),
        _ => api::handle(&sandbox, req).await,
    }
}

/// The first value of a query parameter, decoded.
pub(super) fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_decodes_first() {
        assert_eq!(query_param("a=1&b=x%40y&b=2", "b").as_deref(), Some("x@y"));
        assert_eq!(query_param("a=1", "b"), None);
    }
}
