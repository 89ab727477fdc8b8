//! Every authorizer's tokens: refreshed single-flight, the rotated refresh token stored before
//! the new access token is used, 61023 recovered from WeChat's own records when it can be. How
//! an authorizer comes to be held (a code, an import) is `grants.rs`; how memory follows other
//! instances is `coordination.rs`.

use super::component::ComponentTokens;
use super::core::Core;
use super::index::InfoIndex;
use super::owned::OwnedAccounts;
use super::refresher::{Committed, Credential, Endpoint, Flight};
use super::slot::{AuthorizerMem, AuthorizerSlot, Slots};
use super::{AccessToken, AuthorizerStatus, Job, TokenError, Want};
use crate::metrics;
use crate::store::{AuthorizerRecord, AuthorizerState, Fence, ScanCursor};
use crate::wechat::{ApiErrorKind, AuthorizerTokens as Issued, WechatError};
use crate::{AppId, Secret};
use async_trait::async_trait;
use std::num::NonZeroI64;
use std::sync::Arc;

/// api_get_authorizer_list pages at most 500; 40 pages cover 20,000 accounts.
const LIST_PAGE: u32 = 500;
const LIST_PAGES: u32 = 40;

/// Authorizers are loaded this many at a time at start-up.
const LOAD_PAGE: usize = 1000;

/// The tokens of every account called for by appid: each authorizer's, and through
/// [`OwnedAccounts`] the owned accounts', so that the proxy, the JS-SDK tickets and the token
/// endpoints serve both alike.
pub struct AuthorizerTokens {
    pub(super) core: Arc<Core>,
    pub(super) component: Arc<ComponentTokens>,
    pub(super) owned: Arc<OwnedAccounts>,
    pub(super) slots: Slots,
    /// What memory keeps of the accounts' info, shared with `info.rs`: the gauge's labels, and
    /// the search, which finds every held authorizer by its appid.
    pub(super) index: Arc<InfoIndex>,
}

impl AuthorizerTokens {
    /// Loads every authorizer a page at a time, and plans each refresh.
    pub(super) async fn load(
        core: Arc<Core>,
        component: Arc<ComponentTokens>,
        owned: Arc<OwnedAccounts>,
        index: Arc<InfoIndex>,
    ) -> Result<Self, TokenError> {
        let part = Self { core, component, owned, slots: Slots::default(), index };
        let now = part.core.now_ms();
        let mut cursor = ScanCursor::start();
        loop {
            let page = part.core.store.scan_authorizers(&part.core.component, &cursor, LOAD_PAGE).await?;
            let mut rng = rand::thread_rng();
            let mut schedule = part.core.lock_schedule();
            for record in page.records {
                let slot = Arc::new(AuthorizerSlot::from_record(record));
                if let Some(due) = slot.due_after_load(now, &part.core.settings, &mut rng) {
                    schedule.set(Job::Authorizer(slot.appid), due);
                }
                part.index.hold(&slot.appid);
                part.slots.insert(slot);
            }
            drop(schedule);
            match page.next {
                Some(next) => cursor = next,
                None => return Ok(part),
            }
        }
    }

    pub(super) fn slot(&self, appid: &AppId) -> Result<Arc<AuthorizerSlot>, TokenError> {
        self.slots.get(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    /// The state of the account `appid`, if it is held (an owned account is always active).
    pub(super) fn state(&self, appid: &AppId) -> Option<AuthorizerState> {
        match self.owned.holds(appid) {
            true => Some(AuthorizerState::Active),
            false => self.slots.get(appid).map(|s| s.state()),
        }
    }

    /// Whether the gateway holds `appid` with tokens in service (an owned account always).
    pub fn is_active(&self, appid: &AppId) -> bool {
        self.owned.holds(appid) || self.slots.get(appid).is_some_and(|s| s.state() == AuthorizerState::Active)
    }

    /// An access token for `appid` that has not expired: the proxy's read. Only an expired or
    /// missing token costs a call to WeChat, single-flight.
    pub async fn token(&self, appid: &AppId) -> Result<Arc<AccessToken>, TokenError> {
        if self.owned.holds(appid) {
            return self.owned.token(appid).await;
        }
        let slot = self.slot(appid)?;
        match slot.access() {
            (AuthorizerState::Revoked, _) => Err(TokenError::Revoked),
            (_, Some(t)) if t.is_valid(self.core.now_ms()) => Ok(t),
            (AuthorizerState::NeedsReauth, _) => Err(TokenError::NeedsReauth),
            // Boxed: a refresh's future is large, and every proxied call holds this one.
            _ => Box::pin(self.refresh(appid, Want::Valid)).await,
        }
    }

    /// Replaces `failed`, which WeChat refused, unless another caller already did.
    pub async fn replace(&self, appid: &AppId, failed: &Secret) -> Result<Arc<AccessToken>, TokenError> {
        if self.owned.holds(appid) {
            return self.owned.replace(appid, failed).await;
        }
        self.refresh(appid, Want::Replace(failed)).await
    }

    /// The admin API's "refresh now".
    pub async fn refresh_now(&self, appid: &AppId) -> Result<AuthorizerStatus, TokenError> {
        self.refresh(appid, Want::Now).await?;
        self.status(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    pub(crate) async fn refresh(&self, appid: &AppId, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slot(appid)?;
        self.core.refresh(&AuthorizerCredential { part: self, slot: &slot }, want).await
    }

    /// api_authorizer_token: what WeChat issues for `refresh_token` (a refresh, or an import).
    pub(super) async fn call_wechat(&self, appid: &AppId, refresh_token: &Secret) -> Result<Issued, TokenError> {
        with_component_token!(self.component, |t| self.core.api.authorizer_token(t, appid, refresh_token))
    }

    /// Stores the new tokens, then puts them in service: a crash between the two loses nothing,
    /// since the store already holds the refresh token WeChat may have rotated.
    async fn commit(
        &self,
        slot: &AuthorizerSlot,
        mut mem: AuthorizerMem,
        tokens: Issued,
        fence: Fence<'_>,
    ) -> Result<Committed, TokenError> {
        let now = self.core.now_ms();
        let lifetime_ms = tokens.access_token.expires_in as i64 * 1000;
        let access =
            Arc::new(AccessToken { value: tokens.access_token.value, expires_at: now + lifetime_ms, lifetime_ms });
        mem.state = AuthorizerState::Active;
        mem.refresh_token = Some(tokens.refresh_token);
        mem.access = Some(Arc::clone(&access));
        mem.last_refresh_at = NonZeroI64::new(now);
        mem.last_error = None;
        let record = mem.to_record(&slot.appid);
        if !self.core.store.save_authorizer_leased(&self.core.component, &record, fence).await? {
            return Ok(Committed::LeaseLost);
        }
        slot.set_mem(mem);
        metrics::TOKEN_REFRESH.with_label_values(&["authorizer", "ok"]).inc();
        if let Some(due) = slot.steady_due(now, &self.core.settings) {
            self.core.plan(Job::Authorizer(slot.appid), due);
        }
        tracing::debug!(authorizer = %slot.appid, expires_in_secs = lifetime_ms / 1000, "authorizer_access_token refreshed");
        Ok(Committed::InService(access))
    }

    /// Commits tokens from a new authorization or an import, whoever holds the lease: a code is
    /// single use. The slot (from [`Self::slot_or_new`]) is made visible once they are stored:
    /// a half-made authorizer must not look active.
    pub(super) async fn install(
        &self,
        slot: Arc<AuthorizerSlot>,
        mem: AuthorizerMem,
        tokens: Issued,
    ) -> Result<(), TokenError> {
        match self.commit(&slot, mem, tokens, Fence::Unfenced).await? {
            Committed::InService(_) => {
                // A new authorization is a reason to try again at once.
                slot.flight.clear();
                self.index.hold(&slot.appid);
                self.slots.insert_if_absent(slot);
                self.update_gauges();
                Ok(())
            }
            Committed::LeaseLost => Err(TokenError::Contended),
        }
    }

    /// The authorizer's slot, or a new one that nobody sees until [`Self::install`].
    pub(super) fn slot_or_new(&self, appid: &AppId) -> Arc<AuthorizerSlot> {
        self.slots.get(appid).unwrap_or_else(|| {
            Arc::new(AuthorizerSlot::from_record(AuthorizerRecord {
                appid: *appid,
                state: AuthorizerState::Active,
                refresh_token: None,
                access: None,
                authorized_at_ms: 0,
                last_refresh_at_ms: None,
                last_error: None,
                auth_code_sha1: None,
            }))
        })
    }

    /// Puts an authorizer out of service (revoked, or needing re-authorization), durably.
    async fn mark(
        &self,
        slot: &AuthorizerSlot,
        mut mem: AuthorizerMem,
        state: AuthorizerState,
        error: String,
    ) -> Result<(), TokenError> {
        mem.state = state;
        mem.last_error = Some(error.into_boxed_str());
        if state == AuthorizerState::Revoked {
            mem.refresh_token = None;
            mem.access = None;
        }
        self.core.store.save_authorizer(&self.core.component, &mem.to_record(&slot.appid)).await?;
        slot.set_mem(mem);
        self.core.unplan(&Job::Authorizer(slot.appid));
        self.update_gauges();
        Ok(())
    }

    /// The `unauthorized` push: tokens dropped, later calls answered 404. A push older than the
    /// latest authorization (the owner came back) changes nothing. WeChat's CreateTime counts
    /// seconds, so a push in the same second as the authorization counts as later.
    pub async fn revoke(&self, appid: &AppId, at_secs: i64) -> Result<(), TokenError> {
        let Ok(slot) = self.slot(appid) else { return Ok(()) };
        let _single_flight = slot.flight.turn().await;
        let mem = slot.mem();
        if mem.authorized_at / 1000 > at_secs || mem.state == AuthorizerState::Revoked {
            return Ok(());
        }
        tracing::info!(authorizer = %appid, "authorizer revoked its authorization");
        self.mark(&slot, mem, AuthorizerState::Revoked, "unauthorized by its owner".into()).await
    }

    /// Forgets an authorizer entirely, in the store and here. Returns whether it was known.
    pub(super) async fn forget(&self, appid: &AppId) -> Result<bool, TokenError> {
        // Waits for a refresh under way, which would otherwise write the record back.
        let slot = self.slots.get(appid);
        let _single_flight = match &slot {
            Some(s) => Some(s.flight.turn().await),
            None => None,
        };
        let existed = self.core.store.delete_authorizer(&self.core.component, appid).await?;
        let known = self.drop_held(appid);
        self.update_gauges();
        Ok(existed || known)
    }

    /// Drops an authorizer from memory, the schedule and the info index (here or on another
    /// instance, the store no longer holds it); returns whether it was held. The caller updates
    /// the gauges, once for however many it drops.
    pub(super) fn drop_held(&self, appid: &AppId) -> bool {
        let known = self.slots.remove(appid).is_some();
        self.core.unplan(&Job::Authorizer(*appid));
        self.index.forget(appid);
        known
    }

    pub fn status(&self, appid: &AppId) -> Option<AuthorizerStatus> {
        let slot = self.slots.get(appid)?;
        Some(slot.status(self.core.now_ms(), self.core.planned(&Job::Authorizer(*appid))))
    }

    /// Every authorizer, by appid; `offset` and `limit` page through large fleets.
    pub fn statuses(&self, offset: usize, limit: usize) -> (usize, Vec<AuthorizerStatus>) {
        let mut appids = self.slots.appids();
        appids.sort();
        let total = appids.len();
        let page = appids.iter().skip(offset).take(limit).filter_map(|a| self.status(a)).collect();
        (total, page)
    }

    /// When each authorizer's next refresh is planned (unix ms), in no particular order: the
    /// plan as the schedule holds it, for `benches/authorizers.rs`.
    pub fn planned_refreshes(&self) -> Vec<i64> {
        let schedule = self.core.lock_schedule();
        self.slots.appids().into_iter().filter_map(|appid| schedule.due_at(&Job::Authorizer(appid))).collect()
    }

    pub fn count(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Sets `wxgate_authorizers` by state; called on changes of state and before every scrape.
    pub fn update_gauges(&self) {
        let mut counts: std::collections::HashMap<&'static str, i64> =
            super::index::state_labels().map(|l| (l, 0)).collect();
        for slot in self.slots.all() {
            *counts.entry(self.index.label(&slot.appid, slot.state())).or_default() += 1;
        }
        for (label, count) in counts {
            metrics::AUTHORIZERS.with_label_values(&[label]).set(count);
        }
    }
}

/// One authorizer's tokens as the refresher sees them.
struct AuthorizerCredential<'a> {
    part: &'a AuthorizerTokens,
    slot: &'a AuthorizerSlot,
}

impl AuthorizerCredential<'_> {
    /// 61023: the stored refresh token no longer works. WeChat's own records may hold a newer
    /// one (another system refreshed, or a crash lost a rotation); if not, the owner must
    /// authorize again.
    async fn recover(&self, failed: &Secret, error: WechatError) -> Result<Issued, TokenError> {
        let (part, appid) = (self.part, &self.slot.appid);
        metrics::TOKEN_REFRESH.with_label_values(&["authorizer", error.label()]).inc();
        if let Some(found) = self.find_refresh_token().await.filter(|f| f != failed) {
            tracing::warn!(authorizer = %appid, "refresh token was invalid (61023); recovered the current one from WeChat");
            match part.call_wechat(appid, &found).await {
                Ok(tokens) => return Ok(tokens),
                Err(e) => tracing::warn!(authorizer = %appid, error = %e, "the recovered refresh token failed too"),
            }
        }
        tracing::error!(authorizer = %appid, "refresh token invalid (61023) and not recoverable: the owner must authorize again");
        part.mark(self.slot, self.slot.mem(), AuthorizerState::NeedsReauth, error.to_string()).await?;
        Err(TokenError::NeedsReauth)
    }

    /// The refresh token WeChat holds for the account: api_get_authorizer_info, else the list.
    async fn find_refresh_token(&self) -> Option<Secret> {
        let (part, appid) = (self.part, &self.slot.appid);
        let api = &part.core.api;
        match with_component_token!(part.component, |t| api.authorizer_info(t, appid)) {
            Ok(info) if info.refresh_token.is_some() => return info.refresh_token,
            Ok(_) => {}
            Err(e) => tracing::warn!(authorizer = %appid, error = %e, "api_get_authorizer_info failed"),
        }
        for page in 0..LIST_PAGES {
            let offset = page * LIST_PAGE;
            let (total, list) =
                with_component_token!(part.component, |t| api.authorizer_list(t, offset, LIST_PAGE)).ok()?;
            if let Some(found) = list.into_iter().find(|a| a.appid == *appid) {
                return found.refresh_token;
            }
            if u64::from(offset + LIST_PAGE) >= total {
                break;
            }
        }
        None
    }
}

#[async_trait]
impl Credential for AuthorizerCredential<'_> {
    type Fetched = Issued;

    fn endpoint(&self) -> Endpoint {
        Endpoint::AuthorizerToken
    }

    fn lease_name(&self) -> String {
        self.slot.appid.to_string()
    }

    fn job(&self) -> Job {
        Job::Authorizer(self.slot.appid)
    }

    fn flight(&self) -> &Flight {
        &self.slot.flight
    }

    fn current(&self, want: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        match self.slot.access() {
            (AuthorizerState::Revoked, _) => Err(TokenError::Revoked),
            (AuthorizerState::NeedsReauth, _) if !matches!(want, Want::Now) => Err(TokenError::NeedsReauth),
            (_, access) => Ok(access),
        }
    }

    async fn adopt_stored(&self) -> Result<(), TokenError> {
        self.part.adopt_stored(self.slot).await
    }

    async fn fetch(&self) -> Result<Issued, TokenError> {
        let (part, slot) = (self.part, self.slot);
        let refresh_token = slot.mem().refresh_token.ok_or(TokenError::NeedsReauth)?;
        match part.call_wechat(&slot.appid, &refresh_token).await {
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::RefreshTokenInvalid) => {
                self.recover(&refresh_token, e).await
            }
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::NotAuthorized) => {
                part.mark(slot, slot.mem(), AuthorizerState::Revoked, e.to_string()).await?;
                Err(TokenError::Revoked)
            }
            other => other,
        }
    }

    async fn commit(&self, tokens: Issued, fence: Fence<'_>) -> Result<Committed, TokenError> {
        self.part.commit(self.slot, self.slot.mem(), tokens, fence).await
    }

    /// The current token stays in service until it expires; the error is kept, on disk too.
    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64) {
        if error.is_terminal() {
            // Counted, logged and stored where the authorizer was put out of service.
            return;
        }
        let (core, slot) = (&self.part.core, self.slot);
        metrics::TOKEN_REFRESH.with_label_values(&["authorizer", error.label()]).inc();
        tracing::warn!(authorizer = %slot.appid, error = %error, failures = attempts, retry_in_ms, "authorizer token refresh failed; retrying with backoff");
        let mut mem = slot.mem();
        mem.last_error = Some(error.to_string().into_boxed_str());
        // Kept on disk for the admin API after a restart; losing that write loses only the message.
        if let Err(e) = core.store.save_authorizer(&core.component, &mem.to_record(&slot.appid)).await {
            tracing::debug!(authorizer = %slot.appid, error = %e, "could not store the refresh error");
        }
        slot.set_mem(mem);
    }
}
