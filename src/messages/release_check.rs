//! WeChat's release check (全网发布, PROTOCOL.md §10), answered by the gateway itself: every test
//! account of the five test groups, official accounts and mini programs, before any route.
//!
//! - text `TESTCOMPONENT_MSG_TYPE_TEXT` → passive reply `TESTCOMPONENT_MSG_TYPE_TEXT_callback`;
//! - text `QUERY_AUTH_CODE:<code>` → `success` at once, then `api_query_auth` with the code and
//!   the customer-service text `<code>_from_api` to the sender with the token obtained;
//! - an event → passive reply `<Event>from_callback`.
//!
//! The test accounts are never kept as authorizers: the code is exchanged without storing
//! anything, and their `authorized` pushes are ignored by the token service.

use crate::tokens::{TokenError, TokenService};
use crate::wechat::WechatError;
use crate::xml::Fields;
use crate::AppId;
use std::sync::Arc;
use std::time::Duration;

pub const TEXT_PROBE: &str = "TESTCOMPONENT_MSG_TYPE_TEXT";
pub const QUERY_AUTH_PREFIX: &str = "QUERY_AUTH_CODE:";
/// WeChat's window for the customer-service message after a QUERY_AUTH_CODE push.
const FOLLOW_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gateway does with a test account's push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer with this text as the passive reply.
    Reply(String),
    /// Answer `success`, then exchange the code and send `<code>_from_api`.
    QueryAuth(String),
    /// Anything else: `success`.
    Success,
}

pub fn action(fields: &Fields) -> Action {
    match fields.get("MsgType").unwrap_or_default() {
        "text" => {
            let content = fields.get("Content").unwrap_or_default();
            if content == TEXT_PROBE {
                Action::Reply(format!("{TEXT_PROBE}_callback"))
            } else if let Some(code) = content.strip_prefix(QUERY_AUTH_PREFIX).filter(|c| !c.is_empty()) {
                Action::QueryAuth(code.to_owned())
            } else {
                Action::Success
            }
        }
        "event" => Action::Reply(format!("{}from_callback", fields.get("Event").unwrap_or_default())),
        _ => Action::Success,
    }
}

/// A passive text reply to the sender of `fields`: To and From swapped, as WeChat wants.
pub fn text_reply(fields: &Fields, content: &str, now: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
         <CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{}]]></Content></xml>",
        cdata(fields.get("FromUserName").unwrap_or_default()),
        cdata(fields.get("ToUserName").unwrap_or_default()),
        cdata(content),
    )
}

/// A `]]>` inside a value must not end the CDATA section early.
fn cdata(s: &str) -> String {
    s.replace("]]>", "]]]]><![CDATA[>")
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("api_query_auth: {0}")]
    QueryAuth(#[from] TokenError),
    #[error("message/custom/send: {0}")]
    Send(String),
}

/// The QUERY_AUTH_CODE follow-up: exchange, then the customer-service message.
pub struct ReleaseCheck {
    tokens: Arc<TokenService>,
    http: reqwest::Client,
    base_url: url::Url,
}

impl ReleaseCheck {
    pub fn new(tokens: Arc<TokenService>, base_url: url::Url) -> Result<Self, WechatError> {
        let http = reqwest::Client::builder()
            .timeout(FOLLOW_UP_TIMEOUT)
            .user_agent(concat!("wxgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WechatError::from_reqwest("message/custom/send", e))?;
        Ok(Self { tokens, http, base_url })
    }

    /// Runs the follow-up in the background: WeChat must get `success` first.
    pub fn follow_up(self: &Arc<Self>, authorizer: AppId, code: String, openid: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match tokio::time::timeout(FOLLOW_UP_TIMEOUT, this.exchange_and_send(&code, &openid)).await {
                Ok(Ok(())) => tracing::info!(authorizer = %authorizer, "release check: customer-service reply sent"),
                Ok(Err(e)) => {
                    tracing::warn!(authorizer = %authorizer, error = %e, "release check: QUERY_AUTH_CODE step failed")
                }
                Err(_) => tracing::warn!(authorizer = %authorizer, "release check: QUERY_AUTH_CODE step timed out"),
            }
        });
    }

    async fn exchange_and_send(&self, code: &str, openid: &str) -> Result<(), ReleaseError> {
        let auth = self.tokens.grants().exchange(code).await?;
        let mut url =
            self.base_url.join("cgi-bin/message/custom/send").map_err(|e| ReleaseError::Send(e.to_string()))?;
        url.query_pairs_mut().append_pair("access_token", auth.access_token.value.expose());
        let body = serde_json::json!({
            "touser": openid,
            "msgtype": "text",
            "text": { "content": format!("{code}_from_api") },
        });
        let answer = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| ReleaseError::Send(e.without_url().to_string()))?;
        let status = answer.status();
        let value: serde_json::Value =
            answer.json().await.map_err(|_| ReleaseError::Send(format!("HTTP {status}, not JSON")))?;
        match value.get("errcode").and_then(serde_json::Value::as_i64).unwrap_or(0) {
            0 => Ok(()),
            errcode => Err(ReleaseError::Send(format!("errcode {errcode}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_follow_wechats_script() {
        let parse = |x: &str| crate::xml::parse(x).unwrap();
        let text = |c: &str| parse(&format!("<xml><MsgType>text</MsgType><Content><![CDATA[{c}]]></Content></xml>"));
        assert_eq!(action(&text(TEXT_PROBE)), Action::Reply("TESTCOMPONENT_MSG_TYPE_TEXT_callback".into()));
        assert_eq!(action(&text("QUERY_AUTH_CODE:queryauthcode@@@x")), Action::QueryAuth("queryauthcode@@@x".into()));
        assert_eq!(action(&text("QUERY_AUTH_CODE:")), Action::Success);
        assert_eq!(action(&text("hello")), Action::Success);
        let event = parse("<xml><MsgType>event</MsgType><Event>LOCATION</Event></xml>");
        assert_eq!(action(&event), Action::Reply("LOCATIONfrom_callback".into()));
        assert_eq!(action(&parse("<xml><MsgType>image</MsgType></xml>")), Action::Success);
    }

    #[test]
    fn text_reply_swaps_sender_and_receiver() {
        let f =
            crate::xml::parse("<xml><ToUserName>gh_1</ToUserName><FromUserName>o_user</FromUserName></xml>").unwrap();
        let reply = crate::xml::parse(&text_reply(&f, "a]]>b", 7)).unwrap();
        assert_eq!(reply.get("ToUserName"), Some("o_user"));
        assert_eq!(reply.get("FromUserName"), Some("gh_1"));
        assert_eq!(reply.get("Content"), Some("a]]>b"));
        assert_eq!(reply.get("CreateTime"), Some("7"));
    }
}
