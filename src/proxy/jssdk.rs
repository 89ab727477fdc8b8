//! The JS-SDK for apps (CONTRACT.md § JS-SDK tickets): the proxied `getticket` answered from
//! the gateway's cache and never forwarded, and `/wxgate/jssdk/{appid}/config`, a signed
//! `wx.config` so that apps never need the ticket at all.

use super::clients::Clients;
use super::resolve::{client_from_headers, Scope};
use crate::http1::Session;
use crate::reply::{read_body, Reply};
use crate::store::{unix_now, TicketKind};
use crate::tokens::TokenService;
use crate::AppId;
use http::Method;
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

/// A config request's body is one URL.
const MAX_CONFIG_BODY: usize = 8192;

/// `GET /cgi-bin/ticket/getticket?type=jsapi|wx_card`, in WeChat's shape.
pub async fn getticket(tokens: &TokenService, scope: &Scope, query: &str) -> Reply {
    let Scope::Authorizer(appid) = scope else {
        return Reply::error(400, "getticket is an authorizer's call: name the authorizer");
    };
    let kind = param(query, "type").unwrap_or_else(|| "jsapi".into());
    let Some(kind) = TicketKind::parse(&kind) else {
        return Reply::error(400, "type must be jsapi or wx_card");
    };
    match tokens.tickets().get(appid, kind).await {
        Ok(ticket) => {
            let expires_in = ((ticket.expires_at - tokens.clock().now_ms()) / 1000).max(0);
            Reply::json(
                200,
                &json!({ "errcode": 0, "errmsg": "ok", "ticket": ticket.value.expose(), "expires_in": expires_in }),
            )
        }
        Err(e) => Reply::error(e.status(), e),
    }
}

/// `GET|POST /wxgate/jssdk/{appid}/config`: `rest` is what follows `jssdk/`.
pub async fn config(
    session: &mut Session<'_>,
    clients: &Clients,
    tokens: &TokenService,
    method: &Method,
    rest: &str,
) -> Reply {
    let Some(appid) = rest.strip_suffix("/config") else { return Reply::error(404, "no such route") };
    let appid = match AppId::parse(appid) {
        Ok(a) => a,
        Err(e) => return Reply::error(400, e),
    };
    match client_from_headers(clients, session.req()) {
        Ok(client) if client.allows(&appid) => {}
        Ok(_) => return Reply::error(403, "this client may not act for that authorizer"),
        Err(e) => return Reply::error(e.status(), e),
    }
    let url = match *method {
        Method::GET => param(session.req().uri.query().unwrap_or_default(), "url"),
        Method::POST => match read_body(session, MAX_CONFIG_BODY).await {
            Ok(body) => serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_owned)),
            Err(e) => return e.reply(),
        },
        _ => return Reply::error(405, "the config route takes GET or POST"),
    };
    let url = match url.as_deref().map(page_url) {
        Some(Ok(url)) => url,
        Some(Err(reason)) => return Reply::error(400, reason),
        None => return Reply::error(400, "name the page: ?url=URL, or POST {\"url\": URL}"),
    };
    let ticket = match tokens.tickets().get(&appid, TicketKind::Jsapi).await {
        Ok(ticket) => ticket,
        Err(e) => return Reply::error(e.status(), e),
    };
    let nonce = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
    let timestamp = unix_now();
    let signature = sign(ticket.value.expose(), &nonce, timestamp, url);
    Reply::json(
        200,
        &json!({ "appId": appid.as_str(), "timestamp": timestamp, "nonceStr": nonce, "signature": signature }),
    )
}

/// The page's URL as it is signed: absolute http(s), without its `#` part, otherwise unchanged
/// (not re-encoded: the page signs what `location.href.split('#')[0]` gives).
fn page_url(url: &str) -> Result<&str, &'static str> {
    let url = url.split('#').next().unwrap_or_default();
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url::Url::parse(url).is_err() {
        return Err("url must be the page's absolute http(s) URL");
    }
    Ok(url)
}

/// `wx.config`'s signature: sha1 of `jsapi_ticket=..&noncestr=..&timestamp=..&url=..`, keys in
/// that order, values as they are (WeChat's JS-SDK document, 附录1).
pub fn sign(ticket: &str, nonce: &str, timestamp: i64, url: &str) -> String {
    let plain = format!("jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}");
    hex::encode(Sha1::digest(plain.as_bytes()))
}

fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of WeChat's JS-SDK document (附录1-JS-SDK使用权限签名算法,
    /// https://developers.weixin.qq.com/doc/offiaccount/OA_Web_Apps/JS-SDK.html), also asserted by
    /// peers' tests, e.g. github.com/kinisky564477/wechat `TestJsTicketSignature`; checked again
    /// here with Python's hashlib.sha1 over the same string.
    #[test]
    fn signs_like_wechats_published_example() {
        let signature = sign(
            "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
            "Wm3WZYTPz0wzccnW",
            1414587457,
            "http://mp.weixin.qq.com?params=value",
        );
        assert_eq!(signature, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    }

    #[test]
    fn the_page_url_loses_its_fragment_and_nothing_else() {
        assert_eq!(page_url("https://shop.example.com/p?a=1&b=%20x#top"), Ok("https://shop.example.com/p?a=1&b=%20x"));
        assert!(page_url("/relative").is_err());
        assert!(page_url("javascript:alert(1)").is_err());
        assert!(page_url("").is_err());
    }
}
