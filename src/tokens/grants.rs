//! How an authorizer comes to be held: an authorization code exchanged (from the redirect, the
//! `authorized` push or a fast registration) or a refresh token imported from another system.
//! Exchanges run one at a time and remember their codes, so that the redirect and the push,
//! which bring the same single-use code, exchange it once.

use super::authorizer::AuthorizerTokens;
use super::{AuthorizerStatus, Job, TokenError};
use crate::wechat::{Authorization, AuthorizerTokens as Issued};
use crate::{AppId, Secret};
use sha1::{Digest, Sha1};
use std::sync::Arc;
use std::time::Duration;

pub struct Grants {
    authorizers: Arc<AuthorizerTokens>,
    /// Codes exchanged lately (SHA-1 → appid): the redirect and the push bring the same code.
    used_codes: moka::sync::Cache<String, AppId>,
    /// The second of two exchanges of one code must find the first's answer, not a 61009.
    turn: tokio::sync::Mutex<()>,
}

impl Grants {
    pub(super) fn new(authorizers: Arc<AuthorizerTokens>) -> Self {
        Self {
            authorizers,
            used_codes: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Exchanges an authorization code and stores the authorizer. The same code twice is
    /// harmless: the second returns the first's answer.
    pub async fn authorize(&self, code: &str) -> Result<AppId, TokenError> {
        let hash = hex::encode(Sha1::digest(code.as_bytes()));
        let _one_at_a_time = self.turn.lock().await;
        if let Some(appid) = self.used_codes.get(&hash) {
            return Ok(appid);
        }
        let auth = self.exchange(code).await?;
        let appid = auth.authorizer_appid;
        let part = &self.authorizers;
        let slot = part.slot_or_new(&appid);
        let _single_flight = slot.flight.turn().await;
        let mut mem = slot.mem();
        mem.authorized_at = part.core.now_ms();
        mem.auth_code_sha1 = Some(Sha1::digest(code.as_bytes()).into());
        let tokens = Issued { access_token: auth.access_token, refresh_token: auth.refresh_token };
        part.install(Arc::clone(&slot), mem, tokens).await?;
        self.used_codes.insert(hash, appid);
        part.core.plan(Job::Info(appid), part.core.now_ms());
        tracing::info!(authorizer = %appid, "authorizer authorized");
        Ok(appid)
    }

    /// api_query_auth, keeping nothing: WeChat's release-check test accounts send a code that
    /// must be used once, by the gateway, and never become authorizers.
    pub async fn exchange(&self, code: &str) -> Result<Authorization, TokenError> {
        let part = &self.authorizers;
        with_component_token!(part.component, |t| part.core.api.query_auth(t, code))
    }

    /// Whether `code` is the one last exchanged for `appid` (a push that follows the redirect).
    pub(super) fn already_used(&self, appid: &AppId, code: &str) -> bool {
        let digest: [u8; 20] = Sha1::digest(code.as_bytes()).into();
        self.used_codes.contains_key(&hex::encode(digest))
            || self.authorizers.slots.get(appid).is_some_and(|s| s.mem().auth_code_sha1 == Some(digest))
    }

    /// Imports an authorizer from another system by its refresh token. The token is tried first:
    /// one WeChat refuses is not stored.
    pub async fn import(&self, appid: &AppId, refresh_token: Secret) -> Result<AuthorizerStatus, TokenError> {
        let _one_at_a_time = self.turn.lock().await;
        let part = &self.authorizers;
        let tokens = part.call_wechat(appid, &refresh_token).await?;
        let slot = part.slot_or_new(appid);
        let _single_flight = slot.flight.turn().await;
        let mut mem = slot.mem();
        mem.authorized_at = part.core.now_ms();
        part.install(Arc::clone(&slot), mem, tokens).await?;
        part.core.plan(Job::Info(*appid), part.core.now_ms());
        part.status(appid).ok_or(TokenError::UnknownAuthorizer)
    }
}
