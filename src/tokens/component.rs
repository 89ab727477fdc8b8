//! The component_access_token: fetched once a ticket is held, refreshed ahead of expiry, and
//! replaced (compare-and-swap) when WeChat refuses it; its refreshes go through the refresher.

use super::refresher::{Committed, Credential, Endpoint, Flight};
use super::{steady_due, AccessToken, Job, TokenError, TokenService, Want};
use crate::metrics;
use crate::store::{ComponentToken, Fence};
use crate::wechat::Issued;
use async_trait::async_trait;
use std::sync::Arc;

impl TokenService {
    /// A component token that has not expired, fetched first if none is held.
    pub async fn component_token(&self) -> Result<Arc<AccessToken>, TokenError> {
        let now = self.clock.now_ms();
        match self.component_token.current() {
            Some(t) if t.is_valid(now) => Ok(t),
            // Boxed: a refresh's future is large, and every proxied call holds this one.
            _ => Box::pin(self.refresh_component(Want::Valid)).await,
        }
    }

    /// Replaces `failed`, which WeChat refused, unless another caller already did: however many
    /// requests saw the same error, WeChat is asked once.
    pub async fn replace_component_token(&self, failed: &crate::Secret) -> Result<Arc<AccessToken>, TokenError> {
        self.refresh_component(Want::Replace(failed)).await
    }

    pub(crate) async fn refresh_component(&self, want: Want<'_>) -> Result<Arc<AccessToken>, TokenError> {
        self.refresh(&ComponentCredential(self), want).await
    }

    /// A fresh pre_auth_code for an authorization link (single use, ~10 minutes).
    pub async fn pre_auth_code(&self) -> Result<Issued, TokenError> {
        with_component_token!(self, |t| self.api.create_preauthcode(t))
    }
}

/// The component token as the refresher sees it.
struct ComponentCredential<'a>(&'a TokenService);

#[async_trait]
impl Credential for ComponentCredential<'_> {
    type Fetched = Issued;

    fn endpoint(&self) -> Endpoint {
        Endpoint::ComponentToken
    }

    fn lease_name(&self) -> String {
        "component".into()
    }

    fn job(&self) -> Job {
        Job::ComponentToken
    }

    fn flight(&self) -> &Flight {
        &self.0.component_token.flight
    }

    fn current(&self, _: Want<'_>) -> Result<Option<Arc<AccessToken>>, TokenError> {
        Ok(self.0.component_token.current())
    }

    async fn adopt_stored(&self) -> Result<(), TokenError> {
        self.0.adopt_stored_component().await.map(drop)
    }

    async fn fetch(&self) -> Result<Issued, TokenError> {
        let ticket = self.0.current_ticket().await?.ok_or(TokenError::NoTicket)?;
        Ok(self.0.api.component_token(&ticket.value).await?)
    }

    async fn commit(&self, issued: Issued, fence: Fence<'_>) -> Result<Committed, TokenError> {
        let service = self.0;
        let now = service.clock.now_ms();
        let lifetime_ms = issued.expires_in as i64 * 1000;
        let record = ComponentToken { value: issued.value, expires_at: now + lifetime_ms, obtained_at: now };
        // Unlike a refresh token, a component token lost in a crash costs only a new one, so a
        // store failure does not keep it out of service.
        let result = match service.store.save_component_token_leased(&service.component, &record, fence).await {
            Ok(true) => "ok",
            Ok(false) => return Ok(Committed::LeaseLost),
            Err(e) => {
                tracing::error!(error = %e, "could not store the new component_access_token");
                "store_error"
            }
        };
        let token = Arc::new(AccessToken { value: record.value, expires_at: record.expires_at, lifetime_ms });
        service.component_token.set(Arc::clone(&token), now);
        metrics::TOKEN_REFRESH.with_label_values(&["component", result]).inc();
        let due = steady_due(now, token.expires_at, service.settings.ahead, &mut rand::thread_rng());
        tracing::info!(
            expires_in = issued.expires_in,
            next_refresh_in_secs = (due - now) / 1000,
            "component_access_token refreshed"
        );
        service.plan(Job::ComponentToken, due);
        if *service.lock_event_failures() > 0 {
            // Events wait for a component token; they need not wait out their backoff too.
            service.plan(Job::Events, now);
        }
        Ok(Committed::InService(token))
    }

    async fn failed(&self, error: &TokenError, attempts: u32, retry_in_ms: i64) {
        self.0.component_token.failed(error.to_string());
        metrics::TOKEN_REFRESH.with_label_values(&["component", error.label()]).inc();
        tracing::warn!(
            error = %error,
            failures = attempts,
            retry_in_ms,
            "component_access_token refresh failed; the current token stays in service until it expires"
        );
    }
}
