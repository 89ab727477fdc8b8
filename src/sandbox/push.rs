//! Pushes to the gateway's authorization-event URL, sealed and signed as WeChat does (PROTOCOL.md §3).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sha1::{Digest, Sha1};

use super::ledger::CODE_LIFETIME;
use super::SandboxError;
use crate::crypto::MsgCrypt;
use crate::secret::Secret;

/// WeChat gives a push 5 seconds before it counts as failed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A push's nonce: digits, as WeChat's are.
pub(crate) fn nonce() -> String {
    rand::thread_rng().gen_range(100_000_000u32..4_000_000_000).to_string()
}

/// `signature` = sha1 of the sorted token, timestamp and nonce: what a plaintext-mode server
/// and WeChat's URL check verify.
pub(crate) fn plain_signature(token: &Secret, timestamp: &str, nonce: &str) -> String {
    let mut parts = [token.expose(), timestamp, nonce];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat()))
}

/// Seals messages with the component's own appid as receive id and posts them to the callback URL.
pub(crate) struct Pusher {
    client: reqwest::Client,
    crypt: MsgCrypt,
    token: Secret,
    url: Option<String>,
}

impl Pusher {
    pub fn new(crypt: MsgCrypt, token: Secret, url: Option<String>) -> Self {
        let client =
            reqwest::Client::builder().timeout(PUSH_TIMEOUT).build().expect("a client with only a timeout set builds");
        Self { client, crypt, token, url }
    }

    pub fn crypt(&self) -> &MsgCrypt {
        &self.crypt
    }

    pub fn has_target(&self) -> bool {
        self.url.is_some()
    }

    /// Posts one message; success is HTTP 200 with the body exactly `success`, as WeChat requires.
    /// Without a callback URL there is nowhere to push, which is not a failure.
    pub async fn send(&self, message: &str) -> Result<(), SandboxError> {
        let Some(url) = &self.url else { return Ok(()) };
        let timestamp = unix_now().to_string();
        let nonce = nonce();
        let sealed = self.crypt.seal(message, &timestamp, &nonce);
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("signature", &self.plain_signature(&timestamp, &nonce))
            .append_pair("timestamp", &timestamp)
            .append_pair("nonce", &nonce)
            .append_pair("encrypt_type", "aes")
            .append_pair("msg_signature", &sealed.msg_signature)
            .finish();
        let sep = if url.contains('?') { '&' } else { '?' };
        let body = format!(
            "<xml><AppId><![CDATA[{}]]></AppId><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            self.crypt.receive_id(),
            sealed.encrypt
        );
        let response = self
            .client
            .post(format!("{url}{sep}{query}"))
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| SandboxError::Push(e.without_url().to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| SandboxError::Push(e.without_url().to_string()))?;
        if status == reqwest::StatusCode::OK && text == "success" {
            Ok(())
        } else {
            let shown: String = text.chars().take(200).collect();
            Err(SandboxError::Push(format!("the callback answered HTTP {status} with {shown:?}, not \"success\"")))
        }
    }

    /// The old three-field `signature` WeChat also sends; gateways must check msg_signature instead.
    pub fn plain_signature(&self, timestamp: &str, nonce: &str) -> String {
        plain_signature(&self.token, timestamp, nonce)
    }

    /// A GET within WeChat's 5 seconds (the check of a server URL); the status and body.
    pub async fn get(&self, url: &str) -> Result<(u16, String), SandboxError> {
        let failed = |e: reqwest::Error| SandboxError::Push(e.without_url().to_string());
        let response = self.client.get(url).timeout(PUSH_TIMEOUT).send().await.map_err(failed)?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(failed)?))
    }

    /// Posts an XML body within WeChat's 5 seconds; the status and body, whatever they are.
    pub async fn post_xml(&self, url: &str, body: String) -> Result<(u16, String), SandboxError> {
        let response = self
            .client
            .post(url)
            .timeout(PUSH_TIMEOUT)
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| SandboxError::Push(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| SandboxError::Push(e.without_url().to_string()))?;
        Ok((status, text))
    }

    pub fn appid(&self) -> &str {
        self.crypt.receive_id()
    }
}

pub(crate) fn ticket_message(appid: &str, ticket: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{}</CreateTime>\
         <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
         <ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>",
        unix_now()
    )
}

/// `authorized` or `updateauthorized`; the code's expiry is absolute unix seconds, as SDK fixtures read it.
pub(crate) fn authorized_message(appid: &str, info_type: &str, authorizer: &str, code: &str, pre_auth: &str) -> String {
    let now = unix_now();
    format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{now}</CreateTime>\
         <InfoType><![CDATA[{info_type}]]></InfoType><AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>\
         <AuthorizationCode><![CDATA[{code}]]></AuthorizationCode>\
         <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\
         <PreAuthCode><![CDATA[{pre_auth}]]></PreAuthCode></xml>",
        now + CODE_LIFETIME.as_secs()
    )
}

pub(crate) fn unauthorized_message(appid: &str, authorizer: &str) -> String {
    format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{}</CreateTime>\
         <InfoType><![CDATA[unauthorized]]></InfoType>\
         <AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid></xml>",
        unix_now()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_wechat_fields() {
        let t = ticket_message("wx0000000000000001", "ticket@@@abc");
        assert!(t.contains("<InfoType><![CDATA[component_verify_ticket]]></InfoType>"));
        assert!(t.contains("<ComponentVerifyTicket><![CDATA[ticket@@@abc]]></ComponentVerifyTicket>"));
        let a = authorized_message("wx0000000000000001", "authorized", "wx1111111111111111", "code", "pre");
        for field in
            ["AuthorizerAppid", "AuthorizationCode", "AuthorizationCodeExpiredTime", "PreAuthCode", "CreateTime"]
        {
            assert!(a.contains(&format!("<{field}>")), "{field}");
        }
        let u = unauthorized_message("wx0000000000000001", "wx1111111111111111");
        assert!(u.contains("<InfoType><![CDATA[unauthorized]]></InfoType>"));
    }

    #[test]
    fn plain_signature_sorts_fields() {
        let crypt = MsgCrypt::new(
            &Secret::new("t"),
            &Secret::new("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
            "wx0000000000000001",
        )
        .unwrap();
        let p = Pusher::new(crypt, Secret::new("token"), None);
        assert_eq!(p.plain_signature("123", "nonce"), hex::encode(Sha1::digest("123noncetoken")));
    }
}
