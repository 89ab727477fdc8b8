//! The HTTP client for WeChat's component endpoints (PROTOCOL.md §2): typed answers, typed
//! errors, no caching — caching and retries belong to the token service.

mod custom;
mod error;
mod quota;
mod watch;
mod wxa;

pub use custom::CustomerService;
pub use error::{ApiErrorKind, WechatError};
pub use quota::{Quota, QuotaApi};
pub use wxa::{AuditQuota, AuditStatus, CodeApi, VersionInfo};

use crate::{AppId, Secret};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// A credential WeChat issued, with the lifetime it announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub value: Secret,
    pub expires_in: u64,
}

/// What `api_query_auth` gives for a new authorization.
#[derive(Debug, Clone)]
pub struct Authorization {
    pub authorizer_appid: AppId,
    pub access_token: Issued,
    pub refresh_token: Secret,
    pub func_info: Vec<i64>,
}

/// What `api_authorizer_token` gives: a new access token and the refresh token to use next.
#[derive(Debug, Clone)]
pub struct AuthorizerTokens {
    pub access_token: Issued,
    pub refresh_token: Secret,
}

/// What `api_get_authorizer_info` says of an account (PROTOCOL.md §11), less its pictures.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerInfo {
    pub nick_name: Option<String>,
    /// The `gh_...` id that the account's messages carry as `ToUserName`.
    pub user_name: Option<String>,
    pub principal_name: Option<String>,
    /// `MiniProgramInfo` was present: a mini program rather than an official account.
    pub mini_program: bool,
    /// 1 normal, 14 closed, 16 banned, 18 warned, 19 frozen; `None` when WeChat left it out.
    pub account_status: Option<i64>,
    /// The permission set ids granted to the component.
    pub func_info: Vec<i64>,
    pub refresh_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct ListedAuthorizer {
    pub appid: AppId,
    /// Empty when the authorization code was never exchanged.
    pub refresh_token: Option<Secret>,
    pub auth_time: i64,
}

/// WeChat's component API as the token service uses it; a trait so that the service's logic
/// can be tested with paused time and a scripted WeChat.
#[async_trait]
pub trait ComponentApi: Send + Sync + 'static {
    async fn component_token(&self, ticket: &Secret) -> Result<Issued, WechatError>;
    async fn create_preauthcode(&self, component_token: &Secret) -> Result<Issued, WechatError>;
    async fn query_auth(&self, component_token: &Secret, auth_code: &str) -> Result<Authorization, WechatError>;
    async fn authorizer_token(
        &self,
        component_token: &Secret,
        authorizer: &AppId,
        refresh_token: &Secret,
    ) -> Result<AuthorizerTokens, WechatError>;
    async fn authorizer_info(
        &self,
        component_token: &Secret,
        authorizer: &AppId,
    ) -> Result<AuthorizerInfo, WechatError>;
    async fn authorizer_list(
        &self,
        component_token: &Secret,
        offset: u32,
        count: u32,
    ) -> Result<(u64, Vec<ListedAuthorizer>), WechatError>;
    async fn start_push_ticket(&self) -> Result<(), WechatError>;
    /// A JS-SDK ticket (`jsapi` or `wx_card`) for the authorizer whose token this is; each call
    /// retires the ticket issued before and counts against a small daily limit (PROTOCOL.md §11).
    async fn js_ticket(&self, authorizer_token: &Secret, kind: &'static str) -> Result<Issued, WechatError> {
        let _ = (authorizer_token, kind);
        Err(WechatError::Decode { endpoint: "getticket", reason: "this client does not fetch JS-SDK tickets".into() })
    }
    /// An owned account's token from `stable_token` (PROTOCOL.md §13): in normal mode the token
    /// in force (a new one only in its last minutes); `force` retires it at once.
    async fn stable_token(&self, appid: &AppId, secret: &Secret, force: bool) -> Result<Issued, WechatError> {
        let _ = (appid, secret, force);
        Err(WechatError::Decode { endpoint: "stable_token", reason: "this client does not fetch stable tokens".into() })
    }
}

/// The real client, against `upstream.base_url`.
pub struct WechatClient {
    http: reqwest::Client,
    base_url: url::Url,
    /// The platform's appid (without a platform, the store's namespace: no component call is
    /// made then).
    appid: AppId,
    /// The platform's secret; `None` without a platform.
    appsecret: Option<Secret>,
}

impl WechatClient {
    /// `extra_roots` (`upstream.ca_file`) are trusted besides the built-in roots.
    pub fn new(
        base_url: url::Url,
        timeout: Duration,
        appid: AppId,
        appsecret: Option<Secret>,
        extra_roots: &[pingora::tls::CertificateDer<'static>],
        proxy: Option<&url::Url>,
    ) -> Result<Self, WechatError> {
        let mut builder = reqwest::Client::builder();
        // `upstream.proxy`: CONNECT for HTTPS, absolute form for HTTP, Basic credentials from
        // the URL. Without one, no proxy from the environment either: every call to WeChat
        // leaves the way the config says.
        builder = match proxy {
            Some(url) => {
                builder.proxy(reqwest::Proxy::all(url.clone()).map_err(|e| WechatError::from_reqwest("client", e))?)
            }
            None => builder.no_proxy(),
        };
        for cert in extra_roots {
            let cert = reqwest::Certificate::from_der(cert).map_err(|e| WechatError::from_reqwest("client", e))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("wxgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WechatError::from_reqwest("client", e))?;
        Ok(Self { http, base_url, appid, appsecret })
    }

    /// The platform's secret, for the calls that carry it.
    fn appsecret(&self, endpoint: &'static str) -> Result<&str, WechatError> {
        self.appsecret.as_ref().map(Secret::expose).ok_or(WechatError::NoPlatform { endpoint })
    }

    /// POSTs `body` to a component endpoint and decodes the answer, turning a non-zero
    /// errcode into `WechatError::Api`.
    async fn post<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        token: Option<&Secret>,
        body: Value,
    ) -> Result<T, WechatError> {
        let mut url = self
            .base_url
            .join(&format!("cgi-bin/component/{endpoint}"))
            .map_err(|e| WechatError::Decode { endpoint, reason: e.to_string() })?;
        if let Some(token) = token {
            url.query_pairs_mut().append_pair("component_access_token", token.expose());
        }
        self.post_to(endpoint, url, body).await
    }

    /// POSTs `body` to `url` and decodes the answer (see [`decode`]).
    async fn post_to<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: url::Url,
        body: Value,
    ) -> Result<T, WechatError> {
        let response =
            self.http.post(url).json(&body).send().await.map_err(|e| WechatError::from_reqwest(endpoint, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WechatError::Status { endpoint, status: status.as_u16() });
        }
        let bytes = response.bytes().await.map_err(|e| WechatError::from_reqwest(endpoint, e))?;
        decode(endpoint, &bytes)
    }
}

/// Decodes WeChat's answer. serde's messages can quote a value, so only the field path is kept.
fn decode<T: DeserializeOwned>(endpoint: &'static str, bytes: &[u8]) -> Result<T, WechatError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|_| WechatError::Decode { endpoint, reason: "not JSON".into() })?;
    let errcode = value.get("errcode").and_then(Value::as_i64).unwrap_or(0);
    watch::observe_errcode(endpoint, errcode);
    if errcode != 0 {
        let errmsg = value.get("errmsg").and_then(Value::as_str).unwrap_or_default().chars().take(200).collect();
        return Err(WechatError::Api { endpoint, errcode, errmsg, kind: ApiErrorKind::of(errcode) });
    }
    serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        let reason = if text.starts_with("missing field") { text } else { "a field has an unexpected type".into() };
        WechatError::Decode { endpoint, reason }
    })
}

#[derive(Deserialize)]
struct AccessTokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ComponentTokenAnswer {
    component_access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct TicketAnswer {
    ticket: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct PreAuthCodeAnswer {
    pre_auth_code: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct QueryAuthAnswer {
    authorization_info: AuthorizationInfo,
}

#[derive(Deserialize)]
struct AuthorizationInfo {
    authorizer_appid: String,
    authorizer_access_token: Option<String>,
    expires_in: Option<u64>,
    authorizer_refresh_token: Option<String>,
    #[serde(default)]
    func_info: Vec<Value>,
}

#[derive(Deserialize)]
struct AuthorizerTokenAnswer {
    authorizer_access_token: String,
    expires_in: u64,
    authorizer_refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct AuthorizerInfoAnswer {
    #[serde(default)]
    authorizer_info: Value,
    #[serde(default)]
    authorization_info: Value,
}

#[derive(Deserialize)]
struct AuthorizerListAnswer {
    total_count: u64,
    #[serde(default)]
    list: Vec<AuthorizerListItem>,
}

#[derive(Deserialize)]
struct AuthorizerListItem {
    authorizer_appid: String,
    #[serde(default)]
    refresh_token: String,
    #[serde(default)]
    auth_time: i64,
}

fn appid(endpoint: &'static str, s: &str) -> Result<AppId, WechatError> {
    AppId::parse(s).map_err(|_| WechatError::Decode { endpoint, reason: "authorizer_appid is not an appid".into() })
}

/// The ids of `func_info: [{funcscope_category: {id}}, ...]`.
fn func_ids(func_info: Option<&Value>) -> Vec<i64> {
    let items = func_info.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items.iter().filter_map(|f| f.pointer("/funcscope_category/id").and_then(Value::as_i64)).collect()
}

fn non_empty(s: Option<String>) -> Option<Secret> {
    s.filter(|s| !s.is_empty()).map(Secret::new)
}

#[async_trait]
impl ComponentApi for WechatClient {
    async fn component_token(&self, ticket: &Secret) -> Result<Issued, WechatError> {
        let body = json!({
            "component_appid": self.appid.as_str(),
            "component_appsecret": self.appsecret("api_component_token")?,
            "component_verify_ticket": ticket.expose(),
        });
        let a: ComponentTokenAnswer = self.post("api_component_token", None, body).await?;
        Ok(Issued { value: Secret::new(a.component_access_token), expires_in: a.expires_in })
    }

    async fn create_preauthcode(&self, token: &Secret) -> Result<Issued, WechatError> {
        let body = json!({ "component_appid": self.appid.as_str() });
        let a: PreAuthCodeAnswer = self.post("api_create_preauthcode", Some(token), body).await?;
        Ok(Issued { value: Secret::new(a.pre_auth_code), expires_in: a.expires_in })
    }

    async fn query_auth(&self, token: &Secret, auth_code: &str) -> Result<Authorization, WechatError> {
        const EP: &str = "api_query_auth";
        let body = json!({ "component_appid": self.appid.as_str(), "authorization_code": auth_code });
        let a: QueryAuthAnswer = self.post(EP, Some(token), body).await?;
        let info = a.authorization_info;
        let no_tokens =
            || WechatError::Decode { endpoint: EP, reason: "no tokens: the account granted no API permission".into() };
        let access = non_empty(info.authorizer_access_token).ok_or_else(no_tokens)?;
        let refresh = non_empty(info.authorizer_refresh_token).ok_or_else(no_tokens)?;
        Ok(Authorization {
            authorizer_appid: appid(EP, &info.authorizer_appid)?,
            access_token: Issued { value: access, expires_in: info.expires_in.unwrap_or(0) },
            refresh_token: refresh,
            func_info: func_ids(Some(&Value::Array(info.func_info))),
        })
    }

    async fn authorizer_token(
        &self,
        token: &Secret,
        authorizer: &AppId,
        refresh_token: &Secret,
    ) -> Result<AuthorizerTokens, WechatError> {
        let body = json!({
            "component_appid": self.appid.as_str(),
            "authorizer_appid": authorizer.as_str(),
            "authorizer_refresh_token": refresh_token.expose(),
        });
        let a: AuthorizerTokenAnswer = self.post("api_authorizer_token", Some(token), body).await?;
        Ok(AuthorizerTokens {
            access_token: Issued { value: Secret::new(a.authorizer_access_token), expires_in: a.expires_in },
            // WeChat usually repeats the refresh token; when it leaves it out, the old one stands.
            refresh_token: non_empty(a.authorizer_refresh_token).unwrap_or_else(|| refresh_token.clone()),
        })
    }

    async fn authorizer_info(&self, token: &Secret, authorizer: &AppId) -> Result<AuthorizerInfo, WechatError> {
        let body = json!({ "component_appid": self.appid.as_str(), "authorizer_appid": authorizer.as_str() });
        let a: AuthorizerInfoAnswer = self.post("api_get_authorizer_info", Some(token), body).await?;
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        let info = &a.authorizer_info;
        Ok(AuthorizerInfo {
            nick_name: text(info, "nick_name"),
            user_name: text(info, "user_name"),
            principal_name: text(info, "principal_name"),
            mini_program: info.get("MiniProgramInfo").is_some_and(|m| !m.is_null()),
            account_status: info.get("account_status").and_then(Value::as_i64),
            func_info: func_ids(a.authorization_info.get("func_info")),
            refresh_token: non_empty(text(&a.authorization_info, "authorizer_refresh_token")),
        })
    }

    async fn authorizer_list(
        &self,
        token: &Secret,
        offset: u32,
        count: u32,
    ) -> Result<(u64, Vec<ListedAuthorizer>), WechatError> {
        const EP: &str = "api_get_authorizer_list";
        let body = json!({ "component_appid": self.appid.as_str(), "offset": offset, "count": count.min(500) });
        let a: AuthorizerListAnswer = self.post(EP, Some(token), body).await?;
        let list = a
            .list
            .into_iter()
            .map(|i| {
                Ok(ListedAuthorizer {
                    appid: appid(EP, &i.authorizer_appid)?,
                    refresh_token: non_empty(Some(i.refresh_token)),
                    auth_time: i.auth_time,
                })
            })
            .collect::<Result<_, WechatError>>()?;
        Ok((a.total_count, list))
    }

    async fn start_push_ticket(&self) -> Result<(), WechatError> {
        let secret = self.appsecret("api_start_push_ticket")?;
        let body = json!({ "component_appid": self.appid.as_str(), "component_secret": secret });
        let _: Value = self.post("api_start_push_ticket", None, body).await?;
        Ok(())
    }

    async fn js_ticket(&self, authorizer_token: &Secret, kind: &'static str) -> Result<Issued, WechatError> {
        const EP: &str = "getticket";
        let mut url = self
            .base_url
            .join("cgi-bin/ticket/getticket")
            .map_err(|e| WechatError::Decode { endpoint: EP, reason: e.to_string() })?;
        url.query_pairs_mut().append_pair("access_token", authorizer_token.expose()).append_pair("type", kind);
        let response = self.http.get(url).send().await.map_err(|e| WechatError::from_reqwest(EP, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WechatError::Status { endpoint: EP, status: status.as_u16() });
        }
        let bytes = response.bytes().await.map_err(|e| WechatError::from_reqwest(EP, e))?;
        let a: TicketAnswer = decode(EP, &bytes)?;
        Ok(Issued { value: Secret::new(a.ticket), expires_in: a.expires_in })
    }

    async fn stable_token(&self, appid: &AppId, secret: &Secret, force: bool) -> Result<Issued, WechatError> {
        const EP: &str = "stable_token";
        let url = self
            .base_url
            .join("cgi-bin/stable_token")
            .map_err(|e| WechatError::Decode { endpoint: EP, reason: e.to_string() })?;
        let body = json!({
            "grant_type": "client_credential",
            "appid": appid.as_str(),
            "secret": secret.expose(),
            "force_refresh": force,
        });
        let a: AccessTokenAnswer = self.post_to(EP, url, body).await?;
        Ok(Issued { value: Secret::new(a.access_token), expires_in: a.expires_in })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcodes_become_typed_errors_without_echoing_values() {
        let e = decode::<ComponentTokenAnswer>(
            "api_component_token",
            br#"{"errcode":61006,"errmsg":"component ticket is invalid"}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e.kind(), Some(ApiErrorKind::Ticket));
        assert_eq!(e.label(), "ticket");
        let e = decode::<ComponentTokenAnswer>("x", br#"{"component_access_token": 5, "expires_in": "SECRET-VALUE"}"#)
            .err()
            .unwrap();
        assert!(!e.to_string().contains("SECRET-VALUE"), "{e}");
        let ok = decode::<ComponentTokenAnswer>("x", br#"{"component_access_token":"t","expires_in":7200}"#).unwrap();
        assert_eq!(ok.expires_in, 7200);
        for (code, kind) in [
            (40001, ApiErrorKind::TokenInvalid),
            (42001, ApiErrorKind::TokenInvalid),
            (61023, ApiErrorKind::RefreshTokenInvalid),
            (-1, ApiErrorKind::Busy),
            (45009, ApiErrorKind::Quota),
            (40164, ApiErrorKind::IpNotWhitelisted),
            (12345, ApiErrorKind::Other),
        ] {
            assert_eq!(ApiErrorKind::of(code), kind);
        }
    }
}
