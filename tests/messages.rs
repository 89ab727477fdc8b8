//! Messages of authorized accounts, end to end: the real binary, pushes sealed as WeChat seals
//! them to `/wxgate/callback/$APPID$`, and a handler written as for an official account in
//! plaintext mode (wechatpy's `check_signature`, then the XML), on real sockets.
//!
//! Passive replies are checked with a decryption written here with the `aes` and `cbc` crates,
//! not the gateway's own crypto.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::wxcrypt::{check_signature, field};
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wxgate::crypto::MsgCrypt;
use wxgate::{AppId, Secret};

const SHOP: &str = "wx1111111111111111";
const HANDLER_TOKEN: &str = "handlertoken42";
/// Words a user wrote: personal data that must never reach a log.
const USER_TEXT: &str = "my-private-words-7731";
const OPENID: &str = "o_user_private_openid_x1";

/// What the test handler does with the next requests.
#[derive(Clone, Debug)]
enum Behaviour {
    /// A passive text reply echoing the user's text.
    Echo,
    Status(u16),
    Sleep(Duration),
    Body(&'static str),
}

/// One request as the handler saw it, after wechatpy's checks.
#[derive(Clone, Debug)]
struct Seen {
    signature_ok: bool,
    openid: String,
    authorizer: String,
    delivery: String,
    attempt: u32,
    content_type: String,
    body: String,
    extra: Option<String>,
}

#[derive(Clone)]
struct Handler {
    addr: SocketAddr,
    state: Arc<HandlerState>,
}

struct HandlerState {
    behaviour: Mutex<Vec<Behaviour>>,
    seen: Mutex<Vec<Seen>>,
}

impl Handler {
    async fn start() -> Handler {
        let state = Arc::new(HandlerState { behaviour: Mutex::new(vec![Behaviour::Echo]), seen: Mutex::new(vec![]) });
        let app = axum::Router::new().route("/wechat", axum::routing::post(handle)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Handler { addr, state }
    }

    /// The behaviours for the next requests, in order; the last one stays.
    fn script(&self, behaviours: Vec<Behaviour>) {
        *self.state.behaviour.lock().unwrap() = behaviours;
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        format!("http://{}/wechat?extra=kept", self.addr)
    }
}

async fn handle(
    State(state): State<Arc<HandlerState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let signature_ok = check_signature(HANDLER_TOKEN, &get("signature"), &get("timestamp"), &get("nonce"));
    state.seen.lock().unwrap().push(Seen {
        signature_ok,
        openid: get("openid"),
        authorizer: header("x-wxgate-authorizer"),
        delivery: header("x-wxgate-delivery"),
        attempt: header("x-wxgate-attempt").parse().unwrap_or(0),
        content_type: header("content-type"),
        body: body.clone(),
        extra: q.get("extra").cloned(),
    });
    if !signature_ok {
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    }
    let behaviour = {
        let mut b = state.behaviour.lock().unwrap();
        if b.len() > 1 {
            b.remove(0)
        } else {
            b[0].clone()
        }
    };
    match behaviour {
        Behaviour::Echo => {
            let reply = format!(
                "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
                 <CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[echo:{}]]></Content></xml>",
                field(&body, "FromUserName").unwrap_or_default(),
                field(&body, "ToUserName").unwrap_or_default(),
                field(&body, "Content").unwrap_or_default(),
            );
            (StatusCode::OK, reply).into_response()
        }
        Behaviour::Status(s) => (StatusCode::from_u16(s).unwrap(), "no").into_response(),
        Behaviour::Sleep(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, "success").into_response()
        }
        Behaviour::Body(b) => (StatusCode::OK, b).into_response(),
    }
}

fn route_toml(name: &str, url: &str, mode: &str, extra: &str) -> String {
    format!(
        "\n[[messages.routes]]\nname = \"{name}\"\nauthorizers = [\"{SHOP}\"]\nurl = \"{url}\"\n\
         token = \"{HANDLER_TOKEN}\"\nmode = \"{mode}\"\n{extra}\n"
    )
}

fn messages_toml(reply_timeout_ms: u64) -> String {
    format!("\n[messages]\nreply_timeout_ms = {reply_timeout_ms}\n")
}

fn text_xml(content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><FromUserName><![CDATA[{OPENID}]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>"
    )
}

fn event_xml(event: &str, create_time: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><FromUserName><![CDATA[{OPENID}]]></FromUserName>\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event></xml>"
    )
}

/// A push as WeChat sends it to the message URL, with the crypt given (the component's unless
/// a test forges one).
struct Push {
    query: String,
    body: String,
    nonce: String,
}

fn sealed_push(crypt: &MsgCrypt, message: &str) -> Push {
    let (timestamp, nonce) = ("1700000000", format!("{}", rand::random::<u32>()));
    let sealed = crypt.seal(message, timestamp, &nonce);
    let query = format!(
        "signature=x&timestamp={timestamp}&nonce={nonce}&openid={OPENID}&encrypt_type=aes&msg_signature={}",
        sealed.msg_signature
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        sealed.encrypt
    );
    Push { query, body, nonce }
}

async fn post_message(gw: &Gateway, appid: &str, push: &Push) -> reqwest::Response {
    gw.http
        .post(gw.proxy_url(&format!("/wxgate/callback/{appid}?{}", push.query)))
        .body(push.body.clone())
        .send()
        .await
        .unwrap()
}

/// Decrypts a passive reply as the platform's own server would, without the gateway's code.
fn open_reply_independently(body: &str, nonce: &str) -> String {
    wxcrypt::open_reply(body, nonce, MSG_TOKEN, AES_KEY, COMPONENT_APPID)
}

/// A gateway with `toml` appended, and a handler.
async fn gateway_with(toml: impl Fn(&Handler) -> String) -> (Setup, Gateway, Handler) {
    let handler = Handler::start().await;
    let mut setup = Setup::new();
    setup.extra_toml = toml(&handler);
    let gw = setup.start().await;
    (setup, gw, handler)
}

async fn wait_seen(handler: &Handler, n: usize, within: Duration) {
    eventually(within, &format!("{n} handler requests"), || {
        let len = handler.seen().len();
        async move { len >= n }
    })
    .await;
}

#[tokio::test]
async fn a_plaintext_handler_verifies_the_request_and_its_answer_is_the_encrypted_reply() {
    let (setup, gw, handler) =
        gateway_with(|h| format!("{}{}", messages_toml(3000), route_toml("shop", &h.url(), "reply", ""))).await;
    let message = text_xml(USER_TEXT, 1001);
    let push = sealed_push(&crypt(), &message);
    let r = post_message(&gw, SHOP, &push).await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let reply = open_reply_independently(&body, &push.nonce);
    assert_eq!(field(&reply, "Content").as_deref(), Some(format!("echo:{USER_TEXT}").as_str()));
    assert_eq!(field(&reply, "ToUserName").as_deref(), Some(OPENID));

    let seen = handler.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert!(s.signature_ok, "wechatpy's check_signature passes");
    assert_eq!(s.body, message, "the XML exactly as WeChat sent it");
    assert_eq!(s.openid, OPENID);
    assert_eq!(s.authorizer, SHOP);
    assert_eq!(s.attempt, 1);
    assert!(s.delivery.len() == 32 && s.delivery.bytes().all(|b| b.is_ascii_hexdigit()), "{}", s.delivery);
    assert_eq!(s.content_type, "text/xml");
    assert_eq!(s.extra.as_deref(), Some("kept"), "the url's own query is kept");
    assert_eq!(gw.metric("wxgate_messages_total{result=\"replied\",route=\"shop\"}").await, Some(1.0));

    // Empty or `success`: WeChat gets `success`, and nothing is redelivered.
    handler.script(vec![Behaviour::Body(""), Behaviour::Body("success")]);
    for id in [1002, 1003] {
        let r = post_message(&gw, SHOP, &sealed_push(&crypt(), &text_xml(USER_TEXT, id))).await;
        assert_eq!(r.text().await.unwrap(), "success");
    }
    assert_eq!(gw.metric("wxgate_messages_total{result=\"no_reply\",route=\"shop\"}").await, Some(2.0));
    let log = setup.log();
    assert_no_secrets(&log, &[USER_TEXT, OPENID, HANDLER_TOKEN]);
}

#[tokio::test]
async fn each_failure_of_a_reply_handler_answers_success_and_is_delivered_later() {
    let (setup, gw, handler) =
        gateway_with(|h| format!("{}{}", messages_toml(500), route_toml("shop", &h.url(), "reply", ""))).await;
    let failures = [
        ("status", Behaviour::Status(503)),
        ("timeout", Behaviour::Sleep(Duration::from_millis(1500))),
        ("not xml", Behaviour::Body("thanks!")),
    ];
    for (i, (name, failure)) in failures.into_iter().enumerate() {
        // The first call fails; the outbox's redelivery is answered.
        handler.script(vec![failure, Behaviour::Body("success")]);
        let before = handler.seen().len();
        let started = std::time::Instant::now();
        let r = post_message(&gw, SHOP, &sealed_push(&crypt(), &text_xml(USER_TEXT, 2000 + i as u64))).await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.text().await.unwrap(), "success", "{name}: the user sees nothing wrong");
        assert!(started.elapsed() < Duration::from_millis(1400), "{name}: answered within reply_timeout_ms");
        wait_seen(&handler, before + 2, Duration::from_secs(20)).await;
        let seen = handler.seen();
        let (first, again) = (&seen[before], &seen[before + 1]);
        assert_eq!((first.attempt, again.attempt), (1, 2), "{name}");
        assert_eq!(first.delivery, again.delivery, "{name}: one delivery id on every attempt");
        assert_eq!(first.body, again.body, "{name}");
        assert!(again.signature_ok, "{name}");
    }
    assert_eq!(gw.metric("wxgate_messages_total{result=\"deferred\",route=\"shop\"}").await, Some(3.0));
    assert_no_secrets(&setup.log(), &[USER_TEXT, OPENID, HANDLER_TOKEN]);
}

#[tokio::test]
async fn deliver_mode_answers_success_at_once_and_delivers() {
    let (_setup, gw, handler) =
        gateway_with(|h| route_toml("orders", &h.url(), "deliver", "msg_types = [\"event\"]")).await;
    handler.script(vec![Behaviour::Status(500), Behaviour::Body("")]);
    let r = post_message(&gw, SHOP, &sealed_push(&crypt(), &event_xml("subscribe", 1_700_000_100))).await;
    assert_eq!(r.text().await.unwrap(), "success");
    wait_seen(&handler, 2, Duration::from_secs(20)).await;
    let seen = handler.seen();
    assert_eq!((seen[0].attempt, seen[1].attempt), (1, 2));
    assert_eq!(seen[0].delivery, seen[1].delivery);
    assert_eq!(gw.metric("wxgate_messages_total{result=\"queued\",route=\"orders\"}").await, Some(1.0));
    // A text matches no route: `success`, counted as unrouted, no handler called.
    let r = post_message(&gw, SHOP, &sealed_push(&crypt(), &text_xml(USER_TEXT, 3001))).await;
    assert_eq!(r.text().await.unwrap(), "success");
    assert_eq!(gw.metric("wxgate_messages_total{result=\"unrouted\",route=\"-\"}").await, Some(1.0));
    assert_eq!(handler.seen().len(), 2);
}

#[tokio::test]
async fn wechats_retries_are_dropped_even_after_a_restart() {
    let handler = Handler::start().await;
    let mut setup = Setup::new();
    setup.extra_toml = route_toml("shop", &handler.url(), "reply", "");
    let mut gw = setup.start().await;
    let text = text_xml(USER_TEXT, 4001);
    let event = event_xml("CLICK", 1_700_000_200);
    for message in [&text, &event] {
        let first = post_message(&gw, SHOP, &sealed_push(&crypt(), message)).await;
        assert_eq!(first.status(), 200);
        // WeChat's retry: same message, new timestamp/nonce/signature.
        let retry = post_message(&gw, SHOP, &sealed_push(&crypt(), message)).await;
        assert_eq!(retry.text().await.unwrap(), "success");
    }
    assert_eq!(handler.seen().len(), 2, "one call per message");
    gw.kill();
    let gw = setup.start().await;
    for message in [&text, &event] {
        let retry = post_message(&gw, SHOP, &sealed_push(&crypt(), message)).await;
        assert_eq!(retry.text().await.unwrap(), "success");
    }
    assert_eq!(handler.seen().len(), 2, "still recognised after a restart");
    assert_eq!(gw.metric("wxgate_messages_total{result=\"duplicate\",route=\"-\"}").await, Some(2.0));
    // The same event a second later is a new one.
    let later = post_message(&gw, SHOP, &sealed_push(&crypt(), &event_xml("CLICK", 1_700_000_201))).await;
    assert_eq!(later.status(), 200);
    assert_eq!(handler.seen().len(), 3);
}

#[tokio::test]
async fn forged_tampered_misaddressed_and_oversized_pushes_get_4xx_and_reach_no_handler() {
    let (setup, gw, handler) = gateway_with(|h| route_toml("shop", &h.url(), "deliver", "")).await;
    let good = sealed_push(&crypt(), &text_xml(USER_TEXT, 5001));
    let (unsigned, _) = good.query.rsplit_once("msg_signature=").unwrap();
    let forged = Push { query: format!("{unsigned}msg_signature={}", "0".repeat(40)), ..sealed_push(&crypt(), "x") };
    let mut tampered = sealed_push(&crypt(), &text_xml(USER_TEXT, 5002));
    let at = tampered.body.find("<![CDATA[").unwrap() + 60;
    let flipped = if &tampered.body[at..at + 1] == "A" { "B" } else { "A" };
    tampered.body.replace_range(at..at + 1, flipped);
    let other = MsgCrypt::new(&Secret::new(MSG_TOKEN), &Secret::new(AES_KEY), "wxfedcba9876543210").unwrap();
    let misaddressed = sealed_push(&other, &text_xml(USER_TEXT, 5003));
    let oversized = Push { body: "x".repeat(65 * 1024), ..sealed_push(&crypt(), &text_xml(USER_TEXT, 5004)) };
    let no_signature = Push { query: "timestamp=1&nonce=2&encrypt_type=aes".into(), ..sealed_push(&crypt(), "x") };
    let xxe = Push {
        body: r#"<!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><Encrypt>&x;</Encrypt></xml>"#.into(),
        ..sealed_push(&crypt(), "x")
    };
    let cases = [
        ("forged signature", SHOP, &forged, 403),
        ("tampered ciphertext", SHOP, &tampered, 403),
        ("another receive id", SHOP, &misaddressed, 400),
        ("oversized", SHOP, &oversized, 413),
        ("no msg_signature", SHOP, &no_signature, 400),
        ("XXE", SHOP, &xxe, 400),
        ("not an appid", "shop", &good, 404),
    ];
    for (name, appid, push, status) in cases {
        let r = post_message(&gw, appid, push).await;
        assert_eq!(r.status().as_u16(), status, "{name}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert!(err["errmsg"].as_str().unwrap().starts_with("wxgate: "), "{name}: {err}");
    }
    let r = gw.http.get(gw.proxy_url(&format!("/wxgate/callback/{SHOP}"))).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // The good one still goes through, so the handler was reachable all along.
    assert_eq!(post_message(&gw, SHOP, &good).await.text().await.unwrap(), "success");
    wait_seen(&handler, 1, Duration::from_secs(10)).await;
    assert_eq!(handler.seen().len(), 1, "no bad push reached the handler");
    assert_eq!(handler.seen()[0].body, text_xml(USER_TEXT, 5001));
    assert_no_secrets(&setup.log(), &[USER_TEXT, OPENID, HANDLER_TOKEN]);
}

#[tokio::test]
async fn authentic_pushes_of_unknown_shape_are_answered_success_on_both_urls() {
    let (_setup, gw, handler) = gateway_with(|h| route_toml("shop", &h.url(), "deliver", "")).await;
    let odd = "<xml><ToUserName>gh_111111111111</ToUserName><Something>new</Something></xml>";
    let r = post_message(&gw, SHOP, &sealed_push(&crypt(), odd)).await;
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "success".to_owned()));
    assert_eq!(gw.metric("wxgate_messages_total{result=\"unknown\",route=\"-\"}").await, Some(1.0));
    let component =
        format!("<xml><AppId>{COMPONENT_APPID}</AppId><CreateTime>1700000000</CreateTime><Novel>1</Novel></xml>");
    let r = gw.push(&crypt(), &component).await;
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "success".to_owned()));
    assert_eq!(gw.metric("wxgate_callback_events_total{info_type=\"other\"}").await, Some(1.0));
    assert!(handler.seen().is_empty());
}

#[tokio::test]
async fn the_whole_release_check_passes_for_an_official_account_and_a_mini_program() {
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    // A catch-all route: the release check must answer before any route.
    let handler = Handler::start().await;
    setup.extra_toml =
        format!("\n[[messages.routes]]\nname = \"all\"\nauthorizers = [\"*\"]\nurl = \"{}\"\ntoken = \"{HANDLER_TOKEN}\"\nmode = \"reply\"\n", handler.url());
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    // The QUERY_AUTH_CODE step exchanges the code with the component token: WeChat runs the
    // check against a platform that holds one, so wait for it (under load it takes a while).
    common::eventually(Duration::from_secs(10), "readyz", || async {
        gw.http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    for appid in ["wx570bc396a51b8ff8", "wxd101a85aa106f53e"] {
        let report = sandbox.release_check(&AppId::parse(appid).unwrap()).await;
        assert!(report.passed, "{appid}: {report:?}");
        assert_eq!(report.steps.len(), 4);
    }
    // Over HTTP too, as an operator would run it.
    let r: serde_json::Value = gw
        .http
        .post(format!("{}/sandbox/release-check?appid=wxc39235c15087f6f3", sandbox.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["passed"], true, "{r}");
    assert!(handler.seen().is_empty(), "the release check never reaches a route");
    let listed: serde_json::Value = gw.admin_get("/admin/authorizers").await.json().await.unwrap();
    assert!(!listed.to_string().contains("wx570bc396a51b8ff8"), "test accounts are not kept: {listed}");
    let sent = sandbox.sent_texts();
    assert_eq!(sent.len(), 3, "one customer-service text per release check");
    let codes: Vec<String> = sent.iter().map(|t| t.content.trim_end_matches("_from_api").to_owned()).collect();
    let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    assert_no_secrets(&setup.log(), &codes);
}

/// WeChat's check can send QUERY_AUTH_CODE before the gateway holds a component token (the
/// platform was just created, or WeChat is busy): the exchange is tried again within WeChat's
/// window, not dropped.
#[tokio::test]
async fn a_query_auth_code_before_the_first_component_token_is_answered_once_the_token_comes() {
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    sandbox.set_faults(wxgate::sandbox::Faults {
        errcode: Some(-1),
        path_contains: Some("api_component_token".into()),
        ..Default::default()
    });
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    let r = gw.http.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "no component token can be had yet");
    let healer = sandbox.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        healer.set_faults(wxgate::sandbox::Faults::default());
    });
    let report = sandbox.release_check(&AppId::parse("wx570bc396a51b8ff8").unwrap()).await;
    assert!(report.passed, "{report:?}; log:\n{}", setup.log());
    assert_eq!(sandbox.sent_texts().len(), 1, "one customer-service text");
}

/// A message the store refuses (a full disk, here a trigger) gets 503, and WeChat's retry of it
/// is then taken and delivered, not dropped as a duplicate: the retry key is recorded only with
/// the message (deliver mode), or forgotten when the deferred message is refused (reply mode).
#[tokio::test]
async fn a_message_the_store_refuses_gets_503_and_wechats_retry_is_taken() {
    let (setup, gw, handler) = gateway_with(|h| {
        format!(
            "{}\n{}",
            route_toml("orders", &h.url(), "deliver", "msg_types = [\"event\"]"),
            route_toml("shop", &h.url(), "reply", "msg_types = [\"text\"]")
        )
    })
    .await;
    // The reply-mode call fails, then the retry's call answers nothing.
    handler.script(vec![Behaviour::Status(500), Behaviour::Body("")]);
    let db = rusqlite::Connection::open(setup.db_path()).unwrap();
    db.execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'full'); END;").unwrap();
    let event = event_xml("subscribe", 1_700_000_300);
    let text = text_xml(USER_TEXT, 5001);
    for message in [&event, &text] {
        let r = post_message(&gw, SHOP, &sealed_push(&crypt(), message)).await;
        assert_eq!(r.status(), 503, "the message could not be kept");
    }
    db.execute_batch("DROP TRIGGER refuse").unwrap();
    for message in [&event, &text] {
        let retry = post_message(&gw, SHOP, &sealed_push(&crypt(), message)).await;
        assert_eq!(retry.status(), 200);
        assert_eq!(retry.text().await.unwrap(), "success");
    }
    // The reply-mode message: two calls (the failed one, the retry's); the event: delivered.
    wait_seen(&handler, 3, Duration::from_secs(20)).await;
    assert_eq!(gw.metric("wxgate_messages_total{result=\"queued\",route=\"orders\"}").await, Some(1.0));
    assert_eq!(gw.metric("wxgate_messages_total{result=\"duplicate\",route=\"-\"}").await, None);
}
