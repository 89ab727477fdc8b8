//! WeChat's message-and-event receiver (消息与事件接收URL, `/wxgate/callback/$APPID$`): verify
//! msg_signature, decrypt with the component's key (receive id = the component appid), parse
//! with the hardened reader, and hand the message to the message service.
//!
//! A push that fails any check gets a 4xx and reaches no handler. See PROTOCOL.md §4 and §9.

use super::{encrypt_field, envelope_fields, CallbackError, SignedQuery};
use crate::crypto::MsgCrypt;
use crate::messages::{MessageService, Reply};
use crate::metrics;
use crate::xml;
use crate::AppId;
use std::sync::Arc;

pub struct AccountReceiver {
    crypt: MsgCrypt,
    messages: Arc<MessageService>,
}

impl AccountReceiver {
    /// `crypt` is the component's: its token, key and appid as receive id.
    pub fn new(crypt: MsgCrypt, messages: Arc<MessageService>) -> Self {
        Self { crypt, messages }
    }

    pub fn messages(&self) -> &Arc<MessageService> {
        &self.messages
    }

    /// Handles one push for `authorizer`; `Ok` is the answer for WeChat.
    pub async fn receive(&self, authorizer: AppId, query: &str, body: &[u8]) -> Result<Reply, CallbackError> {
        let result = self.verify_and_handle(authorizer, query, body).await;
        if let Err(e) = &result {
            metrics::CALLBACK_REJECTED.with_label_values(&[e.reason()]).inc();
        }
        result
    }

    async fn verify_and_handle(&self, authorizer: AppId, query: &str, body: &[u8]) -> Result<Reply, CallbackError> {
        let params = SignedQuery::parse(query)?;
        let encrypt = envelope(body)?;
        let message = self.crypt.open(&params.timestamp, &params.nonce, &encrypt, &params.msg_signature)?;
        let fields = xml::parse(&message).map_err(CallbackError::Message)?;
        Ok(self.messages.receive(authorizer, message, &fields, &params.nonce).await?)
    }
}

/// The `Encrypt` field of `<xml><ToUserName/><Encrypt/></xml>`. ToUserName is the account's
/// original id (gh_...), which the gateway need not know: the path names the appid.
fn envelope(body: &[u8]) -> Result<String, CallbackError> {
    encrypt_field(&envelope_fields(body)?)
}
