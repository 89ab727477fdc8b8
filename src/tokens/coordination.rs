//! Several gateway instances on one shared store (Redis): what memory holds is brought up to
//! what the store holds — when another instance announces a change, and before any refresh —
//! so that no instance serves a token older than the store's, or asks WeChat for one another
//! instance has just obtained.

use super::authorizer::AuthorizerTokens;
use super::slot::{AuthorizerMem, AuthorizerSlot};
use super::{Job, TokenError, TokenService};
use crate::store::{AuthorizerRecord, AuthorizerState, Change};
use crate::AppId;
use std::num::NonZeroI64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

impl TokenService {
    /// Applies other instances' changes as they are announced; runs for the process's life.
    pub async fn follow_changes(self: Arc<Self>, mut changes: broadcast::Receiver<Change>) {
        loop {
            let result = match changes.recv().await {
                Ok(Change::Ticket) => self.component.current_ticket().await.map(drop),
                Ok(Change::ComponentToken) => self.component.adopt_stored().await.map(drop),
                Ok(Change::Authorizer(appid)) => self.authorizers.reload(&appid).await,
                Ok(Change::Authorizers(records)) => {
                    for record in records {
                        self.authorizers.take_record(record).await;
                    }
                    self.authorizers.update_gauges();
                    Ok(())
                }
                Ok(Change::JsTicket(appid, kind)) => self.tickets.adopt_announced(&appid, kind).await,
                Ok(Change::Deleted(appid)) => {
                    self.authorizers.drop_held(&appid);
                    self.authorizers.update_gauges();
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
        self.component.current_ticket().await?;
        self.component.adopt_stored().await?;
        self.authorizers.resync().await
    }
}

impl AuthorizerTokens {
    /// Takes every stored record, and drops what the store no longer holds.
    async fn resync(&self) -> Result<(), TokenError> {
        let records = self.core.store.load_authorizers(&self.core.component).await?;
        let known: std::collections::HashSet<AppId> = records.iter().map(|r| r.appid).collect();
        for record in records {
            self.take_record(record).await;
        }
        for appid in self.slots.appids().into_iter().filter(|a| !known.contains(a)) {
            self.drop_held(&appid);
        }
        self.update_gauges();
        Ok(())
    }

    pub(super) async fn reload(&self, appid: &AppId) -> Result<(), TokenError> {
        if let Some(record) = self.core.store.load_authorizer(&self.core.component, appid).await? {
            self.take_record(record).await;
            self.update_gauges();
        }
        Ok(())
    }

    /// Brings a slot (new or known) up to a stored record, under the slot's lock.
    async fn take_record(&self, record: AuthorizerRecord) {
        match self.slots.get(&record.appid) {
            Some(slot) => {
                let _single_flight = slot.flight.turn().await;
                self.adopt_record(&slot, record);
            }
            None => {
                let slot = Arc::new(AuthorizerSlot::from_record(record));
                self.replan(&slot);
                self.index.hold(&slot.appid);
                self.slots.insert(slot);
            }
        }
    }

    /// Re-reads a slot's record from a shared store, before a refresh decides anything.
    pub(super) async fn adopt_stored(&self, slot: &AuthorizerSlot) -> Result<(), TokenError> {
        if let Some(record) = self.core.store.load_authorizer(&self.core.component, &slot.appid).await? {
            self.adopt_record(slot, record);
        }
        Ok(())
    }

    /// Takes the stored record unless memory's is newer. Caller holds the slot's lock.
    fn adopt_record(&self, slot: &AuthorizerSlot, record: AuthorizerRecord) {
        let mem = slot.mem();
        if record.last_refresh_at_ms < mem.last_refresh_at.map(NonZeroI64::get) || record == mem.to_record(&slot.appid)
        {
            return;
        }
        slot.set_mem(AuthorizerMem::from_record(record));
        self.replan(slot);
    }

    fn replan(&self, slot: &AuthorizerSlot) {
        let job = Job::Authorizer(slot.appid);
        match slot.steady_due(self.core.now_ms(), &self.core.settings) {
            Some(due) if slot.state() == AuthorizerState::Active => self.core.plan(job, due),
            _ => self.core.unplan(&job),
        }
    }
}
