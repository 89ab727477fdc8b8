//! TEMPORARY, in memory only: the interface of MESSAGES-INTERFACE.md, so that the receiver
//! builds and is tested before the `outbox` branch lands; replaced whole by its merge.

use crate::store::SharedStore;
use crate::{AppId, Secret};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryId(String);

impl DeliveryId {
    pub fn generate() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: DeliveryId,
    pub authorizer: AppId,
    pub route: String,
    pub msg_type: String,
    pub event: Option<String>,
    pub payload: Secret,
    pub received_at_ms: i64,
    pub attempts_made: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub id: DeliveryId,
    pub authorizer: AppId,
    pub route: String,
    pub msg_type: String,
    pub event: Option<String>,
    pub payload: Secret,
    pub received_at_ms: i64,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub state: OutboxState,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[async_trait]
pub trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, message: &OutboxMessage, attempt: u32) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub max_age: Duration,
    pub per_route_concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
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
    queue: Mutex<Vec<OutboxMessage>>,
    seen: Mutex<HashSet<String>>,
    wake: Notify,
    settings: OutboxSettings,
}

impl Outbox {
    pub fn new(_component: AppId, _store: SharedStore, settings: OutboxSettings) -> Arc<Self> {
        Arc::new(Self { queue: Mutex::default(), seen: Mutex::default(), wake: Notify::new(), settings })
    }

    pub async fn enqueue(&self, m: NewMessage) -> Result<(), OutboxError> {
        let next = m.received_at_ms + if m.attempts_made > 0 { self.settings.retry_base.as_millis() as i64 } else { 0 };
        self.queue.lock().unwrap().push(OutboxMessage {
            id: m.id,
            authorizer: m.authorizer,
            route: m.route,
            msg_type: m.msg_type,
            event: m.event,
            payload: m.payload,
            received_at_ms: m.received_at_ms,
            attempts: m.attempts_made,
            next_attempt_at_ms: next,
            state: OutboxState::Pending,
            last_error: m.last_error,
        });
        self.wake.notify_one();
        Ok(())
    }

    pub async fn first_time(&self, authorizer: &AppId, key: &str) -> Result<bool, OutboxError> {
        Ok(self.seen.lock().unwrap().insert(format!("{authorizer}|{key}")))
    }

    pub async fn run(self: Arc<Self>, deliver: Arc<dyn Deliver>, mut shutdown: ShutdownWatch) {
        loop {
            let now = crate::store::unix_now() * 1000;
            let due: Vec<OutboxMessage> = self
                .queue
                .lock()
                .unwrap()
                .iter()
                .filter(|m| m.state == OutboxState::Pending && m.next_attempt_at_ms <= now + 1000)
                .cloned()
                .collect();
            for m in due {
                let attempt = m.attempts + 1;
                let result = deliver.deliver(&m, attempt).await;
                let mut q = self.queue.lock().unwrap();
                if let Some(held) = q.iter_mut().find(|h| h.id == m.id) {
                    held.attempts = attempt;
                    match result {
                        Ok(()) => held.state = OutboxState::Delivered,
                        Err(e) => {
                            held.last_error = Some(e);
                            held.next_attempt_at_ms = now + self.settings.retry_base.as_millis() as i64;
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
