//! The message-and-event receiver, `/wxgate/callback/{appid}`, for two kinds of account:
//!
//! - an authorizer's pushes (消息与事件接收URL, PROTOCOL.md §4 and §9), always encrypted with
//!   the platform's key, receive id = the component appid;
//! - an owned account's own message server (服务器配置, PROTOCOL.md §13), with its own token and
//!   key: plaintext (`signature`), compatible or safe mode (`encrypt_type=aes`, `msg_signature`),
//!   receive id = its own appid. WeChat checks that URL with a signed `GET ... echostr`.
//!
//! Each push is verified, decrypted and parsed with the hardened reader, handed to the message
//! service, and a passive reply is sealed the way the push came: encrypted with the key it was
//! encrypted with, or plain. A push that fails any check gets a 4xx and reaches no handler.

use super::{encrypt_field, envelope_fields, CallbackError, SignedQuery};
use crate::crypto::{verify_plain, MsgCrypt};
use crate::messages::{MessageService, Reply};
use crate::metrics;
use crate::xml;
use crate::{AppId, Secret};
use std::collections::HashMap;
use std::sync::Arc;

/// What the push is answered with.
#[derive(Debug, PartialEq, Eq)]
pub enum PushAnswer {
    /// The body `success`.
    Success,
    /// A passive reply: `<xml><Encrypt/>...</xml>` for an encrypted push, the handler's XML
    /// for a plaintext one.
    Xml(String),
}

/// An owned account's own message server: its token, and its key when it has one.
pub struct OwnServer {
    pub token: Secret,
    /// Receive id = the account's own appid.
    pub crypt: Option<MsgCrypt>,
}

pub struct AccountReceiver {
    /// The platform's: its token, key and appid as receive id; `None` without a platform.
    platform: Option<MsgCrypt>,
    /// The owned accounts that have a message server, by appid.
    owned: HashMap<AppId, OwnServer>,
    messages: Arc<MessageService>,
}

impl AccountReceiver {
    pub fn new(platform: Option<MsgCrypt>, owned: HashMap<AppId, OwnServer>, messages: Arc<MessageService>) -> Self {
        Self { platform, owned, messages }
    }

    pub fn messages(&self) -> &Arc<MessageService> {
        &self.messages
    }

    /// Handles one push for `appid`; `Ok` is the answer for WeChat.
    pub async fn receive(&self, appid: AppId, query: &str, body: &[u8]) -> Result<PushAnswer, CallbackError> {
        let result = match self.owned.get(&appid) {
            Some(server) => self.own_push(server, appid, query, body).await,
            None => self.authorizer_push(appid, query, body).await,
        };
        if let Err(e) = &result {
            metrics::CALLBACK_REJECTED.with_label_values(&[e.reason()]).inc();
        }
        result
    }

    /// WeChat's check of an owned account's server URL: `echostr` back when the signature holds.
    pub fn check_url(&self, appid: AppId, query: &str) -> Result<String, CallbackError> {
        let server = self.owned.get(&appid).ok_or(CallbackError::UnknownAccount)?;
        let q = PushQuery::parse(query);
        let signature = q.signature.as_deref().ok_or(CallbackError::MissingParam("signature"))?;
        verify_plain(&server.token, q.timestamp()?, q.nonce()?, signature)?;
        q.echostr.ok_or(CallbackError::MissingParam("echostr"))
    }

    async fn authorizer_push(&self, authorizer: AppId, query: &str, body: &[u8]) -> Result<PushAnswer, CallbackError> {
        let crypt = self.platform.as_ref().ok_or(CallbackError::UnknownAccount)?;
        let params = SignedQuery::parse(query)?;
        // ToUserName is the account's original id (gh_...), which the gateway need not know:
        // the path names the appid.
        let encrypt = encrypt_field(&envelope_fields(body)?)?;
        let message = crypt.open(&params.timestamp, &params.nonce, &encrypt, &params.msg_signature)?;
        let reply = self.hand_on(authorizer, message).await?;
        Ok(seal(reply, Some(crypt), &params.nonce))
    }

    async fn own_push(
        &self,
        server: &OwnServer,
        appid: AppId,
        query: &str,
        body: &[u8],
    ) -> Result<PushAnswer, CallbackError> {
        let q = PushQuery::parse(query);
        let (timestamp, nonce) = (q.timestamp()?, q.nonce()?);
        let fields = envelope_fields(body)?;
        if !q.encrypted {
            let signature = q.signature.as_deref().ok_or(CallbackError::MissingParam("signature"))?;
            verify_plain(&server.token, timestamp, nonce, signature)?;
            let message = String::from_utf8_lossy(body).into_owned();
            let reply = self.handle_parsed(appid, message, &fields).await?;
            return Ok(seal(reply, None, nonce));
        }
        // Safe and compatible mode: only the sealed copy is trusted, even where plain fields
        // come beside it.
        let crypt = server.crypt.as_ref().ok_or(CallbackError::NoKey)?;
        let msg_signature = q.msg_signature.as_deref().ok_or(CallbackError::MissingParam("msg_signature"))?;
        let message = crypt.open(timestamp, nonce, &encrypt_field(&fields)?, msg_signature)?;
        let reply = self.hand_on(appid, message).await?;
        Ok(seal(reply, Some(crypt), nonce))
    }

    async fn hand_on(&self, appid: AppId, message: String) -> Result<Reply, CallbackError> {
        let fields = xml::parse(&message).map_err(CallbackError::Message)?;
        self.handle_parsed(appid, message, &fields).await
    }

    async fn handle_parsed(&self, appid: AppId, message: String, fields: &xml::Fields) -> Result<Reply, CallbackError> {
        Ok(self.messages.receive(appid, message, fields).await?)
    }
}

/// The reply in the push's own mode: sealed with `crypt` (signed over its own timestamp and the
/// push's nonce), or plain.
fn seal(reply: Reply, crypt: Option<&MsgCrypt>, nonce: &str) -> PushAnswer {
    match (reply, crypt) {
        (Reply::Success, _) => PushAnswer::Success,
        (Reply::Passive(xml), None) => PushAnswer::Xml(xml),
        (Reply::Passive(xml), Some(crypt)) => {
            let timestamp = crate::store::unix_now().to_string();
            PushAnswer::Xml(crypt.seal(&xml, &timestamp, nonce).reply_xml(&timestamp, nonce))
        }
    }
}

/// The query of an owned account's push or URL check.
#[derive(Default)]
struct PushQuery {
    timestamp: Option<String>,
    nonce: Option<String>,
    signature: Option<String>,
    msg_signature: Option<String>,
    echostr: Option<String>,
    /// `encrypt_type=aes`: safe or compatible mode.
    encrypted: bool,
}

impl PushQuery {
    fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "timestamp" => &mut q.timestamp,
                "nonce" => &mut q.nonce,
                "signature" => &mut q.signature,
                "msg_signature" => &mut q.msg_signature,
                "echostr" => &mut q.echostr,
                "encrypt_type" => {
                    q.encrypted = v == "aes";
                    continue;
                }
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        q
    }

    fn timestamp(&self) -> Result<&str, CallbackError> {
        self.timestamp.as_deref().ok_or(CallbackError::MissingParam("timestamp"))
    }

    fn nonce(&self) -> Result<&str, CallbackError> {
        self.nonce.as_deref().ok_or(CallbackError::MissingParam("nonce"))
    }
}
