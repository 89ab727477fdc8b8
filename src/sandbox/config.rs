//! The sandbox's settings, its demo credentials, and the faults it can be told to inject.

use std::time::Duration;

use serde::Deserialize;

use crate::appid::AppId;
use crate::secret::Secret;

/// The component appid of [`SandboxConfig::demo`].
pub const DEMO_COMPONENT_APPID: &str = "wx0000000000000001";
/// The account the consent page authorizes when none is named.
pub const DEMO_AUTHORIZER_APPID: &str = "wx1111111111111111";
/// The directly-owned account of [`SandboxConfig::demo`] (its credentials: [`OwnedAccount::demo`]).
pub const DEMO_OWNED_APPID: &str = "wx5555555555555555";
const DEMO_APPSECRET: &str = "0123456789abcdef0123456789abcdef";
const DEMO_TOKEN: &str = "wxgatedemotoken";
const DEMO_AES_KEY: &str = "wxgateDemoEncodingAesKey0123456789abcdefghi";
const DEMO_OWNED_SECRET: &str = "5555555555555555aaaaaaaaaaaaaaaa";
const DEMO_OWNED_TOKEN: &str = "wxgatedemoowntoken";
const DEMO_OWNED_AES_KEY: &str = "wxgateDemoOwnAccountAesKey0123456789abcdefg";

/// Who the sandbox's one component is, where it pushes, and how fast its credentials age.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub component_appid: AppId,
    pub component_appsecret: Secret,
    pub token: Secret,
    pub encoding_aes_key: Secret,
    /// The gateway's `http://.../wxgate/callback/component`; tickets and events are pushed here.
    pub callback_url: Option<String>,
    /// A ticket is pushed at start and then every interval (WeChat: 10 minutes).
    pub ticket_interval: Duration,
    /// `expires_in` of component and authorizer access tokens (WeChat: 7200 s).
    pub token_lifetime: Duration,
    /// How long a superseded access token keeps working (WeChat: about 5 minutes).
    pub grace: Duration,
    /// Each `api_authorizer_token` returns a new refresh token and the old one fails at once (61023).
    /// Stricter than WeChat usually is, so that a gateway that drops a rotated token is caught.
    pub rotate_refresh_tokens: bool,
    /// Every API's daily limit per caller: past it, 45009 until a clear-quota (WeChat: varies).
    pub daily_limit: u64,
    /// Accounts the company owns directly (appid and AppSecret), served by `stable_token`.
    pub accounts: Vec<OwnedAccount>,
    /// How close together two `force_refresh` calls of one account may come (WeChat: 30 s).
    pub force_refresh_min_interval: Duration,
    /// `force_refresh` calls an account may make in 24 hours (WeChat: 20).
    pub force_refresh_per_day: u32,
    /// Code templates that exist (`wxa/gettemplatelist`, `wxa/commit`'s `template_id`).
    pub templates: Vec<i64>,
    /// How long after a commit `wxa/submit_audit` answers 61039: WeChat checks the code first.
    pub code_check_delay: Duration,
    /// How long an audit takes (WeChat: hours to days); a delayed audit takes it twice.
    pub audit_delay: Duration,
    /// The platform's monthly audit quota (`wxa/queryquota`'s `limit`; WeChat: 20 to 249).
    pub audit_quota: u32,
    /// Audits the platform may submit in 7 days, all accounts together; None: no such limit.
    pub submits_per_week: Option<u32>,
    /// 0..1: the share of accounts whose audits are rejected, chosen by a hash of the appid so
    /// that a test can tell which ([`SandboxConfig::audit_plan`]).
    pub reject_share: f64,
    /// 0..1: the share of accounts whose audits are first postponed (`weapp_audit_delay`).
    pub delay_share: f64,
}

/// A directly-owned account: its AppSecret, and the token and key of its own message server
/// (服务器配置), with which the sandbox signs and seals what it pushes there.
#[derive(Debug, Clone)]
pub struct OwnedAccount {
    pub appid: AppId,
    pub secret: Secret,
    pub token: Secret,
    /// 43 characters, as WeChat's console shows it.
    pub encoding_aes_key: Secret,
}

impl OwnedAccount {
    /// Fixed demo credentials for [`DEMO_OWNED_APPID`].
    pub fn demo() -> Self {
        Self {
            appid: AppId::parse(DEMO_OWNED_APPID).expect("valid demo appid"),
            secret: Secret::new(DEMO_OWNED_SECRET),
            token: Secret::new(DEMO_OWNED_TOKEN),
            encoding_aes_key: Secret::new(DEMO_OWNED_AES_KEY),
        }
    }
}

impl SandboxConfig {
    /// Fixed demo credentials, the same ones `wxgate demo` configures the gateway with.
    pub fn demo() -> Self {
        Self {
            component_appid: AppId::parse(DEMO_COMPONENT_APPID).expect("valid demo appid"),
            component_appsecret: Secret::new(DEMO_APPSECRET),
            token: Secret::new(DEMO_TOKEN),
            encoding_aes_key: Secret::new(DEMO_AES_KEY),
            callback_url: None,
            ticket_interval: Duration::from_secs(600),
            token_lifetime: Duration::from_secs(7200),
            grace: Duration::from_secs(300),
            rotate_refresh_tokens: true,
            daily_limit: super::quota::DAILY_LIMIT,
            accounts: vec![OwnedAccount::demo()],
            force_refresh_min_interval: Duration::from_secs(30),
            force_refresh_per_day: 20,
            templates: vec![1, 42],
            code_check_delay: Duration::from_secs(2),
            audit_delay: Duration::from_secs(5),
            audit_quota: 100,
            submits_per_week: None,
            reject_share: 0.25,
            delay_share: 0.25,
        }
    }

    /// Code review for tests: no code check to wait out, verdicts after 100 ms, none rejected
    /// or postponed unless a test asks.
    pub fn quick_audits(self) -> Self {
        Self {
            code_check_delay: Duration::ZERO,
            audit_delay: Duration::from_millis(100),
            reject_share: 0.0,
            delay_share: 0.0,
            ..self
        }
    }

    /// The settings a sandbox cannot start with, each named.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, share) in [("reject_share", self.reject_share), ("delay_share", self.delay_share)] {
            if !(0.0..=1.0).contains(&share) {
                problems.push(format!("{name} must be between 0 and 1"));
            }
        }
        problems
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self::demo()
    }
}

/// Failures to inject into the token endpoints and API calls (never the control routes or pages).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// 0..1: this share of calls answers `{"errcode":-1,"errmsg":"system error"}`.
    pub error_rate: f64,
    /// Every affected call waits this long before anything else.
    pub delay: Duration,
    /// Answer with this HTTP status.
    pub http_status: Option<u16>,
    /// Always answer this errcode.
    pub errcode: Option<i64>,
    /// Limit the faults to paths that contain this.
    pub path_contains: Option<String>,
}

/// The JSON body of `POST /sandbox/faults`; missing keys mean "no such fault".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultsBody {
    #[serde(default)]
    error_rate: f64,
    #[serde(default)]
    delay_ms: u64,
    http_status: Option<u16>,
    errcode: Option<i64>,
    path_contains: Option<String>,
}

impl FaultsBody {
    /// Checks the values once, so that a typo in a test fails loudly instead of injecting nothing.
    pub fn into_faults(self) -> Result<Faults, String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("error_rate must be between 0 and 1".into());
        }
        if let Some(status) = self.http_status {
            if !(100..=599).contains(&status) {
                return Err("http_status must be between 100 and 599".into());
            }
        }
        Ok(Faults {
            error_rate: self.error_rate,
            delay: Duration::from_millis(self.delay_ms),
            http_status: self.http_status,
            errcode: self.errcode,
            path_contains: self.path_contains.filter(|p| !p.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::decode_aes_key;

    #[test]
    fn demo_credentials_are_valid() {
        let c = SandboxConfig::demo();
        assert!(decode_aes_key(c.encoding_aes_key.expose()).is_ok());
        assert!(AppId::is_valid(DEMO_AUTHORIZER_APPID));
        assert_eq!(c.component_appid.as_str(), DEMO_COMPONENT_APPID);
        let owned = &c.accounts[0];
        assert_eq!(owned.appid.as_str(), DEMO_OWNED_APPID);
        assert!(decode_aes_key(owned.encoding_aes_key.expose()).is_ok());
    }

    #[test]
    fn faults_body_is_checked() {
        let ok: FaultsBody = serde_json::from_str(r#"{"error_rate":0.5,"delay_ms":20,"path_contains":""}"#).unwrap();
        let f = ok.into_faults().unwrap();
        assert_eq!((f.error_rate, f.delay, f.path_contains), (0.5, Duration::from_millis(20), None));
        let bad: FaultsBody = serde_json::from_str(r#"{"error_rate":2}"#).unwrap();
        assert!(bad.into_faults().is_err());
        assert!(serde_json::from_str::<FaultsBody>(r#"{"eror_rate":1}"#).is_err());
    }
}
