//! WeChat's API quotas (PROTOCOL.md §2.10, §11): how much of an API's daily limit is used, and
//! the monthly resets (`clear_quota` with a token, `clear_quota/v2` with the appsecret).

use super::{WechatClient, WechatError};
use crate::{AppId, Secret};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `openapi/quota/get`'s answer for one API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub daily_limit: i64,
    pub used: i64,
    pub remain: i64,
}

#[async_trait]
pub trait QuotaApi: Send + Sync + 'static {
    /// `POST /cgi-bin/openapi/quota/get?access_token=` `{cgi_path}`, with the token of the
    /// account whose quota it is.
    async fn quota(&self, access_token: &Secret, cgi_path: &str) -> Result<Quota, WechatError>;

    /// `POST /cgi-bin/clear_quota?access_token=` `{appid}`: resets every API quota of `appid`
    /// (one of 10 resets a month); `access_token` is that account's own.
    async fn clear_quota(&self, access_token: &Secret, appid: &AppId) -> Result<(), WechatError>;

    /// `POST /cgi-bin/component/clear_quota/v2` `{component_appid, appsecret[, appid]}`: needs no
    /// token, so it works when the token endpoints themselves are over quota. Without `appid`
    /// it resets the component's own quota.
    async fn clear_quota_v2(&self, appid: Option<&AppId>) -> Result<(), WechatError>;
}

#[derive(Deserialize)]
struct QuotaAnswer {
    quota: Quota,
}

impl WechatClient {
    /// POSTs `body` to `path` (under `base_url`), with the token as `access_token`.
    pub(super) async fn post_path(
        &self,
        endpoint: &'static str,
        path: &str,
        token: Option<&Secret>,
        body: Value,
    ) -> Result<Value, WechatError> {
        let mut url = self.base_url.join(path).map_err(|e| WechatError::Decode { endpoint, reason: e.to_string() })?;
        if let Some(token) = token {
            url.query_pairs_mut().append_pair("access_token", token.expose());
        }
        self.post_to(endpoint, url, body).await
    }
}

#[async_trait]
impl QuotaApi for WechatClient {
    async fn quota(&self, access_token: &Secret, cgi_path: &str) -> Result<Quota, WechatError> {
        let answer = self.post_path(
            "openapi/quota/get",
            "cgi-bin/openapi/quota/get",
            Some(access_token),
            json!({ "cgi_path": cgi_path }),
        );
        let value = answer.await?;
        serde_json::from_value::<QuotaAnswer>(value).map(|a| a.quota).map_err(|_| WechatError::Decode {
            endpoint: "openapi/quota/get",
            reason: "no quota {daily_limit, used, remain} in the answer".into(),
        })
    }

    async fn clear_quota(&self, access_token: &Secret, appid: &AppId) -> Result<(), WechatError> {
        let body = json!({ "appid": appid.as_str() });
        self.post_path("clear_quota", "cgi-bin/clear_quota", Some(access_token), body).await.map(drop)
    }

    async fn clear_quota_v2(&self, appid: Option<&AppId>) -> Result<(), WechatError> {
        let mut body =
            json!({ "component_appid": self.appid.as_str(), "appsecret": self.appsecret("clear_quota_v2")? });
        if let Some(appid) = appid {
            body["appid"] = json!(appid.as_str());
        }
        self.post_path("clear_quota/v2", "cgi-bin/component/clear_quota/v2", None, body).await.map(drop)
    }
}
