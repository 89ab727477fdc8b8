//! Pushes to an owned account's own server, read by a stand-in that checks them as WeChat's
//! documentation says the account's server must.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::*;
use crate::sandbox::{OwnedAccount, SandboxConfig, DEMO_AUTHORIZER_APPID, DEMO_OWNED_APPID};
use crate::xml;

/// What the stand-in received: the path, the query's parameters and the body.
type Seen = (String, HashMap<String, String>, String);

#[derive(Clone)]
struct Server {
    seen: mpsc::UnboundedSender<Seen>,
    /// Reply in plaintext even to an encrypted push.
    plain_replies: bool,
}

/// The account's server: checks `signature` (and `msg_signature` when encrypted), echoes the URL
/// check, and answers a message with the text `echo: {Content}`, encrypted when the push was.
async fn serve(State(server): State<Server>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if path.ends_with("/component") {
        return "success".into_response(); // the sandbox's own ticket pushes
    }
    let query = req.uri().query().unwrap_or_default().as_bytes();
    let q: HashMap<String, String> = url::form_urlencoded::parse(query).into_owned().collect();
    let method = req.method().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let _ = server.seen.send((path, q.clone(), body.clone()));
    let param = |k: &str| q.get(k).cloned().unwrap_or_default();
    let (ts, nonce) = (param("timestamp"), param("nonce"));
    let account = OwnedAccount::demo();
    if param("signature") != plain_signature(&account.token, &ts, &nonce) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if method == Method::GET {
        return param("echostr").into_response();
    }
    let crypt = MsgCrypt::new(&account.token, &account.encoding_aes_key, DEMO_OWNED_APPID).unwrap();
    let encrypted = param("encrypt_type") == "aes";
    let message = match encrypted {
        false => body,
        true => {
            let fields = xml::parse(&body).unwrap();
            let opened = crypt.open(&ts, &nonce, fields.get("Encrypt").unwrap_or_default(), &param("msg_signature"));
            match opened {
                Ok(message) => message,
                Err(_) => return StatusCode::FORBIDDEN.into_response(),
            }
        }
    };
    let m = xml::parse(&message).unwrap();
    let reply = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
         <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[echo: {}]]></Content></xml>",
        m.get("FromUserName").unwrap_or_default(),
        m.get("ToUserName").unwrap_or_default(),
        m.get("Content").unwrap_or_default(),
    );
    match encrypted && !server.plain_replies {
        true => crypt.seal(&reply, &ts, &nonce).reply_xml(&ts, &nonce).into_response(),
        false => reply.into_response(),
    }
}

/// The stand-in's base URL and what it receives.
async fn account_server(plain_replies: bool) -> (String, mpsc::UnboundedReceiver<Seen>) {
    let (seen, rx) = mpsc::unbounded_channel();
    let app = Router::new().fallback(serve).with_state(Server { seen, plain_replies });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, rx)
}

/// A sandbox whose gateway is the stand-in at `base`.
async fn sandbox(base: &str) -> Sandbox {
    let callback_url = Some(format!("{base}/wxgate/callback/component"));
    let config = SandboxConfig { callback_url, ..SandboxConfig::demo() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Sandbox::start(config, listener).await.unwrap()
}

async fn bounded<F: Future<Output = ()>>(story: F) {
    tokio::time::timeout(Duration::from_secs(10), story).await.expect("the test took longer than 10 s");
}

fn owned() -> AppId {
    AppId::parse(DEMO_OWNED_APPID).unwrap()
}

fn text(content: &str) -> MessageSpec {
    MessageSpec { msg_type: "text".into(), content: Some(content.into()), ..MessageSpec::default() }
}

const MODES: [MessageMode; 3] = [MessageMode::Plaintext, MessageMode::Compatible, MessageMode::Safe];

#[tokio::test]
async fn each_mode_is_signed_sealed_and_read_back() {
    bounded(async {
        let (base, mut seen) = account_server(false).await;
        let sb = sandbox(&base).await;
        for mode in MODES {
            let how = AccountPush { mode, ..AccountPush::default() };
            let outcome = sb.push_account_message(&owned(), &text("hi"), &how).await.unwrap();
            assert_eq!(outcome.status, 200, "{mode:?}: {}", outcome.body);
            assert_eq!(outcome.reply_content.as_deref(), Some("echo: hi"), "{mode:?}: {outcome:?}");
            let (path, query, body) = seen.recv().await.unwrap();
            assert_eq!(path, format!("/wxgate/callback/{DEMO_OWNED_APPID}"));
            let fields = xml::parse(&body).unwrap();
            let shape = (fields.get("Content").is_some(), fields.get("Encrypt").is_some());
            let want = match mode {
                MessageMode::Plaintext => (true, false),
                MessageMode::Compatible => (true, true),
                MessageMode::Safe => (false, true),
            };
            assert_eq!(shape, want, "{mode:?}: {body}");
            assert_eq!(query.contains_key("msg_signature"), shape.1, "{mode:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn forged_pushes_and_url_checks_are_refused() {
    bounded(async {
        let (base, _seen) = account_server(false).await;
        let sb = sandbox(&base).await;
        for mode in MODES {
            let how = AccountPush { mode, forge: true, ..AccountPush::default() };
            let outcome = sb.push_account_message(&owned(), &text("hi"), &how).await.unwrap();
            assert_eq!((outcome.status, outcome.reply), (403, None), "{mode:?}");
        }
        let check = sb.check_account_url(&owned(), None, false).await.unwrap();
        assert!(check.echoed && check.status == 200, "{check:?}");
        let forged = sb.check_account_url(&owned(), None, true).await.unwrap();
        assert!(!forged.echoed && forged.status == 403, "{forged:?}");
    })
    .await;
}

#[tokio::test]
async fn safe_mode_wants_an_encrypted_reply_compatible_takes_either() {
    bounded(async {
        let (base, _seen) = account_server(true).await;
        let sb = sandbox(&base).await;
        let safe = AccountPush { mode: MessageMode::Safe, ..AccountPush::default() };
        let outcome = sb.push_account_message(&owned(), &text("hi"), &safe).await.unwrap();
        assert!(outcome.reply.is_none() && outcome.reply_error.is_some(), "{outcome:?}");
        let compatible = AccountPush { mode: MessageMode::Compatible, ..AccountPush::default() };
        let outcome = sb.push_account_message(&owned(), &text("hi"), &compatible).await.unwrap();
        assert_eq!(outcome.reply_content.as_deref(), Some("echo: hi"), "{outcome:?}");
    })
    .await;
}

#[tokio::test]
async fn control_routes_push_to_owned_accounts_only() {
    bounded(async {
        let (base, mut seen) = account_server(false).await;
        let sb = sandbox(&base).await;
        let authorizer = AppId::parse(DEMO_AUTHORIZER_APPID).unwrap();
        let refused = sb.push_account_message(&authorizer, &text("hi"), &AccountPush::default()).await;
        assert_eq!(refused.err(), Some(SandboxError::NotOwned(authorizer)));
        let http = reqwest::Client::new();
        let post = |path: &str, body: Value| http.post(format!("{}{path}", sb.base_url())).json(&body).send();
        let body = json!({ "appid": DEMO_OWNED_APPID, "mode": "compatible", "content": "hey" });
        let answer: Value = post("/sandbox/account-message", body).await.unwrap().json().await.unwrap();
        assert_eq!(answer["reply_content"], "echo: hey", "{answer}");
        let body = json!({ "appid": DEMO_OWNED_APPID, "url": format!("{base}/elsewhere"), "type": "event" });
        let answer = post("/sandbox/account-message", body).await.unwrap();
        assert_eq!(answer.status(), 200);
        seen.recv().await.unwrap();
        assert_eq!(seen.recv().await.unwrap().0, "/elsewhere");
        let stranger = post("/sandbox/account-message", json!({ "appid": DEMO_AUTHORIZER_APPID })).await.unwrap();
        assert_eq!(stranger.status(), 404);
        let loud = json!({ "appid": DEMO_OWNED_APPID, "mode": "loud" });
        assert_eq!(post("/sandbox/account-message", loud).await.unwrap().status(), 400);
        let check: Value = post("/sandbox/account-urlcheck", json!({ "appid": DEMO_OWNED_APPID }))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(check["echoed"], true, "{check}");
        let forged = json!({ "appid": DEMO_OWNED_APPID, "forge": true });
        let check: Value = post("/sandbox/account-urlcheck", forged).await.unwrap().json().await.unwrap();
        assert_eq!((check["echoed"].clone(), check["status"].clone()), (json!(false), json!(403)), "{check}");
    })
    .await;
}
