//! The in-memory store, for tests and throwaway runs: nothing survives the process.

mod outbox;
mod releases;

use super::{
    AuthEvent, AuthorizerInfoRecord, AuthorizerRecord, ComponentToken, Fence, JsTicket, OutboxStore, ReleaseStore,
    Store, StoreError, StoredEvent, Ticket, TicketKind,
};
use crate::AppId;
use async_trait::async_trait;
use outbox::MemoryOutbox;
use releases::MemoryReleases;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    outbox: MemoryOutbox,
    releases: MemoryReleases,
}

#[derive(Default)]
struct State {
    tickets: HashMap<AppId, Ticket>,
    events: Vec<(AppId, StoredEvent, bool)>,
    next_event_id: i64,
    component_tokens: HashMap<AppId, ComponentToken>,
    authorizers: HashMap<(AppId, AppId), AuthorizerRecord>,
    infos: HashMap<(AppId, AppId), AuthorizerInfoRecord>,
    js_tickets: HashMap<(AppId, AppId, TicketKind), JsTicket>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written (every update is
        // one insert), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn outbox(&self) -> &dyn OutboxStore {
        &self.outbox
    }

    fn releases(&self) -> &dyn ReleaseStore {
        &self.releases
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load_ticket(&self, component: &AppId) -> Result<Option<Ticket>, StoreError> {
        Ok(self.state().tickets.get(component).cloned())
    }

    async fn save_ticket(&self, component: &AppId, ticket: &Ticket) -> Result<bool, StoreError> {
        let mut state = self.state();
        if let Some(held) = state.tickets.get(component) {
            if held.create_time > ticket.create_time {
                return Ok(false);
            }
        }
        state.tickets.insert(*component, ticket.clone());
        Ok(true)
    }

    async fn record_event(&self, component: &AppId, event: &AuthEvent) -> Result<bool, StoreError> {
        let mut state = self.state();
        let duplicate = state.events.iter().any(|(c, e, _)| {
            c == component
                && e.event.info_type == event.info_type
                && e.event.authorizer == event.authorizer
                && e.event.create_time == event.create_time
        });
        if duplicate {
            return Ok(false);
        }
        state.next_event_id += 1;
        let id = state.next_event_id;
        state.events.push((*component, StoredEvent { id, event: event.clone() }, false));
        Ok(true)
    }

    async fn pending_events(&self, component: &AppId) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self
            .state()
            .events
            .iter()
            .filter(|(c, _, done)| c == component && !done)
            .map(|(_, e, _)| e.clone())
            .collect())
    }

    async fn finish_event(&self, component: &AppId, id: i64) -> Result<(), StoreError> {
        for (c, e, done) in self.state().events.iter_mut() {
            if c == component && e.id == id {
                *done = true;
            }
        }
        Ok(())
    }

    async fn load_component_token(&self, component: &AppId) -> Result<Option<ComponentToken>, StoreError> {
        Ok(self.state().component_tokens.get(component).cloned())
    }

    async fn save_component_token(&self, component: &AppId, token: &ComponentToken) -> Result<(), StoreError> {
        self.state().component_tokens.insert(*component, token.clone());
        Ok(())
    }

    async fn load_authorizers(&self, component: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError> {
        let state = self.state();
        Ok(state.authorizers.iter().filter(|((c, _), _)| c == component).map(|(_, r)| r.clone()).collect())
    }

    async fn load_authorizer(&self, component: &AppId, appid: &AppId) -> Result<Option<AuthorizerRecord>, StoreError> {
        Ok(self.state().authorizers.get(&(*component, *appid)).cloned())
    }

    async fn save_authorizer(&self, component: &AppId, record: &AuthorizerRecord) -> Result<(), StoreError> {
        self.state().authorizers.insert((*component, record.appid), record.clone());
        Ok(())
    }

    async fn delete_authorizer(&self, component: &AppId, appid: &AppId) -> Result<bool, StoreError> {
        Ok(self.state().authorizers.remove(&(*component, *appid)).is_some())
    }

    async fn save_authorizer_info(&self, component: &AppId, info: &AuthorizerInfoRecord) -> Result<(), StoreError> {
        self.state().infos.insert((*component, info.appid), info.clone());
        Ok(())
    }

    async fn load_authorizer_info(
        &self,
        component: &AppId,
        appid: &AppId,
    ) -> Result<Option<AuthorizerInfoRecord>, StoreError> {
        Ok(self.state().infos.get(&(*component, *appid)).cloned())
    }

    async fn load_authorizer_infos(&self, component: &AppId) -> Result<Vec<AuthorizerInfoRecord>, StoreError> {
        Ok(self.state().infos.iter().filter(|((c, _), _)| c == component).map(|(_, i)| i.clone()).collect())
    }

    async fn find_user_name(&self, component: &AppId, user_name: &str) -> Result<Option<AppId>, StoreError> {
        let state = self.state();
        let found = state.infos.iter().find(|((c, _), i)| c == component && i.user_name.as_deref() == Some(user_name));
        Ok(found.map(|((_, a), _)| *a))
    }

    async fn load_js_ticket(&self, c: &AppId, a: &AppId, kind: TicketKind) -> Result<Option<JsTicket>, StoreError> {
        Ok(self.state().js_tickets.get(&(*c, *a, kind)).cloned())
    }

    async fn save_js_ticket(
        &self,
        c: &AppId,
        a: &AppId,
        kind: TicketKind,
        ticket: &JsTicket,
        _fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.state().js_tickets.insert((*c, *a, kind), ticket.clone());
        Ok(true)
    }
}

/// Only this instance uses it: the defaults.
impl super::Coordination for MemoryStore {}

#[cfg(test)]
mod tests {
    use super::super::contract_tests;
    use super::*;

    #[tokio::test]
    async fn newer_ticket_wins() {
        contract_tests::newer_ticket_wins(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn events_are_recorded_once() {
        contract_tests::events_are_recorded_once(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn tokens_and_authorizers_round_trip() {
        contract_tests::tokens_and_authorizers_round_trip(&MemoryStore::new()).await;
        contract_tests::js_tickets_round_trip(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn authorizer_info_round_trips() {
        contract_tests::authorizer_info_round_trips(&MemoryStore::new()).await;
        contract_tests::release_jobs_round_trip(&MemoryStore::new()).await;
    }
}
