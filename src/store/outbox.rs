//! The outbox's part of the store: messages of authorized accounts waiting for their handler,
//! and the keys that recognise WeChat's retries of a message already taken.
//!
//! A trait of its own, reached through [`super::Store::outbox`], because its load differs from
//! the records': it is written at WeChat's push rate (an enqueue, a claim and a settle per
//! message), so each backend must make those three cheap under concurrency (SQLite commits
//! concurrent calls together, one fsync for many; Redis does each in one script). Listing and
//! counting are for the admin API and the gauges, and may scan.
//!
//! A delivery is guarded by a claim instead of a separate lease: claiming a message counts the
//! attempt and pushes its next attempt `lease` ahead, under a fresh token, in one write. Another
//! instance does not take it until then; if this one dies mid-call, the message falls due again
//! when the lease runs out and is delivered again with a higher attempt number. Settling checks
//! the token, so an instance whose lease ran out cannot overwrite the newer holder's work.

use super::StoreError;
use crate::{AppId, Secret};
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// One message's identity for its whole life: `X-Wxgate-Delivery`, the admin API's `{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a delivery id is 32 lowercase hex characters")]
pub struct BadDeliveryId;

impl DeliveryId {
    /// The time in milliseconds, then 80 random bits: ids made later sort later, so the store
    /// adds each new message at the end of its index, not at a random page of it (at a burst's
    /// rate, the difference between appending and rewriting pages all over a large index).
    pub fn generate() -> Self {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&rand::random::<[u8; 10]>());
        Self(hex::encode(bytes))
    }

    pub fn parse(s: &str) -> Result<Self, BadDeliveryId> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BadDeliveryId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeliveryId {
    type Err = BadDeliveryId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting for its next attempt, or in flight.
    Pending,
    /// Taken by the handler. Backends remove a delivered message, so a listing never shows one;
    /// the state exists for the worker's and the admin API's vocabulary.
    Delivered,
    /// Not delivered within `max_age`: kept until an operator redelivers or deletes it.
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed].into_iter().find(|st| st.as_str() == s)
    }
}

/// Which table a message's route is in, and so which request its handler gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A message or event of an authorized account, for a `[[messages.routes]]` route.
    Account,
    /// An authorization-event URL's event, for an `[[events.routes]]` route; `msg_type` holds
    /// its InfoType.
    Platform,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Account, Self::Platform].into_iter().find(|k| k.as_str() == s)
    }
}

/// One message as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: DeliveryId,
    /// The account it concerns; `None` for a platform event that names none.
    pub authorizer: Option<AppId>,
    pub kind: MessageKind,
    /// Its place in its lane, the messages of one route and one authorizer: a message with a
    /// `seq` is not claimed while one of its lane with a smaller `seq` is pending or failed,
    /// so that a later event never overtakes an earlier one still being retried.
    pub seq: Option<i64>,
    /// The `[[messages.routes]]` or `[[events.routes]]` name.
    pub route: String,
    /// MsgType, or a platform event's InfoType.
    pub msg_type: String,
    pub event: Option<String>,
    /// The decrypted XML as WeChat sent it: personal data, never logged or listed.
    pub payload: Secret,
    /// Unix milliseconds.
    pub received_at_ms: i64,
    /// Attempts made so far, counted before each call.
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub state: OutboxState,
    /// Why the last attempt failed: a status, "timeout", never content.
    pub last_error: Option<String>,
}

impl OutboxMessage {
    /// A message as a receiver hands it to the outbox: a fresh delivery id (made before a
    /// reply-mode call, so that `X-Wxgate-Delivery` is the same on every attempt), no account,
    /// lane place or event, nothing attempted yet. The outbox sets when it is first due.
    pub fn new(route: &str, kind: MessageKind, msg_type: &str, payload: Secret, received_at_ms: i64) -> Self {
        Self {
            id: DeliveryId::generate(),
            authorizer: None,
            kind,
            seq: None,
            route: route.to_owned(),
            msg_type: msg_type.to_owned(),
            event: None,
            payload,
            received_at_ms,
            attempts: 0,
            next_attempt_at_ms: received_at_ms,
            state: OutboxState::Pending,
            last_error: None,
        }
    }

    /// Whose dedupe keys `enqueue_first` records the message's key among: its authorizer's,
    /// or, for a platform event that names none, the component's.
    pub fn dedupe_scope(&self, component: &AppId) -> AppId {
        self.authorizer.unwrap_or(*component)
    }

    /// What may be shown: everything but the payload.
    pub fn entry(&self) -> OutboxEntry {
        OutboxEntry {
            id: self.id.clone(),
            authorizer: self.authorizer,
            kind: self.kind,
            route: self.route.clone(),
            msg_type: self.msg_type.clone(),
            event: self.event.clone(),
            received_at_ms: self.received_at_ms,
            attempts: self.attempts,
            next_attempt_at_ms: self.next_attempt_at_ms,
            state: self.state,
            last_error: self.last_error.clone(),
        }
    }
}

/// A message's metadata, as listings return it: no payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: DeliveryId,
    pub authorizer: Option<AppId>,
    pub kind: MessageKind,
    pub route: String,
    pub msg_type: String,
    pub event: Option<String>,
    pub received_at_ms: i64,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub state: OutboxState,
    pub last_error: Option<String>,
}

/// A message taken for one attempt; `token` proves the claim when it is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub message: OutboxMessage,
    pub token: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler took it: the message is removed.
    Delivered,
    /// Try again at `at_ms`.
    Retry { at_ms: i64, error: String },
    /// Given up (too old): kept as failed.
    Failed { error: String },
}

/// The outbox's store. Every write is committed before it returns.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Adds a pending message. On the push path, before WeChat gets `success`: must stay cheap
    /// when many run at once. An id already held is left as it is (a repeated enqueue).
    async fn enqueue(&self, component: &AppId, message: &OutboxMessage) -> Result<(), StoreError>;

    /// Records WeChat's dedupe `key` for `authorizer` unless it was recorded within `ttl` before
    /// `now_ms`; says whether it is new. On the push path: cheap.
    async fn first_time(
        &self,
        component: &AppId,
        authorizer: &AppId,
        key: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// [`OutboxStore::first_time`] and [`OutboxStore::enqueue`] in one transaction: records
    /// `key` for the message's authorizer (the component's when it has none: see
    /// [`OutboxMessage::dedupe_scope`]) and adds the message only if the key is new; says
    /// whether it was. A failure leaves neither behind, so that WeChat's retry of a message that
    /// could not be kept is taken, not dropped as a duplicate.
    async fn enqueue_first(
        &self,
        component: &AppId,
        message: &OutboxMessage,
        key: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Forgets a key recorded by [`OutboxStore::first_time`] whose message could not be kept.
    async fn forget(&self, component: &AppId, authorizer: &AppId, key: &str) -> Result<(), StoreError>;

    /// The routes that have a pending message due at `now_ms`, each once.
    async fn due_routes(&self, component: &AppId, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// When the earliest pending message falls due (in flight ones included: when their lease
    /// runs out), `None` if nothing is pending.
    async fn next_due(&self, component: &AppId) -> Result<Option<i64>, StoreError>;

    /// Takes up to `limit` messages of `route` due at `now_ms`, earliest due first: each gets
    /// its attempt counted and its next attempt `lease` ahead, under a fresh claim token. A
    /// message with a `seq` is passed over while its lane holds one with a smaller `seq`.
    async fn claim(
        &self,
        component: &AppId,
        route: &str,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError>;

    /// Ends a claim; `false` (nothing written) if the claim is no longer held: its lease ran out
    /// and another took it, or an operator redelivered or deleted the message meanwhile.
    async fn settle(
        &self,
        component: &AppId,
        id: &DeliveryId,
        token: &str,
        outcome: &Outcome,
    ) -> Result<bool, StoreError>;

    /// Makes every claimed message due at `now_ms`. Only for a store no other instance shares,
    /// at start-up: the claims are the previous process's, which died with them.
    async fn release_claims(&self, component: &AppId, now_ms: i64) -> Result<u64, StoreError>;

    /// Messages in `state` (all but delivered when `None`), oldest first, and how many there
    /// are in all.
    async fn list(
        &self,
        component: &AppId,
        state: Option<OutboxState>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<OutboxEntry>), StoreError>;

    /// Makes a pending or failed message due at `now_ms` (a claim in flight is voided); `false`
    /// for an unknown id.
    async fn redeliver(&self, component: &AppId, id: &DeliveryId, now_ms: i64) -> Result<bool, StoreError>;

    /// Removes a message whatever its state; `false` for an unknown id.
    async fn delete(&self, component: &AppId, id: &DeliveryId) -> Result<bool, StoreError>;

    /// (pending, failed), for the gauges.
    async fn counts(&self, component: &AppId) -> Result<(u64, u64), StoreError>;

    /// Drops dedupe keys recorded before `before_ms`. Backends whose keys expire by themselves
    /// (Redis) have nothing to do.
    async fn prune_seen(&self, component: &AppId, before_ms: i64) -> Result<u64, StoreError>;
}

#[cfg(test)]
pub(crate) mod contract_tests;
