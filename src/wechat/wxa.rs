//! Code management of an authorized mini program (PROTOCOL.md §12), as release jobs use it:
//! every call with the account's access token, the one way to WeChat.

use super::{decode, WechatClient, WechatError};
use crate::Secret;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

/// `get_latest_auditstatus`: the account's latest audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditStatus {
    pub auditid: Option<i64>,
    /// 0 approved, 1 rejected, 2 auditing, 3 withdrawn, 4 delayed.
    pub status: i64,
    pub reason: Option<String>,
    pub user_version: Option<String>,
}

/// `getversioninfo`: the versions on the account's trial and release lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionInfo {
    /// The last committed (experience) version.
    pub exp_version: Option<String>,
    pub release_version: Option<String>,
}

/// The platform's monthly audit quota (`queryquota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuota {
    pub rest: u64,
    pub limit: u64,
}

#[async_trait]
pub trait CodeApi: Send + Sync + 'static {
    async fn commit(&self, token: &Secret, body: Value) -> Result<(), WechatError>;
    async fn submit_audit(&self, token: &Secret, body: Value) -> Result<i64, WechatError>;
    async fn audit_status(&self, token: &Secret) -> Result<AuditStatus, WechatError>;
    async fn release(&self, token: &Secret) -> Result<(), WechatError>;
    async fn audit_quota(&self, token: &Secret) -> Result<AuditQuota, WechatError>;
    async fn version_info(&self, token: &Secret) -> Result<VersionInfo, WechatError>;
}

#[derive(Deserialize)]
struct SubmitAnswer {
    auditid: i64,
}

#[derive(Deserialize)]
struct StatusAnswer {
    auditid: Option<i64>,
    status: i64,
    reason: Option<String>,
    user_version: Option<String>,
}

#[derive(Deserialize)]
struct QuotaAnswer {
    rest: u64,
    limit: u64,
}

#[derive(Deserialize, Default)]
struct VersionAnswer {
    exp_info: Option<Line>,
    release_info: Option<Line>,
}

#[derive(Deserialize, Default)]
struct Line {
    exp_version: Option<String>,
    release_version: Option<String>,
}

impl WechatClient {
    async fn get_path(&self, endpoint: &'static str, path: &str, token: &Secret) -> Result<Value, WechatError> {
        let mut url = self.base_url.join(path).map_err(|e| WechatError::Decode { endpoint, reason: e.to_string() })?;
        url.query_pairs_mut().append_pair("access_token", token.expose());
        let response = self.http.get(url).send().await.map_err(|e| WechatError::from_reqwest(endpoint, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WechatError::Status { endpoint, status: status.as_u16() });
        }
        let bytes = response.bytes().await.map_err(|e| WechatError::from_reqwest(endpoint, e))?;
        decode(endpoint, &bytes)
    }
}

fn typed<T: serde::de::DeserializeOwned>(endpoint: &'static str, value: Value) -> Result<T, WechatError> {
    serde_json::from_value(value)
        .map_err(|_| WechatError::Decode { endpoint, reason: "a field has an unexpected type".into() })
}

#[async_trait]
impl CodeApi for WechatClient {
    async fn commit(&self, token: &Secret, body: Value) -> Result<(), WechatError> {
        self.post_path("wxa/commit", "wxa/commit", Some(token), body).await.map(drop)
    }

    async fn submit_audit(&self, token: &Secret, body: Value) -> Result<i64, WechatError> {
        const EP: &str = "wxa/submit_audit";
        let answer = self.post_path(EP, "wxa/submit_audit", Some(token), body).await?;
        Ok(typed::<SubmitAnswer>(EP, answer)?.auditid)
    }

    async fn audit_status(&self, token: &Secret) -> Result<AuditStatus, WechatError> {
        const EP: &str = "wxa/get_latest_auditstatus";
        let a: StatusAnswer = typed(EP, self.get_path(EP, "wxa/get_latest_auditstatus", token).await?)?;
        Ok(AuditStatus { auditid: a.auditid, status: a.status, reason: a.reason, user_version: a.user_version })
    }

    async fn release(&self, token: &Secret) -> Result<(), WechatError> {
        // Exactly `{}`: WeChat refuses an empty body.
        self.post_path("wxa/release", "wxa/release", Some(token), json!({})).await.map(drop)
    }

    async fn audit_quota(&self, token: &Secret) -> Result<AuditQuota, WechatError> {
        const EP: &str = "wxa/queryquota";
        let a: QuotaAnswer = typed(EP, self.get_path(EP, "wxa/queryquota", token).await?)?;
        Ok(AuditQuota { rest: a.rest, limit: a.limit })
    }

    async fn version_info(&self, token: &Secret) -> Result<VersionInfo, WechatError> {
        const EP: &str = "wxa/getversioninfo";
        let a: VersionAnswer = typed(EP, self.post_path(EP, "wxa/getversioninfo", Some(token), json!({})).await?)?;
        Ok(VersionInfo {
            exp_version: a.exp_info.and_then(|l| l.exp_version),
            release_version: a.release_info.and_then(|l| l.release_version),
        })
    }
}
