//! Acting on the authorization events the store holds: `authorized` and `updateauthorized`
//! exchange their code, `unauthorized` revokes, `notify_third_fasteregister` with status 0
//! exchanges the new mini program's code. Once acted on, an event is handed to the platform's
//! apps ([`EventHandoff`]) and then marked done, so a crash in between only means it is acted
//! on and handed on again, both harmless (the hand-off is idempotent).
//!
//! One account's events are acted on in the order WeChat sent them: while one cannot be acted
//! on yet, the account's later events wait, so that an app never hears of a revocation before
//! the authorization it undoes.

use super::authorizer::AuthorizerTokens;
use super::core::Core;
use super::grants::Grants;
use super::{Job, TokenError};
use crate::store::{unix_now, AuthEvent, StoreError, StoredEvent};
use crate::wechat::ApiErrorKind;
use crate::{xml, AppId};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Where an event goes once the gateway has acted on it: the platform's apps.
#[async_trait]
pub trait EventHandoff: Send + Sync {
    /// Hands `event` on durably, once however often it is called for the same event; an error
    /// leaves the event pending, to be acted on and handed on again.
    async fn hand_on(&self, event: &StoredEvent) -> Result<(), StoreError>;
}

/// What acting on an event came to.
enum Acted {
    /// Done: the apps may hear of it.
    HandOn,
    /// Nothing an app could use: a release-check test account, or an authorization whose code
    /// can never be exchanged (the account is not held).
    Keep,
}

/// A pending event that could not be acted on yet, for `GET /admin/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFailure {
    pub attempts: u32,
    pub last_error: String,
}

/// A pending event as the admin API shows it: never its payload, which can carry a code.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub id: i64,
    pub info_type: String,
    pub authorizer: Option<AppId>,
    pub create_time: i64,
    pub received_at: i64,
    pub failure: Option<EventFailure>,
}

/// The authorization events: recorded durably, acted on in order, handed on.
pub struct Events {
    core: Arc<Core>,
    authorizers: Arc<AuthorizerTokens>,
    grants: Arc<Grants>,
    /// Where events go once acted on (`crate::events`); none in tests that do not ask.
    handoff: OnceLock<Arc<dyn EventHandoff>>,
    /// Failed runs in a row, for the retry's backoff.
    failures: Mutex<u32>,
    /// Why each pending event is waiting, by its id (this instance's attempts).
    failed: Mutex<HashMap<i64, EventFailure>>,
}

impl Events {
    pub(super) fn new(authorizers: Arc<AuthorizerTokens>, grants: Arc<Grants>) -> Self {
        let core = Arc::clone(&authorizers.core);
        core.plan(Job::Events, core.now_ms());
        Self { core, authorizers, grants, handoff: OnceLock::new(), failures: Mutex::new(0), failed: Mutex::default() }
    }

    /// Records an authorization event durably, once, and has the scheduler act on it.
    pub async fn accept(&self, event: AuthEvent) -> Result<bool, TokenError> {
        let new = self.core.store.record_event(&self.core.component, &event).await?;
        if new {
            self.core.plan(Job::Events, self.core.now_ms());
        }
        Ok(new)
    }

    /// Where events go once acted on; set once, before the scheduler runs.
    pub fn hand_to(&self, handoff: Arc<dyn EventHandoff>) {
        if self.handoff.set(handoff).is_err() {
            tracing::warn!("the events' hand-off was set twice; the first one stays");
        }
    }

    /// Runs the pending events; plans a retry when one could not be acted on yet.
    pub(super) async fn run(&self) {
        let result = self.process().await;
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => *failures = 0,
            Err(e) => {
                *failures += 1;
                tracing::warn!(error = %e, failures = *failures, "an authorization event could not be acted on yet; retrying");
                self.core.plan(Job::Events, self.core.retry_at(*failures));
            }
        }
        self.core.events_backing_off.store(*failures > 0, Ordering::Relaxed);
    }

    fn lock_failed(&self) -> MutexGuard<'_, HashMap<i64, EventFailure>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The events not yet acted on and handed on, oldest first, with why each is waiting.
    pub async fn pending(&self) -> Result<Vec<PendingEvent>, TokenError> {
        let failures = self.lock_failed().clone();
        let pending = self.core.store.pending_events(&self.core.component).await?;
        Ok(pending
            .into_iter()
            .map(|s| PendingEvent {
                id: s.id,
                authorizer: s.event.authorizer,
                info_type: s.event.info_type,
                create_time: s.event.create_time,
                received_at: s.event.received_at,
                failure: failures.get(&s.id).cloned(),
            })
            .collect())
    }

    async fn process(&self) -> Result<(), TokenError> {
        let mut retry = None;
        let mut held_back: HashSet<Option<AppId>> = HashSet::new();
        let pending = self.core.store.pending_events(&self.core.component).await?;
        // Events another instance settled meanwhile are nothing to report any more.
        let ids: HashSet<i64> = pending.iter().map(|s| s.id).collect();
        self.lock_failed().retain(|id, _| ids.contains(id));
        for stored in pending {
            let account = stored.event.authorizer;
            if held_back.contains(&account) {
                continue;
            }
            match self.settle(&stored).await {
                Ok(()) => {
                    self.lock_failed().remove(&stored.id);
                }
                Err(e) => {
                    let mut failed = self.lock_failed();
                    let entry =
                        failed.entry(stored.id).or_insert(EventFailure { attempts: 0, last_error: String::new() });
                    entry.attempts += 1;
                    entry.last_error = e.to_string();
                    drop(failed);
                    held_back.insert(account);
                    retry = Some(e);
                }
            }
        }
        retry.map_or(Ok(()), Err)
    }

    /// Acts on one event, hands it on, marks it done.
    async fn settle(&self, stored: &StoredEvent) -> Result<(), TokenError> {
        if let Acted::HandOn = self.apply(&stored.event).await? {
            if let Some(handoff) = self.handoff.get() {
                handoff.hand_on(stored).await?;
            }
        }
        Ok(self.core.store.finish_event(&self.core.component, stored.id).await?)
    }

    async fn apply(&self, event: &AuthEvent) -> Result<Acted, TokenError> {
        let Some(appid) = event.authorizer else {
            // 代认证, 备案 and other pushes about no one account are handed on as WeChat sent them.
            return Ok(Acted::HandOn);
        };
        match event.info_type.as_str() {
            "authorized" | "updateauthorized" => self.apply_authorized(&appid, event).await,
            "unauthorized" => self.authorizers.revoke(&appid, event.create_time).await.map(|()| Acted::HandOn),
            "notify_third_fasteregister" => self.apply_fast_registration(&appid, event).await,
            _ => Ok(Acted::HandOn),
        }
    }

    async fn apply_authorized(&self, appid: &AppId, event: &AuthEvent) -> Result<Acted, TokenError> {
        if crate::test_accounts::is_test_account(appid) {
            // WeChat's release-check accounts authorize every platform; they are not kept.
            tracing::info!(authorizer = %appid, "authorization by a release-check test account ignored");
            return Ok(Acted::Keep);
        }
        let fields = xml::parse(event.payload.expose()).unwrap_or_default();
        let Some(code) = fields.get("AuthorizationCode").filter(|c| !c.is_empty()) else {
            tracing::warn!(authorizer = %appid, info_type = %event.info_type, "authorization event without AuthorizationCode");
            return Ok(self.held_or_kept(appid));
        };
        if self.grants.already_used(appid, code) {
            return Ok(Acted::HandOn);
        }
        match self.grants.authorize(code).await {
            Ok(_) => Ok(Acted::HandOn),
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::AuthCode) => {
                tracing::warn!(authorizer = %appid, error = %e, "authorization code from the push is used or expired");
                Ok(self.held_or_kept(appid))
            }
            Err(e) => {
                let expires = fields.get("AuthorizationCodeExpiredTime").and_then(|t| t.parse::<i64>().ok());
                if expires.is_some_and(|t| t < unix_now()) {
                    tracing::error!(authorizer = %appid, error = %e, "authorization code expired before it could be exchanged; the owner must authorize again");
                    return Ok(self.held_or_kept(appid));
                }
                Err(e)
            }
        }
    }

    /// A mini program fast-registered through the platform: with status 0 its `auth_code` is
    /// exchanged exactly as an authorization's. A code that fails is retried with backoff (the
    /// event stays pending and is listed by `GET /admin/events`) until the account is held.
    async fn apply_fast_registration(&self, appid: &AppId, event: &AuthEvent) -> Result<Acted, TokenError> {
        let fields = xml::parse(event.payload.expose()).unwrap_or_default();
        if fields.get("status").map(str::trim) != Some("0") {
            return Ok(Acted::HandOn);
        }
        let Some(code) = fields.get("auth_code").filter(|c| !c.is_empty()) else {
            tracing::warn!(authorizer = %appid, "fast registration with status 0 but no auth_code");
            return Ok(Acted::HandOn);
        };
        if self.grants.already_used(appid, code) {
            return Ok(Acted::HandOn);
        }
        match self.grants.authorize(code).await {
            Ok(_) => Ok(Acted::HandOn),
            // Used already: by another instance, whose write this one may not have heard yet.
            Err(TokenError::Wechat(e)) if e.kind() == Some(ApiErrorKind::AuthCode) && self.holds(appid) => {
                Ok(Acted::HandOn)
            }
            Err(e) => {
                tracing::warn!(authorizer = %appid, error = %e, "a fast-registered mini program's code could not be exchanged yet");
                Err(e)
            }
        }
    }

    /// After an authorization whose code could not be exchanged: the apps hear of it only if
    /// the account is held all the same (the redirect, or another instance, exchanged it).
    fn held_or_kept(&self, appid: &AppId) -> Acted {
        if self.holds(appid) {
            Acted::HandOn
        } else {
            Acted::Keep
        }
    }

    fn holds(&self, appid: &AppId) -> bool {
        self.authorizers.is_active(appid)
    }
}
