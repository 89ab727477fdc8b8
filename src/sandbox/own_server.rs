//! What WeChat sends a directly-owned account's own message server (服务器配置, PROTOCOL.md §13):
//! the check of its URL, and messages in plaintext, compatible or safe mode, signed with the
//! account's own token and sealed with its own key (receive id: its own appid).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::messages::{message_xml, open_reply, original_id, parse_reply, MessageSpec, PushOutcome, SANDBOX_OPENID};
use super::owned::Account;
use super::push::{nonce, plain_signature, unix_now};
use super::tokens::random_text;
use super::{Sandbox, SandboxError};
use crate::appid::AppId;
use crate::crypto::MsgCrypt;
use crate::secret::Secret;

/// How the account's server takes messages (消息加解密方式).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageMode {
    /// Bare XML, `signature` only.
    Plaintext,
    /// The plain fields and `Encrypt` side by side, with `msg_signature`.
    Compatible,
    /// `Encrypt` only, with `msg_signature`; replies must be encrypted too.
    #[default]
    Safe,
}

/// Where and how to push to an account's own server.
#[derive(Debug, Clone, Default)]
pub struct AccountPush {
    pub mode: MessageMode,
    /// Instead of the gateway's `.../wxgate/callback/{appid}`.
    pub url: Option<String>,
    /// Signed and sealed with a token and key that are not the account's, as a forger would.
    pub forge: bool,
}

/// What the server answered WeChat's check of its URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UrlCheck {
    pub status: u16,
    pub body: String,
    /// HTTP 200 with the body exactly the `echostr` sent: WeChat accepts the URL.
    pub echoed: bool,
}

/// The token and crypto a push is signed and sealed with: the account's, or a forger's.
struct Signer {
    token: Secret,
    crypt: MsgCrypt,
}

impl Sandbox {
    /// Pushes one message or event to an owned account's own server as WeChat would, and reads
    /// the answer: a passive reply is checked against the mode (encrypted in safe mode, its
    /// signature and nonce verified with the account's own token and key).
    pub async fn push_account_message(
        &self,
        appid: &AppId,
        spec: &MessageSpec,
        how: &AccountPush,
    ) -> Result<PushOutcome, SandboxError> {
        let account = self.owned(appid)?;
        let url = self.account_url(appid, how.url.as_deref())?;
        let signer = signer(account, appid, how.forge)?;
        let message = message_xml(appid, spec);
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let openid = spec.openid.as_deref().unwrap_or(SANDBOX_OPENID);
        let mut params = vec![
            ("signature", plain_signature(&signer.token, &timestamp, &nonce)),
            ("timestamp", timestamp.clone()),
            ("nonce", nonce.clone()),
            ("openid", openid.to_owned()),
        ];
        let body = match how.mode {
            MessageMode::Plaintext => message.clone(),
            mode => {
                let sealed = signer.crypt.seal(&message, &timestamp, &nonce);
                params.extend([("encrypt_type", "aes".to_owned()), ("msg_signature", sealed.msg_signature)]);
                sealed_body(mode, appid, &message, &sealed.encrypt)
            }
        };
        let url = format!("{url}?{}", query_string(&params));
        let started = Instant::now();
        let (status, text) = self.inner.pusher.post_xml(&url, body).await?;
        let mut outcome = PushOutcome::new(status, text, started, &message);
        if outcome.has_reply() {
            outcome.set_reply(read_reply(&account.crypt, how.mode, &outcome.body, &nonce));
        }
        Ok(outcome)
    }

    /// WeChat's check of an owned account's server URL: `GET ?signature&timestamp&nonce&echostr`,
    /// passed when the body is the echostr.
    pub async fn check_account_url(
        &self,
        appid: &AppId,
        url: Option<&str>,
        forge: bool,
    ) -> Result<UrlCheck, SandboxError> {
        let url = self.account_url(appid, url)?;
        let signer = signer(self.owned(appid)?, appid, forge)?;
        let (timestamp, nonce) = (unix_now().to_string(), nonce());
        let echostr = rand::random::<u64>().to_string();
        let query = query_string(&[
            ("signature", plain_signature(&signer.token, &timestamp, &nonce)),
            ("timestamp", timestamp),
            ("nonce", nonce),
            ("echostr", echostr.clone()),
        ]);
        let (status, body) = self.inner.pusher.get(&format!("{url}?{query}")).await?;
        Ok(UrlCheck { status, echoed: status == 200 && body == echostr, body })
    }

    fn owned(&self, appid: &AppId) -> Result<&Account, SandboxError> {
        self.inner.accounts.get(appid).ok_or(SandboxError::NotOwned(*appid))
    }

    /// The override, else the gateway's message URL for the account.
    fn account_url(&self, appid: &AppId, url: Option<&str>) -> Result<String, SandboxError> {
        url.map(str::to_owned)
            .or_else(|| self.message_url(appid))
            .ok_or_else(|| SandboxError::Push("no callback URL is configured".into()))
    }
}

/// The account's own token and key, or, to forge, a token and key that are not its.
fn signer(account: &Account, appid: &AppId, forge: bool) -> Result<Signer, SandboxError> {
    if !forge {
        return Ok(Signer { token: account.token.clone(), crypt: account.crypt.clone() });
    }
    // 42 random base64 characters and an `A` (no stray low bits) make a well-formed key.
    let (token, key) = (Secret::new(random_text(32)), Secret::new(format!("{}A", random_text(42))));
    let crypt = MsgCrypt::new(&token, &key, &appid.as_str()).map_err(|e| SandboxError::Push(e.to_string()))?;
    Ok(Signer { token, crypt })
}

fn query_string(params: &[(&str, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

/// Safe mode sends `Encrypt` with only the addressee in the clear, as WeChat's safe-mode pushes
/// do; compatible mode adds `Encrypt` to the plain fields.
fn sealed_body(mode: MessageMode, appid: &AppId, message: &str, encrypt: &str) -> String {
    let field = format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt>");
    match mode {
        MessageMode::Safe => format!("<xml><ToUserName><![CDATA[{}]]></ToUserName>{field}</xml>", original_id(appid)),
        _ => format!("{}{field}</xml>", message.strip_suffix("</xml>").unwrap_or(message)),
    }
}

/// A passive reply as WeChat reads it in each mode: compatible takes either form, safe only an
/// encrypted one, plaintext only a plain one.
fn read_reply(crypt: &MsgCrypt, mode: MessageMode, body: &str, nonce: &str) -> Result<String, String> {
    let fields = parse_reply(body)?;
    match (mode, fields.get("Encrypt").is_some()) {
        (MessageMode::Plaintext, true) => Err("an encrypted reply to a plaintext-mode push".into()),
        (MessageMode::Safe, false) => Err("a plaintext reply in safe mode".into()),
        (_, false) => Ok(body.to_owned()),
        (_, true) => open_reply(crypt, &fields, nonce),
    }
}

/// The JSON body of `POST /sandbox/account-message`; the message fields are `/sandbox/message`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountMessageBody {
    appid: String,
    #[serde(default)]
    mode: MessageMode,
    url: Option<String>,
    #[serde(default)]
    forge: bool,
    #[serde(rename = "type")]
    msg_type: Option<String>,
    content: Option<String>,
    event: Option<String>,
    openid: Option<String>,
    msg_id: Option<u64>,
}

impl AccountMessageBody {
    pub fn into_parts(self) -> Result<(AppId, MessageSpec, AccountPush), String> {
        let appid = AppId::parse(&self.appid).map_err(|e| e.to_string())?;
        let spec = MessageSpec {
            msg_type: self.msg_type.unwrap_or_else(|| "text".to_owned()),
            content: self.content,
            event: self.event,
            openid: self.openid,
            msg_id: self.msg_id,
        };
        Ok((appid, spec, AccountPush { mode: self.mode, url: self.url, forge: self.forge }))
    }
}

/// The JSON body of `POST /sandbox/account-urlcheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UrlCheckBody {
    appid: String,
    url: Option<String>,
    #[serde(default)]
    forge: bool,
}

impl UrlCheckBody {
    pub fn into_parts(self) -> Result<(AppId, Option<String>, bool), String> {
        let appid = AppId::parse(&self.appid).map_err(|e| e.to_string())?;
        Ok((appid, self.url, self.forge))
    }
}

#[cfg(test)]
mod tests;
