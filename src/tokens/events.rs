//! Acting on the authorization events the store holds: `authorized` and `updateauthorized`
//! exchange their code, `unauthorized` revokes. An event is marked done once acted on, so a
//! crash in between only means it is acted on again, which is harmless.

use super::{Job, TokenError, TokenService};
use crate::store::{unix_now, AuthEvent};
use crate::wechat::ApiErrorKind;
use crate::{xml, AppId};

impl TokenService {
    /// Runs the pending events; plans a retry when one could not be acted on yet.
    pub(super) async fn run_events(&self) {
        match self.process_events().await {
            Ok(()) => *self.lock_event_failures() = 0,
            Err(e) => {
                let failures = {
                    let mut f = self.lock_event_failures();
                    *f += 1;
                    *f
                };
                tracing::warn!(error = %e, failures, "an authorization event could not be acted on yet; retrying");
                self.plan(Job::Events, self.retry_at(failures));
            }
        }
    }

    pub(super) fn lock_event_failures(&self) -> std::sync::MutexGuard<'_, u32> {
        self.event_failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn process_events(&self) -> Result<(), TokenError> {
        let mut retry = None;
        for stored in self.store.pending_events(&self.component).await? {
            match self.apply_event(&stored.event).await {
                Ok(()) => self.store.finish_event(&self.component, stored.id).await?,
                Err(e) => retry = Some(e),
            }
        }
        retry.map_or(Ok(()), Err)
    }

    async fn apply_event(&self, event: &AuthEvent) -> Result<(), TokenError> {
        let Ok(appid) = AppId::parse(&event.authorizer_appid) else {
            // Fast registration, 代认证 and other pushes are kept as WeChat sent them; the
            // token service has nothing to do for them.
            return Ok(());
        };
        match event.info_type.as_str() {
            "authorized" | "updateauthorized" => self.apply_authorized(&appid, event).await,
            "unauthorized" => self.revoke(&appid, event.create_time).await,
            _ => Ok(()),
        }
    }

    async fn apply_authorized(&self, appid: &AppId, event: &AuthEvent) -> Result<(), TokenError> {
        if crate::messages::release_check::is_test_account(appid) {
            // WeChat's release-check accounts authorize every platform; they are not kept.
            tracing::info!(authorizer = %appid, "authorization by a release-check test account ignored");
            return Ok(());
        }
        let fields = xml::parse(event.payload.expose()).unwrap_or_default();
        let Some(code) = fields.get("AuthorizationCode").filter(|c| !c.is_empty()) else {
            tracing::warn!(authorizer = %appid, info_type = %event.info_type, "authorization event without AuthorizationCode");
            return Ok(());
        };
        if self.code_already_used(appid, code) {
            return Ok(());
        }
        match self.authorize_with_code(code).await {
            Ok(_) => Ok(()),
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::AuthCode) => {
                tracing::warn!(authorizer = %appid, error = %e, "authorization code from the push is used or expired");
                Ok(())
            }
            Err(e) => {
                let expires = fields.get("AuthorizationCodeExpiredTime").and_then(|t| t.parse::<i64>().ok());
                if expires.is_some_and(|t| t < unix_now()) {
                    tracing::error!(authorizer = %appid, error = %e, "authorization code expired before it could be exchanged; the owner must authorize again");
                    return Ok(());
                }
                Err(e)
            }
        }
    }
}
