//! What memory keeps of the accounts' info, for the hot paths and the scrape: the `gh_` id →
//! appid map the message receiver needs, and the accounts WeChat reports as frozen, closed or
//! banned, whose state label the gauge and the admin API show. `info.rs` fills it; the
//! authorizers' gauge reads it.

use crate::store::{AuthorizerInfoRecord, AuthorizerState};
use crate::AppId;
use std::collections::HashMap;
use std::sync::RwLock;

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
}

impl InfoIndex {
    pub(super) fn take(&self, info: &AuthorizerInfoRecord) {
        if let Some(user_name) = &info.user_name {
            let mut map = self.user_names.write().unwrap_or_else(|p| p.into_inner());
            map.insert(user_name.as_str().into(), info.appid);
        }
        let mut unusual = self.unusual.write().unwrap_or_else(|p| p.into_inner());
        match account_state(info.account_status) {
            Some(label) => unusual.insert(info.appid, label),
            None => unusual.remove(&info.appid),
        };
    }

    pub fn forget(&self, appid: &AppId) {
        self.user_names.write().unwrap_or_else(|p| p.into_inner()).retain(|_, a| a != appid);
        self.unusual.write().unwrap_or_else(|p| p.into_inner()).remove(appid);
    }

    /// The label an account WeChat reports as unusable is shown under, if it is one.
    pub fn unusual(&self, appid: &AppId) -> Option<&'static str> {
        self.unusual.read().unwrap_or_else(|p| p.into_inner()).get(appid).copied()
    }

    pub(super) fn user_name(&self, user_name: &str) -> Option<AppId> {
        self.user_names.read().unwrap_or_else(|p| p.into_inner()).get(user_name).copied()
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
