//! The token service: the only writer of ticket, token and authorizer state.
//!
//! WeChat's events (through `callback`) and the refresh scheduler write here; the proxy and
//! the admin API read, and may ask for a refresh. Every write goes to the durable store first
//! and to memory after, so that no token is used before the store holds it — above all a
//! rotated refresh token, whose loss would force the account's owner to authorize again.
//!
//! Refreshes are single-flight per token (a turn per slot, checked again once held), and a
//! refresh asked for because a token failed is compare-and-swap: it replaces only the token that
//! failed. The protocol is written once (`refresher.rs`, a method of [`core::Core`]); each
//! credential says only what differs (`component.rs`, `authorizer.rs`, `ticket.rs`).
//!
//! The service is a set of parts (see [`TokenService`]), each owning one credential family or
//! one duty, over the one core they share: a part reaches only the parts below it.

/// Calls WeChat with the component token; if WeChat refuses the token, replaces it once
/// (compare-and-swap) and calls again. A macro rather than a function taking a closure, so that
/// the futures stay `Send`.
macro_rules! with_component_token {
    ($component:expr, |$token:ident| $call:expr) => {
        async {
            let held = $component.token().await?;
            let $token = &held.value;
            match $call.await {
                Err(e) if e.kind() == Some($crate::wechat::ApiErrorKind::TokenInvalid) => {
                    let fresh = $component.replace(&held.value).await?;
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
mod core;
mod events;
mod grants;
mod index;
pub mod info;
mod owned;
mod reconcile;
mod refresher;
mod schedule;
mod scheduler;
mod search;
mod slot;
mod ticket;

pub use authorizer::AuthorizerTokens;
pub use clock::Clock;
pub use component::ComponentTokens;
pub use events::{EventFailure, EventHandoff, Events, PendingEvent};
pub use grants::Grants;
pub use info::Info;
pub use owned::OwnedAccounts;
pub use reconcile::{Reconciled, Reconciler};
pub use refresher::Endpoint;
pub use schedule::{backoff_ms, lead_ms, spread_due, steady_due, Job, Schedule};
pub use slot::AccessToken;
pub use ticket::JsTickets;

use self::core::Core;
use crate::metrics;
use crate::store::{SharedStore, StoreError};
use crate::wechat::{ComponentApi, WechatError};
use crate::AppId;
use std::sync::Arc;
use std::time::Duration;

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
    /// WeChat refused an owned account's token, and `force_refresh` (20 a day, 30 s apart) is
    /// spent: normal mode gives back the same token.
    #[error(
        "WeChat refused the account's token and force_refresh is spent for now (WeChat allows 20 a day, 30 s apart)"
    )]
    ForceSpent,
    #[error("no third-party platform is configured ([component])")]
    NoPlatform,
}

impl TokenError {
    /// The credential cannot be refreshed until something else happens (a new authorization).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Revoked | Self::NeedsReauth | Self::UnknownAuthorizer | Self::NoPlatform)
    }

    /// The HTTP status the gateway answers a caller with when this stops it: 404 for an account
    /// that is not (or no longer) there, 503 for what a retry may mend, 502/504 for WeChat.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownAuthorizer | Self::Revoked | Self::NoPlatform => 404,
            Self::Store(_) | Self::NoTicket | Self::NeedsReauth | Self::Contended | Self::Budget { .. } => 503,
            Self::ForceSpent => 503,
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
            Self::ForceSpent => "force_spent",
            Self::UnknownAuthorizer | Self::Revoked | Self::NeedsReauth | Self::NoPlatform => "error",
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
    /// `None` (JSON null) until the first refresh.
    pub last_refresh_at_ms: Option<i64>,
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
    /// `None` (JSON null) until the first refresh.
    pub last_refresh_at_ms: Option<i64>,
    pub next_refresh_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// Whom the service keeps tokens for.
pub struct Holders {
    /// The store's namespace: the platform's appid, else the first owned account's.
    pub namespace: AppId,
    /// A third-party platform is configured.
    pub platform: bool,
    /// The owned accounts, with their AppSecrets.
    pub owned: Vec<(AppId, crate::Secret)>,
}

/// An owned account's token state; `admin::shapes` gives it its JSON.
#[derive(Debug, Clone)]
pub struct AccountStatus {
    pub appid: String,
    /// `active` with a token in service, `pending` until then.
    pub state: &'static str,
    pub access_expires_at_ms: Option<i64>,
    pub access_expires_in_secs: Option<i64>,
    /// `None` (JSON null) until the first refresh.
    pub last_refresh_at_ms: Option<i64>,
    pub next_refresh_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// The token service: one part per credential family and per duty, over one [`Core`] (the
/// store, WeChat, the clock and the schedule) and the one refresher. Each caller reaches the part
/// it needs: the proxy [`Self::authorizers`], [`Self::component`] and [`Self::tickets`], the
/// callback [`Self::events`] and the ticket, the admin API all of them.
///
/// ```text
///   component, owned ◄── authorizers ◄── grants ◄── events, reconciler
///                      ▲    ▲
///                 tickets  info
/// ```
pub struct TokenService {
    core: Arc<Core>,
    component: Arc<ComponentTokens>,
    owned: Arc<OwnedAccounts>,
    authorizers: Arc<AuthorizerTokens>,
    grants: Arc<Grants>,
    tickets: Arc<JsTickets>,
    info: Arc<Info>,
    events: Arc<Events>,
    reconciler: Arc<Reconciler>,
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
        Self::load_for(Holders { namespace: component, platform: true, owned: Vec::new() }, store, api, settings).await
    }

    /// [`Self::load`] for what `holders` says: with or without a platform, with owned accounts.
    pub async fn load_for(
        holders: Holders,
        store: SharedStore,
        api: Arc<dyn ComponentApi>,
        settings: Settings,
    ) -> Result<Arc<Self>, TokenError> {
        let core = Arc::new(Core::new(holders.namespace, holders.platform, store, api, settings));
        // The budget's series start at zero, so that rates and alerts see the first exhaustion.
        for endpoint in Endpoint::ALL {
            metrics::BUDGET_EXHAUSTED.with_label_values(&[endpoint.as_str()]);
        }
        let component = Arc::new(ComponentTokens::load(Arc::clone(&core)).await?);
        let owned = Arc::new(OwnedAccounts::load(Arc::clone(&core), holders.owned).await?);
        let index = Arc::default();
        let authorizers =
            Arc::new(AuthorizerTokens::load(Arc::clone(&core), component, Arc::clone(&owned), index).await?);
        let grants = Arc::new(Grants::new(Arc::clone(&authorizers)));
        let service = Self {
            component: Arc::clone(&authorizers.component),
            owned,
            tickets: Arc::new(JsTickets::new(Arc::clone(&authorizers))),
            info: Arc::new(Info::load(Arc::clone(&authorizers)).await?),
            events: Arc::new(Events::new(Arc::clone(&authorizers), Arc::clone(&grants))),
            reconciler: Arc::new(Reconciler::new(Arc::clone(&authorizers), Arc::clone(&grants))),
            grants,
            authorizers,
            core,
        };
        service.update_gauges();
        Ok(Arc::new(service))
    }

    /// The platform's appid.
    pub fn component_appid(&self) -> &AppId {
        &self.core.component
    }

    /// A third-party platform is configured (`[component]`).
    pub fn has_platform(&self) -> bool {
        self.core.platform
    }

    pub fn clock(&self) -> Clock {
        self.core.clock
    }

    /// The ticket and the component token.
    pub fn component(&self) -> &ComponentTokens {
        &self.component
    }

    /// The accounts the company owns (`[[accounts]]`).
    pub fn owned(&self) -> &OwnedAccounts {
        &self.owned
    }

    /// Every authorizer's tokens and state (and, by appid, the owned accounts').
    pub fn authorizers(&self) -> &AuthorizerTokens {
        &self.authorizers
    }

    /// Codes exchanged and refresh tokens imported.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The authorizers' JS-SDK tickets.
    pub fn tickets(&self) -> &JsTickets {
        &self.tickets
    }

    /// Who each account is.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// The authorization events.
    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Sets the gauges the token service keeps; called on changes and before every scrape.
    pub fn update_gauges(&self) {
        self.authorizers.update_gauges();
        self.component.update_ticket_age();
    }

    /// Why the gateway cannot serve API calls yet, or `None` when it can.
    pub async fn not_ready_reason(&self) -> Option<String> {
        let store = &self.core.store;
        if let Err(e) = store.ping().await {
            return Some(format!("store ({}) does not answer: {e}", store.backend()));
        }
        self.component.not_ready_reason().or_else(|| self.owned.not_ready_reason())
    }

    /// Forgets an authorizer entirely: its record, its tickets, its info. Returns whether it
    /// was known.
    pub async fn forget_authorizer(&self, appid: &AppId) -> Result<bool, TokenError> {
        let known = self.authorizers.forget(appid).await?;
        self.tickets.forget(appid);
        Ok(known)
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
