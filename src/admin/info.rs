//! The authorizer answers of the admin API with the account's info beside the token state:
//! who the account is (`api_get_authorizer_info`), never a token.

use super::AdminApp;
use crate::reply::Reply;
use crate::tokens::AuthorizerStatus;
use crate::AppId;
use serde_json::{json, Value};

/// The status of `appid` merged with its info; `state` says `frozen`, `closed` or `banned`
/// when WeChat reports the account so.
pub(super) async fn with_info(app: &AdminApp, mut status: Value, appid: &AppId) -> Result<Value, Reply> {
    let info = app.tokens.info().stored(appid).await.map_err(|e| Reply::error(e.status(), e))?;
    if let Some(label) = app.tokens.info().account_state(appid).filter(|_| status["state"] == "active") {
        status["state"] = json!(label);
    }
    let fields = match info {
        Some(info) => info.to_json(),
        None => json!({ "nick_name": null, "user_name": null, "principal_name": null, "kind": null,
                        "account_status": null, "func_info": [], "info_fetched_at_ms": null }),
    };
    if let (Some(status), Value::Object(fields)) = (status.as_object_mut(), fields) {
        status.extend(fields);
    }
    Ok(status)
}

/// `GET /admin/authorizers/{appid}`.
pub(super) async fn one(app: &AdminApp, appid: &AppId) -> Reply {
    let Some(status) = app.tokens.authorizers().status(appid) else {
        return Reply::error(404, "unknown authorizer");
    };
    match with_info(app, super::shapes::authorizer(&status), appid).await {
        Ok(v) => Reply::json(200, &v),
        Err(reply) => reply,
    }
}

/// `GET /admin/authorizers[?offset=&limit=]`.
pub(super) async fn page(app: &AdminApp, offset: usize, limit: usize) -> Reply {
    let (total, page) = app.tokens.authorizers().statuses(offset, limit);
    match with_infos(app, page).await {
        Ok(authorizers) => Reply::json(200, &json!({ "total": total, "offset": offset, "authorizers": authorizers })),
        Err(reply) => reply,
    }
}

/// `GET /admin/authorizers?q=TEXT[&offset=&limit=]`: the matches come from the search index in
/// memory, and only the page's accounts are read in full. `q` is lowercase already.
pub(super) async fn found(app: &AdminApp, q: &str, offset: usize, limit: usize) -> Reply {
    let matching = app.tokens.info().search(q);
    let authorizers = app.tokens.authorizers();
    let page: Vec<AuthorizerStatus> =
        matching.iter().skip(offset).take(limit).filter_map(|appid| authorizers.status(appid)).collect();
    match with_infos(app, page).await {
        Ok(page) => {
            Reply::json(200, &json!({ "total": matching.len(), "offset": offset, "q": q, "authorizers": page }))
        }
        Err(reply) => reply,
    }
}

/// Each status with its info, in order.
async fn with_infos(app: &AdminApp, statuses: impl IntoIterator<Item = AuthorizerStatus>) -> Result<Vec<Value>, Reply> {
    let mut authorizers = Vec::new();
    for status in statuses {
        let Ok(appid) = AppId::parse(&status.appid) else { continue };
        authorizers.push(with_info(app, super::shapes::authorizer(&status), &appid).await?);
    }
    Ok(authorizers)
}

/// `POST /admin/reconcile`: 503 while another instance reconciles.
pub(super) async fn reconcile(app: &AdminApp) -> Reply {
    match app.tokens.reconciler().reconcile().await {
        Ok(done) => Reply::json(200, &super::shapes::reconciled(&done)),
        Err(e) => Reply::error(e.status(), e),
    }
}
