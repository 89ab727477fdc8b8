//! Messages of authorized accounts (消息与事件接收URL): what happens to a push once
//! `callback::account` has verified and decrypted it. WeChat's retries are dropped, the
//! release check answered, the first matching route called (`reply`) or its message committed
//! to the outbox (`deliver`), and each outcome counted in `wxgate_messages_total`.
//!
//! ```text
//!  verified push ─► retry of one taken? ─► success
//!        │
//!        ├─► release-check test account (release_check = true) ─► release_check
//!        ├─► no route ─► success (unrouted)
//!        ├─► deliver ─► outbox (durable) ─► success            (503 if the store fails)
//!        └─► reply ─► handler within reply_timeout_ms ─► XML: encrypted passive reply
//!                                                   └─► empty/success: success
//!                                                   └─► error/timeout/not XML: outbox, success
//!                                                       (503 if the store fails)
//! ```
//!
//! The retry key and a deliver-mode message are written in one transaction, and a reply-mode
//! key is forgotten when its message cannot be kept: a 503 is always followed by WeChat's retry
//! being taken, never dropped as a duplicate.

pub mod handler;
pub mod outbox;
pub mod release_check;
pub mod routes;

use crate::config::{DeliveryMode, MessagesConfig};
use crate::metrics;
use crate::releases::Releases;
use crate::xml::Fields;
use crate::{AppId, Secret};
use arc_swap::ArcSwap;
use handler::{Answer, Call, HandlerClient};
use outbox::{MessageKind, Outbox, OutboxError, OutboxMessage};
use release_check::{Action, ReleaseCheck};
use routes::{Route, Routes};
use std::sync::Arc;
use std::time::Duration;

/// What of `[messages]` can change at run time (SIGHUP): swapped whole.
#[derive(Debug, Clone)]
pub struct Settings {
    pub routes: Routes,
    pub reply_timeout: Duration,
    pub release_check: bool,
}

impl Settings {
    pub fn new(config: &MessagesConfig) -> Self {
        Self {
            routes: Routes::new(&config.routes),
            reply_timeout: config.reply_timeout,
            release_check: config.release_check,
        }
    }
}

/// How to answer WeChat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The body `success`.
    Success,
    /// A passive reply's XML, as the handler wrote it: the receiver seals it in the push's mode
    /// (encrypted with the key the push was encrypted with, or plain).
    Passive(String),
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The message could not be made durable; WeChat must retry (503).
    #[error("the message could not be recorded: {0}")]
    Store(#[from] OutboxError),
    /// An audit verdict could not be kept for the release jobs; WeChat must retry (503).
    #[error("the audit verdict could not be recorded: {0}")]
    Verdict(crate::store::StoreError),
}

/// The `result` label of `wxgate_messages_total`.
pub mod result {
    /// A reply-mode handler's XML went back as the passive reply.
    pub const REPLIED: &str = "replied";
    /// A reply-mode handler answered empty or `success`.
    pub const NO_REPLY: &str = "no_reply";
    /// A reply-mode handler failed; the message went to the outbox.
    pub const DEFERRED: &str = "deferred";
    /// A deliver-mode message is in the outbox.
    pub const QUEUED: &str = "queued";
    pub const UNROUTED: &str = "unrouted";
    /// A retry by WeChat of a message already taken.
    pub const DUPLICATE: &str = "duplicate";
    /// A push without MsgType: answered `success` and logged.
    pub const UNKNOWN: &str = "unknown";
    /// Answered by the release check.
    pub const RELEASE_CHECK: &str = "release_check";
    pub const STORE_ERROR: &str = "store_error";
}

/// WeChat's retry of a message already taken: `success`, nothing else.
fn duplicate(authorizer: &AppId, msg_type: &str) -> Reply {
    count(NO_ROUTE, result::DUPLICATE);
    tracing::debug!(authorizer = %authorizer, msg_type, "WeChat's retry of a message already taken");
    Reply::Success
}

/// The `route` label when no route took the message.
pub const NO_ROUTE: &str = "-";

pub struct MessageService {
    /// Told of every audit verdict (`weapp_audit_*`) before the message is routed as usual.
    releases: Option<Arc<Releases>>,
    settings: Arc<ArcSwap<Settings>>,
    outbox: Arc<Outbox>,
    handler: Arc<HandlerClient>,
    release: Arc<ReleaseCheck>,
}

impl MessageService {
    pub fn new(
        settings: Arc<ArcSwap<Settings>>,
        outbox: Arc<Outbox>,
        handler: Arc<HandlerClient>,
        release: Arc<ReleaseCheck>,
    ) -> Self {
        Self { releases: None, settings, outbox, handler, release }
    }

    /// Audit verdicts go to the release jobs too.
    pub fn with_releases(mut self, releases: Arc<Releases>) -> Self {
        self.releases = Some(releases);
        self
    }

    /// Takes a new `[messages]` (SIGHUP): routes, reply timeout and release check at once.
    /// Messages already in the outbox are delivered by route name with the new table.
    pub fn reload(&self, config: &MessagesConfig) {
        self.settings.store(Arc::new(Settings::new(config)));
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Handles one verified, decrypted push for `authorizer`. `payload` is the XML as WeChat
    /// sent it.
    pub async fn receive(&self, authorizer: AppId, payload: String, fields: &Fields) -> Result<Reply, MessageError> {
        let Some(msg_type) = fields.get("MsgType").filter(|t| !t.is_empty()) else {
            count(NO_ROUTE, result::UNKNOWN);
            tracing::info!(authorizer = %authorizer, "message without MsgType answered success");
            return Ok(Reply::Success);
        };
        let event = fields.get("Event").filter(|e| !e.is_empty());
        if let (Some(releases), Some(event)) = (&self.releases, event.filter(|e| e.starts_with("weapp_audit_"))) {
            let created = fields.get("CreateTime").and_then(|t| t.parse().ok()).unwrap_or_else(crate::store::unix_now);
            let reason = fields.get("Reason");
            releases.audit_event(&authorizer, event, reason, created).await.map_err(MessageError::Verdict)?;
        }
        let key = retry_key(fields);
        let settings = self.settings.load();
        let release = settings.release_check && crate::test_accounts::is_test_account(&authorizer);
        let route = if release { None } else { settings.routes.find(&authorizer, msg_type, event) };
        // A deliver-mode message records its key with its enqueue, in one transaction: were the
        // key recorded first and the enqueue to fail, WeChat's retry would be dropped as a
        // duplicate and the message lost. Every other path records the key first.
        let atomic = matches!(route, Some(r) if matches!(r.mode, DeliveryMode::Deliver));
        if let Some(key) = key.as_deref().filter(|_| !atomic) {
            let first = self.outbox.first_time(&authorizer, key).await.inspect_err(|_| {
                count(NO_ROUTE, result::STORE_ERROR);
            })?;
            if !first {
                return Ok(duplicate(&authorizer, msg_type));
            }
        }
        if release {
            return Ok(self.release_check(authorizer, fields));
        }
        let Some(route) = route else {
            count(NO_ROUTE, result::UNROUTED);
            tracing::debug!(authorizer = %authorizer, msg_type, event, "message matched no route");
            return Ok(Reply::Success);
        };
        let message = OutboxMessage {
            authorizer: Some(authorizer),
            event: event.map(str::to_owned),
            ..OutboxMessage::new(&route.name, MessageKind::Account, msg_type, Secret::new(payload), now_ms())
        };
        match route.mode {
            DeliveryMode::Deliver => {
                let msg_type = message.msg_type.clone();
                match self.enqueue(route, message, result::QUEUED, key.as_deref()).await? {
                    true => Ok(Reply::Success),
                    false => Ok(duplicate(&authorizer, &msg_type)),
                }
            }
            DeliveryMode::Reply => self.reply(route, message, fields, settings.reply_timeout, key.as_deref()).await,
        }
    }

    async fn reply(
        &self,
        route: &Route,
        mut message: OutboxMessage,
        fields: &Fields,
        timeout: Duration,
        key: Option<&str>,
    ) -> Result<Reply, MessageError> {
        let delivery = message.id.to_string();
        let call = Call {
            authorizer: message.authorizer.as_ref(),
            delivery: &delivery,
            attempt: 1,
            payload: message.payload.expose(),
            ..Call::account(route, fields.get("FromUserName").unwrap_or_default())
        };
        match self.handler.call_for_reply(call, timeout).await {
            Ok(Answer::Xml(xml)) => {
                count(&route.name, result::REPLIED);
                Ok(Reply::Passive(xml))
            }
            Ok(Answer::Nothing) => {
                count(&route.name, result::NO_REPLY);
                Ok(Reply::Success)
            }
            Err(e) => {
                tracing::warn!(
                    route = %route.name, authorizer = ?message.authorizer, delivery = %delivery, error = %e,
                    "reply-mode handler failed; the message goes to the outbox"
                );
                message.attempts = 1;
                message.last_error = Some(e.to_string());
                // The handler may have seen it, but a message lost is worse than one delivered
                // twice (redeliveries are flagged): if the outbox cannot keep it, the key is
                // forgotten and WeChat gets 503, so that its retry calls the handler again.
                let authorizer = message.authorizer;
                if let Err(e) = self.enqueue(route, message, result::DEFERRED, None).await {
                    tracing::error!(route = %route.name, error = %e, "a failed reply-mode message could not be kept");
                    if let (Some(key), Some(authorizer)) = (key, authorizer) {
                        if let Err(e) = self.outbox.forget(&authorizer, key).await {
                            tracing::error!(route = %route.name, error = %e, "the retry key could not be forgotten");
                        }
                    }
                    return Err(e);
                }
                Ok(Reply::Success)
            }
        }
    }

    /// Puts `message` in the outbox; with `key`, records it in the same transaction and says
    /// false (nothing enqueued) when it was there already.
    async fn enqueue(
        &self,
        route: &Route,
        message: OutboxMessage,
        outcome: &'static str,
        key: Option<&str>,
    ) -> Result<bool, MessageError> {
        let (authorizer, id) = (message.authorizer, message.id.to_string());
        let taken = match key {
            Some(key) => self.outbox.enqueue_first(message, key).await,
            None => self.outbox.enqueue(message).await.map(|()| true),
        };
        match taken {
            Ok(true) => {
                count(&route.name, outcome);
                tracing::debug!(route = %route.name, authorizer = ?authorizer, delivery = %id, "message in the outbox");
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                count(&route.name, result::STORE_ERROR);
                Err(e.into())
            }
        }
    }

    fn release_check(&self, authorizer: AppId, fields: &Fields) -> Reply {
        count(NO_ROUTE, result::RELEASE_CHECK);
        match release_check::action(fields) {
            Action::Reply(text) => {
                tracing::info!(authorizer = %authorizer, "release check: passive reply");
                let inner = release_check::text_reply(fields, &text, crate::store::unix_now());
                Reply::Passive(inner)
            }
            Action::QueryAuth(code) => {
                tracing::info!(authorizer = %authorizer, "release check: QUERY_AUTH_CODE received");
                let openid = fields.get("FromUserName").unwrap_or_default().to_owned();
                self.release.follow_up(authorizer, code, openid);
                Reply::Success
            }
            Action::Success => Reply::Success,
        }
    }
}

/// WeChat's retries carry the same MsgId; events have none, and are told apart by sender,
/// time and event. `None`: nothing to tell a retry by.
pub fn retry_key(fields: &Fields) -> Option<String> {
    if let Some(id) = fields.get("MsgId").or_else(|| fields.get("MsgID")).filter(|m| !m.is_empty()) {
        return Some(format!("msgid:{id}"));
    }
    let from = fields.get("FromUserName").filter(|f| !f.is_empty())?;
    let time = fields.get("CreateTime").unwrap_or_default();
    let event = fields.get("Event").unwrap_or_default();
    Some(format!("from:{from}|{time}|{event}"))
}

fn count(route: &str, outcome: &str) {
    metrics::MESSAGES.with_label_values(&[route, outcome]).inc();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_keys_prefer_msgid() {
        let parse = |x: &str| crate::xml::parse(x).unwrap();
        let text = parse("<xml><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><MsgId>42</MsgId></xml>");
        assert_eq!(retry_key(&text).as_deref(), Some("msgid:42"));
        let event =
            parse("<xml><FromUserName>o1</FromUserName><CreateTime>5</CreateTime><Event>subscribe</Event></xml>");
        assert_eq!(retry_key(&event).as_deref(), Some("from:o1|5|subscribe"));
        assert_eq!(retry_key(&parse("<xml><CreateTime>5</CreateTime></xml>")), None);
    }
}
