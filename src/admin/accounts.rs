//! `/admin/accounts`: the accounts the company owns (`[[accounts]]`), their token state and
//! "refresh now". Never a token or a secret.

use super::AdminApp;
use crate::reply::Reply;
use crate::AppId;
use http::Method;
use serde_json::json;

pub(super) async fn handle(app: &AdminApp, method: &Method, rest: &[&str]) -> Reply {
    let owned = app.tokens.owned();
    match (method, rest) {
        (&Method::GET, [] | [""]) => {
            let accounts: Vec<_> = owned.statuses().iter().map(super::shapes::account).collect();
            Reply::json(200, &json!({ "total": accounts.len(), "accounts": accounts }))
        }
        (_, [appid, more @ ..]) => {
            let appid = match AppId::parse(appid) {
                Ok(appid) if owned.holds(&appid) => appid,
                Ok(_) => return Reply::error(404, "no owned account ([[accounts]]) has this appid"),
                Err(e) => return Reply::error(400, e),
            };
            match (method, more) {
                (&Method::GET, []) => match owned.status(&appid) {
                    Some(status) => Reply::json(200, &super::shapes::account(&status)),
                    None => Reply::error(404, "no owned account ([[accounts]]) has this appid"),
                },
                (&Method::POST, ["refresh"]) => match owned.refresh_now(&appid).await {
                    Ok(status) => Reply::json(200, &super::shapes::account(&status)),
                    Err(e) => Reply::error(e.status(), e),
                },
                _ => Reply::error(404, "no such admin route"),
            }
        }
        _ => Reply::error(404, "no such admin route"),
    }
}
