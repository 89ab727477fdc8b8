//! The customer-service message (`message/custom/send`), for the release check's
//! QUERY_AUTH_CODE step: sent by the one client that calls WeChat's endpoints, not one of its own.

use super::{WechatClient, WechatError};
use crate::Secret;
use async_trait::async_trait;
use serde_json::{json, Value};

#[async_trait]
pub trait CustomerService: Send + Sync + 'static {
    /// `POST /cgi-bin/message/custom/send?access_token=` a text to `openid`, with the token of
    /// the account that sends it.
    async fn send_text(&self, access_token: &Secret, openid: &str, content: &str) -> Result<(), WechatError>;
}

#[async_trait]
impl CustomerService for WechatClient {
    async fn send_text(&self, access_token: &Secret, openid: &str, content: &str) -> Result<(), WechatError> {
        let body = json!({ "touser": openid, "msgtype": "text", "text": { "content": content } });
        let _: Value =
            self.post_path("message/custom/send", "cgi-bin/message/custom/send", Some(access_token), body).await?;
        Ok(())
    }
}
