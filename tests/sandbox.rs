//! The sandbox's own strictness, over real HTTP: it must fail a gateway the way WeChat would.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::routing::post as on_post;
use axum::Router;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::sync::mpsc;
use tokio::time::timeout;
use wxgate::crypto::MsgCrypt;
use wxgate::sandbox::{media_content, Faults, Sandbox, SandboxConfig};
use wxgate::AppId;

const ACCOUNT: &str = "wx2222222222222222";

/// Every test is a story bounded in time.
async fn bounded<F: Future<Output = ()>>(story: F) {
    let limit = Duration::from_secs(10);
    timeout(limit, story).await.expect("the test took longer than 10 s");
}

fn account() -> AppId {
    AppId::parse(ACCOUNT).unwrap()
}

fn code(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

/// The text between `start` and the next `end`.
fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let rest = s.split(start).nth(1).expect("start marker");
    rest.split(end).next().unwrap()
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A sandbox and an HTTP client that does not follow redirects.
struct Wx {
    sb: Sandbox,
    http: reqwest::Client,
}

impl Wx {
    async fn start(config: SandboxConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sb = Sandbox::start(config, listener).await.unwrap();
        let policy = reqwest::redirect::Policy::none();
        let http = reqwest::Client::builder().redirect(policy).build().unwrap();
        Self { sb, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sb.base_url())
    }

    fn appid(&self) -> String {
        self.sb.config().component_appid.to_string()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self.http.post(self.url(path)).json(&body).send().await;
        response.unwrap().json().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// A component endpoint with the component token in the URL and the appid in the body.
    async fn component(&self, endpoint: &str, ctoken: &str, mut body: Value) -> Value {
        body["component_appid"] = json!(self.appid());
        let path = format!("/cgi-bin/component/{endpoint}?component_access_token={ctoken}");
        self.post(&path, body).await
    }

    async fn token_call(&self, ticket: &str) -> Value {
        let body = json!({
            "component_appid": self.appid(),
            "component_appsecret": self.sb.config().component_appsecret.expose(),
            "component_verify_ticket": ticket,
        });
        self.post("/cgi-bin/component/api_component_token", body).await
    }

    async fn component_token(&self) -> String {
        let answer = self.token_call(&self.sb.current_ticket().unwrap()).await;
        answer["component_access_token"].as_str().unwrap().to_owned()
    }

    /// Authorizes ACCOUNT through the redirect path; returns (access token, refresh token).
    async fn authorized(&self, ctoken: &str) -> (String, String) {
        let auth_code = self.sb.issue_auth_code(&account());
        let body = json!({ "authorization_code": auth_code });
        let answer = self.component("api_query_auth", ctoken, body).await;
        let info = &answer["authorization_info"];
        assert_eq!(info["authorizer_appid"], ACCOUNT, "{answer}");
        let access = info["authorizer_access_token"].as_str().unwrap();
        let refresh = info["authorizer_refresh_token"].as_str().unwrap();
        (access.to_owned(), refresh.to_owned())
    }

    async fn refresh(&self, ctoken: &str, refresh_token: &str) -> Value {
        let body = json!({ "authorizer_appid": ACCOUNT, "authorizer_refresh_token": refresh_token });
        self.component("api_authorizer_token", ctoken, body).await
    }

    async fn api(&self, token: &str) -> Value {
        let path = format!("/cgi-bin/message/custom/send?access_token={token}");
        self.post(&path, json!({})).await
    }
}

#[tokio::test]
async fn component_token_needs_the_last_ticket_and_right_credentials() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        assert_eq!(code(&wx.token_call("ticket@@@forged").await), 61006);
        let old = wx.sb.current_ticket().unwrap();
        wx.sb.push_ticket().await.unwrap();
        assert_eq!(code(&wx.token_call(&old).await), 61006, "superseded ticket");
        let good = wx.token_call(&wx.sb.current_ticket().unwrap()).await;
        assert!(good["component_access_token"].as_str().unwrap().len() > 100);
        assert_eq!(good["expires_in"], 7200);
        let path = "/cgi-bin/component/api_component_token";
        let mut bad = json!({
            "component_appid": wx.appid(),
            "component_appsecret": "nope",
            "component_verify_ticket": "x",
        });
        assert_eq!(code(&wx.post(path, bad.clone()).await), 40125);
        bad["component_appid"] = json!("wx9999999999999999");
        assert_eq!(code(&wx.post(path, bad).await), 61011);
        assert_eq!(wx.sb.stats().component_token_calls, 5);
    })
    .await;
}

#[tokio::test]
async fn superseded_token_works_within_grace_then_40001() {
    bounded(async {
        let mut config = SandboxConfig::demo();
        config.grace = Duration::from_millis(800);
        let wx = Wx::start(config).await;
        let first = wx.component_token().await;
        let second = wx.component_token().await;
        assert_eq!(code(&wx.api(&first).await), 0, "within grace");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(code(&wx.api(&first).await), 40001, "past grace");
        assert_eq!(code(&wx.api(&second).await), 0);
    })
    .await;
}

#[tokio::test]
async fn expired_token_gives_42001_and_missing_41001() {
    bounded(async {
        let mut config = SandboxConfig::demo();
        config.token_lifetime = Duration::from_secs(1);
        let wx = Wx::start(config).await;
        let token = wx.component_token().await;
        let pre = wx.component("api_create_preauthcode", &token, json!({})).await;
        assert_eq!(pre["expires_in"], 600, "{pre}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(code(&wx.api(&token).await), 42001);
        let body = json!({ "component_appid": wx.appid() });
        let missing = wx.post("/cgi-bin/component/api_create_preauthcode", body).await;
        assert_eq!(code(&missing), 41001);
    })
    .await;
}

#[tokio::test]
async fn rotated_refresh_token_stops_working() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let ctoken = wx.component_token().await;
        let (_, refresh) = wx.authorized(&ctoken).await;
        let answer = wx.refresh(&ctoken, &refresh).await;
        let rotated = answer["authorizer_refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rotated, refresh);
        assert_eq!(wx.sb.refresh_token(&account()), Some(rotated.clone()));
        assert_eq!(code(&wx.refresh(&ctoken, &refresh).await), 61023);
        let fresh = wx.refresh(&ctoken, &rotated).await;
        let token = fresh["authorizer_access_token"].as_str().unwrap();
        assert_eq!(code(&wx.api(token).await), 0);
        assert_eq!(wx.sb.stats().authorizer_token_calls[ACCOUNT], 3);
    })
    .await;
}

#[tokio::test]
async fn auth_code_is_single_use_and_revocation_is_immediate() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let ctoken = wx.component_token().await;
        let body = json!({ "authorization_code": wx.sb.issue_auth_code(&account()) });
        let first = wx.component("api_query_auth", &ctoken, body.clone()).await;
        let token = first["authorization_info"]["authorizer_access_token"].as_str().unwrap();
        let again = wx.component("api_query_auth", &ctoken, body).await;
        assert_eq!(code(&again), 61009);
        wx.sb.unauthorize(&account()).await.unwrap();
        assert_eq!(code(&wx.api(token).await), 40001);
        assert_eq!(code(&wx.refresh(&ctoken, "x").await), 61003);
    })
    .await;
}

type Pushes = mpsc::UnboundedReceiver<(String, String)>;
type PushSink = (mpsc::UnboundedSender<(String, String)>, &'static str);

/// A receiver like the gateway's: records each push (query, body) and gives `answer`.
async fn receiver(answer: &'static str) -> (String, Pushes) {
    async fn take(State((tx, answer)): State<PushSink>, req: Request) -> &'static str {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
        let _ = tx.send((query, String::from_utf8(body.to_vec()).unwrap()));
        answer
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let route = "/wxgate/callback/component";
    let app = Router::new().route(route, on_post(take)).with_state((tx, answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{route}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// Checks msg_signature and decrypts, as the gateway must.
fn open(config: &SandboxConfig, (query, body): &(String, String)) -> String {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    assert_eq!(q["encrypt_type"], "aes");
    let envelope = format!("<xml><AppId><![CDATA[{}]]></AppId>", config.component_appid);
    assert!(body.starts_with(&envelope), "{body}");
    let encrypt = between(body, "<Encrypt><![CDATA[", "]]>");
    let appid = config.component_appid.as_str();
    let crypt = MsgCrypt::new(&config.token, &config.encoding_aes_key, &appid).unwrap();
    let (ts, nonce, sig) = (&q["timestamp"], &q["nonce"], &q["msg_signature"]);
    crypt.open(ts, nonce, encrypt, sig).expect("signed and sealed for the component")
}

#[tokio::test]
async fn pushes_reach_the_callback_signed_and_sealed() {
    bounded(async {
        let (url, mut pushes) = receiver("success").await;
        let config =
            SandboxConfig { callback_url: Some(url), ticket_interval: Duration::from_secs(2), ..SandboxConfig::demo() };
        let wx = Wx::start(config.clone()).await;
        let first = pushes.recv().await.unwrap();
        let message = open(&config, &first);
        assert!(message.contains("<InfoType><![CDATA[component_verify_ticket]]></InfoType>"));
        let ticket = between(&message, "<ComponentVerifyTicket><![CDATA[", "]]>");
        assert!(wx.token_call(ticket).await["component_access_token"].is_string());
        let second = pushes.recv().await.unwrap();
        assert_ne!(second.1, first.1, "a new ticket every interval");
        wx.sb.pushes_paused(true);
        let auth_code = wx.sb.authorize(&account()).await.unwrap();
        let message = open(&config, &pushes.recv().await.unwrap());
        assert!(message.contains("<InfoType><![CDATA[authorized]]></InfoType>"));
        let sent = between(&message, "<AuthorizationCode><![CDATA[", "]]>");
        assert_eq!(sent, auth_code);
        assert_eq!(wx.sb.stats().pushes_failed, 0);
    })
    .await;
}

#[tokio::test]
async fn a_push_not_answered_success_counts_as_failed() {
    bounded(async {
        let (url, mut pushes) = receiver("ok").await;
        let mut config = SandboxConfig::demo();
        config.callback_url = Some(url);
        let wx = Wx::start(config).await;
        pushes.recv().await.unwrap();
        assert!(wx.sb.push_ticket().await.is_err());
        assert_eq!(wx.sb.stats().pushes_failed, 2);
        assert_eq!(wx.sb.stats().tickets_pushed, 2);
    })
    .await;
}

#[tokio::test]
async fn faults_answer_before_validation() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        wx.sb.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
        assert_eq!(code(&wx.api("anything").await), -1);
        assert_eq!(code(&wx.token_call("anything").await), -1);
        let mut faults = Faults::default();
        (faults.http_status, faults.path_contains) = (Some(500), Some("/message/".into()));
        wx.sb.set_faults(faults);
        let url = wx.url("/cgi-bin/message/custom/send?access_token=x");
        assert_eq!(wx.http.post(url).send().await.unwrap().status(), 500);
        assert_eq!(code(&wx.api("x").await), -1, "WeChat-shaped body");
        let other = wx.post("/cgi-bin/user/get?access_token=x", json!({})).await;
        assert_eq!(code(&other), 40001, "other paths are untouched");
        let clear = wx.http.post(wx.url("/sandbox/faults")).body("{}");
        assert_eq!(clear.send().await.unwrap().status(), 200);
        assert_eq!(wx.sb.faults(), Faults::default());
        let stats: Value = wx.get("/sandbox/stats").await.json().await.unwrap();
        assert_eq!(stats["api_calls"], 4);
    })
    .await;
}

#[tokio::test]
async fn api_calls_check_tokens_and_report_the_body() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let ctoken = wx.component_token().await;
        let (token, _) = wx.authorized(&ctoken).await;
        let upload = |q: &str| wx.http.post(wx.url(&format!("/cgi-bin/media/upload?{q}")));
        let body = vec![7u8; 3 * 1024 * 1024 + 5];
        let request = upload(&format!("type=image&access_token={token}")).header("x-probe", "1");
        let answer = json_of(request.body(body.clone())).await;
        assert_eq!(code(&answer), 0, "{answer}");
        assert_eq!(answer["body_bytes"], body.len());
        assert_eq!(answer["body_sha1"], hex::encode(Sha1::digest(&body)));
        assert_eq!(answer["path"], "/cgi-bin/media/upload");
        let missing = json_of(upload("type=image")).await;
        assert_eq!(code(&missing), 41001);
        let wrong = json_of(upload(&format!("component_access_token={token}"))).await;
        assert_eq!(code(&wrong), 40001, "not a component token");
        let seen = wx.sb.requests();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].token_param.as_deref(), Some("access_token"));
        assert_eq!(seen[0].authorizer.as_deref(), Some(ACCOUNT));
        assert_eq!(seen[0].body_len, body.len());
        let probe = ("x-probe".to_owned(), "1".to_owned());
        assert!(seen[0].headers.contains(&probe));
        let param = seen[2].token_param.as_deref();
        assert_eq!(param, Some("component_access_token"));
        wx.sb.revoke_access_token(Some(&account()));
        assert_eq!(code(&wx.api(&token).await), 40001);
    })
    .await;
}

#[tokio::test]
async fn media_download_streams_n_bytes() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let token = wx.component_token().await;
        let n = 5 * 1024 * 1024 + 3;
        let media = |id: String| format!("/cgi-bin/media/get?access_token={token}&media_id={id}");
        let response = wx.get(&media(n.to_string())).await;
        let kind = &response.headers()["content-type"];
        assert_eq!(kind, "application/octet-stream");
        assert_eq!(response.content_length(), Some(n as u64));
        let bytes = response.bytes().await.unwrap();
        assert!(bytes[..] == media_content(n)[..], "deterministic content");
        let bad = wx.get(&media("x".into())).await;
        assert_eq!(code(&bad.json().await.unwrap()), 40007);
    })
    .await;
}

#[tokio::test]
async fn browser_consent_redirects_with_a_code() {
    bounded(async {
        let wx = Wx::start(SandboxConfig::demo()).await;
        let ctoken = wx.component_token().await;
        let pre = wx.component("api_create_preauthcode", &ctoken, json!({})).await;
        let link: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("component_appid", &wx.appid())
            .append_pair("pre_auth_code", pre["pre_auth_code"].as_str().unwrap())
            .append_pair("redirect_uri", "http://gw.test/wxgate/authorize/done?x=1")
            .append_pair("auth_type", "3")
            .finish();
        let page = wx.get(&format!("/cgi-bin/componentloginpage?{link}")).await;
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        let href = between(&html, "id=\"consent\" href=\"", "\"").replace("&amp;", "&");
        let consent = wx.get(&href).await;
        assert_eq!(consent.status(), 302);
        let location = consent.headers()["location"].to_str().unwrap();
        let back = "http://gw.test/wxgate/authorize/done?x=1&auth_code=queryauthcode@@@";
        assert!(location.starts_with(back), "{location}");
        assert!(location.ends_with("&expires_in=600"));
        let reused = wx.get(&href).await.status();
        assert_eq!(reused, 400, "a pre_auth_code is single use");
    })
    .await;
}
