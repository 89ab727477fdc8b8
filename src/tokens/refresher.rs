//! The refresh protocol, once for every credential (the component token, each authorizer's
//! tokens, each JS-SDK ticket): single-flight, catching up with a shared store, backoff, a lease
//! held by a guard, waiting for a peer, a budget of calls to WeChat, a fenced commit.
//!
//! Each kind says only what differs ([`Credential`]): what it holds, how WeChat issues it, how it
//! is stored and adopted. When WeChat may be asked is decided here alone, so that no path (the
//! scheduler, a proxied call that needs a token now, a token WeChat refused, an operator) asks
//! more often than the backoff and the budget allow, whatever state the store is in
//! (issue 11: a store that refused writes once made every waiting caller ask again at once).

use super::core::Core;
use super::{AccessToken, Job, Settings, TokenError, Want};
use crate::metrics;
use crate::store::{Fence, Lease, SharedStore};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How often an instance waiting on another's refresh looks at the store.
pub(super) const PEER_POLL: Duration = Duration::from_millis(100);

/// A failed lease release is tried again this often, this many times (a minute: longer than any
/// lease lives).
const RELEASE_RETRY_EVERY: Duration = Duration::from_millis(250);
const RELEASE_RETRIES: u32 = 240;

/// The budget's window.
const BUDGET_WINDOW_MS: i64 = 60_000;

/// A credential's budget is never less than this many calls per lifetime of its token, so that
/// short-lived tokens (the sandbox's, of a few seconds) are not cut off: a healthy credential
/// needs one call per lifetime, two when WeChat refuses a token.
const BUDGET_PER_LIFETIME: i64 = 4;

/// The WeChat endpoints that issue credentials; budgets and their metric are per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ComponentToken,
    AuthorizerToken,
    Ticket,
    StableToken,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [Self::ComponentToken, Self::AuthorizerToken, Self::Ticket, Self::StableToken];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ComponentToken => "api_component_token",
            Self::AuthorizerToken => "api_authorizer_token",
            Self::Ticket => "getticket",
            Self::StableToken => "stable_token",
        }
    }
}

/// What a commit did with what WeChat issued.
pub(super) enum Committed {
    /// Stored (as far as the kind needs it stored) and in service.
    InService(Arc<AccessToken>),
    /// The lease passed to another instance before the write: nothing was written.
    LeaseLost,
}

/// One kind of credential, as the refresher sees it. Implemented by small views that borrow the
/// part that holds it and the credential's slot.
#[async_trait]
pub(super) trait Credential: Send + Sync {
    /// What WeChat hands out, before it is stored.
    type Fetched: Send;

    fn endpoint(&self) -> Endpoint;
    /// Names the lease in a shared store (`component`, an appid, `jsapi:APPID`).
    fn lease_name(&self) -> String;
    /// The scheduler's job for this credential.
    fn job(&self) -> Job;
    fn flight(&self) -> &Flight;
    /// What memory holds in service, before `want` is considered; an error when the credential
    /// cannot be refreshed for `want` at all (a revoked authorizer).
    fn current(&self, want: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError>;
    /// Brings memory up to what the shared store holds, if that is newer.
    async fn adopt_stored(&self) -> Result<(), TokenError>;
    /// Asks WeChat, with the kind's own reactions to its errors (61023, 61003, a refused token).
    async fn fetch(&self) -> Result<Self::Fetched, TokenError>;
    /// Stores what WeChat issued under `fence`, then puts it in service.
    async fn commit(&self, fetched: Self::Fetched, fence: Fence<'_>) -> Result<Committed, TokenError>;
    /// Counts and logs a failed attempt, and keeps its error for the admin API.
    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64);
}

/// Per credential: the single-flight turn, the backoff after a failed attempt, the budget.
///
/// The turn is a flag rather than an async mutex (40 bytes, for each of a million authorizers):
/// a caller that finds it taken waits on one of [`TURN_WAKERS`], shared by many credentials,
/// and looks again when any of them is handed back. Turns are rarely contended, and never for
/// long but for a refresh.
#[derive(Default)]
pub(super) struct Flight {
    busy: AtomicBool,
    state: Mutex<FlightState>,
}

/// Wakers for callers waiting on a turn, by the flight's address.
static TURN_WAKERS: [Notify; 64] = [const { Notify::const_new() }; 64];

/// A credential's turn, handed back when dropped.
pub(super) struct Turn<'a>(&'a Flight);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
        self.0.waker().notify_waiters();
    }
}

#[derive(Default)]
struct FlightState {
    /// Boxed: most credentials never fail, and a large fleet holds one of these each.
    failure: Option<Box<Failure>>,
    window_start_ms: i64,
    window_calls: u32,
}

struct Failure {
    attempts: u32,
    retry_at_ms: i64,
    error: TokenError,
}

impl Flight {
    /// Waits for any refresh of this credential under way; whoever gets the turn checks again.
    pub async fn turn(&self) -> Turn<'_> {
        loop {
            // Registered before the flag is tried, so that a hand-back in between is not missed.
            let handed_back = self.waker().notified();
            tokio::pin!(handed_back);
            handed_back.as_mut().enable();
            if self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return Turn(self);
            }
            handed_back.await;
        }
    }

    fn waker(&self) -> &'static Notify {
        &TURN_WAKERS[(self as *const Self as usize / std::mem::align_of::<Self>()) % TURN_WAKERS.len()]
    }

    fn state(&self) -> MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last attempt's error and when the next may be made, while its backoff lasts.
    fn backing_off(&self, now_ms: i64) -> Option<(TokenError, i64)> {
        let state = self.state();
        let failure = state.failure.as_ref().filter(|f| f.retry_at_ms > now_ms)?;
        Some((failure.error.clone(), failure.retry_at_ms))
    }

    /// Records a failed attempt; returns how many in a row and when the next may be made.
    fn fail(&self, error: &TokenError, now_ms: i64, settings: &Settings) -> (u32, i64) {
        let mut state = self.state();
        let attempts = state.failure.as_ref().map_or(0, |f| f.attempts) + 1;
        let wait = super::backoff_ms(attempts, settings.retry_base, settings.retry_max, &mut rand::thread_rng());
        let retry_at_ms = now_ms + wait;
        state.failure = Some(Box::new(Failure { attempts, retry_at_ms, error: error.clone() }));
        (attempts, retry_at_ms)
    }

    /// A success, or a reason to try again at once (a new ticket, a new authorization).
    pub fn clear(&self) {
        self.state().failure = None;
    }

    /// Spends one call of the budget; when it is spent, the first refusal in a window says so.
    fn spend(&self, now_ms: i64, limit: u32, endpoint: Endpoint) -> Result<(), TokenError> {
        let mut state = self.state();
        if now_ms - state.window_start_ms >= BUDGET_WINDOW_MS {
            state.window_start_ms = now_ms;
            state.window_calls = 0;
        }
        if state.window_calls < limit {
            state.window_calls += 1;
            return Ok(());
        }
        let retry_in_secs = (state.window_start_ms + BUDGET_WINDOW_MS - now_ms + 999) / 1000;
        metrics::BUDGET_EXHAUSTED.with_label_values(&[endpoint.as_str()]).inc();
        if state.window_calls == limit {
            state.window_calls += 1;
            tracing::error!(
                endpoint = endpoint.as_str(),
                limit,
                retry_in_secs,
                "the budget of calls to a WeChat token endpoint is spent: refusing further calls this minute (something bypasses the backoff)"
            );
        }
        Err(TokenError::Budget { endpoint: endpoint.as_str(), retry_in_secs })
    }
}

/// The right to refresh one credential, held until [`LeaseGuard::release`]; a guard dropped
/// without it (a caller that went away mid-refresh) releases from a task of its own.
#[must_use = "a lease is released with .release().await"]
pub(super) struct LeaseGuard {
    store: SharedStore,
    lease: Option<Lease>,
}

impl LeaseGuard {
    fn new(store: SharedStore, lease: Lease) -> Self {
        Self { store, lease: Some(lease) }
    }

    /// The fence of writes under this lease.
    pub fn fence(&self) -> Fence<'_> {
        self.lease.as_ref().map_or(Fence::Unfenced, Fence::Lease)
    }

    pub async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            release_logged(&self.store, &lease).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let store = Arc::clone(&self.store);
                runtime.spawn(async move { release_logged(&store, &lease).await });
            }
            Err(_) => {
                metrics::LEASE_RELEASE_FAILURES.inc();
                tracing::warn!(lease = %lease.key, "a refresh lease was dropped outside a runtime; it expires on its own");
            }
        }
    }
}

/// A lease not released makes peers wait up to its lifetime, so a release that fails (the store
/// away for a moment) is tried again from a task of its own until the store takes it or the
/// lease would have expired anyway. Releasing is owner-checked: a late release of a lease that
/// passed to another instance does nothing.
async fn release_logged(store: &SharedStore, lease: &Lease) {
    let Err(e) = store.release(lease).await else { return };
    metrics::LEASE_RELEASE_FAILURES.inc();
    tracing::warn!(lease = %lease.key, error = %e, "could not release a refresh lease; trying again");
    let (store, lease) = (Arc::clone(store), lease.clone());
    tokio::spawn(async move {
        for _ in 0..RELEASE_RETRIES {
            tokio::time::sleep(RELEASE_RETRY_EVERY).await;
            if store.release(&lease).await.is_ok() {
                return;
            }
        }
        tracing::warn!(lease = %lease.key, "a refresh lease stayed unreleased; it expires on its own");
    });
}

impl Core {
    /// Refreshes `c` unless what it holds can stay for `want`: the one way any credential is
    /// obtained from WeChat.
    pub(super) async fn refresh<C: Credential>(&self, c: &C, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        let _turn = c.flight().turn().await;
        if let Some(current) = self.settled(c, want).await? {
            return Ok(current);
        }
        self.check_backoff(c, want)?;
        match self.store.lease(&self.component, &c.lease_name(), self.settings.lease_ttl).await? {
            Some(lease) => self.under_lease(c, want, LeaseGuard::new(Arc::clone(&self.store), lease)).await,
            None => self.await_peer(c, want).await,
        }
    }

    /// What is held, if it can stay: memory first, then (on a shared store) what another
    /// instance stored meanwhile.
    async fn settled<C: Credential>(&self, c: &C, want: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        let job = c.job();
        let keep = |t: &Arc<AccessToken>| self.still_wanted(t, want, self.clock.now_ms(), &job);
        if let Some(current) = c.current(want)?.filter(keep) {
            return Ok(Some(current));
        }
        if !self.store.shared() {
            return Ok(None);
        }
        c.adopt_stored().await?;
        Ok(c.current(want)?.filter(keep))
    }

    /// Whether `current` can stay, given why a refresh was asked for.
    pub(super) fn still_wanted(&self, current: &AccessToken, want: Want<'_>, now: i64, job: &Job) -> bool {
        current.is_valid(now)
            && match want {
                Want::Valid => true,
                Want::Replace(failed) => current.value != *failed,
                // The scheduler took the job off the plan; a plan back on it means someone
                // refreshed meanwhile and planned the next one.
                Want::Planned => self.planned(job).is_some(),
                Want::Now => false,
            }
    }

    /// While a failed attempt's backoff lasts, callers get its error at once; only an operator's
    /// "refresh now" goes ahead (the budget still applies to it).
    fn check_backoff<C: Credential>(&self, c: &C, want: Want<'_>) -> Result<(), TokenError> {
        if matches!(want, Want::Now) {
            return Ok(());
        }
        match c.flight().backing_off(self.clock.now_ms()) {
            None => Ok(()),
            Some((error, retry_at)) => {
                if matches!(want, Want::Planned) && !error.is_terminal() {
                    self.plan(c.job(), retry_at);
                }
                Err(error)
            }
        }
    }

    /// Another instance holds the lease: wait for what it stores, as long as a lease lasts (the
    /// scheduler, an operator) or as a request may wait (`peer_wait`).
    async fn await_peer<C: Credential>(&self, c: &C, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        let patience = match want {
            Want::Planned | Want::Now => self.settings.lease_ttl,
            Want::Valid | Want::Replace(_) => self.settings.peer_wait.min(self.settings.lease_ttl),
        };
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(PEER_POLL.min(deadline - tokio::time::Instant::now())).await;
            if let Some(current) = self.settled(c, want).await? {
                return Ok(current);
            }
        }
        match self.store.lease(&self.component, &c.lease_name(), self.settings.lease_ttl).await? {
            Some(lease) => self.under_lease(c, want, LeaseGuard::new(Arc::clone(&self.store), lease)).await,
            None => {
                // Callers queued behind this one would each wait out their patience too.
                self.record_failure(c, &TokenError::Contended).await;
                Err(TokenError::Contended)
            }
        }
    }

    async fn under_lease<C: Credential>(
        &self,
        c: &C,
        want: Want<'_>,
        lease: LeaseGuard,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let result = self.attempt(c, want, &lease).await;
        lease.release().await;
        result
    }

    async fn attempt<C: Credential>(
        &self,
        c: &C,
        want: Want<'_>,
        lease: &LeaseGuard,
    ) -> Result<Arc<AccessToken>, TokenError> {
        // Another instance may have refreshed, and released its lease, between our last read
        // and taking the lease: read again, or we would refresh with a rotated refresh token.
        if self.store.shared() {
            if let Some(current) = self.settled(c, want).await? {
                return Ok(current);
            }
        }
        let result = match self.spend_budget(c) {
            Ok(()) => self.fetch_and_commit(c, want, lease).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => c.flight().clear(),
            Err(e) => self.record_failure(c, e).await,
        }
        result
    }

    async fn fetch_and_commit<C: Credential>(
        &self,
        c: &C,
        want: Want<'_>,
        lease: &LeaseGuard,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let fetched = c.fetch().await?;
        match c.commit(fetched, lease.fence()).await? {
            Committed::InService(token) => Ok(token),
            Committed::LeaseLost => {
                // The lease ran out and another instance refreshed: what it stored is the latest,
                // if it is what was wanted (not the token WeChat refused). Else this attempt
                // failed, and waits out its backoff like any other.
                tracing::warn!(lease = %c.lease_name(), "lost the refresh lease; using what another instance stored");
                c.adopt_stored().await?;
                let want = if matches!(want, Want::Now) { Want::Valid } else { want };
                let (now, job) = (self.clock.now_ms(), c.job());
                c.current(want)?.filter(|t| self.still_wanted(t, want, now, &job)).ok_or(TokenError::Contended)
            }
        }
    }

    fn spend_budget<C: Credential>(&self, c: &C) -> Result<(), TokenError> {
        let per_lifetime = c
            .current(Want::Now)
            .ok()
            .flatten()
            .filter(|t| t.lifetime_ms > 0)
            .map_or(0, |t| BUDGET_PER_LIFETIME * BUDGET_WINDOW_MS / t.lifetime_ms);
        let limit = (self.settings.budget_per_minute as i64).max(per_lifetime).min(u32::MAX as i64) as u32;
        c.flight().spend(self.clock.now_ms(), limit, c.endpoint())
    }

    /// A failed attempt: the next waits out a backoff, whoever asks.
    async fn record_failure<C: Credential>(&self, c: &C, error: &TokenError) {
        let now = self.clock.now_ms();
        let (attempts, retry_at) = c.flight().fail(error, now, &self.settings);
        c.failed(error, attempts, retry_at - now).await;
        if !error.is_terminal() {
            self.plan(c.job(), retry_at);
        }
    }
}

#[cfg(test)]
mod tests;
