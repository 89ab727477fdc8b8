//! The platform's own credentials: the `component_verify_ticket` WeChat pushes every ten minutes,
//! and the `component_access_token` made from it, fetched once a ticket is held, refreshed ahead
//! of expiry and replaced (compare-and-swap) when WeChat refuses it, through the refresher.

use super::core::Core;
use super::refresher::{Committed, Credential, Endpoint, Flight};
use super::slot::TokenSlot;
use super::{steady_due, AccessToken, ComponentStatus, Job, TicketStatus, TokenError, Want};
use crate::metrics;
use crate::store::{unix_now, ComponentToken, Fence, Ticket};
use crate::wechat::Issued;
use async_trait::async_trait;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub struct ComponentTokens {
    core: Arc<Core>,
    ticket: RwLock<Option<Ticket>>,
    pub(super) slot: TokenSlot,
    /// When the last ticket arrived, by the clock; the start time until one does.
    last_ticket_ms: AtomicI64,
    last_push_request_ms: Mutex<i64>,
}

impl ComponentTokens {
    /// Starts from what the store holds, and plans the token's refresh and the ticket's watch.
    pub(super) async fn load(core: Arc<Core>) -> Result<Self, TokenError> {
        let ticket = core.store.load_ticket(&core.component).await?;
        let token = core.store.load_component_token(&core.component).await?;
        let now = core.now_ms();
        let part = Self {
            slot: TokenSlot::new(token),
            ticket: RwLock::new(ticket),
            last_ticket_ms: AtomicI64::new(now),
            last_push_request_ms: Mutex::new(0),
            core,
        };
        if part.core.platform {
            let mut schedule = part.core.lock_schedule();
            schedule.set(Job::ComponentToken, part.slot.due_after_load(now, &part.core.settings));
            schedule.set(Job::TicketWatch, now + 60_000);
        }
        part.update_ticket_age();
        Ok(part)
    }

    /// A component token that has not expired, fetched first if none is held.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        if !self.core.platform {
            return Err(TokenError::NoPlatform);
        }
        match self.slot.current() {
            Some(t) if t.is_valid(self.core.now_ms()) => Ok(t),
            // Boxed: a refresh's future is large, and every proxied call holds this one.
            _ => Box::pin(self.refresh(Want::Valid)).await,
        }
    }

    /// Replaces `failed`, which WeChat refused, unless another caller already did: however many
    /// requests saw the same error, WeChat is asked once.
    pub async fn replace(&self, failed: &crate::Secret) -> Result<Arc<AccessToken>, TokenError> {
        self.refresh(Want::Replace(failed)).await
    }

    pub(crate) async fn refresh(&self, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        if !self.core.platform {
            return Err(TokenError::NoPlatform);
        }
        self.core.refresh(&ComponentCredential(self), want).await
    }

    /// A fresh pre_auth_code for an authorization link (single use, ~10 minutes).
    pub async fn pre_auth_code(&self) -> Result<Issued, TokenError> {
        with_component_token!(self, |t| self.core.api.create_preauthcode(t))
    }

    /// Stores a pushed ticket unless a newer one is held; returns whether it was kept.
    pub async fn accept_ticket(&self, ticket: Ticket) -> Result<bool, TokenError> {
        let core = &self.core;
        let kept = core.store.save_ticket(&core.component, &ticket).await?;
        if kept {
            let mut held = self.ticket.write().unwrap_or_else(|p| p.into_inner());
            // Two pushes may race between the store and this lock: keep the newer in memory too.
            if held.as_ref().is_none_or(|h| h.create_time <= ticket.create_time) {
                *held = Some(ticket);
            }
            // A refresh that failed for want of a (valid) ticket may try again at once.
            self.slot.flight.clear();
        }
        self.last_ticket_ms.store(core.now_ms(), Ordering::Relaxed);
        self.update_ticket_age();
        if !self.slot.is_valid(core.now_ms()) {
            core.plan_by(Job::ComponentToken, core.now_ms());
        }
        Ok(kept)
    }

    /// The ticket to use: on a shared store the newest any instance received.
    pub(super) async fn current_ticket(&self) -> Result<Option<Ticket>, TokenError> {
        let core = &self.core;
        if core.store.shared() {
            if let Some(stored) = core.store.load_ticket(&core.component).await? {
                let mut held = self.ticket.write().unwrap_or_else(|p| p.into_inner());
                if held.as_ref().is_none_or(|h| h.create_time < stored.create_time) {
                    *held = Some(stored);
                    self.last_ticket_ms.store(core.now_ms(), Ordering::Relaxed);
                }
            }
            self.update_ticket_age();
        }
        Ok(self.ticket.read().unwrap_or_else(|p| p.into_inner()).clone())
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

    /// Puts the stored component token in service if it is newer than the one held.
    pub(super) async fn adopt_stored(&self) -> Result<Option<Arc<AccessToken>>, TokenError> {
        let core = &self.core;
        let Some(stored) = core.store.load_component_token(&core.component).await? else { return Ok(None) };
        let held = self.slot.current();
        if held.as_ref().is_some_and(|h| h.expires_at >= stored.expires_at) {
            return Ok(held);
        }
        let token = Arc::new(AccessToken {
            value: stored.value,
            expires_at: stored.expires_at,
            lifetime_ms: stored.expires_at - stored.obtained_at,
        });
        self.slot.set(Arc::clone(&token), stored.obtained_at);
        let due = steady_due(core.now_ms(), token.expires_at, core.settings.ahead, &mut rand::thread_rng());
        core.plan(Job::ComponentToken, due);
        Ok(Some(token))
    }

    /// Why no API call can be served for want of a component token, or `None` when one is held.
    pub(super) fn not_ready_reason(&self) -> Option<String> {
        if !self.core.platform || self.slot.is_valid(self.core.now_ms()) {
            return None;
        }
        if self.ticket_status().is_none() {
            return Some("no component_verify_ticket received yet".into());
        }
        let error = self.slot.last_error();
        Some(format!(
            "no component_access_token held yet{}",
            error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
        ))
    }

    pub fn status(&self) -> ComponentStatus {
        let now = self.core.now_ms();
        let token = self.slot.current();
        ComponentStatus {
            component_appid: self.core.component.to_string(),
            ticket: self.ticket_status(),
            ticket_age_secs: self.ticket_age_secs(),
            token_expires_at_ms: token.as_ref().map(|t| t.expires_at),
            token_expires_in_secs: token.as_ref().map(|t| (t.expires_at - now) / 1000),
            last_refresh_at_ms: self.slot.last_refresh_at(),
            next_refresh_at_ms: self.core.planned(&Job::ComponentToken),
            last_error: self.slot.last_error(),
        }
    }

    /// WeChat pushes a ticket every 10 minutes; a long silence means pushes stopped (a
    /// firewall, a callback that answered something other than `success`). Warn, count, and
    /// ask WeChat to resume, at most every `push_ticket_every`.
    pub(super) async fn watch_ticket(&self) {
        let (core, now) = (&self.core, self.core.now_ms());
        let stale_after = core.settings.ticket_stale_after.as_millis() as i64;
        core.plan(Job::TicketWatch, now + (stale_after / 4).clamp(100, 60_000));
        let silent_ms = now - self.last_ticket_ms.load(Ordering::Relaxed);
        if silent_ms < stale_after {
            return;
        }
        metrics::TICKET_STALE.inc();
        tracing::warn!(
            silent_secs = silent_ms / 1000,
            "no component_verify_ticket pushed lately: WeChat may have stopped pushing"
        );
        {
            let mut last_request = self.last_push_request_ms.lock().unwrap_or_else(|p| p.into_inner());
            if *last_request > 0 && now - *last_request < core.settings.push_ticket_every.as_millis() as i64 {
                return;
            }
            *last_request = now;
        }
        match core.api.start_push_ticket().await {
            Ok(()) => tracing::info!("asked WeChat to resume ticket pushes (api_start_push_ticket)"),
            Err(e) => tracing::warn!(error = %e, "api_start_push_ticket failed"),
        }
    }
}

/// The component token as the refresher sees it.
struct ComponentCredential<'a>(&'a ComponentTokens);

#[async_trait]
impl Credential for ComponentCredential<'_> {
    type Fetched = Issued;

    fn endpoint(&self) -> Endpoint {
        Endpoint::ComponentToken
    }

    fn lease_name(&self) -> String {
        "component".into()
    }

    fn job(&self) -> Job {
        Job::ComponentToken
    }

    fn flight(&self) -> &Flight {
        &self.0.slot.flight
    }

    fn current(&self, _: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        Ok(self.0.slot.current())
    }

    async fn adopt_stored(&self) -> Result<(), TokenError> {
        self.0.adopt_stored().await.map(drop)
    }

    async fn fetch(&self) -> Result<Issued, TokenError> {
        let ticket = self.0.current_ticket().await?.ok_or(TokenError::NoTicket)?;
        Ok(self.0.core.api.component_token(&ticket.value).await?)
    }

    async fn commit(&self, issued: Issued, fence: Fence<'_>) -> Result<Committed, TokenError> {
        let core = &self.0.core;
        let now = core.now_ms();
        let lifetime_ms = issued.expires_in as i64 * 1000;
        let record = ComponentToken { value: issued.value, expires_at: now + lifetime_ms, obtained_at: now };
        // Unlike a refresh token, a component token lost in a crash costs only a new one, so a
        // store failure does not keep it out of service.
        let result = match core.store.save_component_token_leased(&core.component, &record, fence).await {
            Ok(true) => "ok",
            Ok(false) => return Ok(Committed::LeaseLost),
            Err(e) => {
                tracing::error!(error = %e, "could not store the new component_access_token");
                "store_error"
            }
        };
        let token = Arc::new(AccessToken { value: record.value, expires_at: record.expires_at, lifetime_ms });
        self.0.slot.set(Arc::clone(&token), now);
        metrics::TOKEN_REFRESH.with_label_values(&["component", result]).inc();
        let due = steady_due(now, token.expires_at, core.settings.ahead, &mut rand::thread_rng());
        tracing::info!(
            expires_in = issued.expires_in,
            next_refresh_in_secs = (due - now) / 1000,
            "component_access_token refreshed"
        );
        core.plan(Job::ComponentToken, due);
        if core.events_backing_off.load(Ordering::Relaxed) {
            // Events wait for a component token; they need not wait out their backoff too.
            core.plan(Job::Events, now);
        }
        Ok(Committed::InService(token))
    }

    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64) {
        self.0.slot.failed(error.to_string());
        metrics::TOKEN_REFRESH.with_label_values(&["component", error.label()]).inc();
        tracing::warn!(
            error = %error,
            failures = attempts,
            retry_in_ms,
            "component_access_token refresh failed; the current token stays in service until it expires"
        );
    }
}
