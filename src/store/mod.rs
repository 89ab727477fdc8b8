//! The durable store: what must survive a restart (the ticket, the events WeChat pushed, the
//! component token, every authorizer with its refresh token), behind one trait with SQLite,
//! Redis and in-memory backends. Redis adds what several instances sharing one store need:
//! leases, fenced writes and change announcements.
//!
//! Every write returns only once it is durable for its backend, so that a caller may answer
//! WeChat `success` (or use a rotated token) as soon as the call returns.

mod info;
mod memory;
pub mod migrate;
pub mod outbox;
pub mod quota;
mod redis;
pub mod releases;
mod sqlite;

pub use self::redis::{parse_sentinel_url, RedisOptions, RedisStore, SentinelUrl, SENTINEL_SCHEME};
pub use info::{AccountKind, AuthorizerInfoRecord};
pub use memory::MemoryStore;
pub use outbox::OutboxStore;
pub use releases::ReleaseStore;
pub use sqlite::SqliteStore;

use crate::{AppId, Secret};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store file {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store schema version {found} is newer than this wxgate understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("store holds a malformed record: {0}")]
    Corrupt(String),
}

/// The component_verify_ticket WeChat pushes every 10 minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub value: Secret,
    /// WeChat's CreateTime (unix seconds): which of two pushes is newer.
    pub create_time: i64,
    /// When wxgate received it (unix seconds).
    pub received_at: i64,
}

/// The JS-SDK tickets an authorizer's pages need (`getticket?type=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TicketKind {
    Jsapi,
    WxCard,
}

impl TicketKind {
    pub const ALL: [TicketKind; 2] = [Self::Jsapi, Self::WxCard];

    /// WeChat's `type` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jsapi => "jsapi",
            Self::WxCard => "wx_card",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A JS-SDK ticket, kept so that a restart or another instance uses it rather than fetching a
/// new one (which would retire the one every page holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsTicket {
    pub value: Secret,
    /// Unix milliseconds.
    pub expires_at: i64,
    pub obtained_at: i64,
}

/// An authorization event other than a ticket, kept until the token service has acted on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEvent {
    pub info_type: String,
    /// The account the event concerns; none for 代认证, 备案 and other pushes about no one
    /// account (stored as `''`).
    pub authorizer: Option<AppId>,
    pub create_time: i64,
    /// The decrypted XML as WeChat sent it: it can carry an authorization code, so it is secret.
    pub payload: Secret,
    pub received_at: i64,
}

/// The component_access_token, kept so that a restart does not need a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentToken {
    pub value: Secret,
    /// Unix milliseconds, from the `expires_in` WeChat announced.
    pub expires_at: i64,
    pub obtained_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorizerState {
    /// Authorized, with a refresh token that works.
    Active,
    /// The refresh token stopped working and could not be recovered: the owner must authorize again.
    NeedsReauth,
    /// The owner revoked the authorization; its tokens are dropped.
    Revoked,
}

impl AuthorizerState {
    pub const ALL: [AuthorizerState; 3] = [Self::Active, Self::NeedsReauth, Self::Revoked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReauth => "needs_reauth",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One authorizer as the store keeps it. Times are unix milliseconds, 0 for never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerRecord {
    pub appid: AppId,
    pub state: AuthorizerState,
    /// The credential that must never be lost: without it the owner must authorize again.
    pub refresh_token: Option<Secret>,
    /// The access token and when it expires, while there is one.
    pub access: Option<StoredAccess>,
    /// Unix milliseconds.
    pub authorized_at_ms: i64,
    /// Unix milliseconds; `None` until the first refresh.
    pub last_refresh_at_ms: Option<i64>,
    pub last_error: Option<String>,
    /// SHA-1 of the last authorization code exchanged, so that the redirect and the
    /// `authorized` push carrying the same code exchange it once.
    pub auth_code_sha1: Option<String>,
}

/// An authorizer's access token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAccess {
    pub value: Secret,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
}

impl AuthorizerRecord {
    /// The columns both persistent stores write, with 0 for "none" as they always have: the
    /// token or nothing, its expiry, and the last refresh.
    pub fn stored_columns(&self) -> (Option<&str>, i64, i64) {
        let access = self.access.as_ref();
        (access.map(|a| a.value.expose()), access.map_or(0, |a| a.expires_at_ms), self.last_refresh_at_ms.unwrap_or(0))
    }

    /// The access token and last refresh from the stored columns (see [`Self::stored_columns`]).
    pub fn from_columns(
        token: Option<String>,
        expires_at_ms: i64,
        last_refresh_at_ms: i64,
    ) -> (Option<StoredAccess>, Option<i64>) {
        let access = token.map(|t| StoredAccess { value: Secret::new(t), expires_at_ms });
        (access, Some(last_refresh_at_ms).filter(|at| *at > 0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub event: AuthEvent,
}

/// The right to refresh one token, held by one instance at a time (several instances on one
/// Redis). Single-instance stores grant it always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    /// Who holds it, with a fencing number, on a shared store: a write under a lease that has
    /// since passed to another instance is refused. `None` on a store only this instance uses,
    /// where nobody else can hold it.
    pub owner: Option<String>,
}

/// Under what right a token is written.
#[derive(Debug, Clone, Copy)]
pub enum Fence<'a> {
    /// Only while this lease is held: nothing is written once it has passed to another instance.
    Lease(&'a Lease),
    /// Whoever holds a lease: a new authorization, whose code is single use, so that no two
    /// instances can obtain its tokens.
    Unfenced,
}

impl<'a> Fence<'a> {
    pub fn lease(self) -> Option<&'a Lease> {
        match self {
            Self::Lease(lease) => Some(lease),
            Self::Unfenced => None,
        }
    }
}

/// Where a scan of the authorizers goes on from; opaque outside the backend that made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanCursor(pub(crate) String);

impl ScanCursor {
    /// The first page.
    pub fn start() -> Self {
        Self::default()
    }

    pub fn is_start(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub records: Vec<AuthorizerRecord>,
    pub next: Option<ScanCursor>,
}

/// What another instance changed, announced by a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Ticket,
    ComponentToken,
    Authorizer(AppId),
    Deleted(AppId),
    /// Records changed while announcements were not heard (a reconnect), read in one batch:
    /// a catch-up costs what changed, not the whole fleet.
    Authorizers(Vec<AuthorizerRecord>),
    JsTicket(AppId, TicketKind),
    /// Announcements may have been missed (a reconnect): reload everything.
    Resync,
}

/// Several gateway instances on one store: whether they share it, the leases that let one of
/// them refresh a credential at a time, and the announcements of what another changed. The
/// defaults are a store only this instance uses (SQLite, memory), where a lease is never contended.
#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Whether other gateway instances share this store: then a token is refreshed only under
    /// a lease, and what memory holds may be older than what the store holds.
    fn shared(&self) -> bool {
        false
    }

    /// Takes the lease on refreshing `what` (`component` or an authorizer appid) for `ttl`;
    /// `None` while another instance holds it.
    async fn lease(
        &self,
        _component: &AppId,
        what: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        Ok(Some(Lease { key: what.to_owned(), owner: None }))
    }

    async fn release(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }

    /// Announcements of what other instances changed, for shared stores.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// What the quota guard shares with other instances, for shared stores.
    fn quota(&self) -> Option<&dyn quota::SharedQuota> {
        None
    }
}

/// The records (ticket, events, tokens, authorizers); their coordination between instances is
/// [`Coordination`], and the outbox, written at another rate, is a trait of its own reached
/// through [`Store::outbox`]. A store is all three.
#[async_trait]
pub trait Store: Coordination + Send + Sync + 'static {
    /// A short name for logs and `/readyz`: "sqlite", "redis", "memory".
    fn backend(&self) -> &'static str;

    /// The outbox of messages for the apps' handlers, in the same backend.
    fn outbox(&self) -> &dyn OutboxStore;

    /// The release jobs and their accounts, in the same backend.
    fn releases(&self) -> &dyn ReleaseStore;

    /// Answers once the backend can serve reads and writes.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn load_ticket(&self, component: &AppId) -> Result<Option<Ticket>, StoreError>;

    /// Keeps `ticket` unless the one held has a later CreateTime, so that a delayed push never
    /// replaces a newer ticket. Returns whether it was kept.
    async fn save_ticket(&self, component: &AppId, ticket: &Ticket) -> Result<bool, StoreError>;

    /// Records an event once: a repeat of the same (info type, authorizer, CreateTime), as
    /// WeChat sends when it retries, is ignored. Returns whether it was new.
    async fn record_event(&self, component: &AppId, event: &AuthEvent) -> Result<bool, StoreError>;

    /// Events not yet marked done, oldest first.
    async fn pending_events(&self, component: &AppId) -> Result<Vec<StoredEvent>, StoreError>;

    async fn finish_event(&self, component: &AppId, id: i64) -> Result<(), StoreError>;

    async fn load_component_token(&self, component: &AppId) -> Result<Option<ComponentToken>, StoreError>;

    async fn save_component_token(&self, component: &AppId, token: &ComponentToken) -> Result<(), StoreError>;

    /// Every authorizer, whatever its state.
    async fn load_authorizers(&self, component: &AppId) -> Result<Vec<AuthorizerRecord>, StoreError>;

    async fn load_authorizer(&self, component: &AppId, appid: &AppId) -> Result<Option<AuthorizerRecord>, StoreError>;

    /// About `limit` authorizers from `cursor` on, in an order of the backend's choosing, and
    /// where to go on (`None`: that was the last page). Start-up reads a million authorizers
    /// this way, so each backend answers a page in a fixed number of round trips, whatever the
    /// fleet's size (SQLite: one indexed query; Redis: one SSCAN and one pipeline). A page may
    /// repeat a record of an earlier one (Redis's SCAN guarantees no more). The default reads
    /// everything as one page: right for the memory store only.
    async fn scan_authorizers(
        &self,
        component: &AppId,
        cursor: &ScanCursor,
        _limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let records = if cursor.is_start() { self.load_authorizers(component).await? } else { Vec::new() };
        Ok(ScanPage { records, next: None })
    }

    /// Inserts or replaces the whole record, durably, before it returns.
    async fn save_authorizer(&self, component: &AppId, record: &AuthorizerRecord) -> Result<(), StoreError>;

    /// Returns whether there was one.
    async fn delete_authorizer(&self, component: &AppId, appid: &AppId) -> Result<bool, StoreError>;

    /// Saves under `fence`; `false` (nothing written) if its lease has passed to another instance.
    async fn save_component_token_leased(
        &self,
        component: &AppId,
        token: &ComponentToken,
        _fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.save_component_token(component, token).await.map(|()| true)
    }

    /// Saves under `fence`; `false` (nothing written) if its lease has passed to another instance.
    async fn save_authorizer_leased(
        &self,
        component: &AppId,
        record: &AuthorizerRecord,
        _fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        self.save_authorizer(component, record).await.map(|()| true)
    }

    /// Keeps what WeChat said of an account, replacing what was kept before.
    async fn save_authorizer_info(&self, component: &AppId, info: &AuthorizerInfoRecord) -> Result<(), StoreError>;

    async fn load_authorizer_info(
        &self,
        component: &AppId,
        appid: &AppId,
    ) -> Result<Option<AuthorizerInfoRecord>, StoreError>;

    /// Every account's info, for start-up (the `gh_` map, frozen and closed accounts).
    async fn load_authorizer_infos(&self, component: &AppId) -> Result<Vec<AuthorizerInfoRecord>, StoreError>;

    /// The appid whose info names `user_name` (`gh_...`): one indexed lookup, so that an
    /// instance that did not fetch that info itself can still answer.
    async fn find_user_name(&self, component: &AppId, user_name: &str) -> Result<Option<AppId>, StoreError>;

    async fn load_js_ticket(
        &self,
        _component: &AppId,
        _appid: &AppId,
        _kind: TicketKind,
    ) -> Result<Option<JsTicket>, StoreError> {
        Err(StoreError::Unavailable(format!("the {} store keeps no JS-SDK tickets", self.backend())))
    }

    /// Saves under `fence`; `false` (nothing written) if its lease has passed to another instance.
    async fn save_js_ticket(
        &self,
        _component: &AppId,
        _appid: &AppId,
        _kind: TicketKind,
        _ticket: &JsTicket,
        _fence: Fence<'_>,
    ) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable(format!("the {} store keeps no JS-SDK tickets", self.backend())))
    }
}

pub type SharedStore = Arc<dyn Store>;

/// How the backends write an account that may be none: its appid, or `''`.
pub(crate) fn appid_or_empty(appid: Option<AppId>) -> String {
    appid.map(|a| a.to_string()).unwrap_or_default()
}

/// Seconds since the Unix epoch, the time unit of every record.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod contract_tests;
