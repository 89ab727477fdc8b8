//! The accounts the company owns (`[[accounts]]`): each one's token from `stable_token` with its
//! AppSecret (PROTOCOL.md §13), kept by the refresher like every other credential.
//!
//! In normal mode WeChat answers the token in force, and a new one only in its last five minutes
//! (the old one working on until it expires), so a refresh is planned inside that window: asked
//! earlier, WeChat would only hand back the same token. `force_refresh` retires the token at
//! once and WeChat allows it 20 times a day, 30 s apart: it is used only to replace a token
//! WeChat refused, once however many calls saw the refusal (the refresher's compare-and-swap),
//! and never beyond those limits.

use super::core::Core;
use super::refresher::{Committed, Credential, Endpoint, Flight};
use super::slot::TokenSlot;
use super::{AccessToken, AccountStatus, Job, TokenError, Want};
use crate::metrics;
use crate::store::{ComponentToken, Fence};
use crate::wechat::Issued;
use crate::{AppId, Secret};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// WeChat's overlap window is the token's last 1/24 (5 minutes of 7,200 s); a refresh is due
/// 3/4 of the way into it (1/32 of the lifetime before expiry), leaving room to retry.
const WINDOW_LEAD_DIVISOR: i64 = 32;

/// WeChat's limits on `force_refresh`.
const FORCE_PER_DAY: usize = 20;
const FORCE_APART_MS: i64 = 30_000;
const DAY_MS: i64 = 86_400_000;

/// One owned account.
pub(super) struct OwnedSlot {
    pub appid: AppId,
    secret: Secret,
    pub slot: TokenSlot,
    /// When `force_refresh` was used in the last day, oldest first.
    forced: Mutex<VecDeque<i64>>,
}

impl OwnedSlot {
    /// Spends one `force_refresh` if WeChat's limits allow it now; else how long until they do.
    fn try_force(&self, now_ms: i64) -> Result<(), i64> {
        let mut forced = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        while forced.front().is_some_and(|t| now_ms - t >= DAY_MS) {
            forced.pop_front();
        }
        let apart = forced.back().map_or(0, |last| last + FORCE_APART_MS - now_ms);
        let daily = match forced.len() >= FORCE_PER_DAY {
            true => forced.front().map_or(0, |first| first + DAY_MS - now_ms),
            false => 0,
        };
        match apart.max(daily) {
            wait if wait > 0 => Err(wait),
            _ => {
                forced.push_back(now_ms);
                Ok(())
            }
        }
    }
}

/// Every owned account, fixed at start-up.
pub struct OwnedAccounts {
    core: Arc<Core>,
    accounts: HashMap<AppId, Arc<OwnedSlot>>,
}

impl OwnedAccounts {
    /// Starts from the tokens the store holds (each under the account's own appid), and plans
    /// each refresh.
    pub(super) async fn load(core: Arc<Core>, owned: Vec<(AppId, Secret)>) -> Result<Self, TokenError> {
        let mut accounts = HashMap::with_capacity(owned.len());
        let now = core.now_ms();
        for (appid, secret) in owned {
            let stored = core.store.load_component_token(&appid).await?;
            let slot = TokenSlot::new(stored);
            core.plan(Job::Account(appid), due(now, slot.current().as_deref(), &core));
            accounts.insert(appid, Arc::new(OwnedSlot { appid, secret, slot, forced: Mutex::default() }));
        }
        Ok(Self { core, accounts })
    }

    /// Whether `appid` is an owned account.
    pub fn holds(&self, appid: &AppId) -> bool {
        self.accounts.contains_key(appid)
    }

    fn get(&self, appid: &AppId) -> Result<&Arc<OwnedSlot>, TokenError> {
        self.accounts.get(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    /// A token that has not expired, fetched first if none is held.
    pub async fn token(&self, appid: &AppId) -> Result<Arc<AccessToken>, TokenError> {
        let account = self.get(appid)?;
        match account.slot.current() {
            Some(t) if t.is_valid(self.core.now_ms()) => Ok(t),
            _ => Box::pin(self.refresh(appid, Want::Valid)).await,
        }
    }

    /// Replaces `failed`, which WeChat refused, unless another caller already did.
    pub async fn replace(&self, appid: &AppId, failed: &Secret) -> Result<Arc<AccessToken>, TokenError> {
        self.refresh(appid, Want::Replace(failed)).await
    }

    /// The admin API's "refresh now" (normal mode: WeChat hands out a new token only in the
    /// current one's last minutes).
    pub async fn refresh_now(&self, appid: &AppId) -> Result<AccountStatus, TokenError> {
        self.refresh(appid, Want::Now).await?;
        self.status(appid).ok_or(TokenError::UnknownAuthorizer)
    }

    pub(super) async fn refresh(&self, appid: &AppId, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        let account = self.get(appid)?;
        self.core.refresh(&OwnedCredential { part: self, account, want }, want).await
    }

    /// Puts the stored token in service if it is newer than the one held.
    async fn adopt_stored(&self, account: &OwnedSlot) -> Result<(), TokenError> {
        let Some(stored) = self.core.store.load_component_token(&account.appid).await? else { return Ok(()) };
        let held = account.slot.current();
        if held.as_ref().is_some_and(|h| h.expires_at >= stored.expires_at) {
            return Ok(());
        }
        let lifetime_ms = (stored.expires_at - stored.obtained_at).max(0);
        let token = Arc::new(AccessToken { value: stored.value, expires_at: stored.expires_at, lifetime_ms });
        account.slot.set(Arc::clone(&token), stored.obtained_at);
        self.core.plan(Job::Account(account.appid), due(self.core.now_ms(), Some(&token), &self.core));
        Ok(())
    }

    /// Why calls for an owned account cannot be served yet, or `None` when every one has a token.
    pub(super) fn not_ready_reason(&self) -> Option<String> {
        let now = self.core.now_ms();
        let waiting = self.accounts.values().find(|a| !a.slot.is_valid(now))?;
        let error = waiting.slot.last_error().map(|e| format!(" (last error: {e})")).unwrap_or_default();
        Some(format!("no access token held yet for the owned account {}{error}", waiting.appid))
    }

    pub fn status(&self, appid: &AppId) -> Option<AccountStatus> {
        let account = self.accounts.get(appid)?;
        let now = self.core.now_ms();
        let token = account.slot.current();
        Some(AccountStatus {
            appid: appid.to_string(),
            state: match &token {
                Some(t) if t.is_valid(now) => "active",
                _ => "pending",
            },
            access_expires_at_ms: token.as_ref().map(|t| t.expires_at),
            access_expires_in_secs: token.as_ref().map(|t| (t.expires_at - now) / 1000),
            last_refresh_at_ms: account.slot.last_refresh_at(),
            next_refresh_at_ms: self.core.planned(&Job::Account(*appid)),
            last_error: account.slot.last_error(),
        })
    }

    /// Every owned account's status, by appid.
    pub fn statuses(&self) -> Vec<AccountStatus> {
        let mut appids: Vec<&AppId> = self.accounts.keys().collect();
        appids.sort();
        appids.into_iter().filter_map(|a| self.status(a)).collect()
    }
}

/// When `token`'s refresh is due: inside WeChat's overlap window, or now without one.
fn due(now_ms: i64, token: Option<&AccessToken>, core: &Core) -> i64 {
    let Some(token) = token else { return now_ms };
    let lead = super::lead_ms(core.settings.ahead, token.lifetime_ms).min(token.lifetime_ms / WINDOW_LEAD_DIVISOR);
    (token.expires_at - lead).max(now_ms)
}

/// An owned account's token as the refresher sees it, for one refresh: `want` decides the mode.
struct OwnedCredential<'a> {
    part: &'a OwnedAccounts,
    account: &'a OwnedSlot,
    want: Want<'a>,
}

/// What a refresh got, and whether it was forced.
pub(super) struct Fetched {
    issued: Issued,
    forced: bool,
}

#[async_trait]
impl Credential for OwnedCredential<'_> {
    type Fetched = Fetched;

    fn endpoint(&self) -> Endpoint {
        Endpoint::StableToken
    }

    fn lease_name(&self) -> String {
        format!("account:{}", self.account.appid)
    }

    fn job(&self) -> Job {
        Job::Account(self.account.appid)
    }

    fn flight(&self) -> &Flight {
        &self.account.slot.flight
    }

    fn current(&self, _: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        Ok(self.account.slot.current())
    }

    async fn adopt_stored(&self) -> Result<(), TokenError> {
        self.part.adopt_stored(self.account).await
    }

    /// Normal mode, but for a token WeChat refused: that one only `force_refresh` replaces, as
    /// far as WeChat's limits allow.
    async fn fetch(&self) -> Result<Fetched, TokenError> {
        let (core, account) = (&self.part.core, self.account);
        let refused = match self.want {
            Want::Replace(failed) => Some(failed),
            _ => None,
        };
        let forced = match refused.map(|_| account.try_force(core.now_ms())) {
            Some(Ok(())) => true,
            Some(Err(wait_ms)) => {
                tracing::warn!(
                    account = %account.appid,
                    retry_in_secs = wait_ms / 1000,
                    "WeChat refused an owned account's token, and force_refresh is spent (20 a day, 30 s apart): asking in normal mode"
                );
                false
            }
            None => false,
        };
        let issued = core.api.stable_token(&account.appid, &account.secret, forced).await?;
        if refused.is_some_and(|failed| *failed == issued.value) {
            return Err(TokenError::ForceSpent);
        }
        Ok(Fetched { issued, forced })
    }

    async fn commit(&self, fetched: Fetched, fence: Fence<'_>) -> Result<Committed, TokenError> {
        let (core, account) = (&self.part.core, self.account);
        let now = core.now_ms();
        let held = account.slot.current();
        let same = held.as_ref().filter(|h| h.value == fetched.issued.value);
        let expires_at = now + fetched.issued.expires_in as i64 * 1000;
        // The same token again (asked before WeChat's window): its lifetime is the one it had.
        let lifetime_ms = same.map_or(expires_at - now, |h| h.lifetime_ms);
        let record = ComponentToken { value: fetched.issued.value, expires_at, obtained_at: expires_at - lifetime_ms };
        // A token lost in a crash costs only a call, so a store failure does not keep it out of
        // service (as for the component's).
        let result = match core.store.save_component_token_leased(&account.appid, &record, fence).await {
            Ok(true) => "ok",
            Ok(false) => return Ok(Committed::LeaseLost),
            Err(e) => {
                tracing::error!(account = %account.appid, error = %e, "could not store an owned account's new token");
                "store_error"
            }
        };
        let token = Arc::new(AccessToken { value: record.value, expires_at, lifetime_ms });
        account.slot.set(Arc::clone(&token), now);
        metrics::TOKEN_REFRESH.with_label_values(&["account", result]).inc();
        let next = match same {
            // Not in the window yet: ask again halfway to the expiry rather than at once.
            Some(_) => (now + (expires_at - now) / 2).max(due(now, Some(&token), core)),
            None => due(now, Some(&token), core),
        };
        tracing::info!(
            account = %account.appid,
            forced = fetched.forced,
            renewed = same.is_none(),
            next_refresh_in_secs = (next - now) / 1000,
            "owned account's access token refreshed"
        );
        core.plan(Job::Account(account.appid), next);
        Ok(Committed::InService(token))
    }

    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64) {
        self.account.slot.failed(error.to_string());
        metrics::TOKEN_REFRESH.with_label_values(&["account", error.label()]).inc();
        tracing::warn!(
            account = %self.account.appid,
            error = %error,
            failures = attempts,
            retry_in_ms,
            "owned account's token refresh failed; the current token stays in service until it expires"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> OwnedSlot {
        OwnedSlot {
            appid: AppId::parse("wx5555555555555555").unwrap(),
            secret: Secret::new("s"),
            slot: TokenSlot::new(None),
            forced: Mutex::default(),
        }
    }

    #[test]
    fn force_refresh_keeps_to_wechats_thirty_seconds_and_twenty_a_day() {
        let s = slot();
        assert_eq!(s.try_force(0), Ok(()));
        assert_eq!(s.try_force(10_000), Err(20_000), "30 s apart");
        for i in 1..FORCE_PER_DAY as i64 {
            assert_eq!(s.try_force(i * FORCE_APART_MS), Ok(()), "force {i}");
        }
        let last = (FORCE_PER_DAY as i64 - 1) * FORCE_APART_MS;
        assert_eq!(s.try_force(last + FORCE_APART_MS), Err(DAY_MS - last - FORCE_APART_MS), "the 21st waits a day");
        assert_eq!(s.try_force(DAY_MS), Ok(()), "the first has left the day");
    }
}
