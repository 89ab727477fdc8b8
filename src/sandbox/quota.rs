//! Quotas as WeChat keeps them (PROTOCOL.md §11): each API call counts against its caller's daily
//! limit for that path; `openapi/quota/get` reports it, `clear_quota` (the account's own token)
//! and `clear_quota/v2` (the appsecret) reset it, 10 times a month per account, then 48006.

use std::collections::HashMap;

use axum::extract::Request;
use axum::response::Response;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::server::query_param;
use super::tokens::Owner;
use super::wx::{answer, WxError};
use super::Sandbox;

/// Every API's daily limit in the sandbox unless `SandboxConfig::daily_limit` says otherwise.
pub const DAILY_LIMIT: u64 = 10_000;
/// Resets a month per account, as WeChat allows.
pub const RESETS_PER_MONTH: u32 = 10;
const MAX_BODY: usize = 4096;

/// Usage by (caller, path) and resets by account (the component's appid for its own).
#[derive(Default)]
pub(crate) struct QuotaBook {
    used: HashMap<(String, String), u64>,
    resets: HashMap<String, u32>,
}

impl QuotaBook {
    /// One API call by `caller` (an appid or `component`) to `path`: 45009 once `limit` calls
    /// were counted today, as WeChat answers.
    pub fn count(&mut self, caller: &str, path: &str, limit: u64) -> Result<(), WxError> {
        let used = self.used.entry((caller.to_owned(), path.to_owned())).or_default();
        if *used >= limit {
            return Err(WxError::new(45009, "reach max api daily quota limit"));
        }
        *used += 1;
        Ok(())
    }

    fn used(&self, caller: &str, path: &str) -> u64 {
        self.used.get(&(caller.to_owned(), path.to_owned())).copied().unwrap_or(0)
    }

    /// Resets `caller`'s usage, counted against the month's resets of `account`.
    fn clear(&mut self, account: &str, caller: &str) -> Result<(), WxError> {
        let resets = self.resets.entry(account.to_owned()).or_default();
        if *resets >= RESETS_PER_MONTH {
            return Err(WxError::new(48006, "forbid to clear quota because of reaching the limit"));
        }
        *resets += 1;
        self.used.retain(|(c, _), _| c != caller);
        Ok(())
    }
}

type Body = Map<String, Value>;

async fn body_of(req: Request) -> (String, Option<Body>) {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.ok();
    (parts.uri.query().unwrap_or_default().to_owned(), body.and_then(|b| serde_json::from_slice(&b).ok()))
}

fn text<'a>(body: &'a Body, key: &str) -> Option<&'a str> {
    body.get(key)?.as_str()
}

/// Whose token the query carries: 41001 without one, 40001/42001 for a dead one.
fn caller(sb: &Sandbox, query: &str) -> Result<Owner, WxError> {
    let token = query_param(query, "access_token").filter(|t| !t.is_empty()).ok_or_else(WxError::token_missing)?;
    sb.ledger().tokens.check(&token, Instant::now()).cloned()
}

/// The appid a caller's quota is counted under.
fn account_of(sb: &Sandbox, owner: &Owner) -> String {
    match owner {
        Owner::Component => sb.inner.config.component_appid.to_string(),
        Owner::Authorizer(appid) | Owner::Account { appid, .. } => appid.clone(),
    }
}

/// `POST /cgi-bin/openapi/quota/get?access_token=` `{cgi_path}`.
pub(super) async fn get(sb: &Sandbox, req: Request) -> Response {
    let (query, body) = body_of(req).await;
    answer((|| {
        let owner = caller(sb, &query)?;
        let body = body.ok_or_else(|| WxError::format("the body is not a JSON object"))?;
        let path = text(&body, "cgi_path").ok_or_else(|| WxError::new(76003, "cgi_path missing"))?;
        if !path.starts_with("/cgi-bin/") && !path.starts_with("/wxa/") || path.contains('?') {
            return Err(WxError::new(76021, "cgi_path not found"));
        }
        let used = sb.ledger().quota.used(&owner.label(), path);
        let limit = sb.inner.config.daily_limit;
        Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "quota": { "daily_limit": limit, "used": used, "remain": limit.saturating_sub(used) },
        }))
    })())
}

/// `POST /cgi-bin/clear_quota?access_token=` `{appid}`: the appid must be the token's owner's.
pub(super) async fn clear(sb: &Sandbox, req: Request) -> Response {
    let (query, body) = body_of(req).await;
    answer((|| {
        let owner = caller(sb, &query)?;
        let body = body.ok_or_else(|| WxError::format("the body is not a JSON object"))?;
        let account = account_of(sb, &owner);
        if text(&body, "appid") != Some(account.as_str()) {
            return Err(WxError::new(40013, "invalid appid"));
        }
        sb.ledger().quota.clear(&account, &owner.label())?;
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    })())
}

/// `POST /cgi-bin/component/clear_quota/v2` `{component_appid, appsecret[, appid]}`: no token.
pub(super) async fn clear_v2(sb: &Sandbox, req: Request) -> Response {
    let (_, body) = body_of(req).await;
    answer((|| {
        let body = body.ok_or_else(|| WxError::format("the body is not a JSON object"))?;
        let component = sb.inner.config.component_appid.to_string();
        match text(&body, "component_appid") {
            None => return Err(WxError::new(41002, "appid missing")),
            Some(c) if c != component => return Err(WxError::invalid_component()),
            Some(_) => {}
        }
        let secret = text(&body, "appsecret").ok_or_else(|| WxError::new(41004, "appsecret missing"))?;
        if !sb.inner.config.component_appsecret.ct_eq(secret.as_bytes()) {
            return Err(WxError::invalid_secret());
        }
        let mut ledger = sb.ledger();
        let (account, caller) = match text(&body, "appid") {
            None => (component.clone(), Owner::Component.label()),
            Some(appid) => {
                ledger.authorized(appid)?;
                (appid.to_owned(), appid.to_owned())
            }
        };
        ledger.quota.clear(&account, &caller)?;
        Ok(json!({ "errcode": 0, "errmsg": "ok" }))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_resets_a_month_then_48006() {
        let mut q = QuotaBook::default();
        q.count("wx1", "/cgi-bin/a", 10).unwrap();
        q.count("wx1", "/cgi-bin/a", 10).unwrap();
        q.count("wx2", "/cgi-bin/a", 10).unwrap();
        assert_eq!(q.used("wx1", "/cgi-bin/a"), 2);
        q.clear("wx1", "wx1").unwrap();
        assert_eq!((q.used("wx1", "/cgi-bin/a"), q.used("wx2", "/cgi-bin/a")), (0, 1));
        for _ in 1..RESETS_PER_MONTH {
            q.clear("wx1", "wx1").unwrap();
        }
        assert_eq!(q.clear("wx1", "wx1").unwrap_err().code, 48006);
        assert!(q.clear("wx2", "wx2").is_ok(), "counted per account");
    }
}
