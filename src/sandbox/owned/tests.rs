//! `stable_token` and `/cgi-bin/token` for owned accounts: the rules on a ledger with time passed
//! in, then the routes over real HTTP.

use std::future::Future;

use serde_json::json;

use super::*;
use crate::sandbox::ledger::Limits;
use crate::sandbox::{OwnedAccount, SandboxConfig, StableTokenCalls, DEMO_OWNED_APPID};

const APPID: &str = DEMO_OWNED_APPID;
const STRANGER: &str = "wx9999999999999999";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn rules() -> StableRules {
    StableRules { lifetime: secs(100), window: secs(10), min_interval: secs(30), per_day: 3 }
}

fn ledger() -> Ledger {
    Ledger::new(Limits { lifetime: secs(100), grace: secs(10), rotate: true })
}

fn grant(l: &mut Ledger, force: bool, at: Instant) -> Result<(String, Duration), i64> {
    stable_grant(l, &rules(), APPID, force, at).map_err(|e| e.code)
}

#[test]
fn normal_mode_keeps_one_token_until_the_window_then_both_work() {
    let (t0, mut l) = (Instant::now(), ledger());
    let (a, left) = grant(&mut l, false, t0).unwrap();
    assert_eq!(left, secs(100));
    assert_eq!(grant(&mut l, false, t0 + secs(89)).unwrap(), (a.clone(), secs(11)));
    let (b, left) = grant(&mut l, false, t0 + secs(91)).unwrap();
    assert!(b != a && left == secs(100), "in the last 10 s a new token");
    assert_eq!(grant(&mut l, false, t0 + secs(95)).unwrap().0, b, "and then that one");
    assert!(l.tokens.check(&a, t0 + secs(99)).is_ok(), "the old one works to its own expiry");
    assert_eq!(l.tokens.check(&a, t0 + secs(100)).unwrap_err().code, 42001);
}

#[test]
fn force_mode_retires_the_old_token_at_once() {
    let (t0, mut l) = (Instant::now(), ledger());
    let (a, _) = grant(&mut l, false, t0).unwrap();
    let (b, left) = grant(&mut l, true, t0 + secs(1)).unwrap();
    assert!(b != a && left == secs(100));
    assert_eq!(l.tokens.check(&a, t0 + secs(1)).unwrap_err().code, 40001);
    assert_eq!(grant(&mut l, false, t0 + secs(2)).unwrap().0, b);
}

#[test]
fn force_refresh_is_spaced_and_counted_per_day() {
    let (t0, mut l) = (Instant::now(), ledger());
    assert!(grant(&mut l, true, t0).is_ok());
    assert_eq!(grant(&mut l, true, t0 + secs(29)), Err(45011));
    assert!(grant(&mut l, true, t0 + secs(30)).is_ok());
    assert!(grant(&mut l, true, t0 + secs(60)).is_ok());
    assert_eq!(grant(&mut l, true, t0 + secs(600)), Err(45009), "three a day");
    assert!(stable_grant(&mut l, &rules(), STRANGER, true, t0 + secs(600)).is_ok(), "per account");
    assert!(grant(&mut l, true, t0 + DAY).is_ok(), "the first has left the day");
    assert_eq!(grant(&mut l, true, t0 + DAY + secs(1)), Err(45009));
}

#[test]
fn normal_mode_after_a_revoke_gets_a_new_token() {
    let (t0, mut l) = (Instant::now(), ledger());
    let (a, _) = grant(&mut l, false, t0).unwrap();
    l.tokens.revoke_current(&Owner::account(APPID, TokenEndpoint::StableToken), t0);
    let (b, _) = grant(&mut l, false, t0).unwrap();
    assert!(b != a && l.tokens.check(&b, t0).is_ok());
}

#[test]
fn accounts_are_checked_at_start() {
    let demo = OwnedAccount::demo();
    assert_eq!(Accounts::new(&[demo.clone(), demo.clone()]).err(), Some(AccountsError::Duplicate(demo.appid)));
    let bad = OwnedAccount { encoding_aes_key: Secret::new("short"), ..demo.clone() };
    let err = Accounts::new(&[bad]).err().unwrap();
    assert!(matches!(err, AccountsError::Key { .. }) && !err.to_string().contains("short"), "{err}");
    assert!(Accounts::new(&[demo]).is_ok());
}

/// Every HTTP story is bounded in time.
async fn bounded<F: Future<Output = ()>>(story: F) {
    tokio::time::timeout(secs(10), story).await.expect("the test took longer than 10 s");
}

struct Wx {
    sb: Sandbox,
    http: reqwest::Client,
}

impl Wx {
    async fn start(config: SandboxConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self { sb: Sandbox::start(config, listener).await.unwrap(), http: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sb.base_url())
    }

    async fn stable_body(&self, body: Value) -> Value {
        let response = self.http.post(self.url(STABLE_TOKEN_PATH)).json(&body).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// The demo account's `stable_token`, in normal or force mode.
    async fn stable(&self, force: bool) -> Value {
        let secret = OwnedAccount::demo().secret;
        let body = json!({
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": secret.expose(),
            "force_refresh": force,
        });
        self.stable_body(body).await
    }

    async fn stable_token(&self, force: bool) -> String {
        let answer = self.stable(force).await;
        answer["access_token"].as_str().unwrap_or_else(|| panic!("no token: {answer}")).to_owned()
    }

    async fn token(&self, appid: &str, secret: &str) -> Value {
        let path = format!("{TOKEN_PATH}?grant_type=client_credential&appid={appid}&secret={secret}");
        self.http.get(self.url(&path)).send().await.unwrap().json().await.unwrap()
    }

    /// An ordinary API call's errcode.
    async fn api(&self, token: &str) -> i64 {
        let url = self.url(&format!("/cgi-bin/get_api_domain_ip?access_token={token}"));
        let answer: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        answer["errcode"].as_i64().unwrap()
    }

    fn calls(&self) -> StableTokenCalls {
        self.sb.stats().stable_token_calls.get(APPID).copied().unwrap_or_default()
    }
}

fn code(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn stable_token_checks_what_wechat_checks() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let secret = OwnedAccount::demo().secret.expose().to_owned();
        let good = json!({ "grant_type": "client_credential", "appid": APPID, "secret": secret });
        let with = |key: &str, value: Value| {
            let mut body = good.clone();
            body[key] = value;
            body
        };
        assert_eq!(code(&wx.stable_body(with("appid", json!(STRANGER))).await), 40013);
        assert_eq!(code(&wx.stable_body(with("appid", json!("nope"))).await), 40013);
        assert_eq!(code(&wx.stable_body(with("secret", json!("wrong"))).await), 40125);
        assert_eq!(code(&wx.stable_body(with("grant_type", json!("authorization_code"))).await), 40002);
        assert_eq!(code(&wx.stable_body(with("appid", json!(""))).await), 41002);
        assert_eq!(code(&wx.stable_body(with("secret", Value::Null)).await), 41004);
        assert_eq!(code(&wx.stable_body(with("force_refresh", json!("yes"))).await), 47001);
        let get: Value = wx.http.get(wx.url(STABLE_TOKEN_PATH)).send().await.unwrap().json().await.unwrap();
        assert_eq!(code(&get), 43002);
        let answer = wx.stable_body(good).await;
        assert_eq!((answer["expires_in"].as_u64(), code(&answer)), (Some(7200), 0), "{answer}");
        let stats = wx.sb.stats();
        assert_eq!((stats.errcodes[&40013], stats.errcodes[&40125]), (2, 1));
        assert_eq!(wx.calls(), StableTokenCalls { normal: 5, force: 0 }, "a malformed flag counts as normal");
        assert_eq!(stats.stable_token_calls[STRANGER].normal, 1);
    })
    .await;
}

#[tokio::test]
async fn normal_calls_share_one_token_and_force_replaces_it() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let a = wx.stable_token(false).await;
        let again = wx.stable(false).await;
        assert_eq!(again["access_token"], a.as_str());
        assert!((7190..=7200).contains(&again["expires_in"].as_u64().unwrap()), "{again}");
        assert_eq!(wx.api(&a).await, 0);
        let ticket = format!("/cgi-bin/ticket/getticket?access_token={a}&type=jsapi");
        let ticket: Value = wx.http.get(wx.url(&ticket)).send().await.unwrap().json().await.unwrap();
        assert!(ticket["ticket"].as_str().is_some(), "{ticket}");
        let appid = AppId::parse(APPID).unwrap();
        assert!(wx.sb.current_js_ticket(&appid, "jsapi").is_some());
        let f = wx.stable_token(true).await;
        assert_ne!(f, a);
        assert_eq!((wx.api(&a).await, wx.api(&f).await), (40001, 0));
        assert_eq!(wx.sb.account_token(&appid), Some(f));
        assert_eq!(code(&wx.stable(true).await), 45011, "WeChat's 30 s between forced refreshes");
        assert_eq!(wx.calls(), StableTokenCalls { normal: 2, force: 2 });
        let quota =
            wx.url(&format!("/cgi-bin/openapi/quota/get?access_token={}", wx.sb.account_token(&appid).unwrap()));
        let body = json!({ "cgi_path": "/cgi-bin/get_api_domain_ip" });
        let quota: Value = wx.http.post(quota).json(&body).send().await.unwrap().json().await.unwrap();
        assert_eq!(quota["quota"]["used"], 2, "counted under the account, whichever token: {quota}");
    })
    .await;
}

#[tokio::test]
async fn force_refresh_has_a_daily_limit() {
    bounded(async {
        let config = SandboxConfig {
            force_refresh_min_interval: Duration::ZERO,
            force_refresh_per_day: 2,
            ..SandboxConfig::demo()
        };
        let wx = Wx::start(config).await;
        wx.stable_token(true).await;
        wx.stable_token(true).await;
        assert_eq!(code(&wx.stable(true).await), 45009);
        assert_eq!(wx.calls(), StableTokenCalls { normal: 0, force: 3 });
    })
    .await;
}

#[tokio::test]
async fn in_the_window_a_new_token_and_the_old_one_still_works() {
    bounded(async {
        let config = SandboxConfig { token_lifetime: secs(3), grace: secs(2), ..SandboxConfig::demo() };
        let wx = Wx::start(config).await;
        let a = wx.stable_token(false).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let b = wx.stable(false).await;
        assert_ne!(b["access_token"], a.as_str());
        assert_eq!(b["expires_in"], 3);
        assert_eq!(wx.api(&a).await, 0, "until its own expiry");
        assert_eq!(wx.calls(), StableTokenCalls { normal: 2, force: 0 });
    })
    .await;
}

#[tokio::test]
async fn cgi_bin_token_rotates_apart_from_stable_token() {
    bounded(async {
        let config = SandboxConfig { grace: Duration::from_millis(300), ..SandboxConfig::demo() };
        let wx = Wx::start(config).await;
        let secret = OwnedAccount::demo().secret.expose().to_owned();
        let stable = wx.stable_token(false).await;
        let first = wx.token(APPID, &secret).await;
        assert_eq!(first["expires_in"], 7200);
        let first = first["access_token"].as_str().unwrap().to_owned();
        let second = wx.token(APPID, &secret).await["access_token"].as_str().unwrap().to_owned();
        assert_eq!(wx.api(&first).await, 0, "within the grace");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!((wx.api(&first).await, wx.api(&second).await), (40001, 0));
        assert_eq!(wx.api(&stable).await, 0, "stable_token's token is not retired by /cgi-bin/token");
        assert_eq!(code(&wx.token(APPID, "wrong").await), 40125);
        assert_eq!(code(&wx.token(STRANGER, &secret).await), 40013);
        assert_eq!(wx.sb.stats().token_calls[APPID], 3);
    })
    .await;
}

#[tokio::test]
async fn revoke_kills_the_current_token_and_stats_show_the_force() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let a = wx.stable_token(false).await;
        let revoked = wx.http.post(wx.url(&format!("/sandbox/revoke?appid={APPID}"))).send().await.unwrap();
        assert_eq!(revoked.status(), 200);
        assert_eq!(wx.api(&a).await, 40001);
        let b = wx.stable_token(true).await;
        assert_eq!(wx.api(&b).await, 0);
        let stats: Value = wx.http.get(wx.url("/sandbox/stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats["stable_token_calls"][APPID], json!({ "normal": 1, "force": 1 }), "{stats}");
    })
    .await;
}
