//! The durable outbox: a message is committed to the store before WeChat gets `success`, then
//! delivered to its route's handler by [`Outbox::run`] with retries, backoff and jitter until it
//! is taken or `max_age` has passed, when it is kept as failed for an operator.
//!
//! Each attempt is claimed in the store first (the attempt counted, the next attempt pushed a
//! lease ahead), so a crash at any moment loses nothing and redelivers at most what was in
//! flight, with a higher `X-Wxgate-Attempt` and the same delivery id; on a shared Redis the
//! claim is what makes one instance deliver each message.

mod slots;

pub use crate::store::outbox::{BadDeliveryId, DeliveryId, MessageKind, OutboxEntry, OutboxMessage, OutboxState};

use crate::metrics;
use crate::store::outbox::{Claim, Outcome};
use crate::store::{SharedStore, StoreError};
use crate::tokens::{backoff_ms, Clock};
use crate::AppId;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use slots::Slots;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How long WeChat's dedupe keys are kept: WeChat retries within seconds, but a retry after a
/// long restart must still be recognised.
pub const DEDUPE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often the worker looks for work it was not woken for: messages another instance left
/// when it died, or enqueued on a shared store.
const POLL: Duration = Duration::from_secs(1);

/// While some route is busy, how often the store is asked which routes have messages due. A
/// busy route's next work is known here (its claims ahead, its attempts ending); asking the
/// store at each ended attempt put a store round trip before each delivery of a drain.
const SCAN_WHILE_BUSY: Duration = Duration::from_millis(10);

/// How long shutdown waits for attempts in flight before leaving them to their leases.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[async_trait]
pub trait Deliver: Send + Sync + 'static {
    /// One delivery attempt (`attempt` counts from 1). Ok on a 2xx from the handler. Err carries
    /// a short reason without content ("status 503", "timeout", "connect refused", "route gone").
    async fn deliver(&self, message: &OutboxMessage, attempt: u32) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// How long a message is retried before it is kept as failed.
    pub max_age: Duration,
    /// Attempts in flight per route at most, so that a slow handler cannot take every slot.
    pub per_route_concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long a claim keeps other instances off a message; an attempt is cut off at half of it,
    /// so that it always ends within its lease.
    pub lease_ttl: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(72 * 3600),
            per_route_concurrency: 8,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            lease_ttl: Duration::from_secs(60),
        }
    }
}

pub struct Outbox {
    component: AppId,
    store: SharedStore,
    settings: OutboxSettings,
    clock: Clock,
    /// Rung by an enqueue, a redeliver and every finished attempt.
    wake: Notify,
    /// A message was enqueued or made due since the store was last asked what is due.
    news: AtomicBool,
    /// Attempts in flight and claims taken ahead, by route.
    slots: Slots,
}

impl Outbox {
    pub fn new(component: AppId, store: SharedStore, settings: OutboxSettings) -> Arc<Self> {
        Arc::new(Self {
            component,
            store,
            settings,
            clock: Clock::new(),
            wake: Notify::new(),
            news: AtomicBool::new(false),
            slots: Slots::default(),
        })
    }

    pub fn settings(&self) -> &OutboxSettings {
        &self.settings
    }

    /// Durable (committed to the store) before it returns: the receiver answers `success` after.
    pub async fn enqueue(&self, message: OutboxMessage) -> Result<(), OutboxError> {
        let held = self.held(message);
        self.store.outbox().enqueue(&self.component, &held).await?;
        self.enqueued(&held);
        Ok(())
    }

    /// [`Outbox::first_time`] and [`Outbox::enqueue`] at once, atomically: WeChat's dedupe `key`
    /// is recorded only with its message, so a retry of a message that could not be kept is
    /// taken again. False (and nothing enqueued): a retry of a message already taken.
    pub async fn enqueue_first(&self, message: OutboxMessage, key: &str) -> Result<bool, OutboxError> {
        let held = self.held(message);
        let now = self.clock.now_ms();
        let new = self.store.outbox().enqueue_first(&self.component, &held, key, now, DEDUPE_TTL).await?;
        if new {
            self.enqueued(&held);
        }
        Ok(new)
    }

    /// Forgets a key [`Outbox::first_time`] recorded when its message could not be kept.
    pub async fn forget(&self, authorizer: &AppId, key: &str) -> Result<(), OutboxError> {
        Ok(self.store.outbox().forget(&self.component, authorizer, key).await?)
    }

    /// `message` as the outbox keeps it: due now, or, after a failed reply-mode call (one
    /// attempt made), after its backoff like any retry.
    fn held(&self, mut message: OutboxMessage) -> OutboxMessage {
        let now = self.clock.now_ms();
        message.next_attempt_at_ms = match message.attempts {
            0 => now,
            made => now + self.backoff(made),
        };
        message.state = OutboxState::Pending;
        message
    }

    fn enqueued(&self, held: &OutboxMessage) {
        tracing::debug!(delivery = %held.id, authorizer = ?held.authorizer, route = %held.route, "message enqueued");
        self.news.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// WeChat's retries: records `key` (per authorizer) and says whether it is new. Durable, kept
    /// [`DEDUPE_TTL`], so that a retry after a restart is still recognised.
    pub async fn first_time(&self, authorizer: &AppId, key: &str) -> Result<bool, OutboxError> {
        let now = self.clock.now_ms();
        Ok(self.store.outbox().first_time(&self.component, authorizer, key, now, DEDUPE_TTL).await?)
    }

    /// Metadata of the messages in `state` (pending and failed when `None`), oldest first, with
    /// how many there are in all. Never the payload.
    pub async fn list(
        &self,
        state: Option<OutboxState>,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<OutboxEntry>), OutboxError> {
        Ok(self.store.outbox().list(&self.component, state, offset, limit).await?)
    }

    /// Makes a pending or failed message due now; `false` for an unknown id.
    pub async fn redeliver(&self, id: &DeliveryId) -> Result<bool, OutboxError> {
        let found = self.store.outbox().redeliver(&self.component, id, self.clock.now_ms()).await?;
        if found {
            tracing::info!(delivery = %id, "message to be delivered again, asked by an operator");
            self.news.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
        Ok(found)
    }

    /// Removes a message whatever its state; `false` for an unknown id.
    pub async fn delete(&self, id: &DeliveryId) -> Result<bool, OutboxError> {
        let found = self.store.outbox().delete(&self.component, id).await?;
        if found {
            tracing::info!(delivery = %id, "message deleted by an operator");
        }
        Ok(found)
    }

    /// (pending, failed).
    pub async fn counts(&self) -> Result<(u64, u64), OutboxError> {
        Ok(self.store.outbox().counts(&self.component).await?)
    }

    fn backoff(&self, attempt: u32) -> i64 {
        backoff_ms(attempt, self.settings.retry_base, self.settings.retry_max, &mut rand::thread_rng())
    }

    /// The delivery loop: due messages claimed route by route within each route's concurrency,
    /// each attempt a task of its own; returns on shutdown, after the attempts in flight end (or
    /// [`SHUTDOWN_WAIT`], when their leases take over).
    pub async fn run(self: Arc<Self>, deliver: Arc<dyn Deliver>, mut shutdown: ShutdownWatch) {
        if !self.store.shared() {
            // Nobody else uses this store: any claim is the previous process's, which died.
            match self.store.outbox().release_claims(&self.component, self.clock.now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(messages = n, "messages in flight when wxgate stopped will be delivered again"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the outbox's old claims; they wait for their lease")
                }
            }
        }
        let mut tasks = JoinSet::new();
        let (mut next_gauges, mut next_prune, mut next_scan) = (0, 0, 0);
        loop {
            while tasks.try_join_next().is_some() {}
            let now = self.clock.now_ms();
            if now >= next_gauges {
                self.update_gauges().await;
                next_gauges = now + 1000;
            }
            if now >= next_prune {
                self.prune(now).await;
                next_prune = now + 3_600_000;
            }
            let busy = self.slots.busy();
            let scan = busy.is_empty() || now >= next_scan;
            if scan {
                self.news.store(false, Ordering::Relaxed);
                next_scan = now + SCAN_WHILE_BUSY.as_millis() as i64;
            }
            let wait_until = match self.pass(now, busy, scan, &deliver, &mut tasks).await {
                // More may be due than the pass took.
                Ok(true) => continue,
                // A finished attempt rings `wake`; new messages are looked for at the next scan.
                Ok(false) if !self.slots.busy().is_empty() => match self.news.load(Ordering::Relaxed) {
                    true => next_scan,
                    false => now + POLL.as_millis() as i64,
                },
                Ok(false) => match self.store.outbox().next_due(&self.component).await {
                    Ok(Some(due)) if due > now => due.min(now + POLL.as_millis() as i64),
                    Ok(_) => now + POLL.as_millis() as i64,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox: cannot read the next due message");
                        now + POLL.as_millis() as i64
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: cannot claim due messages; retrying");
                    now + POLL.as_millis() as i64
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(self.clock.instant_at(wait_until)) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
        }
        if tokio::time::timeout(SHUTDOWN_WAIT, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(
                in_flight = tasks.len(),
                "outbox: attempts still in flight at shutdown; their leases expire"
            );
            tasks.abort_all();
        }
    }

    /// Claims what is due on the `busy` routes (and, with `scan`, on every route the store
    /// has due messages for) within free slots and starts an attempt for each; says whether it
    /// started any.
    async fn pass(
        self: &Arc<Self>,
        now: i64,
        mut routes: Vec<String>,
        scan: bool,
        deliver: &Arc<dyn Deliver>,
        tasks: &mut JoinSet<()>,
    ) -> Result<bool, StoreError> {
        let outbox = self.store.outbox();
        let concurrency = self.settings.per_route_concurrency.max(1);
        if scan {
            let due = outbox.due_routes(&self.component, now).await?;
            routes.extend(due.into_iter().filter(|r| !routes.contains(r)).collect::<Vec<_>>());
        }
        let mut started = false;
        for route in routes {
            let (mut start, want) = self.slots.take(&route, concurrency);
            if want > 0 {
                let claims = outbox.claim(&self.component, &route, now, want, self.settings.lease_ttl).await?;
                start.extend(self.slots.hold(&route, claims, concurrency));
            }
            for claim in start {
                started = true;
                tasks.spawn(Arc::clone(self).attempt(Arc::clone(deliver), claim));
            }
        }
        Ok(started)
    }

    /// One attempt, then its outcome recorded under the claim.
    async fn attempt(self: Arc<Self>, deliver: Arc<dyn Deliver>, claim: Claim) {
        let Claim { message, token } = claim;
        let attempt = message.attempts;
        let cut_off = self.settings.lease_ttl / 2;
        let result = tokio::time::timeout(cut_off, deliver.deliver(&message, attempt))
            .await
            .unwrap_or_else(|_| Err("timeout".to_owned()));
        let now = self.clock.now_ms();
        let outcome = match result {
            Ok(()) => Outcome::Delivered,
            Err(error) => {
                let at_ms = now + self.backoff(attempt);
                if at_ms >= message.received_at_ms + self.settings.max_age.as_millis() as i64 {
                    Outcome::Failed { error }
                } else {
                    Outcome::Retry { at_ms, error }
                }
            }
        };
        // The handler's slot is free once it has answered: the outcome's commit is the store's
        // work, and the message stays claimed until it lands, so no other attempt starts on it.
        self.free_slot(&message.route);
        let (id, route) = (&message.id, &message.route);
        match self.store.outbox().settle(&self.component, id, &token, &outcome).await {
            Ok(true) => counted(&message, &outcome, now),
            Ok(false) => tracing::info!(delivery = %id, route = %route, attempt,
                "message's claim passed on meanwhile (lease ran out, or an operator acted); outcome dropped"),
            Err(e) => tracing::warn!(delivery = %id, route = %route, attempt, error = %e,
                "cannot record a delivery's outcome; the message is attempted again when its lease runs out"),
        }
        // The next message of its lane may go now.
        self.slots.look_again(route);
        self.wake.notify_one();
    }

    /// One attempt of `route` fewer in flight: the loop may start another.
    fn free_slot(&self, route: &str) {
        self.slots.finished(route, std::time::Instant::now());
        self.wake.notify_one();
    }

    async fn update_gauges(&self) {
        match self.counts().await {
            Ok((pending, failed)) => {
                metrics::MESSAGE_OUTBOX.with_label_values(&["pending"]).set(pending as i64);
                metrics::MESSAGE_OUTBOX.with_label_values(&["failed"]).set(failed as i64);
            }
            Err(e) => tracing::warn!(error = %e, "outbox: cannot count messages"),
        }
    }

    async fn prune(&self, now: i64) {
        let before = now - DEDUPE_TTL.as_millis() as i64;
        if let Err(e) = self.store.outbox().prune_seen(&self.component, before).await {
            tracing::warn!(error = %e, "outbox: cannot prune old dedupe keys");
        }
    }
}

/// An attempt's outcome, settled: counted (by result, and by route and result) and logged.
fn counted(message: &OutboxMessage, outcome: &Outcome, now: i64) {
    let (id, route, attempt) = (&message.id, &message.route, message.attempts);
    let result = match outcome {
        Outcome::Delivered => {
            metrics::MESSAGE_DELIVERY.observe((now - message.received_at_ms).max(0) as f64 / 1000.0);
            tracing::debug!(delivery = %id, route = %route, attempt, "message delivered");
            "delivered"
        }
        Outcome::Retry { at_ms, error } => {
            tracing::info!(delivery = %id, route = %route, attempt, reason = %error,
                retry_in_ms = at_ms - now, "message delivery failed; will retry");
            "retry"
        }
        Outcome::Failed { error } => {
            tracing::warn!(delivery = %id, route = %route, attempt, reason = %error,
                "message not delivered within messages.max_age_hours; kept as failed");
            "failed"
        }
    };
    metrics::MESSAGE_ATTEMPTS.with_label_values(&[result]).inc();
    metrics::ROUTE_ATTEMPTS.with_label_values(&[route, result]).inc();
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
