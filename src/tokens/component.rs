//! The component_access_token: fetched once a ticket is held, refreshed ahead of expiry, and
//! replaced (compare-and-swap) when WeChat refuses it.

use super::{steady_due, AccessToken, Job, TokenError, TokenService, Want};
use crate::metrics;
use crate::store::ComponentToken;
use crate::wechat::{Issued, WechatError};
use std::sync::Arc;

impl TokenService {
    /// A component token that has not expired, fetched first if none is held.
    pub async fn component_token(&self) -> Result<Arc<AccessToken>, TokenError> {
        let now = self.clock.now_ms();
        match self.component_token.current() {
            Some(t) if t.is_valid(now) => Ok(t),
            _ => self.refresh_component(Want::Valid).await,
        }
    }

    /// Replaces `failed`, which WeChat refused, unless another caller already did: however many
    /// requests saw the same error, WeChat is asked once.
    pub async fn replace_component_token(&self, failed: &crate::Secret) -> Result<Arc<AccessToken>, TokenError> {
        self.refresh_component(Want::Replace(failed)).await
    }

    pub(crate) async fn refresh_component(&self, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        let _single_flight = self.component_token.refresh.lock().await;
        if let Some(current) = self.settled_component(want).await? {
            return Ok(current);
        }
        let Some(lease) = self.store.lease(&self.component, "component", self.settings.lease_ttl).await? else {
            return self.await_component_from_peer(want).await;
        };
        let result = self.refresh_component_leased(want, &lease).await;
        let _ = self.store.release(&lease).await;
        result
    }

    /// The token held, if it can stay: memory first, then (on a shared store) what another
    /// instance stored meanwhile.
    async fn settled_component(&self, want: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        let now = self.clock.now_ms();
        if let Some(current) =
            self.component_token.current().filter(|c| self.still_wanted(c, want, now, &Job::ComponentToken))
        {
            return Ok(Some(current));
        }
        if !self.store.shared() {
            return Ok(None);
        }
        let adopted = self.adopt_stored_component().await?;
        Ok(adopted.filter(|c| self.still_wanted(c, want, now, &Job::ComponentToken)))
    }

    /// Another instance holds the lease: wait for the token it stores, as long as a lease lasts.
    async fn await_component_from_peer(&self, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        let deadline = tokio::time::Instant::now() + self.settings.lease_ttl;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(super::coordination::PEER_POLL).await;
            if let Some(current) = self.settled_component(want).await? {
                return Ok(current);
            }
        }
        match self.store.lease(&self.component, "component", self.settings.lease_ttl).await? {
            Some(lease) => {
                let result = self.refresh_component_leased(want, &lease).await;
                let _ = self.store.release(&lease).await;
                result
            }
            None => Err(TokenError::Contended),
        }
    }

    async fn refresh_component_leased(
        &self,
        want: Want<'_>,
        lease: &crate::store::Lease,
    ) -> Result<Arc<AccessToken>, TokenError> {
        // Another instance may have refreshed between our last read and taking the lease.
        if self.store.shared() {
            if let Some(current) = self.settled_component(want).await? {
                return Ok(current);
            }
        }
        let ticket = self.current_ticket().await?.ok_or(TokenError::NoTicket)?;
        match self.api.component_token(&ticket.value).await {
            Ok(issued) => self.commit_component(issued, lease).await,
            Err(e) => {
                self.component_failed(&e);
                Err(e.into())
            }
        }
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

    async fn commit_component(
        &self,
        issued: Issued,
        lease: &crate::store::Lease,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let now = self.clock.now_ms();
        let lifetime_ms = issued.expires_in as i64 * 1000;
        let record = ComponentToken { value: issued.value, expires_at: now + lifetime_ms, obtained_at: now };
        // Unlike a refresh token, a component token lost in a crash costs only a new one, so a
        // store failure does not keep it out of service.
        let result = match self.store.save_component_token_leased(&self.component, &record, lease).await {
            Ok(true) => "ok",
            Ok(false) => {
                // The lease ran out and another instance refreshed: its token is the latest.
                tracing::warn!(
                    "lost the component token lease while refreshing; using the token another instance stored"
                );
                return self.adopt_stored_component().await?.ok_or(TokenError::Contended);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store the new component_access_token");
                "store_error"
            }
        };
        let token = Arc::new(AccessToken { value: record.value, expires_at: record.expires_at, lifetime_ms });
        self.component_token.set(Arc::clone(&token), now);
        metrics::TOKEN_REFRESH.with_label_values(&["component", result]).inc();
        let due = steady_due(now, token.expires_at, self.settings.ahead, &mut rand::thread_rng());
        tracing::info!(
            expires_in = issued.expires_in,
            next_refresh_in_secs = (due - now) / 1000,
            "component_access_token refreshed"
        );
        self.plan(Job::ComponentToken, due);
        if *self.lock_event_failures() > 0 {
            // Events wait for a component token; they need not wait out their backoff too.
            self.plan(Job::Events, now);
        }
        Ok(token)
    }

    fn component_failed(&self, e: &WechatError) {
        let failures = self.component_token.failed(e.to_string());
        metrics::TOKEN_REFRESH.with_label_values(&["component", e.label()]).inc();
        tracing::warn!(error = %e, failures, "component_access_token refresh failed; the current token stays in service until it expires");
        self.plan(Job::ComponentToken, self.retry_at(failures));
    }

    /// A fresh pre_auth_code for an authorization link (single use, ~10 minutes).
    pub async fn pre_auth_code(&self) -> Result<Issued, TokenError> {
        with_component_token!(self, |t| self.api.create_preauthcode(t))
    }
}
