//! The authorizer answers of the admin API with the account's info beside the token state:
//! who the account is (`api_get_authorizer_info`), never a token.

use super::AdminApp;
use crate::reply::Reply;
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
    let mut authorizers = Vec::with_capacity(page.len());
    for status in page {
        let Ok(appid) = AppId::parse(&status.appid) else { continue };
        match with_info(app, super::shapes::authorizer(&status), &appid).await {
            Ok(v) => authorizers.push(v),
            Err(reply) => return reply,
        }
    }
    Reply::json(200, &json!({ "total": total, "offset": offset, "authorizers": authorizers }))
}

/// `POST /admin/reconcile`: 503 while another instance reconciles.
pub(super) async fn reconcile(app: &AdminApp) -> Reply {
    match app.tokens.reconciler().reconcile().await {
        Ok(done) => Reply::json(200, &super::shapes::reconciled(&done)),
        Err(e) => Reply::error(e.status(), e),
    }
}

/// Every authorizer's status with its info, for a search: the infos are read in one pass.
pub(super) async fn all(app: &AdminApp) -> Result<Vec<Value>, Reply> {
    let infos = app.tokens.info().all().await.map_err(|e| Reply::error(e.status(), e))?;
    let mut infos: std::collections::HashMap<AppId, Value> =
        infos.into_iter().map(|i| (i.appid, i.to_json())).collect();
    let (_, statuses) = app.tokens.authorizers().statuses(0, usize::MAX);
    let mut all = Vec::with_capacity(statuses.len());
    for status in statuses {
        let Ok(appid) = AppId::parse(&status.appid) else { continue };
        let mut v = super::shapes::authorizer(&status);
        if let Some(label) = app.tokens.info().account_state(&appid).filter(|_| v["state"] == "active") {
            v["state"] = json!(label);
        }
        if let (Some(obj), Some(Value::Object(fields))) = (v.as_object_mut(), infos.remove(&appid)) {
            obj.extend(fields);
        }
        all.push(v);
    }
    Ok(all)
}
