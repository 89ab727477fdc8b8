//! The calls a platform makes on an account's behalf with the component token: a mini
//! program's user login (`/sns/component/jscode2session`) and an official account's web
//! authorization (`/sns/oauth2/component/access_token`, `.../refresh_token`). Strict like
//! WeChat: the component token must be the component's and current, `component_appid` the
//! component's, and `appid` an account that has authorized it.

use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::time::Instant;

use super::server::query_param;
use super::wx::WxError;
use super::Sandbox;

pub(super) const PATHS: [&str; 3] =
    ["/sns/component/jscode2session", "/sns/oauth2/component/access_token", "/sns/oauth2/component/refresh_token"];

pub(super) fn handle(sandbox: &Sandbox, path: &str, query: &str) -> Result<Value, WxError> {
    let param = |name: &str| query_param(query, name).filter(|v| !v.is_empty());
    let token = param("component_access_token").ok_or_else(WxError::token_missing)?;
    let appid = param("appid").ok_or_else(|| WxError::new(41002, "appid missing"))?;
    let ledger = sandbox.ledger();
    ledger.check_component_token(&token, Instant::now())?;
    if param("component_appid").as_deref() != Some(&sandbox.config().component_appid.as_str()) {
        return Err(WxError::invalid_component());
    }
    if !ledger.authorizers.get(&appid).is_some_and(|a| a.authorized) {
        return Err(WxError::not_authorized());
    }
    let (grant, code_param) = match path {
        "/sns/component/jscode2session" => ("authorization_code", "js_code"),
        "/sns/oauth2/component/access_token" => ("authorization_code", "code"),
        _ => ("refresh_token", "refresh_token"),
    };
    if param("grant_type").as_deref() != Some(grant) {
        return Err(WxError::invalid_args("grant_type"));
    }
    let code = param(code_param).ok_or_else(|| WxError::new(41008, format!("missing {code_param}")))?;
    let openid = derived("o", &appid, &code, 27);
    Ok(match path {
        "/sns/component/jscode2session" => {
            json!({ "openid": openid, "session_key": derived("sk", &appid, &code, 22) })
        }
        _ => json!({
            "access_token": derived("at", &appid, &code, 40),
            "expires_in": 7200,
            "refresh_token": derived("rt", &appid, &code, 40),
            "openid": openid,
            "scope": "snsapi_base",
        }),
    })
}

/// A value that depends only on the account and the code, so that a test can predict it.
fn derived(kind: &str, appid: &str, code: &str, len: usize) -> String {
    let digest = hex::encode(Sha1::digest(format!("{kind}|{appid}|{code}").as_bytes()));
    format!("{kind}{}", &digest[..len.min(digest.len())])
}
