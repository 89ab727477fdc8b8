//! What memory holds per token: the current value, its bookkeeping, and the lock that makes
//! its refresh single-flight.

use super::refresher::Flight;
use super::{lead_ms, spread_due, steady_due, AuthorizerStatus, Settings};
use crate::store::{AuthorizerRecord, AuthorizerState, ComponentToken, StoredAccess};
use crate::{AppId, Secret};
use rand::Rng;
use std::num::NonZeroI64;
use std::sync::{Arc, RwLock};

/// A token in service, shared with the requests that use it.
#[derive(Debug, PartialEq, Eq)]
pub struct AccessToken {
    pub value: Secret,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// How long WeChat said it would live, in milliseconds: refresh timing scales with it.
    pub lifetime_ms: i64,
}

impl AccessToken {
    pub fn is_valid(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// A token an appid holds in its own right: the component_access_token, an owned account's.
pub(super) struct TokenSlot {
    current: RwLock<Option<Arc<AccessToken>>>,
    meta: RwLock<Meta>,
    pub flight: Flight,
}

#[derive(Debug, Default, Clone)]
pub(super) struct Meta {
    /// `None` until the first refresh.
    pub last_refresh_at: Option<i64>,
    pub last_error: Option<String>,
}

impl TokenSlot {
    pub fn new(stored: Option<ComponentToken>) -> Self {
        let current = stored.map(|t| {
            let lifetime_ms = (t.expires_at - t.obtained_at).max(0);
            Arc::new(AccessToken { value: t.value, expires_at: t.expires_at, lifetime_ms })
        });
        let last_refresh_at = current.as_ref().map(|t| t.expires_at - t.lifetime_ms);
        Self {
            current: RwLock::new(current),
            meta: RwLock::new(Meta { last_refresh_at, ..Meta::default() }),
            flight: Flight::default(),
        }
    }

    pub fn current(&self) -> Option<Arc<AccessToken>> {
        read(&self.current).clone()
    }

    pub fn is_valid(&self, now_ms: i64) -> bool {
        read(&self.current).as_ref().is_some_and(|t| t.is_valid(now_ms))
    }

    pub fn set(&self, token: Arc<AccessToken>, now_ms: i64) {
        *write(&self.current) = Some(token);
        *write(&self.meta) = Meta { last_refresh_at: Some(now_ms), last_error: None };
    }

    /// Keeps the error of a failed refresh for the admin API and `/readyz`.
    pub fn failed(&self, error: String) {
        write(&self.meta).last_error = Some(error);
    }

    pub fn last_error(&self) -> Option<String> {
        read(&self.meta).last_error.clone()
    }

    pub fn last_refresh_at(&self) -> Option<i64> {
        read(&self.meta).last_refresh_at
    }

    pub fn due_after_load(&self, now_ms: i64, settings: &Settings) -> i64 {
        match self.current() {
            Some(t) => (t.expires_at - lead_ms(settings.ahead, t.lifetime_ms)).max(now_ms),
            None => now_ms,
        }
    }
}

/// One authorizer.
pub(super) struct AuthorizerSlot {
    pub appid: AppId,
    mem: RwLock<AuthorizerMem>,
    pub flight: Flight,
}

/// An authorizer as memory holds it: the store's record, with the access token shared.
#[derive(Debug, Clone)]
pub(super) struct AuthorizerMem {
    pub state: AuthorizerState,
    pub refresh_token: Option<Secret>,
    pub access: Option<Arc<AccessToken>>,
    pub authorized_at: i64,
    /// `None` until the first refresh; `NonZeroI64` so that the `Option` costs no byte.
    pub last_refresh_at: Option<NonZeroI64>,
    /// Boxed rather than a `String`: 8 bytes fewer for each of a large fleet.
    pub last_error: Option<Box<str>>,
    /// Held as bytes: 20 of them rather than a 40-character string, for each of a large fleet.
    pub auth_code_sha1: Option<[u8; 20]>,
}

/// A copy of a token made by the store, allocated on this thread. The SQLite store reads on a
/// blocking thread, whose allocator pages it shares with that thread's short-lived strings: a
/// million tokens kept from there cost about 45 bytes more each (measured, mimalloc) than copies.
fn kept(token: Secret) -> Secret {
    Secret::new(token.expose())
}

impl AuthorizerMem {
    pub fn from_record(r: AuthorizerRecord) -> Self {
        let access = r.access.map(|a| {
            let lifetime_ms = r.last_refresh_at_ms.map_or(7_200_000, |at| (a.expires_at_ms - at).max(0));
            Arc::new(AccessToken { value: kept(a.value), expires_at: a.expires_at_ms, lifetime_ms })
        });
        Self {
            state: r.state,
            refresh_token: r.refresh_token.map(kept),
            access,
            authorized_at: r.authorized_at_ms,
            last_refresh_at: r.last_refresh_at_ms.and_then(NonZeroI64::new),
            last_error: r.last_error.map(String::into_boxed_str),
            auth_code_sha1: r.auth_code_sha1.and_then(|h| {
                let mut bytes = [0u8; 20];
                hex::decode_to_slice(h, &mut bytes).ok().map(|()| bytes)
            }),
        }
    }

    pub fn to_record(&self, appid: &AppId) -> AuthorizerRecord {
        AuthorizerRecord {
            appid: *appid,
            state: self.state,
            refresh_token: self.refresh_token.clone(),
            access: self.access.as_ref().map(|a| StoredAccess { value: a.value.clone(), expires_at_ms: a.expires_at }),
            authorized_at_ms: self.authorized_at,
            last_refresh_at_ms: self.last_refresh_at.map(NonZeroI64::get),
            last_error: self.last_error.as_deref().map(str::to_owned),
            auth_code_sha1: self.auth_code_sha1.map(hex::encode),
        }
    }
}

impl AuthorizerSlot {
    pub fn from_record(record: AuthorizerRecord) -> Self {
        Self { appid: record.appid, mem: RwLock::new(AuthorizerMem::from_record(record)), flight: Flight::default() }
    }

    pub fn mem(&self) -> AuthorizerMem {
        read(&self.mem).clone()
    }

    pub fn set_mem(&self, mem: AuthorizerMem) {
        *write(&self.mem) = mem;
    }

    pub fn state(&self) -> AuthorizerState {
        read(&self.mem).state
    }

    /// The access token, without cloning the rest: the proxy's path.
    pub fn access(&self) -> (AuthorizerState, Option<Arc<AccessToken>>) {
        let mem = read(&self.mem);
        (mem.state, mem.access.clone())
    }

    /// Spread over a steady refresh period (see `spread_due`), so that a fleet loaded with
    /// equal expiries does not refresh in the same second. `None` for authorizers that are not refreshed.
    pub fn due_after_load(&self, now_ms: i64, settings: &Settings, rng: &mut impl Rng) -> Option<i64> {
        let mem = read(&self.mem);
        if mem.state != AuthorizerState::Active {
            return None;
        }
        Some(match &mem.access {
            Some(a) => spread_due(now_ms, a.expires_at, settings.ahead, a.lifetime_ms, rng),
            None => now_ms,
        })
    }

    pub fn steady_due(&self, now_ms: i64, settings: &Settings) -> Option<i64> {
        let mem = read(&self.mem);
        let access = mem.access.as_ref().filter(|_| mem.state == AuthorizerState::Active)?;
        Some(steady_due(now_ms, access.expires_at, settings.ahead, &mut rand::thread_rng()))
    }

    pub fn status(&self, now_ms: i64, next_refresh_at_ms: Option<i64>) -> AuthorizerStatus {
        let mem = read(&self.mem);
        AuthorizerStatus {
            appid: self.appid.to_string(),
            state: mem.state.as_str(),
            access_expires_at_ms: mem.access.as_ref().map(|a| a.expires_at),
            access_expires_in_secs: mem.access.as_ref().map(|a| (a.expires_at - now_ms) / 1000),
            authorized_at_ms: mem.authorized_at,
            last_refresh_at_ms: mem.last_refresh_at.map(NonZeroI64::get),
            next_refresh_at_ms,
            last_error: mem.last_error.as_deref().map(str::to_owned),
        }
    }
}

/// Every authorizer held, by appid. A plain set under a read-write lock rather than a cache:
/// every authorizer stays in memory (nothing is evicted), and at 100,000 authorizers a moka
/// cache's per-entry bookkeeping cost about 250 bytes each that this does not. A set of the
/// slots keyed by their own appid, not a map from a copy of it: 8 bytes a bucket rather than 32,
/// which at a million authorizers (2²¹ buckets) is 19 bytes each rather than 69.
#[derive(Default)]
pub(super) struct Slots(RwLock<std::collections::HashSet<ByAppId>>);

/// A slot, hashed and compared by its appid, so that the set can be searched by appid.
struct ByAppId(Arc<AuthorizerSlot>);

impl PartialEq for ByAppId {
    fn eq(&self, other: &Self) -> bool {
        self.0.appid == other.0.appid
    }
}

impl Eq for ByAppId {}

impl std::hash::Hash for ByAppId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.appid.hash(state)
    }
}

impl std::borrow::Borrow<AppId> for ByAppId {
    fn borrow(&self) -> &AppId {
        &self.0.appid
    }
}

impl Slots {
    pub fn get(&self, appid: &AppId) -> Option<Arc<AuthorizerSlot>> {
        read(&self.0).get(appid).map(|s| Arc::clone(&s.0))
    }

    pub fn insert(&self, slot: Arc<AuthorizerSlot>) {
        write(&self.0).replace(ByAppId(slot));
    }

    /// Inserts `slot` unless one is already held for its appid.
    pub fn insert_if_absent(&self, slot: Arc<AuthorizerSlot>) {
        let mut set = write(&self.0);
        if !set.contains(&slot.appid) {
            set.insert(ByAppId(slot));
        }
    }

    pub fn remove(&self, appid: &AppId) -> Option<Arc<AuthorizerSlot>> {
        write(&self.0).take(appid).map(|s| s.0)
    }

    /// A snapshot, so that no lock is held while the caller works through it.
    pub fn all(&self) -> Vec<Arc<AuthorizerSlot>> {
        read(&self.0).iter().map(|s| Arc::clone(&s.0)).collect()
    }

    pub fn appids(&self) -> Vec<AppId> {
        read(&self.0).iter().map(|s| s.0.appid).collect()
    }

    pub fn len(&self) -> usize {
        read(&self.0).len()
    }

    /// Keeps the appids held, under one read of the set.
    pub fn retain_held(&self, appids: &mut Vec<AppId>) {
        let set = read(&self.0);
        appids.retain(|a| set.contains(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million slots are a million allocations of this size plus an `Arc`'s two counts:
    /// 144 bytes is what fits mimalloc's 160-byte class. One byte more costs 32 per authorizer.
    #[test]
    fn an_authorizer_slot_fits_its_size_class() {
        assert!(std::mem::size_of::<AuthorizerSlot>() <= 144, "{}", std::mem::size_of::<AuthorizerSlot>());
    }
}
