//! Reconciliation with WeChat's own list of authorizations (`api_get_authorizer_list`), for
//! pushes the gateway missed: an account WeChat lists that the gateway lacks is imported with
//! its refresh token (tried first, as an import is); one the gateway holds that WeChat no longer
//! lists is revoked once WeChat confirms it (61003); nothing else is touched.
//!
//! A refresh token from the list is written only through an import, which stores what WeChat
//! answers to that token — never over an account the gateway holds active, whose refresh token
//! may be newer than the list's.

use super::authorizer::AuthorizerTokens;
use super::core::Core;
use super::grants::Grants;
use super::{Job, TokenError};
use crate::metrics;
use crate::store::{unix_now, AuthorizerState};
use crate::wechat::{ApiErrorKind, ListedAuthorizer};
use crate::{AppId, Secret};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// api_get_authorizer_list gives at most 500 a page.
const PAGE: u32 = 500;
/// How long one instance may hold the right to reconcile (shared stores).
const LEASE_TTL: Duration = Duration::from_secs(600);

/// What a reconciliation did, as `POST /admin/reconcile` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Accounts WeChat lists.
    pub listed: u64,
    /// Listed accounts the gateway lacked (or held revoked, or with a dead refresh token) and
    /// now holds.
    pub imported: u64,
    /// Accounts the gateway held that WeChat no longer lists.
    pub revoked: u64,
    /// Listed accounts the gateway already held active: left as they are.
    pub unchanged: u64,
    /// Listed accounts that could not be imported (no refresh token WeChat accepts): the owner
    /// must authorize again.
    pub failed: u64,
}

/// Reconciles the authorizers held with WeChat's list, daily and when an operator asks.
pub struct Reconciler {
    core: Arc<Core>,
    authorizers: Arc<AuthorizerTokens>,
    grants: Arc<Grants>,
    /// Reconciliations that failed in a row, for the retry's backoff.
    failures: AtomicU32,
}

impl Reconciler {
    pub(super) fn new(authorizers: Arc<AuthorizerTokens>, grants: Arc<Grants>) -> Self {
        let core = Arc::clone(&authorizers.core);
        if core.platform && core.settings.reconcile_every.is_some() {
            core.plan(Job::Reconcile, core.now_ms());
        }
        Self { core, authorizers, grants, failures: AtomicU32::new(0) }
    }

    /// Walks WeChat's list once, under a lease on shared stores (`Contended` while another
    /// instance reconciles).
    pub async fn reconcile(&self) -> Result<Reconciled, TokenError> {
        let Some(lease) = self.core.store.lease(&self.core.component, "reconcile", LEASE_TTL).await? else {
            metrics::RECONCILE.with_label_values(&["busy"]).inc();
            return Err(TokenError::Contended);
        };
        let result = self.reconcile_leased().await;
        if let Err(e) = self.core.store.release(&lease).await {
            tracing::warn!(error = %e, "could not release the reconciliation lease; it expires by itself");
        }
        metrics::RECONCILE.with_label_values(&[if result.is_ok() { "ok" } else { "error" }]).inc();
        match &result {
            Ok(r) => tracing::info!(
                listed = r.listed,
                imported = r.imported,
                revoked = r.revoked,
                unchanged = r.unchanged,
                failed = r.failed,
                "reconciled with api_get_authorizer_list"
            ),
            Err(e) => tracing::warn!(error = %e, "reconciliation with api_get_authorizer_list failed"),
        }
        result
    }

    async fn reconcile_leased(&self) -> Result<Reconciled, TokenError> {
        let started_secs = unix_now();
        let listed = self.walk_list().await?;
        let mut done = Reconciled { listed: listed.len() as u64, ..Reconciled::default() };
        for (appid, refresh_token) in &listed {
            match self.import_listed(appid, refresh_token.as_ref()).await {
                Listed::Unchanged => done.unchanged += 1,
                Listed::Imported => done.imported += 1,
                Listed::Failed => done.failed += 1,
            }
        }
        let held: Vec<AppId> =
            self.authorizers.slots.appids().into_iter().filter(|a| !listed.contains_key(a)).collect();
        for appid in held {
            if self.revoke_unlisted(&appid, started_secs).await? {
                done.revoked += 1;
            }
        }
        self.authorizers.update_gauges();
        Ok(done)
    }

    /// Every page of the list; an error on any page fails the whole walk, so that an account
    /// is never revoked for a page that was not read.
    async fn walk_list(&self) -> Result<HashMap<AppId, Option<Secret>>, TokenError> {
        let mut listed = HashMap::new();
        let mut offset = 0u32;
        loop {
            let (total, page) =
                with_component_token!(self.authorizers.component, |t| self.core.api.authorizer_list(t, offset, PAGE))?;
            let got = page.len() as u32;
            for ListedAuthorizer { appid, refresh_token, .. } in page {
                listed.insert(appid, refresh_token);
            }
            offset = offset.saturating_add(got);
            if got == 0 || u64::from(offset) >= total {
                return Ok(listed);
            }
        }
    }

    /// Imports a listed account unless the gateway holds it active (after catching up with a
    /// shared store: another instance may have authorized it meanwhile).
    async fn import_listed(&self, appid: &AppId, listed: Option<&Secret>) -> Listed {
        if self.core.store.shared() {
            if let Err(e) = self.authorizers.reload(appid).await {
                tracing::warn!(authorizer = %appid, error = %e, "could not re-read the authorizer before reconciling it");
                return Listed::Failed;
            }
        }
        let held = self.authorizers.slots.get(appid).map(|s| s.mem());
        let dead_refresh = match &held {
            Some(mem) if mem.state == AuthorizerState::Active => return Listed::Unchanged,
            Some(mem) => mem.refresh_token.clone(),
            None => None,
        };
        // The list's token first; when it is missing (a code never exchanged) or is the one that
        // already failed here, api_get_authorizer_info may know the current one.
        let mut candidates: Vec<Secret> =
            listed.filter(|t| Some(*t) != dead_refresh.as_ref()).cloned().into_iter().collect();
        if candidates.is_empty() {
            match with_component_token!(self.authorizers.component, |t| self.core.api.authorizer_info(t, appid)) {
                Ok(info) => candidates.extend(info.refresh_token.filter(|t| Some(t) != dead_refresh.as_ref())),
                Err(e) => tracing::warn!(authorizer = %appid, error = %e, "api_get_authorizer_info failed"),
            }
        }
        for token in candidates {
            match self.grants.import(appid, token).await {
                Ok(_) => {
                    tracing::info!(authorizer = %appid, "imported an authorizer WeChat lists and the gateway lacked");
                    return Listed::Imported;
                }
                Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::RefreshTokenInvalid) => {
                    // Stale in the list (rotated since): WeChat's info has the current one.
                    if let Ok(info) =
                        with_component_token!(self.authorizers.component, |t| self.core.api.authorizer_info(t, appid))
                    {
                        if let Some(current) = info.refresh_token.filter(|t| Some(t) != dead_refresh.as_ref()) {
                            if self.grants.import(appid, current).await.is_ok() {
                                return Listed::Imported;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(authorizer = %appid, error = %e, "could not import a listed authorizer"),
            }
        }
        tracing::warn!(authorizer = %appid, "WeChat lists the account but gives no refresh token that works: its owner must authorize again");
        Listed::Failed
    }

    /// Revokes an account WeChat does not list, once WeChat confirms it is not authorized
    /// (61003): a list read a page at a time can miss an account that moved between pages.
    async fn revoke_unlisted(&self, appid: &AppId, started_secs: i64) -> Result<bool, TokenError> {
        let Some(slot) = self.authorizers.slots.get(appid) else { return Ok(false) };
        if slot.state() == AuthorizerState::Revoked {
            return Ok(false);
        }
        match with_component_token!(self.authorizers.component, |t| self.core.api.authorizer_info(t, appid)) {
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::NotAuthorized) => {}
            Ok(_) => return Ok(false),
            Err(e) => {
                tracing::warn!(authorizer = %appid, error = %e, "cannot confirm that an unlisted account was unauthorized; kept");
                return Ok(false);
            }
        }
        self.authorizers.revoke(appid, started_secs).await?;
        let revoked = self.authorizers.slots.get(appid).is_some_and(|s| s.state() == AuthorizerState::Revoked);
        if revoked {
            tracing::info!(authorizer = %appid, "WeChat no longer lists the account: marked revoked");
        }
        Ok(revoked)
    }

    /// The scheduler's reconciliation: again after `reconcile_every`, sooner after a failure.
    pub(super) async fn run(&self) {
        let Some(every) = self.core.settings.reconcile_every else { return };
        let later = self.core.now_ms() + every.as_millis() as i64;
        let next = match self.reconcile().await {
            Ok(_) | Err(TokenError::Contended) => {
                self.failures.store(0, Ordering::Relaxed);
                later
            }
            Err(_) => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                self.core.retry_at(n).min(later)
            }
        };
        self.core.plan(Job::Reconcile, next);
    }
}

enum Listed {
    Unchanged,
    Imported,
    Failed,
}
