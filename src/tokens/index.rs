//! What memory keeps of the accounts' info, for the hot paths, the scrape and the console: the
//! `gh_` id → appid map the message receiver needs, the accounts WeChat reports as frozen,
//! closed or banned, whose state label the gauge and the admin API show, and the search over
//! every account's appid and names (`search.rs`). `info.rs` fills it with each info stored or
//! loaded, `authorizer.rs` with each authorizer held (found by its appid before its info comes)
//! and takes out each one dropped; the gauge and the admin API read it.

use super::search::Search;
use crate::store::{AuthorizerInfoRecord, AuthorizerState};
use crate::AppId;
use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The state labels beyond [`AuthorizerState`]'s: an account whose tokens work but that WeChat
/// reports as unusable. Shown as its `state` on the admin API and counted so in
/// `wxgate_authorizers{state}`.
pub const ACCOUNT_STATES: [(i64, &str); 3] = [(14, "closed"), (16, "banned"), (19, "frozen")];

/// What memory keeps of the infos: only what is asked for on a hot path or per scrape.
#[derive(Default)]
pub(super) struct InfoIndex {
    user_names: RwLock<HashMap<Box<str>, AppId>>,
    /// Accounts whose `account_status` is one of [`ACCOUNT_STATES`] (few), by appid.
    unusual: RwLock<HashMap<AppId, &'static str>>,
    /// Every account's appid and names, for the console's search.
    search: RwLock<Search>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl InfoIndex {
    pub(super) fn take(&self, info: &AuthorizerInfoRecord) {
        if let Some(user_name) = &info.user_name {
            write(&self.user_names).insert(user_name.as_str().into(), info.appid);
        }
        match account_state(info.account_status) {
            Some(label) => write(&self.unusual).insert(info.appid, label),
            None => write(&self.unusual).remove(&info.appid),
        };
        let names = [info.nick_name.as_deref(), info.user_name.as_deref(), info.principal_name.as_deref()];
        write(&self.search).put(&info.appid, names);
    }

    /// Gives back what the start-up load left spare.
    pub(super) fn settle(&self) {
        write(&self.search).shrink();
    }

    /// An authorizer is held: it is found by its appid, whether or not its info has come.
    pub(super) fn hold(&self, appid: &AppId) {
        write(&self.search).hold(appid);
    }

    pub fn forget(&self, appid: &AppId) {
        write(&self.user_names).retain(|_, a| a != appid);
        write(&self.unusual).remove(appid);
        write(&self.search).remove(appid);
    }

    /// The label an account WeChat reports as unusable is shown under, if it is one.
    pub fn unusual(&self, appid: &AppId) -> Option<&'static str> {
        read(&self.unusual).get(appid).copied()
    }

    pub(super) fn user_name(&self, user_name: &str) -> Option<AppId> {
        read(&self.user_names).get(user_name).copied()
    }

    /// The accounts whose appid or one of whose names contains `q` (any case), in appid order:
    /// see `search.rs`.
    pub(super) fn find(&self, q: &str) -> Vec<AppId> {
        read(&self.search).find(q)
    }

    /// The state label for the admin API and the gauge: an active account WeChat reports as
    /// frozen, closed or banned shows that instead.
    pub fn label(&self, appid: &AppId, state: AuthorizerState) -> &'static str {
        match state {
            AuthorizerState::Active => self.unusual(appid).unwrap_or(state.as_str()),
            _ => state.as_str(),
        }
    }
}

/// Every label `wxgate_authorizers{state}` has.
pub fn state_labels() -> impl Iterator<Item = &'static str> {
    AuthorizerState::ALL.into_iter().map(AuthorizerState::as_str).chain(ACCOUNT_STATES.iter().map(|(_, l)| *l))
}

/// The label of an `account_status` that makes an account unusable, if it does.
pub fn account_state(status: Option<i64>) -> Option<&'static str> {
    ACCOUNT_STATES.iter().find(|(code, _)| Some(*code) == status).map(|(_, label)| *label)
}
