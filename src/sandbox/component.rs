//! The component endpoints (`/cgi-bin/component/api_*`), with WeChat's checks and errcodes (PROTOCOL.md §2).

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::ledger::{Grant, Ledger, CODE_LIFETIME};
use super::server::query_param;
use super::wx::{answer, WxError};
use super::{faults, Sandbox};

pub(super) const PREFIX: &str = "/cgi-bin/component/";
pub(super) const ENDPOINTS: [&str; 7] = [
    "api_component_token",
    "api_create_preauthcode",
    "api_query_auth",
    "api_authorizer_token",
    "api_get_authorizer_info",
    "api_get_authorizer_list",
    "api_start_push_ticket",
];
/// Component request bodies are a few hundred bytes; anything near this is not one.
const MAX_BODY: usize = 64 * 1024;
const MAX_LIST_COUNT: u64 = 500;

type Body = Map<String, Value>;

pub(super) async fn handle(sandbox: &Sandbox, name: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY).await.ok();
    let body: Option<Body> = body.and_then(|b| serde_json::from_slice(&b).ok());
    count(&mut sandbox.ledger(), name, body.as_ref());
    if let Some(fault) = faults::apply(&sandbox.faults(), parts.uri.path()).await {
        return fault;
    }
    if parts.method != Method::POST {
        return WxError::new(43002, "require POST method").into_response();
    }
    let Some(body) = body else {
        return WxError::format("the body is not a JSON object").into_response();
    };
    if name == "api_start_push_ticket" {
        return answer(start_push_ticket(sandbox, &body));
    }
    let query = parts.uri.query().unwrap_or_default();
    let mut ledger = sandbox.ledger();
    let result = endpoint(sandbox, &mut ledger, name, query, &body, Instant::now());
    if let Err(e) = &result {
        *ledger.record.stats.errcodes.entry(e.code).or_default() += 1;
    }
    drop(ledger);
    answer(result)
}

/// Every call counts, including those a fault or a check turns away.
fn count(ledger: &mut Ledger, name: &str, body: Option<&Body>) {
    let stats = &mut ledger.record.stats;
    match name {
        "api_component_token" => stats.component_token_calls += 1,
        "api_create_preauthcode" => stats.preauthcode_calls += 1,
        "api_query_auth" => stats.query_auth_calls += 1,
        "api_get_authorizer_info" => stats.authorizer_info_calls += 1,
        "api_get_authorizer_list" => stats.authorizer_list_calls += 1,
        "api_start_push_ticket" => stats.start_push_ticket_calls += 1,
        _ => {
            let appid = body.and_then(|b| text(b, "authorizer_appid")).unwrap_or_default();
            *stats.authorizer_token_calls.entry(appid.to_owned()).or_default() += 1;
        }
    }
}

fn endpoint(
    sb: &Sandbox,
    ledger: &mut Ledger,
    name: &str,
    query: &str,
    body: &Body,
    now: Instant,
) -> Result<Value, WxError> {
    if name == "api_component_token" {
        return component_token(sb, ledger, body, now);
    }
    // Checked in WeChat's order: the token in the URL, then the appid in the body.
    let token = query_param(query, "component_access_token")
        .or_else(|| query_param(query, "access_token"))
        .ok_or_else(WxError::token_missing)?;
    ledger.check_component_token(&token, now)?;
    check_appid(sb, body)?;
    match name {
        "api_create_preauthcode" => {
            let code = ledger.create_pre_auth(now);
            Ok(json!({ "pre_auth_code": code, "expires_in": CODE_LIFETIME.as_secs() }))
        }
        "api_query_auth" => {
            let code = text(body, "authorization_code").ok_or_else(|| WxError::format("authorization_code missing"))?;
            let (appid, grant) = ledger.query_auth(code, now)?;
            Ok(json!({ "authorization_info": grant_json(sb, &appid, &grant) }))
        }
        "api_authorizer_token" => {
            let appid = text(body, "authorizer_appid").ok_or_else(|| WxError::format("authorizer_appid missing"))?;
            // A missing refresh token is the commonest cause of 61023 in practice.
            let refresh = text(body, "authorizer_refresh_token").unwrap_or_default();
            let grant = ledger.authorizer_token(appid, refresh, now)?;
            Ok(json!({
                "authorizer_access_token": grant.access_token,
                "expires_in": sb.inner.config.token_lifetime.as_secs(),
                "authorizer_refresh_token": grant.refresh_token,
            }))
        }
        "api_get_authorizer_info" => authorizer_info(ledger, body),
        _ => authorizer_list(ledger, body),
    }
}

fn component_token(sb: &Sandbox, ledger: &mut Ledger, body: &Body, now: Instant) -> Result<Value, WxError> {
    check_appid(sb, body)?;
    check_secret(sb, body, "component_appsecret")?;
    let ticket =
        text(body, "component_verify_ticket").ok_or_else(|| WxError::format("component_verify_ticket missing"))?;
    ledger.check_ticket(ticket)?;
    let token = ledger.issue_component_token(now);
    Ok(json!({ "component_access_token": token, "expires_in": sb.inner.config.token_lifetime.as_secs() }))
}

/// Resumes the pusher and pushes a ticket in the background: WeChat answers before it pushes.
fn start_push_ticket(sb: &Sandbox, body: &Body) -> Result<Value, WxError> {
    check_appid(sb, body)?;
    check_secret(sb, body, "component_secret")?;
    sb.pushes_paused(false);
    let sandbox = sb.clone();
    tokio::spawn(async move {
        let _ = sandbox.push_ticket().await;
    });
    Ok(json!({ "errcode": 0, "errmsg": "ok" }))
}

fn authorizer_info(ledger: &Ledger, body: &Body) -> Result<Value, WxError> {
    let appid = text(body, "authorizer_appid").ok_or_else(|| WxError::format("authorizer_appid missing"))?;
    let account = ledger.authorized(appid)?;
    let mut info = json!({
        "nick_name": format!("Sandbox account {}", appid.trim_start_matches("wx")),
        "head_img": "",
        "service_type_info": { "id": 2 },
        "verify_type_info": { "id": 0 },
        "user_name": user_name(appid),
        "principal_name": "wxgate sandbox",
        "alias": "",
        "qrcode_url": "",
        "signature": "",
        "account_status": account.account_status,
    });
    if account.mini_program {
        info["MiniProgramInfo"] = json!({ "network": { "RequestDomain": [] }, "categories": [], "visit_status": 0 });
    }
    Ok(json!({
        "authorizer_info": info,
        "authorization_info": {
            "authorizer_appid": appid,
            "authorizer_refresh_token": account.refresh_token.clone().unwrap_or_default(),
            "func_info": func_info(),
        },
    }))
}

fn authorizer_list(ledger: &Ledger, body: &Body) -> Result<Value, WxError> {
    let offset = number(body, "offset").unwrap_or(0);
    let count = number(body, "count").ok_or_else(|| WxError::format("count missing"))?;
    if count == 0 || count > MAX_LIST_COUNT {
        return Err(WxError::invalid_args("count must be 1..=500"));
    }
    let authorized = ledger.authorizers.iter().filter(|(_, a)| a.authorized);
    let list: Vec<Value> = authorized
        .clone()
        .skip(offset as usize)
        .take(count as usize)
        .map(|(appid, a)| {
            let refresh = a.listed_refresh_token.clone().unwrap_or_default();
            json!({ "authorizer_appid": appid, "refresh_token": refresh, "auth_time": a.auth_time })
        })
        .collect();
    Ok(json!({ "total_count": authorized.count(), "list": list }))
}

/// The `gh_` id the sandbox gives an account: `gh_` and the last 12 hex digits of its appid.
pub fn user_name(appid: &str) -> String {
    format!("gh_{}", &appid[appid.len().saturating_sub(12)..])
}

fn grant_json(sb: &Sandbox, appid: &str, grant: &Grant) -> Value {
    json!({
        "authorizer_appid": appid,
        "authorizer_access_token": grant.access_token,
        "expires_in": sb.inner.config.token_lifetime.as_secs(),
        "authorizer_refresh_token": grant.refresh_token,
        "func_info": func_info(),
    })
}

fn func_info() -> Value {
    json!([{ "funcscope_category": { "id": 1 } }])
}

/// 41002 without an appid, 61011 for any appid but the sandbox's component.
fn check_appid(sb: &Sandbox, body: &Body) -> Result<(), WxError> {
    match text(body, "component_appid") {
        None => Err(WxError::new(41002, "appid missing")),
        Some(appid) if appid == sb.inner.config.component_appid.as_str() => Ok(()),
        Some(_) => Err(WxError::invalid_component()),
    }
}

fn check_secret(sb: &Sandbox, body: &Body, field: &str) -> Result<(), WxError> {
    let secret = text(body, field).ok_or_else(|| WxError::new(41004, "appsecret missing"))?;
    if sb.inner.config.component_appsecret.ct_eq(secret.as_bytes()) {
        Ok(())
    } else {
        Err(WxError::invalid_secret())
    }
}

fn text<'a>(body: &'a Body, key: &str) -> Option<&'a str> {
    body.get(key)?.as_str()
}

/// A number, or a string of digits (some SDKs send `"offset":"0"`).
fn number(body: &Body, key: &str) -> Option<u64> {
    match body.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
