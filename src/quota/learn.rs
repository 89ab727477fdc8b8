//! Where an (account, API)'s daily limit comes from: WeChat's `openapi/quota/get`.

use super::Account;
use crate::tokens::TokenService;
use crate::wechat::QuotaApi;
use std::sync::Arc;

/// Learns an (account, API)'s daily limit.
#[async_trait::async_trait]
pub trait DailyLimits: Send + Sync {
    /// `openapi/quota/get`'s `daily_limit` for the pair, with the account's token; `None` when
    /// WeChat will not say.
    async fn daily_limit(&self, account: Account, api: &str) -> Option<u64>;
}

/// [`DailyLimits`] from WeChat, with the token service's tokens.
pub struct FromWechat {
    pub tokens: Arc<TokenService>,
    pub wechat: Arc<dyn QuotaApi>,
}

#[async_trait::async_trait]
impl DailyLimits for FromWechat {
    async fn daily_limit(&self, account: Account, api: &str) -> Option<u64> {
        let token = match account {
            Account::Authorizer(appid) => self.tokens.authorizers().token(&appid).await,
            Account::Component => self.tokens.component().token().await,
        };
        let token = token.map_err(|e| tracing::debug!(error = %e, "no token to ask a daily limit with")).ok()?;
        match self.wechat.quota(&token.value, api).await {
            Ok(quota) => u64::try_from(quota.daily_limit).ok(),
            Err(e) => {
                tracing::info!(account = %account.label(), api, error = %e, "WeChat would not give this API's daily limit; no share applies to it today");
                None
            }
        }
    }
}
