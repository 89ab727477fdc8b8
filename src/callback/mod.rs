//! WeChat's authorization-event receiver (授权事件接收URL): verify, decrypt, parse, hand to tokens.
//!
//! WeChat retries a push that is not answered `success`, so a verified event is answered
//! `success` as soon as it is durable, whatever it says; a push that fails verification
//! changes nothing and is refused with a 4xx. See PROTOCOL.md §3 and
//! <https://developers.weixin.qq.com/doc/oplatform/Third-party_Platforms/2.0/api/Before_Develop/component_verify_ticket.html>.

mod account;
pub mod admission;

pub use account::{AccountReceiver, OwnServer, PushAnswer};
pub use admission::Admission;

use crate::xml::{self, XmlError};

use crate::crypto::{CryptoError, MsgCrypt};
use crate::metrics;
use crate::store::{unix_now, AuthEvent, Ticket};
use crate::tokens::{TokenError, TokenService};
use crate::{AppId, Secret};
use std::sync::Arc;

/// How a verified push without InfoType is recorded.
pub const UNKNOWN_INFO_TYPE: &str = "unknown";

/// The largest push accepted. WeChat's authorization events are well under 2 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("body is empty")]
    Empty,
    #[error("query parameter {0} is missing")]
    MissingParam(&'static str),
    #[error("encrypt_type must be aes")]
    NotEncrypted,
    #[error("envelope: {0}")]
    Envelope(XmlError),
    #[error("decrypted message: {0}")]
    Message(XmlError),
    #[error("field {0} is missing or malformed")]
    Field(&'static str),
    #[error("addressed to another component appid")]
    WrongComponent,
    #[error("no authorized or owned account with a message server has this appid")]
    UnknownAccount,
    #[error("encrypted push, but the account has no encoding_aes_key configured")]
    NoKey,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("could not record the event: {0}")]
    Tokens(#[from] TokenError),
    #[error("could not record the message: {0}")]
    Messages(#[from] crate::messages::MessageError),
}

impl CallbackError {
    /// The HTTP status: 403 for a push that is not from WeChat, 503 when the gateway itself
    /// failed (so that WeChat retries), 400 or 413 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge => 413,
            Self::UnknownAccount => 404,
            Self::Crypto(CryptoError::BadSignature) => 403,
            Self::Tokens(_) | Self::Messages(_) => 503,
            _ => 400,
        }
    }

    /// The `reason` label of `wxgate_callback_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Empty => "empty",
            Self::MissingParam(_) | Self::NotEncrypted => "query",
            Self::Envelope(_) | Self::Message(_) => "xml",
            Self::Field(_) => "field",
            Self::WrongComponent | Self::UnknownAccount => "appid",
            Self::NoKey => "key",
            Self::Crypto(e) => e.reason(),
            Self::Tokens(_) | Self::Messages(_) => "store",
        }
    }
}

/// What a verified push was, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub info_type: String,
    /// False for a repeat of a push already held, or a ticket older than the one held.
    pub new: bool,
}

pub struct ComponentReceiver {
    crypt: MsgCrypt,
    tokens: Arc<TokenService>,
}

impl ComponentReceiver {
    pub fn new(crypt: MsgCrypt, tokens: Arc<TokenService>) -> Self {
        Self { crypt, tokens }
    }

    /// Handles one push and counts it; `Ok` means: answer `success`.
    pub async fn receive(&self, query: &str, body: &[u8]) -> Result<Received, CallbackError> {
        let result = self.verify_and_record(query, body).await;
        match &result {
            Ok(r) => metrics::CALLBACK_EVENTS.with_label_values(&[metrics::info_type_label(&r.info_type)]).inc(),
            Err(e) => metrics::CALLBACK_REJECTED.with_label_values(&[e.reason()]).inc(),
        }
        result
    }

    async fn verify_and_record(&self, query: &str, body: &[u8]) -> Result<Received, CallbackError> {
        let params = SignedQuery::parse(query)?;
        let encrypt = self.envelope(body)?;
        let message = self.crypt.open(&params.timestamp, &params.nonce, &encrypt, &params.msg_signature)?;
        let fields = xml::parse(&message).map_err(CallbackError::Message)?;
        if fields.get("AppId").is_some_and(|a| a != self.tokens.component_appid().as_str()) {
            return Err(CallbackError::WrongComponent);
        }
        let Some(info_type) = fields.get("InfoType").filter(|t| !t.is_empty()) else {
            // Authentic, but of a shape WeChat does not document: kept as it came, and answered
            // `success`, or WeChat would retry it and report the URL as failing.
            let create_time = fields.get("CreateTime").and_then(|t| t.parse::<i64>().ok()).unwrap_or_else(unix_now);
            let new = self.record_event(UNKNOWN_INFO_TYPE, &fields, create_time, message.clone()).await?;
            return Ok(Received { info_type: UNKNOWN_INFO_TYPE.to_owned(), new });
        };
        let create_time =
            fields.get("CreateTime").and_then(|t| t.parse::<i64>().ok()).ok_or(CallbackError::Field("CreateTime"))?;
        let new = match info_type {
            "component_verify_ticket" => self.record_ticket(&fields, create_time).await?,
            _ => self.record_event(info_type, &fields, create_time, message.clone()).await?,
        };
        Ok(Received { info_type: info_type.to_owned(), new })
    }

    /// Checks the body and returns its `Encrypt` field.
    fn envelope(&self, body: &[u8]) -> Result<String, CallbackError> {
        let fields = envelope_fields(body)?;
        // System pushes carry AppId; older demos rewrap them with ToUserName.
        let addressed = fields.get("AppId").or_else(|| fields.get("ToUserName"));
        if addressed.is_some_and(|a| !a.is_empty() && a != self.tokens.component_appid().as_str()) {
            return Err(CallbackError::WrongComponent);
        }
        encrypt_field(&fields)
    }

    async fn record_ticket(&self, fields: &xml::Fields, create_time: i64) -> Result<bool, CallbackError> {
        let value = fields
            .get("ComponentVerifyTicket")
            .filter(|t| !t.is_empty())
            .ok_or(CallbackError::Field("ComponentVerifyTicket"))?;
        let ticket = Ticket { value: Secret::new(value), create_time, received_at: unix_now() };
        Ok(self.tokens.component().accept_ticket(ticket).await?)
    }

    async fn record_event(
        &self,
        info_type: &str,
        fields: &xml::Fields,
        create_time: i64,
        message: String,
    ) -> Result<bool, CallbackError> {
        let authorizer = authorizer_of(info_type, fields)?;
        let event = AuthEvent {
            info_type: info_type.to_owned(),
            authorizer,
            create_time,
            payload: Secret::new(message),
            received_at: unix_now(),
        };
        Ok(self.tokens.events().accept(event).await?)
    }
}

/// The authorizer an event concerns. The documented authorization events must name a valid
/// one; other info types (fast registration, 代认证, 备案…) are kept whatever they carry.
fn authorizer_of(info_type: &str, fields: &xml::Fields) -> Result<Option<AppId>, CallbackError> {
    let named = fields
        .get("AuthorizerAppid")
        .or_else(|| fields.get("authorizer_appid"))
        .or_else(|| fields.get("appid"))
        .and_then(|a| AppId::parse(a).ok());
    match info_type {
        "authorized" | "updateauthorized" | "unauthorized" => {
            named.map(Some).ok_or(CallbackError::Field("AuthorizerAppid"))
        }
        _ => Ok(named),
    }
}

/// The query WeChat signs a push with.
pub(crate) struct SignedQuery {
    pub timestamp: String,
    pub nonce: String,
    pub msg_signature: String,
}

impl SignedQuery {
    pub(crate) fn parse(query: &str) -> Result<Self, CallbackError> {
        let (mut timestamp, mut nonce, mut msg_signature, mut encrypt_type) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "timestamp" => &mut timestamp,
                "nonce" => &mut nonce,
                "msg_signature" => &mut msg_signature,
                "encrypt_type" => &mut encrypt_type,
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        if encrypt_type.as_deref().is_some_and(|t| t != "aes") {
            return Err(CallbackError::NotEncrypted);
        }
        Ok(Self {
            timestamp: timestamp.ok_or(CallbackError::MissingParam("timestamp"))?,
            nonce: nonce.ok_or(CallbackError::MissingParam("nonce"))?,
            msg_signature: msg_signature.ok_or(CallbackError::MissingParam("msg_signature"))?,
        })
    }
}

/// The fields of a push's `<xml>` envelope, from a body that is not too large, not empty and
/// well-formed.
fn envelope_fields(body: &[u8]) -> Result<xml::Fields, CallbackError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(CallbackError::TooLarge);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CallbackError::Empty);
    }
    let text = std::str::from_utf8(body).map_err(|_| CallbackError::Envelope(XmlError::Malformed))?;
    xml::parse(text).map_err(CallbackError::Envelope)
}

/// The envelope's sealed message.
fn encrypt_field(fields: &xml::Fields) -> Result<String, CallbackError> {
    let encrypt = fields.get("Encrypt").filter(|e| !e.is_empty()).ok_or(CallbackError::Field("Encrypt"))?;
    Ok(encrypt.to_owned())
}
