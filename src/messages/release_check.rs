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
use crate::wechat::{ApiErrorKind, CustomerService, WechatError};
use crate::xml::Fields;
use crate::AppId;
use std::sync::Arc;
use std::time::Duration;

pub const TEXT_PROBE: &str = "TESTCOMPONENT_MSG_TYPE_TEXT";
pub const QUERY_AUTH_PREFIX: &str = "QUERY_AUTH_CODE:";
/// WeChat's window for the customer-service message after a QUERY_AUTH_CODE push.
const FOLLOW_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon an exchange that could not be made yet is tried again, within that window.
const EXCHANGE_RETRY: Duration = Duration::from_millis(250);

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
    Send(#[from] WechatError),
}

/// The QUERY_AUTH_CODE follow-up: exchange, then the customer-service message, through the one
/// client that calls WeChat (its CA, its timeout, its errcode counts).
pub struct ReleaseCheck {
    tokens: Arc<TokenService>,
    wechat: Arc<dyn CustomerService>,
}

impl ReleaseCheck {
    pub fn new(tokens: Arc<TokenService>, wechat: Arc<dyn CustomerService>) -> Self {
        Self { tokens, wechat }
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
        let auth = self.exchange(code).await?;
        let content = format!("{code}_from_api");
        Ok(self.wechat.send_text(&auth.access_token.value, openid, &content).await?)
    }

    /// The code exchanged, tried again while it cannot be yet: WeChat's check often sends it
    /// moments after the first ticket, before the component token is held. Only what a wait
    /// may mend is tried again; the caller's timeout ends the tries.
    async fn exchange(&self, code: &str) -> Result<crate::wechat::Authorization, TokenError> {
        loop {
            match self.tokens.grants().exchange(code).await {
                Err(e) if not_yet(&e) => {
                    tracing::debug!(error = %e, "release check: the code cannot be exchanged yet; trying again");
                    tokio::time::sleep(EXCHANGE_RETRY).await;
                }
                other => return other,
            }
        }
    }
}

/// Whether an exchange failed for want of something that comes by itself: the first ticket,
/// a component token another instance or a backoff is still getting, a busy WeChat.
fn not_yet(error: &TokenError) -> bool {
    match error {
        TokenError::NoTicket | TokenError::Contended | TokenError::Store(_) | TokenError::Budget { .. } => true,
        TokenError::Wechat(WechatError::Api { kind, .. }) => matches!(kind, ApiErrorKind::Ticket | ApiErrorKind::Busy),
        TokenError::Wechat(
            WechatError::Timeout { .. } | WechatError::Transport { .. } | WechatError::Status { .. },
        ) => true,
        _ => false,
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
