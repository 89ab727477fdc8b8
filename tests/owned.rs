//! The company's own accounts (`[[accounts]]`) against the sandbox over real sockets: tokens
//! kept with stable_token across lifetimes, one force refresh after WeChat refused a token, the
//! token endpoints answered from the cache, the account's own message server in each mode, and
//! two instances on one Redis.

mod common;

use common::wxcrypt::{check_signature, field, open_reply};
use common::*;
use std::time::{Duration, Instant};
use wxgate::crypto::{plain_signature, MsgCrypt};
use wxgate::sandbox::{OwnedAccount, Sandbox, SandboxConfig};
use wxgate::Secret;

const OWNED: &str = "wx5555555555555555";
const REVEAL_KEY: &str = "reveal-key-0123456789abcdef";

fn owned() -> OwnedAccount {
    OwnedAccount::demo()
}

/// The `[[accounts]]` table for the demo account, with its message server when `server`.
fn accounts_toml(server: bool) -> String {
    let a = owned();
    let mut toml = format!("\n[[accounts]]\nappid = \"{}\"\nsecret = \"{}\"\n", a.appid, a.secret.expose());
    if server {
        toml += &format!("token = \"{}\"\nencoding_aes_key = \"{}\"\n", a.token.expose(), a.encoding_aes_key.expose());
    }
    toml
}

/// A sandbox whose owned account's tokens live `lifetime` and are renewed in their last `window`.
fn sandbox_config(setup: &Setup, lifetime: Duration, window: Duration) -> SandboxConfig {
    SandboxConfig {
        token_lifetime: lifetime,
        grace: window,
        accounts: vec![owned()],
        ..setup.sandbox_config(lifetime.as_secs().max(1))
    }
}

async fn call(gw: &Gateway) -> serde_json::Value {
    let url = gw.proxy_url(&format!("/{OWNED}/cgi-bin/user/info?openid=o1&access_token={CLIENT_KEY}"));
    gw.http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn ready(gw: &Gateway) {
    eventually(Duration::from_secs(15), "/readyz answers 200", || async {
        gw.http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// stable_token calls the sandbox answered for the owned account: (normal, force).
fn stable_calls(sandbox: &Sandbox) -> (u64, u64) {
    let stats = sandbox.stats();
    stats.stable_token_calls.get(OWNED).map_or((0, 0), |c| (c.normal, c.force))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_of_owned_accounts_only_keeps_each_token_fresh_with_one_call_per_lifetime() {
    let mut setup = Setup::new();
    setup.platform = false;
    setup.extra_toml = accounts_toml(false);
    let lifetime = Duration::from_secs(6);
    let sandbox = setup.sandbox_from(sandbox_config(&setup, lifetime, Duration::from_secs(3))).await;
    let gw = setup.start().await;
    ready(&gw).await;
    let start = Instant::now();
    let mut calls = 0;
    while start.elapsed() < lifetime * 3 {
        let answer = call(&gw).await;
        assert_eq!(answer["errcode"], 0, "at {:?}: {answer}", start.elapsed());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (normal, force) = stable_calls(&sandbox);
    // The first token, then one in each lifetime's window: four, five at most with the start.
    assert!((3..=5).contains(&normal), "{normal} stable_token calls over three lifetimes ({calls} API calls)");
    assert_eq!(force, 0, "no token was refused, so none was forced");
    let status: serde_json::Value = gw.admin_get(&format!("/admin/accounts/{OWNED}")).await.json().await.unwrap();
    assert_eq!(status["state"], "active", "{status}");
    assert!(status.get("access_token").is_none() && !status.to_string().contains(owned().secret.expose()));
    let platform = gw.admin_get("/admin/component").await;
    assert_eq!(platform.status(), 404, "no platform is configured");
    let refreshes = gw.metric("wxgate_token_refresh_total{kind=\"account\",result=\"ok\"}").await.unwrap_or(0.0);
    assert!(refreshes >= 3.0, "{refreshes}");
    assert_no_secrets(&setup.log(), &[owned().secret.expose()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_wechat_refused_is_replaced_by_one_force_refresh_however_many_calls_saw_it() {
    let mut setup = Setup::new();
    setup.extra_toml = accounts_toml(false);
    let sandbox = setup.sandbox_from(sandbox_config(&setup, Duration::from_secs(7200), Duration::from_secs(300))).await;
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    ready(&gw).await;
    assert_eq!(call(&gw).await["errcode"], 0);
    // JS-SDK tickets as for an authorizer: answered from the gateway's cache, one getticket.
    let url = gw.proxy_url(&format!("/{OWNED}/cgi-bin/ticket/getticket?type=jsapi&access_token={CLIENT_KEY}"));
    let ticket: serde_json::Value = gw.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(ticket["errcode"], 0, "{ticket}");
    let again: serde_json::Value = gw.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["ticket"], ticket["ticket"], "the cached ticket");
    assert_eq!(sandbox.current_js_ticket(&owned().appid, "jsapi").as_deref(), ticket["ticket"].as_str());
    sandbox.revoke_access_token(Some(&owned().appid));
    let answers = futures_util::future::join_all((0..20).map(|_| call(&gw))).await;
    for answer in &answers {
        assert_eq!(answer["errcode"], 0, "every call is replayed with the new token: {answer}");
    }
    let (_, force) = stable_calls(&sandbox);
    assert_eq!(force, 1, "one force refresh for twenty calls that saw the refusal");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_endpoints_answer_from_the_cache_and_never_reach_wechat() {
    let mut setup = Setup::new();
    setup.platform = false;
    setup.extra_toml = format!(
        "{}\n[[clients]]\nname = \"token-server\"\nkey = \"{REVEAL_KEY}\"\nauthorizers = [\"{OWNED}\"]\nreveal_tokens = true\n",
        accounts_toml(false)
    );
    let sandbox = setup.sandbox_from(sandbox_config(&setup, Duration::from_secs(7200), Duration::from_secs(300))).await;
    let gw = setup.start().await;
    ready(&gw).await;
    let before = stable_calls(&sandbox);
    let seen_before = sandbox.requests().len();
    let raw = get_revealed(&gw, &format!("/wxgate/token/{OWNED}")).await;
    let token = raw["access_token"].as_str().unwrap().to_owned();
    let classic =
        get_revealed(&gw, &format!("/cgi-bin/token?grant_type=client_credential&appid={OWNED}&secret=none")).await;
    assert_eq!(classic["access_token"], token.as_str(), "{classic}");
    assert!(classic["expires_in"].as_i64().unwrap() > 7000, "{classic}");
    let stable = gw
        .http
        .post(gw.proxy_url("/cgi-bin/stable_token"))
        .bearer_auth(REVEAL_KEY)
        .json(&serde_json::json!({ "grant_type": "client_credential", "appid": OWNED, "force_refresh": true }))
        .send()
        .await
        .unwrap();
    let stable: serde_json::Value = stable.json().await.unwrap();
    assert_eq!(stable["access_token"], token.as_str(), "even force_refresh is answered from the cache: {stable}");
    for path in ["/cgi-bin/token?grant_type=client_credential&appid=wx5555555555555555", "/cgi-bin/stable_token"] {
        let r = gw.http.post(gw.proxy_url(path)).bearer_auth(CLIENT_KEY).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 403, "{path}: a client without reveal_tokens");
    }
    assert_eq!(stable_calls(&sandbox), before, "no token call reached WeChat");
    assert!(sandbox.stats().token_calls.is_empty(), "no /cgi-bin/token call reached WeChat");
    let reached: Vec<String> = sandbox.requests()[seen_before..].iter().map(|r| r.path.clone()).collect();
    assert!(reached.iter().all(|p| !p.contains("token")), "{reached:?}");
}

/// What `path` answers the client with `reveal_tokens`.
async fn get_revealed(gw: &Gateway, path: &str) -> serde_json::Value {
    let r = gw.http.get(gw.proxy_url(path)).bearer_auth(REVEAL_KEY).send().await.unwrap();
    r.json().await.unwrap()
}

/// An owned account's push in `mode`, sealed and signed as WeChat does with `token` and `key`.
struct Push {
    query: String,
    body: String,
    nonce: String,
}

fn text_message(content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_555555555555]]></ToUserName><FromUserName><![CDATA[o_user_1]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{}</MsgId></xml>",
        unix_now(),
        rand::random::<u32>()
    )
}

fn push(mode: &str, message: &str, token: &str, key: &str) -> Push {
    let (timestamp, nonce) = (unix_now().to_string(), format!("n{}", rand::random::<u32>()));
    let signature = plain_signature(&Secret::new(token), &timestamp, &nonce);
    if mode == "plaintext" {
        let query = format!("signature={signature}&timestamp={timestamp}&nonce={nonce}&openid=o_user_1");
        return Push { query, body: message.to_owned(), nonce };
    }
    let crypt = MsgCrypt::new(&Secret::new(token), &Secret::new(key), OWNED).unwrap();
    let sealed = crypt.seal(message, &timestamp, &nonce);
    let body = match mode {
        // Compatible mode: the plain fields beside the sealed copy.
        "compatible" => message.replace("</xml>", &format!("<Encrypt><![CDATA[{}]]></Encrypt></xml>", sealed.encrypt)),
        _ => format!(
            "<xml><ToUserName><![CDATA[gh_555555555555]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            sealed.encrypt
        ),
    };
    let query = format!(
        "signature={signature}&timestamp={timestamp}&nonce={nonce}&openid=o_user_1&encrypt_type=aes&msg_signature={}",
        sealed.msg_signature
    );
    Push { query, body, nonce }
}

async fn post_push(gw: &Gateway, p: &Push) -> (u16, String) {
    let r = gw.http.post(gw.proxy_url(&format!("/wxgate/callback/{OWNED}?{}", p.query))).body(p.body.clone());
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A handler in reply mode that echoes the user's text as a passive reply, signature checked.
async fn echo_handler() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/wechat",
        axum::routing::post(move |uri: axum::http::Uri, body: String| {
            let counter = std::sync::Arc::clone(&counter);
            async move {
                let q: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
                let get = |k: &str| q.get(k).cloned().unwrap_or_default();
                if !check_signature("handlertoken", &get("signature"), &get("timestamp"), &get("nonce")) {
                    return (axum::http::StatusCode::FORBIDDEN, String::new());
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let content = field(&body, "Content").unwrap_or_default();
                let reply = format!(
                    "<xml><ToUserName><![CDATA[o_user_1]]></ToUserName><FromUserName><![CDATA[gh_555555555555]]></FromUserName>\
                     <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[echo {content}]]></Content></xml>"
                );
                (axum::http::StatusCode::OK, reply)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owned_accounts_own_server_takes_each_mode_answers_the_url_check_and_refuses_forgeries() {
    let (handler, seen) = echo_handler().await;
    let mut setup = Setup::new();
    setup.platform = false;
    setup.extra_toml = format!(
        "{}\n[[messages.routes]]\nname = \"own\"\nauthorizers = [\"{OWNED}\"]\nurl = \"http://{handler}/wechat\"\n\
         token = \"handlertoken\"\nmode = \"reply\"\n",
        accounts_toml(true)
    );
    let _sandbox =
        setup.sandbox_from(sandbox_config(&setup, Duration::from_secs(7200), Duration::from_secs(300))).await;
    let gw = setup.start().await;
    let a = owned();
    let (token, key) = (a.token.expose().to_owned(), a.encoding_aes_key.expose().to_owned());

    // WeChat's check of the server URL.
    let check = |signature: String, ts: &str, nonce: &str| {
        gw.proxy_url(&format!(
            "/wxgate/callback/{OWNED}?signature={signature}&timestamp={ts}&nonce={nonce}&echostr=E42"
        ))
    };
    let good = plain_signature(&a.token, "1700000000", "abc");
    let r = gw.http.get(check(good, "1700000000", "abc")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "E42".to_owned()));
    let forged = plain_signature(&Secret::new("anothertoken"), "1700000000", "abc");
    assert_eq!(gw.http.get(check(forged, "1700000000", "abc")).send().await.unwrap().status(), 403);

    let plain = push("plaintext", &text_message("one"), &token, &key);
    let (status, body) = post_push(&gw, &plain).await;
    assert_eq!(status, 200);
    assert_eq!(field(&body, "Content").as_deref(), Some("echo one"), "a plain reply to a plaintext push: {body}");
    for (mode, word) in [("safe", "two"), ("compatible", "three")] {
        let p = push(mode, &text_message(word), &token, &key);
        let (status, body) = post_push(&gw, &p).await;
        assert_eq!(status, 200, "{mode}: {body}");
        let reply = open_reply(&body, &p.nonce, &token, &key, OWNED);
        assert_eq!(field(&reply, "Content").as_deref(), Some(&*format!("echo {word}")), "{mode}");
    }

    let other_key = "OtherKeyOtherKeyOtherKeyOtherKeyOtherKey012";
    let refused = [
        ("plaintext signed with another token", push("plaintext", &text_message("x"), "anothertoken", &key), 403),
        ("safe, signed with another token", push("safe", &text_message("x"), "anothertoken", &key), 403),
        ("safe, sealed with another key", push("safe", &text_message("x"), &token, other_key), 400),
    ];
    for (what, p, want) in refused {
        let (status, body) = post_push(&gw, &p).await;
        assert_eq!(status, want, "{what}: {body}");
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3, "only the three genuine pushes reached the handler");
    assert_no_secrets(&setup.log(), &[&token, &key, "echo one"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_redis_refresh_each_owned_token_once() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    let prefix = format!("wxgate-owned-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let mut first = Setup::new();
    first.platform = false;
    first.store_toml = Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{URL}\"\nkey_prefix = \"{prefix}\""));
    first.extra_toml = accounts_toml(false);
    let lifetime = Duration::from_secs(6);
    let sandbox = first.sandbox_from(sandbox_config(&first, lifetime, Duration::from_secs(3))).await;
    let second = first.sibling();
    let gws = [first.start().await, second.start().await];
    for gw in &gws {
        ready(gw).await;
    }
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < lifetime * 3 {
        let answer = call(&gws[n % 2]).await;
        assert_eq!(answer["errcode"], 0, "instance {} at {:?}: {answer}", n % 2, start.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (normal, force) = stable_calls(&sandbox);
    assert!((3..=6).contains(&normal), "{normal} stable_token calls by two instances over three lifetimes");
    assert_eq!(force, 0);
}
