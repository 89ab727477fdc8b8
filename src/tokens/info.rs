//! Who each account is (`api_get_authorizer_info`): fetched when it is authorized and again
//! once a day, kept in the store, with what memory needs of it (`index.rs`) — the `gh_` id →
//! appid map the message receiver needs, the accounts WeChat reports as frozen, closed or
//! banned, and the console's search over the appids and names.
//!
//! The daily pass is cut into [`SLICES`] slices by a hash of the appid, one slice per
//! `Settings::info_slice_every`, so that a large fleet is asked about evenly over the day
//! rather than all at once.

use super::authorizer::AuthorizerTokens;
use super::core::Core;
use super::index::InfoIndex;
pub use super::index::{account_state, ACCOUNT_STATES};
use super::{Job, TokenError};
use crate::store::{AccountKind, AuthorizerInfoRecord, AuthorizerState};
use crate::wechat::AuthorizerInfo;
use crate::AppId;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Slices of the daily pass: one every 10 minutes by default.
pub const SLICES: u64 = 144;
/// Info fetches under way at once in a pass.
const PASS_CONCURRENCY: usize = 4;

/// Which slice of the daily pass an appid belongs to: FNV-1a of its bytes, stable across
/// instances and restarts.
pub fn slice_of(appid: &AppId) -> u64 {
    let hash =
        appid.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    hash % SLICES
}

fn record_of(appid: &AppId, info: AuthorizerInfo, now_ms: i64) -> AuthorizerInfoRecord {
    AuthorizerInfoRecord {
        appid: *appid,
        nick_name: info.nick_name,
        user_name: info.user_name,
        principal_name: info.principal_name,
        kind: if info.mini_program { AccountKind::MiniProgram } else { AccountKind::OfficialAccount },
        account_status: info.account_status,
        func_info: info.func_info,
        fetched_at: now_ms,
    }
}

/// Who each account is, for the message receiver, the admin API and the gauge.
pub struct Info {
    core: Arc<Core>,
    authorizers: Arc<AuthorizerTokens>,
    index: Arc<InfoIndex>,
}

impl Info {
    /// Fills the index from the store at start-up.
    pub(super) async fn load(authorizers: Arc<AuthorizerTokens>) -> Result<Self, TokenError> {
        let (core, index) = (Arc::clone(&authorizers.core), Arc::clone(&authorizers.index));
        for info in core.store.load_authorizer_infos(&core.component).await? {
            index.take(&info);
        }
        index.settle();
        core.plan(Job::InfoPass, core.now_ms() + core.settings.info_slice_every.as_millis() as i64);
        Ok(Self { core, authorizers, index })
    }

    /// Asks WeChat who the account is, and keeps the answer (never its refresh token).
    pub async fn fetch(&self, appid: &AppId) -> Result<AuthorizerInfoRecord, TokenError> {
        let (core, part) = (&self.core, &self.authorizers);
        let info = with_component_token!(part.component, |t| core.api.authorizer_info(t, appid))?;
        let record = record_of(appid, info, core.now_ms());
        core.store.save_authorizer_info(&core.component, &record).await?;
        let was = self.index.unusual(appid);
        self.index.take(&record);
        let now = self.index.unusual(appid);
        if was != now {
            match now {
                Some(label) => {
                    tracing::warn!(authorizer = %appid, account_status = ?record.account_status, "WeChat reports the account as {label}")
                }
                None => tracing::info!(authorizer = %appid, "WeChat reports the account as usable again"),
            }
            part.update_gauges();
        }
        Ok(record)
    }

    /// What the store holds of the account's info.
    pub async fn stored(&self, appid: &AppId) -> Result<Option<AuthorizerInfoRecord>, TokenError> {
        Ok(self.core.store.load_authorizer_info(&self.core.component, appid).await?)
    }

    /// Every account's info the store holds.
    pub async fn all(&self) -> Result<Vec<AuthorizerInfoRecord>, TokenError> {
        Ok(self.core.store.load_authorizer_infos(&self.core.component).await?)
    }

    /// The held authorizers whose appid or one of whose names (`nick_name`, `user_name`,
    /// `principal_name`) contains `q`, ignoring case, in appid order: from memory, with neither
    /// the store nor every account read (`search.rs`). On a shared store, the names another
    /// instance fetched since this one loaded are not known here (their appids are), as the
    /// frozen labels are not: nothing announces an info.
    pub fn search(&self, q: &str) -> Vec<AppId> {
        let mut found = self.index.find(q);
        // The store keeps the info of an authorizer it no longer holds, and loads it at start-up.
        self.authorizers.slots.retain_held(&mut found);
        found
    }

    /// The appid of the account whose messages carry `user_name` (`gh_...`) as `ToUserName`,
    /// from memory: what this instance fetched or loaded.
    pub fn appid_for_user_name(&self, user_name: &str) -> Option<AppId> {
        self.index.user_name(user_name)
    }

    /// [`Self::appid_for_user_name`], and on a miss the store, which another instance may have
    /// written (a shared store) since this one loaded.
    pub async fn find_user_name(&self, user_name: &str) -> Result<Option<AppId>, TokenError> {
        if let Some(appid) = self.index.user_name(user_name) {
            return Ok(Some(appid));
        }
        let core = &self.core;
        let Some(appid) = core.store.find_user_name(&core.component, user_name).await? else { return Ok(None) };
        if let Some(info) = core.store.load_authorizer_info(&core.component, &appid).await? {
            self.index.take(&info);
        }
        Ok(Some(appid))
    }

    /// `frozen`, `closed` or `banned` when WeChat reports the account so.
    pub fn account_state(&self, appid: &AppId) -> Option<&'static str> {
        self.index.unusual(appid)
    }

    /// The state label for the admin API: see [`InfoIndex::label`].
    pub fn state_label(&self, appid: &AppId, state: AuthorizerState) -> &'static str {
        self.index.label(appid, state)
    }

    /// The one-off fetch after an authorization; a failure is left to the daily pass.
    pub(super) async fn run_one(&self, appid: &AppId) {
        if self.authorizers.slots.get(appid).is_none() {
            return;
        }
        if let Err(e) = self.fetch(appid).await {
            tracing::warn!(authorizer = %appid, error = %e, "api_get_authorizer_info failed; the daily pass tries again");
        }
    }

    /// One slice of the daily pass: every active account in it. On a shared store one instance
    /// takes each slice (a lease that outlives the slice's period is never released).
    pub(super) async fn run_pass(&self) {
        let core = &self.core;
        let every = core.settings.info_slice_every;
        let now = core.now_ms();
        let period = (every.as_millis() as i64).max(1);
        core.plan(Job::InfoPass, (now / period + 1) * period);
        let slice = (now / period) as u64 % SLICES;
        let lease_ttl =
            every.saturating_sub(Duration::from_millis(every.as_millis() as u64 / 10)).max(Duration::from_millis(1));
        match core.store.lease(&core.component, &format!("info-pass:{slice}"), lease_ttl).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the info pass's lease; skipping this slice");
                return;
            }
        }
        let due: Vec<AppId> = self
            .authorizers
            .slots
            .all()
            .into_iter()
            .filter(|s| s.state() == AuthorizerState::Active && slice_of(&s.appid) == slice)
            .map(|s| s.appid)
            .collect();
        let failed = futures_util::stream::iter(due)
            .map(|appid| async move { self.fetch(&appid).await.is_err() })
            .buffer_unordered(PASS_CONCURRENCY)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        if failed > 0 {
            tracing::warn!(slice, failed, "api_get_authorizer_info failed for some accounts; tried again tomorrow");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_appid_is_in_one_slice_and_slices_are_even() {
        let mut counts = vec![0u32; SLICES as usize];
        for i in 0..144_000u64 {
            let appid = AppId::parse(&format!("wx{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).unwrap();
            counts[slice_of(&appid) as usize] += 1;
        }
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(min > 800 && max < 1200, "{min}..{max}");
    }

    #[test]
    fn the_index_maps_gh_ids_and_keeps_only_unusual_accounts() {
        let index = InfoIndex::default();
        let appid = AppId::parse("wx1111111111111111").unwrap();
        let mut info = record_of(
            &appid,
            AuthorizerInfo {
                user_name: Some("gh_111111111111".into()),
                account_status: Some(19),
                ..Default::default()
            },
            5,
        );
        index.take(&info);
        assert_eq!(index.user_name("gh_111111111111"), Some(appid));
        assert_eq!(index.unusual(&appid), Some("frozen"));
        info.account_status = Some(1);
        index.take(&info);
        assert_eq!(index.unusual(&appid), None);
        index.forget(&appid);
        assert_eq!(index.user_name("gh_111111111111"), None);
    }

    #[test]
    fn frozen_and_closed_accounts_are_named() {
        assert_eq!(account_state(Some(19)), Some("frozen"));
        assert_eq!(account_state(Some(14)), Some("closed"));
        assert_eq!(account_state(Some(16)), Some("banned"));
        assert_eq!(account_state(Some(18)), None, "warned accounts still work");
        assert_eq!(account_state(Some(1)), None);
        assert_eq!(account_state(None), None);
    }
}
