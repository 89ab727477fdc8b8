//! Platform events to the apps: the authorization-event URL's events (all but the ticket),
//! handed on by the token service once it has acted on them, put in the one outbox for every
//! `[[events.routes]]` route that takes them, and delivered as WeChat's plaintext-mode request.
//!
//! ```text
//!  callback ─► store (event log, durable) ─► success
//!  scheduler ─► tokens act (exchange code, store account / revoke) ─► hand_on ─► outbox, one
//!      message per matching route, in the lane (route, account) at the event's place ─► done
//!  outbox worker ─► Deliveries ─► the route's handler (X-Wxgate-Info-Type, …)
//! ```
//!
//! Each event's place in its lane is its id in the event log, which both stores number in the
//! order events arrive, so a later event of one account never overtakes an earlier one on the
//! same route, whichever instance hands them on. A hand-off repeated after a crash finds its
//! key (`event:{id}:{route}`) and adds nothing.

pub mod routes;

use crate::messages::handler::{Call, HandlerClient};
use crate::messages::outbox::{Deliver, MessageKind, Outbox, OutboxError, OutboxMessage};
use crate::metrics;
use crate::store::{StoreError, StoredEvent};
use crate::tokens::EventHandoff;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use routes::EventRoutes;
use std::sync::Arc;

/// The `result` label of `wxgate_messages_total` for an event put in the outbox.
const QUEUED: &str = "queued";

/// The InfoType the gateway keeps to itself.
pub const TICKET_INFO_TYPE: &str = "component_verify_ticket";

pub struct PlatformEvents {
    routes: Arc<ArcSwap<EventRoutes>>,
    outbox: Arc<Outbox>,
}

impl PlatformEvents {
    pub fn new(routes: Arc<ArcSwap<EventRoutes>>, outbox: Arc<Outbox>) -> Self {
        Self { routes, outbox }
    }

    /// One delivery attempt of a platform event, with its route as the config has it now.
    async fn deliver(&self, handler: &HandlerClient, message: &OutboxMessage, attempt: u32) -> Result<(), String> {
        let routes = self.routes.load();
        let route = routes.by_name(&message.route).ok_or_else(|| "route gone".to_owned())?;
        let delivery = message.id.to_string();
        let call = Call {
            url: &route.url,
            token: &route.token,
            authorizer: message.authorizer.as_ref(),
            info_type: Some(&message.msg_type),
            delivery: &delivery,
            attempt,
            payload: message.payload.expose(),
            openid: None,
        };
        handler.deliver_call(call).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl EventHandoff for PlatformEvents {
    async fn hand_on(&self, stored: &StoredEvent) -> Result<(), StoreError> {
        let event = &stored.event;
        if event.info_type == TICKET_INFO_TYPE {
            return Ok(());
        }
        let authorizer = event.authorizer;
        let routes = self.routes.load();
        for route in routes.matching(&event.info_type) {
            let received_at_ms = event.received_at.saturating_mul(1000);
            let message = OutboxMessage {
                authorizer,
                seq: Some(stored.id),
                ..OutboxMessage::new(
                    &route.name,
                    MessageKind::Platform,
                    &event.info_type,
                    event.payload.clone(),
                    received_at_ms,
                )
            };
            let key = format!("event:{}:{}", stored.id, route.name);
            match self.outbox.enqueue_first(message, &key).await {
                Ok(true) => {
                    metrics::MESSAGES.with_label_values(&[&route.name, QUEUED]).inc();
                    tracing::info!(route = %route.name, info_type = %event.info_type, authorizer = ?authorizer,
                        "platform event handed on");
                }
                Ok(false) => {
                    tracing::debug!(route = %route.name, event = stored.id, "platform event was handed on already")
                }
                Err(OutboxError::Store(e)) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The outbox's deliveries: an account's messages to their `[[messages.routes]]` handler,
/// platform events to their `[[events.routes]]` one, over the one handler client.
pub struct Deliveries {
    pub handler: Arc<HandlerClient>,
    pub events: Arc<PlatformEvents>,
}

#[async_trait]
impl Deliver for Deliveries {
    async fn deliver(&self, message: &OutboxMessage, attempt: u32) -> Result<(), String> {
        match message.kind {
            MessageKind::Account => self.handler.deliver(message, attempt).await,
            MessageKind::Platform => self.events.deliver(&self.handler, message, attempt).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::routes::tests::config as route;
    use crate::messages::outbox::OutboxSettings;
    use crate::store::{AuthEvent, MemoryStore, SharedStore};
    use crate::{AppId, Secret};

    fn stored(id: i64, info_type: &str, authorizer: &str) -> StoredEvent {
        StoredEvent {
            id,
            event: AuthEvent {
                info_type: info_type.to_owned(),
                authorizer: AppId::parse(authorizer).ok(),
                create_time: 1_700_000_000,
                payload: Secret::new(format!("<xml><InfoType>{info_type}</InfoType></xml>")),
                received_at: 1_700_000_001,
            },
        }
    }

    /// A hand-off repeated after a crash (acted on, handed on, not yet marked done) adds
    /// nothing; each matching route gets the event once, in its account's lane.
    #[tokio::test]
    async fn a_repeated_hand_off_adds_nothing() {
        let component = AppId::parse("wx0123456789abcdef").unwrap();
        let store: SharedStore = Arc::new(MemoryStore::new());
        let outbox = Outbox::new(component, Arc::clone(&store), OutboxSettings::default());
        let routes = EventRoutes::new(&[route("tenants", None), route("fast", Some(&["notify_third_fasteregister"]))]);
        let events = PlatformEvents::new(Arc::new(ArcSwap::from_pointee(routes)), outbox);
        let authorized = stored(7, "authorized", "wx1111111111111111");
        for _ in 0..3 {
            events.hand_on(&authorized).await.unwrap();
        }
        events.hand_on(&stored(8, "notify_third_fasteregister", "")).await.unwrap();
        events.hand_on(&stored(9, TICKET_INFO_TYPE, "")).await.unwrap();
        let (total, listed) = store.outbox().list(&component, None, 0, 10).await.unwrap();
        assert_eq!(total, 3, "authorized once to tenants; the registration to both routes; never the ticket");
        let first = listed.iter().find(|e| e.msg_type == "authorized").unwrap();
        assert_eq!((first.kind, first.route.as_str()), (MessageKind::Platform, "tenants"));
        assert_eq!(first.authorizer.map(|a| a.to_string()).as_deref(), Some("wx1111111111111111"));
        assert!(listed.iter().filter(|e| e.msg_type == "notify_third_fasteregister").all(|e| e.authorizer.is_none()));
    }
}
