//! Several gateway instances on one shared store (Redis): what memory holds is brought up to
//! what the store holds — when another instance announces a change, and before any refresh —
//! so that no instance serves a token older than the store's, or asks WeChat for one another
//! instance has just obtained.

use super::slot::{AccessToken, AuthorizerMem, AuthorizerSlot};
use super::{Job, TokenError, TokenService};
use crate::store::{AuthorizerState, Change, Ticket};
use crate::AppId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

impl TokenService {
    /// Applies other instances' changes as they are announced; runs for the process's life.
    pub async fn follow_changes(self: Arc<Self>, mut changes: broadcast::Receiver<Change>) {
        loop {
            let result = match changes.recv().await {
                Ok(Change::Ticket) => self.current_ticket().await.map(drop),
                Ok(Change::ComponentToken) => self.adopt_stored_component().await.map(drop),
                Ok(Change::Authorizer(appid)) => self.reload_authorizer(&appid).await,
                Ok(Change::JsTicket(appid, kind)) => self.adopt_announced_ticket(&appid, kind).await,
                Ok(Change::Deleted(appid)) => {
                    self.authorizers.remove(&appid);
                    self.unplan(&Job::Authorizer(appid));
                    self.update_gauges();
                    Ok(())
                }
                Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.resync_until_done().await;
                    Ok(())
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not apply another instance's change; it is read again before the next refresh");
            }
        }
    }

    /// Resyncs, retrying until the store answers: the first commands after a Redis restart can
    /// fail while the connection is re-made, and what was announced meanwhile is lost otherwise.
    async fn resync_until_done(&self) {
        let mut attempt = 0;
        while let Err(e) = self.resync().await {
            attempt += 1;
            tracing::warn!(error = %e, attempt, "could not resync with the shared store; retrying");
            tokio::time::sleep(Duration::from_millis(500 * attempt.min(10))).await;
        }
    }

    /// Reloads everything: after a reconnect, announcements may have been missed.
    async fn resync(&self) -> Result<(), TokenError> {
        self.current_ticket().await?;
        self.adopt_stored_component().await?;
        let records = self.store.load_authorizers(&self.component).await?;
        let known: std::collections::HashSet<AppId> = records.iter().map(|r| r.appid).collect();
        for record in records {
            self.take_record(record).await;
        }
        let gone: Vec<AppId> = self.authorizers.appids().into_iter().filter(|a| !known.contains(a)).collect();
        for appid in gone {
            self.authorizers.remove(&appid);
            self.unplan(&Job::Authorizer(appid));
        }
        self.update_gauges();
        Ok(())
    }

    /// The ticket to use: on a shared store the newest any instance received.
    pub(super) async fn current_ticket(&self) -> Result<Option<Ticket>, TokenError> {
        if self.store.shared() {
            if let Some(stored) = self.store.load_ticket(&self.component).await? {
                let mut held = self.ticket.write().unwrap_or_else(|p| p.into_inner());
                if held.as_ref().is_none_or(|h| h.create_time < stored.create_time) {
                    *held = Some(stored);
                    self.last_ticket_ms.store(self.clock.now_ms(), Ordering::Relaxed);
                }
            }
            self.update_ticket_age();
        }
        Ok(self.held_ticket())
    }

    /// Puts the stored component token in service if it is newer than the one held.
    pub(super) async fn adopt_stored_component(&self) -> Result<Option<Arc<AccessToken>>, TokenError> {
        let Some(stored) = self.store.load_component_token(&self.component).await? else { return Ok(None) };
        let held = self.component_token.current();
        if held.as_ref().is_some_and(|h| h.expires_at >= stored.expires_at) {
            return Ok(held);
        }
        let token = Arc::new(AccessToken {
            value: stored.value,
            expires_at: stored.expires_at,
            lifetime_ms: stored.expires_at - stored.obtained_at,
        });
        self.component_token.set(Arc::clone(&token), stored.obtained_at);
        let now = self.clock.now_ms();
        self.plan(
            Job::ComponentToken,
            super::steady_due(now, token.expires_at, self.settings.ahead, &mut rand::thread_rng()),
        );
        Ok(Some(token))
    }

    async fn reload_authorizer(&self, appid: &AppId) -> Result<(), TokenError> {
        if let Some(record) = self.store.load_authorizer(&self.component, appid).await? {
            self.take_record(record).await;
            self.update_gauges();
        }
        Ok(())
    }

    /// Brings a slot (new or known) up to a stored record, under the slot's lock.
    async fn take_record(&self, record: crate::store::AuthorizerRecord) {
        match self.authorizers.get(&record.appid) {
            Some(slot) => {
                let _single_flight = slot.flight.turn().await;
                self.adopt_record(&slot, record);
            }
            None => {
                let slot = Arc::new(AuthorizerSlot::from_record(record));
                self.replan_authorizer(&slot);
                self.authorizers.insert(slot);
            }
        }
    }

    /// Re-reads a slot's record from a shared store, before a refresh decides anything.
    pub(super) async fn adopt_stored_authorizer(&self, slot: &AuthorizerSlot) -> Result<(), TokenError> {
        if let Some(record) = self.store.load_authorizer(&self.component, &slot.appid).await? {
            self.adopt_record(slot, record);
        }
        Ok(())
    }

    /// Takes the stored record unless memory's is newer. Caller holds the slot's lock.
    fn adopt_record(&self, slot: &AuthorizerSlot, record: crate::store::AuthorizerRecord) {
        let mem = slot.mem();
        if record.last_refresh_at < mem.last_refresh_at || record == mem.to_record(&slot.appid) {
            return;
        }
        slot.set_mem(AuthorizerMem::from_record(record));
        self.replan_authorizer(slot);
    }

    fn replan_authorizer(&self, slot: &AuthorizerSlot) {
        let job = Job::Authorizer(slot.appid);
        match slot.steady_due(self.clock.now_ms(), &self.settings) {
            Some(due) if slot.state() == AuthorizerState::Active => self.plan(job, due),
            _ => self.unplan(&job),
        }
    }
}
