//! The request an app's handler receives: WeChat's own plaintext-mode (明文模式) request, so
//! that a handler written for an official account (wechatpy's `check_signature` +
//! `parse_message`, WxJava's `WxMpMessageRouter`) runs unchanged behind the gateway.
//!
//! `POST {url}?signature=S&timestamp=T&nonce=N&openid=O` (appended to the url's own query),
//! `Content-Type: text/xml`, the decrypted XML exactly as WeChat sent it, with
//! `S = sha1(sort(route.token, T, N))`, and `X-Wxgate-Authorizer`, `X-Wxgate-Delivery`,
//! `X-Wxgate-Attempt`. Platform events get the same request without `openid`, with
//! `X-Wxgate-Info-Type`. One pooled client for every handler; its answers are read with a limit.

use super::outbox::{Deliver, OutboxMessage};
use super::routes::Route;
use super::Settings;
use crate::{AppId, Secret};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use rand::Rng;
use sha1::{Digest, Sha1};
use std::sync::Arc;
use std::time::Duration;

/// A passive reply is a few hundred bytes; a handler that sends more is not answering WeChat.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long an outbox delivery may take: no one is waiting, but a hung handler must not hold
/// a delivery slot for long.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per handler host.
const POOL_PER_HOST: usize = 32;
/// Reply-mode calls under way at once; past this a message goes to the outbox at once.
const MAX_REPLY_CALLS: usize = 512;

/// Why a call did not give an answer to pass on. Short, never with content: it is stored as the
/// outbox's `last_error` and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    #[error("status {0}")]
    Status(u16),
    #[error("timeout")]
    Timeout,
    #[error("connect refused")]
    Connect,
    #[error("request failed")]
    Request,
    #[error("answer over {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("answer is not XML")]
    NotXml,
    #[error("too many calls under way")]
    Busy,
    #[error("route gone")]
    RouteGone,
}

/// A handler's 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Empty or `success`: nothing to say to the user.
    Nothing,
    /// An XML document, to be the passive reply.
    Xml(String),
}

/// One call: which message, to which handler, which attempt.
pub struct Call<'a> {
    pub url: &'a url::Url,
    /// The handler's own WeChat token, for the plaintext-mode signature.
    pub token: &'a Secret,
    /// `X-Wxgate-Authorizer`, when the message concerns one account.
    pub authorizer: Option<&'a AppId>,
    /// `X-Wxgate-Info-Type`: a platform event's InfoType.
    pub info_type: Option<&'a str>,
    pub delivery: &'a str,
    pub attempt: u32,
    /// The decrypted XML.
    pub payload: &'a str,
    /// The sender (FromUserName), WeChat's `openid` parameter: an account's messages only.
    pub openid: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// The first attempt of an account's message to a `[[messages.routes]]` handler, from `openid`.
    pub fn account(route: &'a Route, openid: &'a str) -> Self {
        Self {
            url: &route.url,
            token: &route.token,
            authorizer: None,
            info_type: None,
            delivery: "",
            attempt: 1,
            payload: "",
            openid: Some(openid),
        }
    }
}

pub struct HandlerClient {
    http: reqwest::Client,
    settings: Arc<ArcSwap<Settings>>,
    reply_slots: tokio::sync::Semaphore,
}

impl HandlerClient {
    pub fn new(settings: Arc<ArcSwap<Settings>>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(POOL_PER_HOST)
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy()
            .user_agent(concat!("wxgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, settings, reply_slots: tokio::sync::Semaphore::new(MAX_REPLY_CALLS) })
    }

    /// A reply-mode call while WeChat waits: bounded in time and in number.
    pub async fn call_for_reply(&self, call: Call<'_>, timeout: Duration) -> Result<Answer, HandlerError> {
        let _slot = self.reply_slots.try_acquire().map_err(|_| HandlerError::Busy)?;
        let answer =
            tokio::time::timeout(timeout, self.call(call, timeout)).await.map_err(|_| HandlerError::Timeout)?;
        match answer? {
            Some(body) => read_answer(body),
            None => Ok(Answer::Nothing),
        }
    }

    /// An outbox delivery attempt, cut off at [`DELIVER_TIMEOUT`]; Ok on a 2xx.
    pub async fn deliver_call(&self, call: Call<'_>) -> Result<(), HandlerError> {
        self.call(call, DELIVER_TIMEOUT).await.map(drop)
    }

    /// Sends the request; on a 2xx, the body (`None` when empty).
    async fn call(&self, call: Call<'_>, timeout: Duration) -> Result<Option<Vec<u8>>, HandlerError> {
        let timestamp = crate::store::unix_now().to_string();
        let nonce = rand::thread_rng().gen_range(100_000_000u32..4_000_000_000).to_string();
        let mut url = call.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("signature", &plain_signature(call.token.expose(), &timestamp, &nonce))
                .append_pair("timestamp", &timestamp)
                .append_pair("nonce", &nonce);
            if let Some(openid) = call.openid {
                query.append_pair("openid", openid);
            }
        }
        let mut request = self
            .http
            .post(url)
            .timeout(timeout)
            .header("content-type", "text/xml")
            .header("x-wxgate-delivery", call.delivery)
            .header("x-wxgate-attempt", call.attempt.to_string());
        if let Some(authorizer) = call.authorizer {
            request = request.header("x-wxgate-authorizer", &*authorizer.as_str());
        }
        if let Some(info_type) = call.info_type {
            request = request.header("x-wxgate-info-type", info_type);
        }
        let response = request.body(call.payload.to_owned()).send().await.map_err(|e| request_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HandlerError::Status(status.as_u16()));
        }
        let body = read_limited(response).await?;
        Ok((!body.is_empty()).then_some(body))
    }
}

#[async_trait]
impl Deliver for HandlerClient {
    /// An outbox delivery, with the route as the config has it now.
    async fn deliver(&self, message: &OutboxMessage, attempt: u32) -> Result<(), String> {
        let settings = self.settings.load();
        let route = settings.routes.by_name(&message.route).ok_or_else(|| HandlerError::RouteGone.to_string())?;
        let payload = message.payload.expose();
        let openid = crate::xml::parse(payload).ok().and_then(|f| f.get("FromUserName").map(str::to_owned));
        let delivery = message.id.to_string();
        let call = Call {
            authorizer: message.authorizer.as_ref(),
            delivery: &delivery,
            attempt,
            payload,
            ..Call::account(route, openid.as_deref().unwrap_or_default())
        };
        self.deliver_call(call).await.map_err(|e| e.to_string())
    }
}

/// WeChat's plaintext-mode `signature`: sha1 of the sorted token, timestamp and nonce.
pub fn plain_signature(token: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [token, timestamp, nonce];
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn request_error(e: &reqwest::Error) -> HandlerError {
    if e.is_timeout() {
        HandlerError::Timeout
    } else if e.is_connect() {
        HandlerError::Connect
    } else {
        HandlerError::Request
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, HandlerError> {
    if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(HandlerError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| request_error(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(HandlerError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `success` (however padded) says nothing; anything else must be one `<xml>` document.
fn read_answer(body: Vec<u8>) -> Result<Answer, HandlerError> {
    let text = String::from_utf8(body).map_err(|_| HandlerError::NotXml)?;
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "success" {
        return Ok(Answer::Nothing);
    }
    crate::xml::parse(trimmed).map_err(|_| HandlerError::NotXml)?;
    Ok(Answer::Xml(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_wechats_plaintext_one() {
        // sorted: "1409304348" < "token" < "xxxxxx"
        let expected = hex::encode(Sha1::digest(b"1409304348tokenxxxxxx"));
        assert_eq!(plain_signature("token", "1409304348", "xxxxxx"), expected);
    }

    #[test]
    fn answers_are_nothing_xml_or_refused() {
        assert_eq!(read_answer(b"".to_vec()), Ok(Answer::Nothing));
        assert_eq!(read_answer(b" success\n".to_vec()), Ok(Answer::Nothing));
        assert_eq!(read_answer(b"<xml><A>1</A></xml>".to_vec()), Ok(Answer::Xml("<xml><A>1</A></xml>".into())));
        assert_eq!(read_answer(b"ok".to_vec()), Err(HandlerError::NotXml));
        assert_eq!(read_answer(b"<html></html>".to_vec()), Err(HandlerError::NotXml));
        assert_eq!(read_answer(vec![0xff, 0xfe]), Err(HandlerError::NotXml));
    }
}
