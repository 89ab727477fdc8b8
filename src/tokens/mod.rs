//! The token service: the only writer of ticket, token and authorizer state.
//!
//! WeChat's events (through `callback`) and, later, the refresh scheduler write here; the proxy
//! and the admin API only read. Every write goes to the durable store first and to memory after,
//! so that what memory holds is always something the store also holds.

use crate::metrics;
use crate::store::{unix_now, AuthEvent, SharedStore, StoreError, Ticket};
use crate::AppId;
use std::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What is known of the ticket without its value, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketStatus {
    pub create_time: i64,
    pub received_at: i64,
}

pub struct TokenService {
    component: AppId,
    store: SharedStore,
    ticket: RwLock<Option<Ticket>>,
}

impl TokenService {
    /// Starts from what the store holds, so that a restart picks up where the last run stopped.
    pub async fn load(component: AppId, store: SharedStore) -> Result<Self, TokenError> {
        let ticket = store.load_ticket(&component).await?;
        let service = Self { component, store, ticket: RwLock::new(ticket) };
        service.update_ticket_age();
        Ok(service)
    }

    pub fn component(&self) -> &AppId {
        &self.component
    }

    pub fn store_backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Stores a pushed ticket unless a newer one is held; returns whether it was kept.
    pub async fn accept_ticket(&self, ticket: Ticket) -> Result<bool, TokenError> {
        let kept = self.store.save_ticket(&self.component, &ticket).await?;
        if kept {
            let mut held = self.ticket.write().unwrap_or_else(|p| p.into_inner());
            // Two pushes may race between the store and this lock: keep the newer in memory too.
            if held.as_ref().is_none_or(|h| h.create_time <= ticket.create_time) {
                *held = Some(ticket);
            }
        }
        self.update_ticket_age();
        Ok(kept)
    }

    /// Records an authorization event durably, once; the token service acts on it from there.
    pub async fn accept_event(&self, event: AuthEvent) -> Result<bool, TokenError> {
        Ok(self.store.record_event(&self.component, &event).await?)
    }

    pub fn ticket_status(&self) -> Option<TicketStatus> {
        let held = self.ticket.read().unwrap_or_else(|p| p.into_inner());
        held.as_ref().map(|t| TicketStatus { create_time: t.create_time, received_at: t.received_at })
    }

    /// Seconds since WeChat created the ticket held, by the gateway's clock; `None` without one.
    pub fn ticket_age_secs(&self) -> Option<i64> {
        self.ticket_status().map(|t| (unix_now() - t.create_time).max(0))
    }

    /// Sets `wxgate_ticket_age_seconds`; called on every change and before every scrape.
    pub fn update_ticket_age(&self) {
        let age = self.ticket_age_secs().map_or(f64::INFINITY, |a| a as f64);
        metrics::TICKET_AGE.set(age);
    }

    /// Why the gateway cannot serve API calls yet, or `None` when it can.
    pub async fn not_ready_reason(&self) -> Option<String> {
        if let Err(e) = self.store.ping().await {
            return Some(format!("store ({}) does not answer: {e}", self.store.backend()));
        }
        if self.ticket_status().is_none() {
            return Some("no component_verify_ticket received yet".into());
        }
        Some("no component_access_token held yet".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::Secret;
    use std::sync::Arc;

    fn ticket(v: &str, t: i64) -> Ticket {
        Ticket { value: Secret::new(v), create_time: t, received_at: t }
    }

    #[tokio::test]
    async fn memory_follows_the_store_and_keeps_the_newest() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let component = AppId::parse("wx0123456789abcdef").unwrap();
        let tokens = TokenService::load(component.clone(), store.clone()).await.unwrap();
        assert_eq!(tokens.ticket_status(), None);
        assert!(tokens.accept_ticket(ticket("new", 200)).await.unwrap());
        assert!(!tokens.accept_ticket(ticket("old", 100)).await.unwrap());
        assert_eq!(tokens.ticket_status().unwrap().create_time, 200);
        let reloaded = TokenService::load(component, store).await.unwrap();
        assert_eq!(reloaded.ticket_status().unwrap().create_time, 200);
    }
}
