//! The 45009 holds: an (account, API) pair WeChat said is over its daily quota is answered by
//! the gateway until Beijing midnight or a clear-quota, rather than spending calls that can
//! only fail and make WeChat's answer slower for everyone.

use super::{Account, ByPair};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

#[derive(Debug, Default)]
pub(super) struct Holds {
    /// Whether any pair is held: the one read a call makes while none is.
    any: AtomicBool,
    /// By account, then API: when the hold ends (Unix ms).
    by_account: RwLock<ByPair<i64>>,
}

impl Holds {
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// When the hold on `account`'s `api` ends, if it is held at `now_ms`.
    pub fn until(&self, account: Account, api: &str, now_ms: i64) -> Option<i64> {
        if !self.any() {
            return None;
        }
        let map = self.by_account.read().unwrap_or_else(|p| p.into_inner());
        map.get(&account)?.get(api).copied().filter(|until| *until > now_ms)
    }

    pub fn hold(&self, account: Account, api: &str, until_ms: i64) {
        let mut map = self.by_account.write().unwrap_or_else(|p| p.into_inner());
        map.entry(account).or_default().insert(api.into(), until_ms);
        self.any.store(true, Ordering::Relaxed);
    }

    /// Lifts every hold of `account`: its quota was cleared.
    pub fn lift(&self, account: Account) {
        let mut map = self.by_account.write().unwrap_or_else(|p| p.into_inner());
        map.remove(&account);
        self.any.store(!map.is_empty(), Ordering::Relaxed);
    }

    /// Takes the holds the cluster knows (a shared store's), dropping those that ended.
    pub fn replace(&self, holds: impl IntoIterator<Item = (Account, String, i64)>, now_ms: i64) {
        let mut fresh: ByPair<i64> = HashMap::new();
        for (account, api, until) in holds.into_iter().filter(|(_, _, until)| *until > now_ms) {
            fresh.entry(account).or_default().insert(api.into(), until);
        }
        let mut map = self.by_account.write().unwrap_or_else(|p| p.into_inner());
        self.any.store(!fresh.is_empty(), Ordering::Relaxed);
        *map = fresh;
    }

    /// Every hold still on at `now_ms`, for the admin API.
    pub fn list(&self, now_ms: i64) -> Vec<(Account, String, i64)> {
        let map = self.by_account.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map
            .iter()
            .flat_map(|(a, apis)| apis.iter().map(move |(api, until)| (*a, api.to_string(), *until)))
            .filter(|(_, _, until)| *until > now_ms)
            .collect();
        all.sort();
        all
    }
}
