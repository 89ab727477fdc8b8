//! The JS-SDK tickets (`jsapi`, `wx_card`) of each authorizer that asks for them: fetched on
//! first use, single-flight and shared through the store by the refresher, refreshed ahead only
//! while in use. Each `getticket` retires the ticket every page holds and counts against a small
//! daily limit (PROTOCOL.md §11), so one ticket per account is all any app ever sees.

use super::authorizer::AuthorizerTokens;
use super::core::Core;
use super::refresher::{Committed, Credential, Endpoint, Flight};
use super::{steady_due, AccessToken, Job, TokenError, Want};
use crate::metrics;
use crate::store::{AuthorizerState, Fence, JsTicket, TicketKind};
use crate::wechat::{ApiErrorKind, Issued};
use crate::AppId;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// One authorizer's ticket of one kind.
struct TicketSlot {
    appid: AppId,
    kind: TicketKind,
    current: RwLock<Option<Arc<AccessToken>>>,
    /// When a page last asked for it (clock ms): it is refreshed ahead only while in use.
    last_used_ms: AtomicI64,
    flight: Flight,
}

impl TicketSlot {
    fn current(&self) -> Option<Arc<AccessToken>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, ticket: Arc<AccessToken>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(ticket);
    }

    /// Asked for since the ticket held was obtained (or none is held).
    fn in_use(&self) -> bool {
        let obtained = self.current().map_or(0, |t| t.expires_at - t.lifetime_ms);
        self.last_used_ms.load(Ordering::Relaxed) >= obtained
    }
}

/// The tickets asked for, by authorizer and kind; an authorizer that never asks has none.
#[derive(Default)]
struct TicketSlots(RwLock<HashMap<(AppId, TicketKind), Arc<TicketSlot>>>);

impl TicketSlots {
    fn get(&self, appid: &AppId, kind: TicketKind) -> Option<Arc<TicketSlot>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(&(*appid, kind)).cloned()
    }

    fn get_or_insert(&self, appid: &AppId, kind: TicketKind) -> Arc<TicketSlot> {
        if let Some(slot) = self.get(appid, kind) {
            return slot;
        }
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let slot = map.entry((*appid, kind)).or_insert_with(|| {
            Arc::new(TicketSlot {
                appid: *appid,
                kind,
                current: RwLock::new(None),
                last_used_ms: AtomicI64::new(0),
                flight: Flight::default(),
            })
        });
        Arc::clone(slot)
    }

    fn remove_authorizer(&self, appid: &AppId) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).retain(|(a, _), _| a != appid);
    }
}

/// The JS-SDK tickets of every authorizer that asks for them.
pub struct JsTickets {
    core: Arc<Core>,
    authorizers: Arc<AuthorizerTokens>,
    slots: TicketSlots,
}

impl JsTickets {
    pub(super) fn new(authorizers: Arc<AuthorizerTokens>) -> Self {
        Self { core: Arc::clone(&authorizers.core), authorizers, slots: TicketSlots::default() }
    }

    /// A ticket of `kind` for `appid` that has not expired: fetched (or taken from the store)
    /// the first time, single-flight however many pages ask at once.
    pub async fn get(&self, appid: &AppId, kind: TicketKind) -> Result<Arc<AccessToken>, TokenError> {
        match self.authorizers.state(appid) {
            None => return Err(TokenError::UnknownAuthorizer),
            Some(AuthorizerState::Revoked) => return Err(TokenError::Revoked),
            Some(AuthorizerState::NeedsReauth) => return Err(TokenError::NeedsReauth),
            Some(AuthorizerState::Active) => {}
        }
        let slot = self.slots.get_or_insert(appid, kind);
        let now = self.core.now_ms();
        slot.last_used_ms.store(now, Ordering::Relaxed);
        match slot.current() {
            Some(t) if t.is_valid(now) => Ok(t),
            _ => self.core.refresh(&TicketCredential { part: self, slot: &slot }, Want::Valid).await,
        }
    }

    /// A refresh of a ticket already asked for, for `want`.
    #[cfg(test)]
    pub(super) async fn refresh(
        &self,
        appid: &AppId,
        kind: TicketKind,
        want: Want<'_>,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slots.get_or_insert(appid, kind);
        self.core.refresh(&TicketCredential { part: self, slot: &slot }, want).await
    }

    /// The scheduler's refresh ahead of expiry, for a ticket still in use; one no page asked for
    /// since it was obtained is left to expire, and fetched again if a page asks.
    pub(super) async fn refresh_planned(&self, appid: &AppId, kind: TicketKind) {
        let Some(slot) = self.slots.get(appid, kind) else { return };
        if !self.authorizers.is_active(appid) || !slot.in_use() {
            return;
        }
        // Failures are logged, counted and re-planned by the refresher.
        let _ = self.core.refresh(&TicketCredential { part: self, slot: &slot }, Want::Planned).await;
    }

    /// Another instance stored a new ticket: take it, if this instance holds that ticket at all.
    pub(super) async fn adopt_announced(&self, appid: &AppId, kind: TicketKind) -> Result<(), TokenError> {
        match self.slots.get(appid, kind) {
            Some(slot) => TicketCredential { part: self, slot: &slot }.adopt_stored().await,
            None => Ok(()),
        }
    }

    /// Drops a forgotten authorizer's tickets.
    pub(super) fn forget(&self, appid: &AppId) {
        self.slots.remove_authorizer(appid);
    }
}

/// One ticket as the refresher sees it.
struct TicketCredential<'a> {
    part: &'a JsTickets,
    slot: &'a TicketSlot,
}

impl TicketCredential<'_> {
    fn job(&self) -> Job {
        Job::Ticket(self.slot.appid, self.slot.kind)
    }

    fn plan_next(&self, ticket: &AccessToken) {
        let core = &self.part.core;
        let due = steady_due(core.now_ms(), ticket.expires_at, core.settings.ahead, &mut rand::thread_rng());
        core.plan(self.job(), due);
    }
}

#[async_trait]
impl Credential for TicketCredential<'_> {
    type Fetched = Issued;

    fn endpoint(&self) -> Endpoint {
        Endpoint::Ticket
    }

    fn lease_name(&self) -> String {
        format!("{}:{}", self.slot.kind.as_str(), self.slot.appid)
    }

    fn job(&self) -> Job {
        TicketCredential::job(self)
    }

    fn flight(&self) -> &Flight {
        &self.slot.flight
    }

    fn current(&self, _: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        Ok(self.slot.current())
    }

    async fn adopt_stored(&self) -> Result<(), TokenError> {
        let (core, slot) = (&self.part.core, self.slot);
        let Some(stored) = core.store.load_js_ticket(&core.component, &slot.appid, slot.kind).await? else {
            return Ok(());
        };
        if slot.current().is_some_and(|held| held.expires_at >= stored.expires_at) {
            return Ok(());
        }
        let ticket = Arc::new(AccessToken {
            value: stored.value,
            expires_at: stored.expires_at,
            lifetime_ms: stored.expires_at - stored.obtained_at,
        });
        slot.set(Arc::clone(&ticket));
        self.plan_next(&ticket);
        Ok(())
    }

    /// With the authorizer's token; a token WeChat refuses is replaced once (compare-and-swap).
    async fn fetch(&self) -> Result<Issued, TokenError> {
        let (part, slot) = (self.part, self.slot);
        let token = part.authorizers.token(&slot.appid).await?;
        match part.core.api.js_ticket(&token.value, slot.kind.as_str()).await {
            Err(e) if e.kind() == Some(ApiErrorKind::TokenInvalid) => {
                let fresh = part.authorizers.replace(&slot.appid, &token.value).await?;
                Ok(part.core.api.js_ticket(&fresh.value, slot.kind.as_str()).await?)
            }
            other => Ok(other?),
        }
    }

    async fn commit(&self, issued: Issued, fence: Fence<'_>) -> Result<Committed, TokenError> {
        let (core, slot) = (&self.part.core, self.slot);
        let now = core.now_ms();
        let lifetime_ms = issued.expires_in as i64 * 1000;
        let record = JsTicket { value: issued.value, expires_at: now + lifetime_ms, obtained_at: now };
        // A ticket the store did not take still works here; other instances fetch their own,
        // which retires this one after WeChat's grace. Better than no ticket at all.
        match core.store.save_js_ticket(&core.component, &slot.appid, slot.kind, &record, fence).await {
            Ok(true) => {}
            Ok(false) => return Ok(Committed::LeaseLost),
            Err(e) => {
                tracing::error!(authorizer = %slot.appid, kind = slot.kind.as_str(), error = %e, "could not store the new JS-SDK ticket")
            }
        }
        let ticket = Arc::new(AccessToken { value: record.value, expires_at: record.expires_at, lifetime_ms });
        slot.set(Arc::clone(&ticket));
        metrics::TOKEN_REFRESH.with_label_values(&["ticket", "ok"]).inc();
        self.plan_next(&ticket);
        tracing::info!(authorizer = %slot.appid, kind = slot.kind.as_str(), expires_in = issued.expires_in, "JS-SDK ticket refreshed");
        Ok(Committed::InService(ticket))
    }

    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64) {
        let slot = self.slot;
        metrics::TOKEN_REFRESH.with_label_values(&["ticket", error.label()]).inc();
        tracing::warn!(authorizer = %slot.appid, kind = slot.kind.as_str(), error = %error, failures = attempts, retry_in_ms, "JS-SDK ticket refresh failed; retrying with backoff while it is in use");
    }
}
