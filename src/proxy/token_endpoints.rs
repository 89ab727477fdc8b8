//! WeChat's token endpoints and `/wxgate/token/*`: tokens from the gateway's cache, in WeChat's
//! own shape, for clients allowed to see them (`reveal_tokens`); 403 for the others.

use super::clients::Client;
use super::resolve::{Scope, TokenCall, TokenEndpoint};
use crate::reply::Reply;
use crate::tokens::{AccessToken, TokenService};
use crate::AppId;
use serde_json::{json, Value};
use std::sync::Arc;

/// Answers a call to one of WeChat's token endpoints. `body` is the request's (JSON) body.
pub async fn answer(tokens: &TokenService, call: &TokenCall<'_>, body: &[u8]) -> Reply {
    if !call.client.reveal_tokens {
        return Reply::error(403, "token endpoints are answered by the gateway, for clients with reveal_tokens; it keeps every token fresh itself");
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let endpoint = call.endpoint;
    let scope = call.scope.clone().or_else(|| named_account(endpoint, call.query_appid, &body));
    let Some(scope) = scope else {
        return Reply::error(400, "which account? name it in the body (authorizer_appid, or appid for stable_token), the query (appid), a path prefix or X-Wxgate-Authorizer");
    };
    let token = match fetch(tokens, call.client, &scope).await {
        Ok(token) => token,
        Err(reply) => return reply,
    };
    let expires_in = remaining_secs(tokens, &token);
    let value = token.value.expose();
    Reply::json(
        200,
        &match endpoint {
            TokenEndpoint::Component => json!({ "component_access_token": value, "expires_in": expires_in }),
            TokenEndpoint::Authorizer => json!({
                "authorizer_access_token": value,
                "expires_in": expires_in,
                // The refresh token never leaves the gateway: the client gets back what it sent.
                "authorizer_refresh_token": body.get("authorizer_refresh_token").and_then(Value::as_str).unwrap_or_default(),
            }),
            TokenEndpoint::Account | TokenEndpoint::StableToken => {
                json!({ "access_token": value, "expires_in": expires_in })
            }
        },
    )
}

/// `GET /wxgate/token/{appid}` and `/wxgate/token/component`.
pub async fn raw(tokens: &TokenService, client: &Client, target: &str) -> Reply {
    if !client.reveal_tokens {
        return Reply::error(403, "this client may not read tokens (reveal_tokens)");
    }
    let scope = match target {
        "component" => Scope::Component,
        appid => match AppId::parse(appid) {
            Ok(appid) => Scope::Authorizer(appid),
            Err(e) => return Reply::error(400, e),
        },
    };
    match fetch(tokens, client, &scope).await {
        Ok(token) => Reply::json(
            200,
            &json!({ "access_token": token.value.expose(), "expires_in": remaining_secs(tokens, &token), "expires_at_ms": token.expires_at }),
        ),
        Err(reply) => reply,
    }
}

fn named_account(endpoint: TokenEndpoint, query_appid: Option<AppId>, body: &Value) -> Option<Scope> {
    match endpoint {
        TokenEndpoint::Component => Some(Scope::Component),
        TokenEndpoint::Authorizer => body
            .get("authorizer_appid")
            .and_then(Value::as_str)
            .and_then(|a| AppId::parse(a).ok())
            .map(Scope::Authorizer),
        TokenEndpoint::Account => query_appid.map(Scope::Authorizer),
        TokenEndpoint::StableToken => body
            .get("appid")
            .and_then(Value::as_str)
            .and_then(|a| AppId::parse(a).ok())
            .or(query_appid)
            .map(Scope::Authorizer),
    }
}

async fn fetch(tokens: &TokenService, client: &Client, scope: &Scope) -> Result<Arc<AccessToken>, Reply> {
    let result = match scope {
        Scope::Authorizer(appid) if !client.allows(appid) => {
            return Err(Reply::error(403, "this client may not act for that authorizer"))
        }
        Scope::Component if !client.component => {
            return Err(Reply::error(403, "this client may not use the component token"))
        }
        Scope::Authorizer(appid) => tokens.authorizers().token(appid).await,
        Scope::Component => tokens.component().token().await,
    };
    result.map_err(|e| Reply::error(e.status(), e))
}

fn remaining_secs(tokens: &TokenService, token: &AccessToken) -> i64 {
    ((token.expires_at - tokens.clock().now_ms()) / 1000).max(0)
}
