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
    pub fn generate() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
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
pub(crate) mod contract_tests {
    //! The outbox behaviour every backend must share; each backend's tests run these.
    use super::*;
    use crate::store::contract_tests::component;

    pub fn message(route: &str, received_at_ms: i64, next_attempt_at_ms: i64) -> OutboxMessage {
        OutboxMessage {
            id: DeliveryId::generate(),
            authorizer: Some(AppId::parse("wx1111111111111111").unwrap()),
            kind: MessageKind::Account,
            seq: None,
            route: route.to_owned(),
            msg_type: "event".into(),
            event: Some("subscribe".into()),
            payload: Secret::new("<xml><Content>personal</Content></xml>"),
            received_at_ms,
            attempts: 0,
            next_attempt_at_ms,
            state: OutboxState::Pending,
            last_error: None,
        }
    }

    const LEASE: Duration = Duration::from_millis(1000);

    /// Unix milliseconds by the wall clock: Redis expires keys by its own.
    fn wall_ms() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
    }

    pub async fn claims_settle_and_fence(store: &dyn OutboxStore) {
        let c = component();
        let (m1, m2, m3) = (message("a", 10, 100), message("b", 20, 200), message("a", 30, 300));
        for m in [&m1, &m2, &m3] {
            store.enqueue(&c, m).await.unwrap();
        }
        let repeat = OutboxMessage { next_attempt_at_ms: 5, ..m1.clone() };
        store.enqueue(&c, &repeat).await.unwrap();
        assert_eq!(store.counts(&c).await.unwrap(), (3, 0), "a repeated enqueue is not a new message");
        assert_eq!(store.due_routes(&c, 150).await.unwrap(), ["a"]);
        let mut both = store.due_routes(&c, 250).await.unwrap();
        both.sort();
        assert_eq!(both, ["a", "b"]);
        assert_eq!(store.next_due(&c).await.unwrap(), Some(100));

        let first = store.claim(&c, "a", 350, 1, LEASE).await.unwrap();
        assert_eq!(first.len(), 1, "the limit holds");
        let claim1 = &first[0];
        assert_eq!(claim1.message.id, m1.id, "earliest due first");
        assert_eq!(claim1.message.attempts, 1, "the attempt is counted when it is claimed");
        assert_eq!(claim1.message.next_attempt_at_ms, 1350);
        assert_eq!(claim1.message.payload, m1.payload);
        let rest = store.claim(&c, "a", 350, 5, LEASE).await.unwrap();
        assert_eq!(rest.iter().map(|cl| &cl.message.id).collect::<Vec<_>>(), [&m3.id], "a claimed message is held");
        let claim3 = rest[0].clone();
        assert!(store.claim(&c, "a", 350, 5, LEASE).await.unwrap().is_empty());

        assert!(!store.settle(&c, &m1.id, "not-the-token", &Outcome::Delivered).await.unwrap());
        assert!(store.settle(&c, &m1.id, &claim1.token, &Outcome::Delivered).await.unwrap());
        assert!(!store.settle(&c, &m1.id, &claim1.token, &Outcome::Delivered).await.unwrap(), "settled once");
        assert_eq!(store.counts(&c).await.unwrap(), (2, 0), "a delivered message is removed");

        let retry = Outcome::Retry { at_ms: 5000, error: "status 503".into() };
        assert!(store.settle(&c, &m3.id, &claim3.token, &retry).await.unwrap());
        assert_eq!(store.next_due(&c).await.unwrap(), Some(200));
        assert!(store.claim(&c, "a", 4999, 5, LEASE).await.unwrap().is_empty(), "not before its retry time");
        let again = store.claim(&c, "a", 5000, 5, LEASE).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message.attempts, 2);
        assert_eq!(again[0].message.last_error.as_deref(), Some("status 503"));
        let failed = Outcome::Failed { error: "timeout".into() };
        assert!(store.settle(&c, &m3.id, &again[0].token, &failed).await.unwrap());
        assert_eq!(store.counts(&c).await.unwrap(), (1, 1));
        assert_eq!(store.due_routes(&c, i64::MAX / 2).await.unwrap(), ["b"], "a failed message is not due");

        // A lease that runs out lets another claim it; the first holder's outcome is refused.
        let short = Duration::from_millis(100);
        let old = store.claim(&c, "b", 250, 5, short).await.unwrap().remove(0);
        assert!(store.claim(&c, "b", 349, 5, short).await.unwrap().is_empty());
        let new = store.claim(&c, "b", 350, 5, short).await.unwrap().remove(0);
        assert_eq!((new.message.id.clone(), new.message.attempts), (m2.id.clone(), 2));
        assert!(!store.settle(&c, &m2.id, &old.token, &Outcome::Delivered).await.unwrap(), "fenced");
        assert_eq!(store.counts(&c).await.unwrap(), (1, 1));

        // A store no other instance shares releases a dead process's claims at start-up.
        assert_eq!(store.release_claims(&c, 400).await.unwrap(), 1);
        let released = store.claim(&c, "b", 400, 5, LEASE).await.unwrap();
        assert_eq!(released.len(), 1, "due at once");
        assert!(store.settle(&c, &m2.id, &released[0].token, &Outcome::Delivered).await.unwrap());
        assert_eq!(store.counts(&c).await.unwrap(), (0, 1));
        assert_eq!(store.counts(&crate::store::contract_tests::component_b()).await.unwrap(), (0, 0), "per component");
    }

    pub async fn lists_redelivers_and_deletes(store: &dyn OutboxStore) {
        let c = component();
        let msgs: Vec<OutboxMessage> =
            (0..5).map(|i| message(if i % 2 == 0 { "a" } else { "b" }, 100 + i, i)).collect();
        for m in msgs.iter().rev() {
            store.enqueue(&c, m).await.unwrap();
        }
        let claimed = store.claim(&c, "a", 10, 1, LEASE).await.unwrap().remove(0);
        let failed = Outcome::Failed { error: "status 500".into() };
        assert!(store.settle(&c, &claimed.message.id, &claimed.token, &failed).await.unwrap());
        assert_eq!(claimed.message.id, msgs[0].id);

        let (total, all) = store.list(&c, None, 0, 10).await.unwrap();
        assert_eq!(total, 5);
        assert_eq!(
            all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            msgs.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            "oldest first"
        );
        assert_eq!(all[0].state, OutboxState::Failed);
        assert_eq!(all[0].last_error.as_deref(), Some("status 500"));
        assert_eq!(all[0].attempts, 1);
        assert_eq!(all[1], msgs[1].entry());
        let (total, page) = store.list(&c, None, 1, 2).await.unwrap();
        assert_eq!(
            (total, page.iter().map(|e| e.id.clone()).collect::<Vec<_>>()),
            (5, vec![msgs[1].id.clone(), msgs[2].id.clone()])
        );
        let (total, pending) = store.list(&c, Some(OutboxState::Pending), 1, 10).await.unwrap();
        assert_eq!(total, 4);
        assert_eq!(
            pending.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            msgs[2..].iter().map(|m| m.id.clone()).collect::<Vec<_>>()
        );
        let (total, failed) = store.list(&c, Some(OutboxState::Failed), 0, 10).await.unwrap();
        assert_eq!((total, failed.len()), (1, 1));
        assert_eq!(store.list(&c, Some(OutboxState::Failed), 0, 0).await.unwrap(), (1, vec![]));

        assert!(store.redeliver(&c, &msgs[0].id, 1).await.unwrap());
        assert_eq!(store.counts(&c).await.unwrap(), (5, 0));
        let again = store.claim(&c, "a", 1, 1, LEASE).await.unwrap().remove(0);
        assert_eq!(
            (again.message.id.clone(), again.message.attempts),
            (msgs[0].id.clone(), 2),
            "due at once, attempts kept"
        );
        // Redelivering a message in flight voids the claim: its outcome is dropped.
        assert!(store.redeliver(&c, &msgs[0].id, 60).await.unwrap());
        assert!(!store.settle(&c, &msgs[0].id, &again.token, &Outcome::Delivered).await.unwrap());
        assert!(!store.redeliver(&c, &DeliveryId::generate(), 60).await.unwrap(), "unknown id");

        assert!(store.delete(&c, &msgs[0].id).await.unwrap());
        assert!(!store.delete(&c, &msgs[0].id).await.unwrap());
        assert_eq!(store.counts(&c).await.unwrap(), (4, 0));
        assert!(store.claim(&c, "a", 100, 10, LEASE).await.unwrap().iter().all(|cl| cl.message.id != msgs[0].id));
    }

    /// A lane's messages go out in `seq` order: a later one waits while an earlier one is
    /// pending (retried) or failed, and other lanes and unordered messages are not held up.
    pub async fn lanes_keep_their_order(store: &dyn OutboxStore) {
        let c = component();
        let other = AppId::parse("wx2222222222222222").unwrap();
        let laned = |seq: i64, authorizer: Option<AppId>, due: i64| OutboxMessage {
            kind: MessageKind::Platform,
            seq: Some(seq),
            authorizer,
            ..message("events", 10 + seq, due)
        };
        let first = laned(1, Some(AppId::parse("wx1111111111111111").unwrap()), 100);
        let second = laned(2, first.authorizer, 50);
        let third = laned(3, first.authorizer, 60);
        let elsewhere = laned(4, Some(other), 70);
        let platform = laned(5, None, 80);
        let unordered = message("events", 1, 90);
        for m in [&third, &second, &first, &elsewhere, &platform, &unordered] {
            store.enqueue(&c, m).await.unwrap();
        }
        let ids = |claims: &[Claim]| claims.iter().map(|cl| cl.message.id.clone()).collect::<Vec<_>>();
        let taken = store.claim(&c, "events", 200, 10, LEASE).await.unwrap();
        let mut got = ids(&taken);
        got.sort();
        let mut want = vec![first.id.clone(), elsewhere.id.clone(), platform.id.clone(), unordered.id.clone()];
        want.sort();
        assert_eq!(got, want, "only each lane's first, and what has no lane");
        assert_eq!(taken.iter().find(|cl| cl.message.id == platform.id).unwrap().message.authorizer, None);
        for other in taken.iter().filter(|cl| cl.message.id != first.id) {
            assert!(store.settle(&c, &other.message.id, &other.token, &Outcome::Delivered).await.unwrap());
        }
        let head = taken.iter().find(|cl| cl.message.id == first.id).unwrap();
        let retry = Outcome::Retry { at_ms: 5000, error: "status 503".into() };
        assert!(store.settle(&c, &first.id, &head.token, &retry).await.unwrap());
        assert!(store.claim(&c, "events", 4999, 10, LEASE).await.unwrap().is_empty(), "held behind the retried one");
        let again = store.claim(&c, "events", 5000, 10, LEASE).await.unwrap();
        assert_eq!(ids(&again), std::slice::from_ref(&first.id), "the lane's head comes first again");
        let failed = Outcome::Failed { error: "status 500".into() };
        assert!(store.settle(&c, &first.id, &again[0].token, &failed).await.unwrap());
        assert!(store.claim(&c, "events", 9000, 10, LEASE).await.unwrap().is_empty(), "a failed head holds its lane");
        assert!(store.delete(&c, &first.id).await.unwrap());
        let next = store.claim(&c, "events", 9000, 10, LEASE).await.unwrap();
        assert_eq!(ids(&next), std::slice::from_ref(&second.id), "then the next in order");
        assert!(store.settle(&c, &second.id, &next[0].token, &Outcome::Delivered).await.unwrap());
        let last = store.claim(&c, "events", 9000, 10, LEASE).await.unwrap();
        assert_eq!(ids(&last), std::slice::from_ref(&third.id));
        let (_, listed) = store.list(&c, None, 0, 10).await.unwrap();
        let entry = listed.iter().find(|e| e.id == third.id).unwrap();
        assert_eq!((entry.kind, entry.authorizer), (MessageKind::Platform, first.authorizer));
    }

    /// A deliver-mode message and its retry key go in together; a forgotten key is new again.
    pub async fn enqueue_first_takes_each_key_once(store: &dyn OutboxStore) {
        let c = component();
        let now = wall_ms;
        let day = Duration::from_secs(86_400);
        let first = message("r", 1, 1);
        assert!(store.enqueue_first(&c, &first, "msgid:9", now(), day).await.unwrap());
        let retry = OutboxMessage { id: DeliveryId::generate(), ..first.clone() };
        assert!(!store.enqueue_first(&c, &retry, "msgid:9", now(), day).await.unwrap(), "WeChat's retry");
        assert_eq!(store.counts(&c).await.unwrap(), (1, 0), "the retry enqueued nothing");
        assert!(
            !store.first_time(&c, &first.authorizer.unwrap(), "msgid:9", now(), day).await.unwrap(),
            "the key is kept"
        );

        assert!(store.first_time(&c, &first.authorizer.unwrap(), "msgid:10", now(), day).await.unwrap());
        store.forget(&c, &first.authorizer.unwrap(), "msgid:10").await.unwrap();
        assert!(store.first_time(&c, &first.authorizer.unwrap(), "msgid:10", now(), day).await.unwrap(), "forgotten");
        store.prune_seen(&c, now() + 1).await.unwrap();
    }

    pub async fn dedupe_keys_expire(store: &dyn OutboxStore) {
        let c = component();
        let (a, b) = (AppId::parse("wx1111111111111111").unwrap(), AppId::parse("wx2222222222222222").unwrap());
        let now = wall_ms;
        let day = Duration::from_secs(86_400);
        assert!(store.first_time(&c, &a, "msgid:1", now(), day).await.unwrap());
        assert!(!store.first_time(&c, &a, "msgid:1", now(), day).await.unwrap(), "a retry");
        assert!(store.first_time(&c, &b, "msgid:1", now(), day).await.unwrap(), "per authorizer");
        assert!(store.first_time(&c, &a, "msgid:2", now(), day).await.unwrap());

        let short = Duration::from_millis(200);
        assert!(store.first_time(&c, &a, "short", now(), short).await.unwrap());
        assert!(!store.first_time(&c, &a, "short", now(), short).await.unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !store.first_time(&c, &a, "short", now(), short).await.unwrap() {
            assert!(std::time::Instant::now() < deadline, "a dedupe key outlived its ttl");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.prune_seen(&c, now() + 1).await.unwrap();
    }
}
