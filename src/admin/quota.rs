//! The quota routes: how much of an API's daily limit an account used, and the monthly resets.
//!
//! `clear-quota` for an account uses its own token (`clear_quota`); when no token can be had —
//! the token endpoint itself is over quota — it falls back to `clear_quota/v2` with the
//! appsecret, which needs none. The component's reset is always `clear_quota/v2`.

use super::AdminApp;
use crate::quota::Account;
use crate::reply::Reply;
use crate::tokens::TokenError;
use crate::wechat::{ApiErrorKind, WechatError};
use crate::AppId;
use serde_json::json;

/// `GET /admin/authorizers/{appid}/quota?cgi_path=/cgi-bin/...`.
pub(super) async fn get(app: &AdminApp, appid: &AppId, query: &str) -> Reply {
    let cgi_path =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "cgi_path").map(|(_, v)| v.into_owned());
    let Some(cgi_path) = cgi_path.filter(|p| valid_cgi_path(p)) else {
        return Reply::error(400, "cgi_path must be an API path such as /cgi-bin/message/custom/send");
    };
    let token = match app.tokens.authorizers().token(appid).await {
        Ok(token) => token,
        Err(e) => return Reply::error(e.status(), e),
    };
    match app.quota.quota(&token.value, &cgi_path).await {
        Ok(quota) => Reply::json(200, &json!({ "appid": appid.as_str(), "cgi_path": cgi_path, "quota": quota })),
        Err(e) => wechat_error(e),
    }
}

/// `POST /admin/authorizers/{appid}/clear-quota`.
pub(super) async fn clear_authorizer(app: &AdminApp, appid: &AppId) -> Reply {
    let via = match app.tokens.authorizers().token(appid).await {
        Ok(token) => match app.quota.clear_quota(&token.value, appid).await {
            Ok(()) => "clear_quota",
            Err(e) => return wechat_error(e),
        },
        Err(e @ (TokenError::UnknownAuthorizer | TokenError::Revoked)) => return Reply::error(e.status(), e),
        Err(e) => {
            tracing::warn!(authorizer = %appid, error = %e, "no token to clear the quota with; using clear_quota/v2");
            match app.quota.clear_quota_v2(Some(appid)).await {
                Ok(()) => "clear_quota/v2",
                Err(e) => return wechat_error(e),
            }
        }
    };
    tracing::info!(authorizer = %appid, via, "quota cleared");
    if let Some(guard) = &app.guard {
        guard.lift(Account::Authorizer(*appid)).await;
    }
    Reply::json(200, &json!({ "cleared": appid.as_str(), "via": via }))
}

/// `POST /admin/component/clear-quota`.
pub(super) async fn clear_component(app: &AdminApp) -> Reply {
    match app.quota.clear_quota_v2(None).await {
        Ok(()) => {
            tracing::info!("component quota cleared (clear_quota/v2)");
            if let Some(guard) = &app.guard {
                guard.lift(Account::Component).await;
            }
            Reply::json(200, &json!({ "cleared": app.tokens.component_appid().as_str(), "via": "clear_quota/v2" }))
        }
        Err(e) => wechat_error(e),
    }
}

/// `/cgi-bin/...` or another API path, of the characters paths have: it is sent to WeChat.
fn valid_cgi_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 200
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'))
}

/// WeChat's refusal passed on: 48006 (monthly resets used up) and bad paths are the caller's
/// to fix (400); anything else is a gateway-side failure (502).
fn wechat_error(e: WechatError) -> Reply {
    match &e {
        WechatError::Api { errcode: 48006 | 76003 | 76021 | 40097, .. } => {
            Reply::error(400, format!("WeChat refused: {e}"))
        }
        WechatError::Api { kind: ApiErrorKind::Quota, .. } => Reply::error(429, format!("WeChat refused: {e}")),
        _ => {
            let e = TokenError::Wechat(e);
            Reply::error(e.status(), e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_paths_are_sent_on() {
        assert!(valid_cgi_path("/cgi-bin/message/custom/send"));
        assert!(valid_cgi_path("/wxa/getwxacode"));
        assert!(!valid_cgi_path("cgi-bin/x"));
        assert!(!valid_cgi_path("/cgi-bin/x?access_token=1"));
        assert!(!valid_cgi_path("/cgi-bin/a b"));
    }
}
