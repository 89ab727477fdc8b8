//! The token service: the only writer of ticket, token and authorizer state.
//!
//! WeChat's events (through `callback`) and the refresh scheduler write here; the proxy and
//! the admin API read, and may ask for a refresh. Every write goes to the durable store first
//! and to memory after, so that no token is used before the store holds it — above all a
//! rotated refresh token, whose loss would force the account's owner to authorize again.
//!
//! Refreshes are single-flight per token (a `tokio::sync::Mutex` per slot, checked again once
//! held), and a refresh asked for because a token failed is compare-and-swap: it replaces only
//! the token that failed.

/// Calls WeChat with the component token; if WeChat refuses the token, replaces it once
/// (compare-and-swap) and calls again. A macro rather than a function taking a closure, so that
/// the futures stay `Send`.
macro_rules! with_component_token {
    ($service:ident, |$token:ident| $call:expr) => {
        async {
            let held = $service.component_token().await?;
            let $token = &held.value;
            match $call.await {
                Err(e) if e.kind() == Some($crate::wechat::ApiErrorKind::TokenInvalid) => {
                    let fresh = $service.replace_component_token(&held.value).await?;
                    let $token = &fresh.value;
                    $call.await.map_err(TokenError::from)
                }
                other => other.map_err(TokenError::from),
            }
        }
        .await
    };
}

mod authorizer;
mod clock;
mod component;
mod coordination;
mod events;
pub mod info;
mod reconcile;
mod refresher;
mod schedule;
mod scheduler;
mod slot;
mod ticket;

pub use clock::Clock;
pub use events::{EventFailure, EventHandoff, PendingEvent};
pub use reconcile::Reconciled;
pub use refresher::Endpoint;
pub use schedule::{backoff_ms, lead_ms, spread_due, steady_due, Job, Schedule};
pub use slot::AccessToken;

use crate::metrics;
use crate::store::{unix_now, AuthEvent, SharedStore, StoreError, Ticket};
use crate::wechat::{ComponentApi, WechatError};
use crate::AppId;
use slot::{AuthorizerSlot, ComponentSlot, Slots};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Cloned: the error of a failed refresh is given to every caller during its backoff.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wechat(#[from] WechatError),
    #[error("no component_verify_ticket has been received yet")]
    NoTicket,
    #[error("unknown authorizer")]
    UnknownAuthorizer,
    #[error("the authorizer has revoked its authorization")]
    Revoked,
    #[error("the authorizer's refresh token stopped working: its owner must authorize again")]
    NeedsReauth,
    #[error("another gateway instance is refreshing this token and has not finished")]
    Contended,
    /// The last guard against a retry storm: more calls to a token endpoint in a minute than
    /// any healthy gateway makes.
    #[error("the budget of calls to {endpoint} is spent; next attempt in {retry_in_secs} s")]
    Budget { endpoint: &'static str, retry_in_secs: i64 },
}

impl TokenError {
    /// The credential cannot be refreshed until something else happens (a new authorization).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Revoked | Self::NeedsReauth | Self::UnknownAuthorizer)
    }

    /// The HTTP status the gateway answers a caller with when this stops it: 404 for an account
    /// that is not (or no longer) there, 503 for what a retry may mend, 502/504 for WeChat.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownAuthorizer | Self::Revoked => 404,
            Self::Store(_) | Self::NoTicket | Self::NeedsReauth | Self::Contended | Self::Budget { .. } => 503,
            Self::Wechat(WechatError::Timeout { .. }) => 504,
            Self::Wechat(_) => 502,
        }
    }

    /// A short label for `wxgate_token_refresh_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Wechat(e) => e.label(),
            Self::Store(_) => "store_error",
            Self::NoTicket => "no_ticket",
            Self::Contended => "contended",
            Self::Budget { .. } => "budget",
            Self::UnknownAuthorizer | Self::Revoked | Self::NeedsReauth => "error",
        }
    }
}

/// Calls a minute to one credential's token endpoint; a healthy one makes one every two hours.
pub const DEFAULT_BUDGET_PER_MINUTE: u32 = 10;

/// Timing of the service. `ahead` comes from the config; the rest are WeChat-informed defaults
/// that tests shorten.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ahead: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// No ticket for this long means WeChat stopped pushing (it pushes every 10 minutes).
    pub ticket_stale_after: Duration,
    /// The least time between two api_start_push_ticket calls.
    pub push_ticket_every: Duration,
    /// Refreshes under way at once, so that a crowd due together does not flood WeChat.
    pub concurrency: usize,
    /// How long one instance may hold the right to refresh a token (shared stores): longer than
    /// a call to WeChat and the write after it.
    pub lease_ttl: Duration,
    /// How long a caller serving a request (a proxied call, a page) waits for another instance's
    /// refresh before it is told the token is not to be had: well under the upstream timeout, so
    /// that no call is held longer than one to WeChat could take. The scheduler waits the lease out.
    pub peer_wait: Duration,
    /// `refresh.reconcile_hours`: how often the authorizers are reconciled with WeChat's list
    /// (and once at start-up); `None` never.
    pub reconcile_every: Option<Duration>,
    /// How often one slice of the daily info pass runs ([`info::SLICES`] of them a day).
    pub info_slice_every: Duration,
    /// Calls a minute one credential may make to its token endpoint (never fewer than four per
    /// lifetime of its token): the last guard should the backoff be bypassed.
    pub budget_per_minute: u32,
}

impl Settings {
    pub fn new(ahead: Duration) -> Self {
        Self {
            ahead,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            ticket_stale_after: Duration::from_secs(20 * 60),
            push_ticket_every: Duration::from_secs(5 * 60),
            concurrency: 16,
            lease_ttl: Duration::from_secs(30),
            peer_wait: Duration::from_secs(5),
            reconcile_every: Some(Duration::from_secs(24 * 3600)),
            info_slice_every: Duration::from_secs(24 * 3600 / info::SLICES),
            budget_per_minute: DEFAULT_BUDGET_PER_MINUTE,
        }
    }
}

/// What is known of the ticket without its value, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketStatus {
    pub create_time: i64,
    pub received_at: i64,
}

/// The component's token state; `admin::shapes` gives it its JSON.
#[derive(Debug, Clone)]
pub struct ComponentStatus {
    pub component_appid: String,
    pub ticket: Option<TicketStatus>,
    pub ticket_age_secs: Option<i64>,
    pub token_expires_at_ms: Option<i64>,
    pub token_expires_in_secs: Option<i64>,
    pub last_refresh_at_ms: i64,
    pub next_refresh_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// An authorizer's token state; `admin::shapes` gives it its JSON.
#[derive(Debug, Clone)]
pub struct AuthorizerStatus {
    pub appid: String,
    pub state: &'static str,
    pub access_expires_at_ms: Option<i64>,
    pub access_expires_in_secs: Option<i64>,
    pub authorized_at_ms: i64,
    pub last_refresh_at_ms: i64,
    pub next_refresh_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

pub struct TokenService {
    component: AppId,
    store: SharedStore,
    api: Arc<dyn ComponentApi>,
    settings: Settings,
    clock: Clock,
    ticket: RwLock<Option<Ticket>>,
    component_token: ComponentSlot,
    authorizers: Slots,
    tickets: ticket::TicketSlots,
    schedule: Mutex<Schedule>,
    /// Wakes the scheduler when the schedule changes.
    wake: Notify,
    /// Codes exchanged lately (SHA-1 → appid): the redirect and the push bring the same code.
    used_codes: moka::sync::Cache<String, AppId>,
    /// Code exchanges run one at a time: the redirect and the push often arrive together with
    /// the same single-use code, and the second must find the first's answer, not a 61009.
    authorize_turn: tokio::sync::Mutex<()>,
    last_push_request_ms: Mutex<i64>,
    event_failures: Mutex<u32>,
    /// Why each pending event is waiting, by its id (this instance's attempts).
    failed_events: Mutex<std::collections::HashMap<i64, events::EventFailure>>,
    /// Where events go once acted on (`crate::events`); none in tests that do not ask.
    handoff: std::sync::OnceLock<Arc<dyn events::EventHandoff>>,
    /// When the last ticket arrived, by `clock`; the start time until one does.
    last_ticket_ms: AtomicI64,
    /// What memory keeps of the accounts' info (`gh_` ids, frozen and closed accounts).
    info: info::InfoIndex,
    /// Reconciliations that failed in a row, for the retry's backoff.
    reconcile_failures: std::sync::atomic::AtomicU32,
}

impl TokenService {
    /// Starts from what the store holds, so that a restart picks up where the last run
    /// stopped, and plans every refresh.
    pub async fn load(
        component: AppId,
        store: SharedStore,
        api: Arc<dyn ComponentApi>,
        settings: Settings,
    ) -> Result<Arc<Self>, TokenError> {
        let clock = Clock::new();
        let ticket = store.load_ticket(&component).await?;
        let component_token = store.load_component_token(&component).await?;
        let service = Arc::new(Self {
            component_token: ComponentSlot::new(component_token),
            component,
            store,
            api,
            settings,
            ticket: RwLock::new(ticket),
            authorizers: Slots::default(),
            tickets: ticket::TicketSlots::default(),
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
            used_codes: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            authorize_turn: tokio::sync::Mutex::new(()),
            last_push_request_ms: Mutex::new(0),
            event_failures: Mutex::new(0),
            failed_events: Mutex::default(),
            handoff: std::sync::OnceLock::new(),
            last_ticket_ms: AtomicI64::new(clock.now_ms()),
            info: Default::default(),
            reconcile_failures: Default::default(),
            clock,
        });
        // The budget's series start at zero, so that rates and alerts see the first exhaustion.
        for endpoint in Endpoint::ALL {
            metrics::BUDGET_EXHAUSTED.with_label_values(&[endpoint.as_str()]);
        }
        service.load_authorizers().await?;
        service.load_infos().await?;
        service.update_gauges();
        Ok(service)
    }

    /// Loads every authorizer a page at a time, and plans each refresh.
    async fn load_authorizers(&self) -> Result<(), TokenError> {
        const PAGE: usize = 1000;
        let now = self.clock.now_ms();
        {
            let mut schedule = self.lock_schedule();
            schedule.set(Job::ComponentToken, self.component_token.due_after_load(now, &self.settings));
            schedule.set(Job::Events, now);
            schedule.set(Job::TicketWatch, now + 60_000);
            if self.settings.reconcile_every.is_some() {
                schedule.set(Job::Reconcile, now);
            }
            schedule.set(Job::InfoPass, now + self.settings.info_slice_every.as_millis() as i64);
        }
        let mut cursor = crate::store::ScanCursor::start();
        loop {
            let page = self.store.scan_authorizers(&self.component, &cursor, PAGE).await?;
            self.plan_loaded(page.records, now);
            match page.next {
                Some(next) => cursor = next,
                None => return Ok(()),
            }
        }
    }

    fn plan_loaded(&self, records: Vec<crate::store::AuthorizerRecord>, now: i64) {
        let mut rng = rand::thread_rng();
        let mut schedule = self.lock_schedule();
        for record in records {
            let slot = Arc::new(AuthorizerSlot::from_record(record));
            if let Some(due) = slot.due_after_load(now, &self.settings, &mut rng) {
                schedule.set(Job::Authorizer(slot.appid), due);
            }
            self.authorizers.insert(slot);
        }
    }

    pub fn component(&self) -> &AppId {
        &self.component
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    fn lock_schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans `job` at `at_ms` and wakes the scheduler.
    fn plan(&self, job: Job, at_ms: i64) {
        self.lock_schedule().set(job, at_ms);
        self.wake.notify_one();
    }

    fn unplan(&self, job: &Job) {
        self.lock_schedule().remove(job);
    }

    fn planned(&self, job: &Job) -> Option<i64> {
        self.lock_schedule().due_at(job)
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
            // A refresh that failed for want of a (valid) ticket may try again at once.
            self.component_token.flight.clear();
        }
        self.last_ticket_ms.store(self.clock.now_ms(), Ordering::Relaxed);
        self.update_ticket_age();
        if !self.component_token.is_valid(self.clock.now_ms()) {
            self.lock_schedule().set_earlier(Job::ComponentToken, self.clock.now_ms());
            self.wake.notify_one();
        }
        Ok(kept)
    }

    /// Records an authorization event durably, once, and has the scheduler act on it.
    pub async fn accept_event(&self, event: AuthEvent) -> Result<bool, TokenError> {
        let new = self.store.record_event(&self.component, &event).await?;
        if new {
            self.plan(Job::Events, self.clock.now_ms());
        }
        Ok(new)
    }

    fn held_ticket(&self) -> Option<Ticket> {
        self.ticket.read().unwrap_or_else(|p| p.into_inner()).clone()
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

    /// Sets `wxgate_authorizers` by state; called on changes of state and before every scrape.
    pub fn update_gauges(&self) {
        let mut counts: std::collections::HashMap<&'static str, i64> = Self::state_labels().map(|l| (l, 0)).collect();
        for slot in self.authorizers.all() {
            *counts.entry(self.state_label(&slot.appid, slot.state())).or_default() += 1;
        }
        for (label, count) in counts {
            metrics::AUTHORIZERS.with_label_values(&[label]).set(count);
        }
        self.update_ticket_age();
    }

    /// Why the gateway cannot serve API calls yet, or `None` when it can.
    pub async fn not_ready_reason(&self) -> Option<String> {
        if let Err(e) = self.store.ping().await {
            return Some(format!("store ({}) does not answer: {e}", self.store.backend()));
        }
        if self.component_token.is_valid(self.clock.now_ms()) {
            return None;
        }
        if self.ticket_status().is_none() {
            return Some("no component_verify_ticket received yet".into());
        }
        let error = self.component_token.last_error();
        Some(format!(
            "no component_access_token held yet{}",
            error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
        ))
    }

    pub fn component_status(&self) -> ComponentStatus {
        let now = self.clock.now_ms();
        let token = self.component_token.current();
        ComponentStatus {
            component_appid: self.component.to_string(),
            ticket: self.ticket_status(),
            ticket_age_secs: self.ticket_age_secs(),
            token_expires_at_ms: token.as_ref().map(|t| t.expires_at),
            token_expires_in_secs: token.as_ref().map(|t| (t.expires_at - now) / 1000),
            last_refresh_at_ms: self.component_token.last_refresh_at(),
            next_refresh_at_ms: self.planned(&Job::ComponentToken),
            last_error: self.component_token.last_error(),
        }
    }

    pub fn authorizer_status(&self, appid: &AppId) -> Option<AuthorizerStatus> {
        let slot = self.authorizers.get(appid)?;
        Some(slot.status(self.clock.now_ms(), self.planned(&Job::Authorizer(*appid))))
    }

    /// Every authorizer, by appid; `offset` and `limit` page through large fleets.
    pub fn authorizer_statuses(&self, offset: usize, limit: usize) -> (usize, Vec<AuthorizerStatus>) {
        let mut appids: Vec<AppId> = self.authorizers.appids();
        appids.sort();
        let total = appids.len();
        let page = appids.iter().skip(offset).take(limit).filter_map(|a| self.authorizer_status(a)).collect();
        (total, page)
    }

    /// When each authorizer's next refresh is planned (unix ms), in no particular order: the
    /// plan as the schedule holds it, for `benches/authorizers.rs`.
    pub fn planned_authorizer_refreshes(&self) -> Vec<i64> {
        let schedule = self.lock_schedule();
        self.authorizers.appids().into_iter().filter_map(|appid| schedule.due_at(&Job::Authorizer(appid))).collect()
    }

    pub fn authorizer_count(&self) -> u64 {
        self.authorizers.len() as u64
    }

    /// Waits out a failed refresh's backoff: the next attempt `attempt` from now.
    fn retry_at(&self, attempt: u32) -> i64 {
        let wait = backoff_ms(attempt, self.settings.retry_base, self.settings.retry_max, &mut rand::thread_rng());
        self.clock.now_ms() + wait
    }
}

/// Which token a refresh should leave in place.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want<'a> {
    /// Any token that has not expired will do (a caller that needs one now).
    Valid,
    /// Replace this token, which WeChat refused, unless it was replaced meanwhile.
    Replace(&'a crate::Secret),
    /// The scheduler's planned refresh: skip it if the token was refreshed since it was planned.
    Planned,
    /// An operator asked: refresh whatever is held.
    Now,
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
