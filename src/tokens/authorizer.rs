//! Every authorizer's tokens: refreshed single-flight, the rotated refresh token stored before
//! the new access token is used, 61023 recovered from WeChat's own records when it can be.

use super::refresher::{Committed, Credential, Endpoint, Flight};
use super::slot::{AuthorizerMem, AuthorizerSlot};
use super::{AccessToken, AuthorizerStatus, Job, TokenError, TokenService, Want};
use crate::metrics;
use crate::store::{AuthorizerState, Fence};
use crate::wechat::{ApiErrorKind, AuthorizerTokens, WechatError};
use crate::{AppId, Secret};
use async_trait::async_trait;
use sha1::{Digest, Sha1};
use std::sync::Arc;

/// api_get_authorizer_list pages at most 500; 40 pages cover 20,000 accounts.
const LIST_PAGE: u32 = 500;
const LIST_PAGES: u32 = 40;

impl TokenService {
    fn slot(&self, appid: &AppId) -> Result<Arc<AuthorizerSlot>, TokenError> {
        self.authorizers.get(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    /// An access token for `appid` that has not expired: the proxy's read. Only an expired or
    /// missing token costs a call to WeChat, single-flight.
    pub async fn authorizer_token(&self, appid: &AppId) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slot(appid)?;
        match slot.access() {
            (AuthorizerState::Revoked, _) => Err(TokenError::Revoked),
            (_, Some(t)) if t.is_valid(self.clock.now_ms()) => Ok(t),
            (AuthorizerState::NeedsReauth, _) => Err(TokenError::NeedsReauth),
            // Boxed: a refresh's future is large, and every proxied call holds this one.
            _ => Box::pin(self.refresh_authorizer(appid, Want::Valid)).await,
        }
    }

    /// Replaces `failed`, which WeChat refused, unless another caller already did.
    pub async fn replace_authorizer_token(
        &self,
        appid: &AppId,
        failed: &Secret,
    ) -> Result<Arc<AccessToken>, TokenError> {
        self.refresh_authorizer(appid, Want::Replace(failed)).await
    }

    /// The admin API's "refresh now".
    pub async fn refresh_now(&self, appid: &AppId) -> Result<AuthorizerStatus, TokenError> {
        self.refresh_authorizer(appid, Want::Now).await?;
        self.authorizer_status(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    pub(crate) async fn refresh_authorizer(
        &self,
        appid: &AppId,
        want: Want<'_>,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slot(appid)?;
        self.refresh(&AuthorizerCredential { service: self, slot: &slot }, want).await
    }

    async fn call_authorizer_token(
        &self,
        appid: &AppId,
        refresh_token: &Secret,
    ) -> Result<AuthorizerTokens, TokenError> {
        with_component_token!(self, |t| self.api.authorizer_token(t, appid, refresh_token))
    }

    /// Stores the new tokens, then puts them in service: a crash between the two loses nothing,
    /// since the store already holds the refresh token WeChat may have rotated.
    async fn commit_authorizer(
        &self,
        slot: &AuthorizerSlot,
        mut mem: AuthorizerMem,
        tokens: AuthorizerTokens,
        fence: Fence<'_>,
    ) -> Result<Committed, TokenError> {
        let now = self.clock.now_ms();
        let lifetime_ms = tokens.access_token.expires_in as i64 * 1000;
        let access =
            Arc::new(AccessToken { value: tokens.access_token.value, expires_at: now + lifetime_ms, lifetime_ms });
        mem.state = AuthorizerState::Active;
        mem.refresh_token = Some(tokens.refresh_token);
        mem.access = Some(Arc::clone(&access));
        mem.last_refresh_at = now;
        mem.last_error = None;
        if !self.store.save_authorizer_leased(&self.component, &mem.to_record(&slot.appid), fence).await? {
            return Ok(Committed::LeaseLost);
        }
        slot.set_mem(mem);
        metrics::TOKEN_REFRESH.with_label_values(&["authorizer", "ok"]).inc();
        if let Some(due) = slot.steady_due(now, &self.settings) {
            self.plan(Job::Authorizer(slot.appid), due);
        }
        tracing::debug!(authorizer = %slot.appid, expires_in_secs = lifetime_ms / 1000, "authorizer_access_token refreshed");
        Ok(Committed::InService(access))
    }

    /// Commits tokens from a new authorization, whoever holds the lease: its code is single use.
    async fn commit_authorization(
        &self,
        slot: &AuthorizerSlot,
        mem: AuthorizerMem,
        tokens: AuthorizerTokens,
    ) -> Result<(), TokenError> {
        match self.commit_authorizer(slot, mem, tokens, Fence::Unfenced).await? {
            Committed::InService(_) => {
                // A new authorization is a reason to try again at once.
                slot.flight.clear();
                Ok(())
            }
            Committed::LeaseLost => Err(TokenError::Contended),
        }
    }

    /// 61023: the stored refresh token no longer works. WeChat's own records may hold a newer
    /// one (another system refreshed, or a crash lost a rotation); if not, the owner must
    /// authorize again.
    async fn recover_refresh_token(
        &self,
        slot: &AuthorizerSlot,
        failed: &Secret,
        error: WechatError,
    ) -> Result<AuthorizerTokens, TokenError> {
        metrics::TOKEN_REFRESH.with_label_values(&["authorizer", error.label()]).inc();
        if let Some(found) = self.find_refresh_token(&slot.appid).await.filter(|f| f != failed) {
            tracing::warn!(authorizer = %slot.appid, "refresh token was invalid (61023); recovered the current one from WeChat");
            match self.call_authorizer_token(&slot.appid, &found).await {
                Ok(tokens) => return Ok(tokens),
                Err(e) => {
                    tracing::warn!(authorizer = %slot.appid, error = %e, "the recovered refresh token failed too")
                }
            }
        }
        tracing::error!(authorizer = %slot.appid, "refresh token invalid (61023) and not recoverable: the owner must authorize again");
        self.mark(slot, slot.mem(), AuthorizerState::NeedsReauth, error.to_string()).await?;
        Err(TokenError::NeedsReauth)
    }

    /// The refresh token WeChat holds for `appid`: api_get_authorizer_info, else the list.
    async fn find_refresh_token(&self, appid: &AppId) -> Option<Secret> {
        match with_component_token!(self, |t| self.api.authorizer_info(t, appid)) {
            Ok(info) if info.refresh_token.is_some() => return info.refresh_token,
            Ok(_) => {}
            Err(e) => tracing::warn!(authorizer = %appid, error = %e, "api_get_authorizer_info failed"),
        }
        for page in 0..LIST_PAGES {
            let offset = page * LIST_PAGE;
            let (total, list) = with_component_token!(self, |t| self.api.authorizer_list(t, offset, LIST_PAGE)).ok()?;
            if let Some(found) = list.into_iter().find(|a| a.appid == *appid) {
                return found.refresh_token;
            }
            if u64::from(offset + LIST_PAGE) >= total {
                break;
            }
        }
        None
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
        self.store.save_authorizer(&self.component, &mem.to_record(&slot.appid)).await?;
        slot.set_mem(mem);
        self.unplan(&Job::Authorizer(slot.appid));
        self.update_gauges();
        Ok(())
    }

    /// Exchanges an authorization code (from the redirect or the `authorized` push) and stores
    /// the authorizer. The same code twice is harmless: the second returns the first's answer.
    pub async fn authorize_with_code(&self, code: &str) -> Result<AppId, TokenError> {
        let hash = hex::encode(Sha1::digest(code.as_bytes()));
        let _one_at_a_time = self.authorize_turn.lock().await;
        if let Some(appid) = self.used_codes.get(&hash) {
            return Ok(appid);
        }
        let auth = with_component_token!(self, |t| self.api.query_auth(t, code))?;
        let appid = auth.authorizer_appid;
        let slot = self.slot_or_new(&appid);
        let _single_flight = slot.flight.turn().await;
        let now = self.clock.now_ms();
        let mut mem = slot.mem();
        mem.authorized_at = now;
        mem.auth_code_sha1 = Some(Sha1::digest(code.as_bytes()).into());
        let tokens = AuthorizerTokens { access_token: auth.access_token, refresh_token: auth.refresh_token };
        self.commit_authorization(&slot, mem, tokens).await?;
        self.adopt(Arc::clone(&slot));
        self.used_codes.insert(hash, appid);
        self.update_gauges();
        self.plan_info(&appid);
        tracing::info!(authorizer = %appid, "authorizer authorized");
        Ok(appid)
    }

    /// Exchanges an authorization code and keeps nothing: WeChat's release-check test accounts
    /// send a code that must be used once, by the gateway, and never become authorizers.
    pub async fn query_auth_unkept(&self, code: &str) -> Result<crate::wechat::Authorization, TokenError> {
        with_component_token!(self, |t| self.api.query_auth(t, code))
    }

    /// Whether `code` is the one last exchanged for `appid` (a push that follows the redirect).
    pub(super) fn code_already_used(&self, appid: &AppId, code: &str) -> bool {
        let hash = hex::encode(Sha1::digest(code.as_bytes()));
        self.used_codes.contains_key(&hash)
            || self
                .authorizers
                .get(appid)
                .is_some_and(|s| s.mem().auth_code_sha1 == Some(Sha1::digest(code.as_bytes()).into()))
    }

    /// The authorizer's slot, or a new one that nobody sees until [`Self::adopt`] is called
    /// once its tokens are stored: a half-made authorizer must not look active.
    fn slot_or_new(&self, appid: &AppId) -> Arc<AuthorizerSlot> {
        self.authorizers.get(appid).unwrap_or_else(|| {
            Arc::new(AuthorizerSlot::from_record(crate::store::AuthorizerRecord {
                appid: *appid,
                state: AuthorizerState::Active,
                refresh_token: None,
                access_token: None,
                access_expires_at: 0,
                authorized_at: 0,
                last_refresh_at: 0,
                last_error: None,
                auth_code_sha1: None,
            }))
        })
    }

    /// Makes a slot from [`Self::slot_or_new`] visible, unless it already is.
    fn adopt(&self, slot: Arc<AuthorizerSlot>) {
        self.authorizers.insert_if_absent(slot);
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

    /// Imports an authorizer from another system by its refresh token. The token is tried first:
    /// one WeChat refuses is not stored.
    pub async fn import_authorizer(
        &self,
        appid: &AppId,
        refresh_token: Secret,
    ) -> Result<AuthorizerStatus, TokenError> {
        let _one_at_a_time = self.authorize_turn.lock().await;
        let tokens = self.call_authorizer_token(appid, &refresh_token).await?;
        let slot = self.slot_or_new(appid);
        let _single_flight = slot.flight.turn().await;
        let mut mem = slot.mem();
        mem.authorized_at = self.clock.now_ms();
        self.commit_authorization(&slot, mem, tokens).await?;
        self.adopt(Arc::clone(&slot));
        self.update_gauges();
        self.plan_info(appid);
        self.authorizer_status(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    /// Forgets an authorizer entirely. Returns whether it was known.
    pub async fn forget_authorizer(&self, appid: &AppId) -> Result<bool, TokenError> {
        // Waits for a refresh under way, which would otherwise write the record back.
        let slot = self.authorizers.get(appid);
        let _single_flight = match &slot {
            Some(s) => Some(s.flight.turn().await),
            None => None,
        };
        let existed = self.store.delete_authorizer(&self.component, appid).await?;
        let known = self.authorizers.remove(appid).is_some();
        self.info.forget(appid);
        self.tickets.remove_authorizer(appid);
        self.unplan(&Job::Authorizer(*appid));
        self.update_gauges();
        Ok(existed || known)
    }
}

/// One authorizer's tokens as the refresher sees them.
struct AuthorizerCredential<'a> {
    service: &'a TokenService,
    slot: &'a AuthorizerSlot,
}

#[async_trait]
impl Credential for AuthorizerCredential<'_> {
    type Fetched = AuthorizerTokens;

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
        self.service.adopt_stored_authorizer(self.slot).await
    }

    async fn fetch(&self) -> Result<AuthorizerTokens, TokenError> {
        let (service, slot) = (self.service, self.slot);
        let refresh_token = slot.mem().refresh_token.ok_or(TokenError::NeedsReauth)?;
        match service.call_authorizer_token(&slot.appid, &refresh_token).await {
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::RefreshTokenInvalid) => {
                service.recover_refresh_token(slot, &refresh_token, e).await
            }
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::NotAuthorized) => {
                service.mark(slot, slot.mem(), AuthorizerState::Revoked, e.to_string()).await?;
                Err(TokenError::Revoked)
            }
            other => other,
        }
    }

    async fn commit(&self, tokens: AuthorizerTokens, fence: Fence<'_>) -> Result<Committed, TokenError> {
        self.service.commit_authorizer(self.slot, self.slot.mem(), tokens, fence).await
    }

    /// The current token stays in service until it expires; the error is kept, on disk too.
    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64) {
        if error.is_terminal() {
            // Counted, logged and stored where the authorizer was put out of service.
            return;
        }
        let slot = self.slot;
        metrics::TOKEN_REFRESH.with_label_values(&["authorizer", error.label()]).inc();
        tracing::warn!(authorizer = %slot.appid, error = %error, failures = attempts, retry_in_ms, "authorizer token refresh failed; retrying with backoff");
        let mut mem = slot.mem();
        mem.last_error = Some(error.to_string().into_boxed_str());
        // Kept on disk for the admin API after a restart; losing that write loses only the message.
        if let Err(e) = self.service.store.save_authorizer(&self.service.component, &mem.to_record(&slot.appid)).await {
            tracing::debug!(authorizer = %slot.appid, error = %e, "could not store the refresh error");
        }
        slot.set_mem(mem);
    }
}
