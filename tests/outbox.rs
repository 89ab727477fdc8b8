//! The outbox in the real binary: its admin routes over a SQLite file filled beforehand, and
//! its worker attempting what the file holds.

mod common;

use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wxgate::crypto::MsgCrypt;
use wxgate::messages::outbox::{DeliveryId, OutboxMessage, OutboxState};
use wxgate::store::outbox::Outcome;
use wxgate::store::{OutboxStore, SqliteStore};
use wxgate::{AppId, Secret};

const PAYLOAD: &str = "<xml><Content>a very personal message</Content></xml>";

fn message(route: &str, received_at_ms: i64) -> OutboxMessage {
    OutboxMessage {
        id: DeliveryId::generate(),
        authorizer: Some(AppId::parse("wx1111111111111111").unwrap()),
        kind: wxgate::store::outbox::MessageKind::Account,
        seq: None,
        route: route.into(),
        msg_type: "text".into(),
        event: None,
        payload: Secret::new(PAYLOAD),
        received_at_ms,
        attempts: 0,
        next_attempt_at_ms: received_at_ms,
        state: OutboxState::Pending,
        last_error: None,
    }
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let r = gw.http.request(method, gw.admin_url(path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(!text.contains("personal"), "no content in the admin API: {text}");
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_redelivers_and_deletes_messages_without_their_content() {
    let setup = Setup::new();
    let component = AppId::parse(COMPONENT_APPID).unwrap();
    let now = unix_now() * 1000;
    let (pending, failed) = (message("shop", now - 2000), message("gone", now - 1000));
    {
        let store = SqliteStore::open(&setup.db_path()).unwrap();
        store.enqueue(&component, &pending).await.unwrap();
        store.enqueue(&component, &failed).await.unwrap();
        let claim = store.claim(&component, "gone", now, 1, Duration::from_secs(60)).await.unwrap().remove(0);
        let outcome = Outcome::Failed { error: "status 500".into() };
        assert!(store.settle(&component, &failed.id, &claim.token, &outcome).await.unwrap());
    }
    let gw = setup.start().await;

    let unauthorized = gw.http.get(gw.admin_url("/admin/messages")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);

    // The worker attempts the pending one: no route by that name here, so it waits for a retry.
    // The attempt is counted when it is claimed, its outcome recorded once it settles: wait for both.
    eventually(Duration::from_secs(10), "an attempt recorded", || async {
        let (status, body) = admin(&gw, reqwest::Method::GET, "/admin/messages?state=pending").await;
        assert_eq!(status, 200);
        body["messages"][0]["attempts"].as_u64() >= Some(1) && !body["messages"][0]["last_error"].is_null()
    })
    .await;
    let (_, listed) = admin(&gw, reqwest::Method::GET, "/admin/messages?state=pending").await;
    assert_eq!(listed["total"], 1);
    let entry = &listed["messages"][0];
    assert_eq!(entry["id"], pending.id.as_str());
    assert_eq!(entry["authorizer"], "wx1111111111111111");
    assert_eq!(entry["route"], "shop");
    assert_eq!(entry["msg_type"], "text");
    assert_eq!(entry["state"], "pending");
    assert_eq!(entry["last_error"], "route gone");
    assert_eq!(entry["received_at_ms"], now - 2000);
    assert!(entry["next_attempt_at_ms"].as_i64().unwrap() > now, "its retry is ahead");
    assert!(entry.get("payload").is_none());

    let (_, all) = admin(&gw, reqwest::Method::GET, "/admin/messages").await;
    assert_eq!(all["total"], 2);
    let (_, failed_list) = admin(&gw, reqwest::Method::GET, "/admin/messages?state=failed").await;
    assert_eq!(failed_list["messages"][0]["id"], failed.id.as_str());
    assert_eq!(failed_list["messages"][0]["last_error"], "status 500");
    let (_, paged) = admin(&gw, reqwest::Method::GET, "/admin/messages?offset=1&limit=1").await;
    assert_eq!((paged["total"].as_u64(), paged["messages"].as_array().unwrap().len()), (Some(2), 1));
    assert_eq!(paged["messages"][0]["id"], failed.id.as_str(), "oldest first");

    for bad in ["/admin/messages?state=delivered", "/admin/messages?limit=-1", "/admin/messages/not-an-id/redeliver"] {
        let method = if bad.ends_with("redeliver") { reqwest::Method::POST } else { reqwest::Method::GET };
        let (status, body) = admin(&gw, method, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["errmsg"].as_str().unwrap().starts_with("wxgate: "));
    }
    let unknown = DeliveryId::generate();
    let (status, _) = admin(&gw, reqwest::Method::POST, &format!("/admin/messages/{unknown}/redeliver")).await;
    assert_eq!(status, 404);
    let (status, _) = admin(&gw, reqwest::Method::DELETE, &format!("/admin/messages/{unknown}")).await;
    assert_eq!(status, 404);

    let (status, body) = admin(&gw, reqwest::Method::POST, &format!("/admin/messages/{}/redeliver", failed.id)).await;
    assert_eq!((status, &body["redeliver"]), (200, &serde_json::json!(failed.id.as_str())));
    let (_, failed_list) = admin(&gw, reqwest::Method::GET, "/admin/messages?state=failed").await;
    assert_eq!(failed_list["total"], 0, "pending again");
    eventually(Duration::from_secs(10), "the gauge counts both as pending", || async {
        gw.metric("wxgate_message_outbox{state=\"pending\"}").await == Some(2.0)
            && gw.metric("wxgate_message_outbox{state=\"failed\"}").await == Some(0.0)
    })
    .await;

    let (status, _) = admin(&gw, reqwest::Method::DELETE, &format!("/admin/messages/{}", pending.id)).await;
    assert_eq!(status, 200);
    let (status, _) = admin(&gw, reqwest::Method::DELETE, &format!("/admin/messages/{}", pending.id)).await;
    assert_eq!(status, 404, "gone");
    let (_, all) = admin(&gw, reqwest::Method::GET, "/admin/messages").await;
    assert_eq!(all["total"], 1);
    drop(gw);
    assert!(!setup.log().contains("personal"), "no content in the log");
    assert_no_secrets(&setup.log(), &[]);
}

const SHOP: &str = "wx1111111111111111";
const HANDLER_TOKEN: &str = "handlertoken42";

/// One request the handler took: which message (its MsgId), under which delivery id, which attempt.
#[derive(Clone, Debug)]
struct Seen {
    msg_id: String,
    delivery: String,
    attempt: u32,
}

/// A deliver-mode handler on a port of its own, which can be down (nothing listening) and come
/// up later on the same port; each request takes `delay`.
struct Handler {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Handler {
    fn down() -> Handler {
        Handler { addr: SocketAddr::from(([127, 0, 0, 1], free_port())), seen: Arc::default(), server: None }
    }

    async fn up(&mut self, delay: Duration) {
        let seen = Arc::clone(&self.seen);
        let app = axum::Router::new().route(
            "/wechat",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = Arc::clone(&seen);
                async move {
                    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let msg_id = body.split("<MsgId>").nth(1).and_then(|r| r.split("</MsgId>").next());
                    seen.lock().unwrap().push(Seen {
                        msg_id: msg_id.unwrap_or_default().to_owned(),
                        delivery: header("x-wxgate-delivery"),
                        attempt: header("x-wxgate-attempt").parse().unwrap_or(0),
                    });
                    tokio::time::sleep(delay).await;
                    "success"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }));
    }

    fn url(&self) -> String {
        format!("http://{}/wechat", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn msg_ids(&self) -> std::collections::HashSet<String> {
        self.seen().into_iter().map(|s| s.msg_id).collect()
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn deliver_route(handler: &Handler) -> String {
    format!(
        "\n[[messages.routes]]\nname = \"shop\"\nauthorizers = [\"{SHOP}\"]\nurl = \"{}\"\ntoken = \"{HANDLER_TOKEN}\"\nmode = \"deliver\"\n",
        handler.url()
    )
}

/// Pushes a text message to the `$APPID$` URL as WeChat does; WeChat must get `success`.
async fn push_text(gw: &Gateway, crypt: &MsgCrypt, msg_id: u64) {
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><FromUserName><![CDATA[o_user]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[personal words]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>"
    );
    let (timestamp, nonce) = ("1700000000", format!("{}", rand::random::<u32>()));
    let sealed = crypt.seal(&xml, timestamp, &nonce);
    let query = format!(
        "signature=x&timestamp={timestamp}&nonce={nonce}&openid=o_user&encrypt_type=aes&msg_signature={}",
        sealed.msg_signature
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_111111111111]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        sealed.encrypt
    );
    let r = gw.http.post(gw.proxy_url(&format!("/wxgate/callback/{SHOP}?{query}"))).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "success");
}

/// Every delivery id names one message, and a delivery id seen again is a flagged redelivery:
/// a higher X-Wxgate-Attempt each time. Returns how many requests were redeliveries.
fn check_deliveries(seen: &[Seen]) -> usize {
    let mut by_delivery: HashMap<&str, Vec<&Seen>> = HashMap::new();
    for s in seen {
        assert_eq!(s.delivery.len(), 32, "a delivery id on every request");
        by_delivery.entry(&s.delivery).or_default().push(s);
    }
    let mut redeliveries = 0;
    for (delivery, requests) in &by_delivery {
        assert!(requests.iter().all(|r| r.msg_id == requests[0].msg_id), "{delivery} names one message");
        for pair in requests.windows(2) {
            assert!(pair[1].attempt > pair[0].attempt, "{delivery}: a redelivery is flagged: {requests:?}");
        }
        redeliveries += requests.len() - 1;
    }
    let messages: std::collections::HashSet<&str> = seen.iter().map(|s| s.msg_id.as_str()).collect();
    assert_eq!(messages.len(), by_delivery.len(), "one delivery id per message");
    redeliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_mode_loses_nothing_across_a_kill_9_while_the_handler_is_down_and_mid_delivery() {
    let mut handler = Handler::down();
    let mut setup = Setup::new();
    setup.extra_toml = deliver_route(&handler);
    let crypt = crypt();
    let mut gw = setup.start().await;
    for msg_id in 1..=20 {
        push_text(&gw, &crypt, msg_id).await;
    }
    // Taken and answered `success`; the handler is down, so all wait in the outbox.
    let (_, listed) = admin(&gw, reqwest::Method::GET, "/admin/messages?state=pending").await;
    assert_eq!(listed["total"], 20);
    gw.signal_and_wait("KILL", Duration::from_secs(5)).expect("killed");

    // Back up, with a handler that comes up slow: kill the gateway again while calls are in flight.
    let mut gw = setup.start().await;
    handler.up(Duration::from_millis(400)).await;
    eventually(Duration::from_secs(30), "deliveries in flight", || async { !handler.seen().is_empty() }).await;
    gw.signal_and_wait("KILL", Duration::from_secs(5)).expect("killed");
    let in_flight = handler.seen().len();
    assert!(in_flight < 20, "killed before every message was delivered ({in_flight})");

    let gw = setup.start().await;
    eventually(Duration::from_secs(60), "every message delivered", || async {
        handler.msg_ids().len() == 20 && admin(&gw, reqwest::Method::GET, "/admin/messages").await.1["total"] == 0
    })
    .await;
    let seen = handler.seen();
    let expected: std::collections::HashSet<String> = (1..=20).map(|i| i.to_string()).collect();
    assert_eq!(handler.msg_ids(), expected, "every message delivered");
    let redeliveries = check_deliveries(&seen);
    assert!(redeliveries <= in_flight, "only what was in flight is delivered again ({redeliveries} > {in_flight})");
    drop(gw);
    assert!(!setup.log().contains("personal words"), "no message content in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_deliver_each_message_once() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    let prefix = format!("wxgate-test-outbox-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let mut handler = Handler::down();
    handler.up(Duration::from_millis(20)).await;
    let mut one = Setup::new();
    one.store_toml = Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{URL}\"\nkey_prefix = \"{prefix}\""));
    one.extra_toml = deliver_route(&handler);
    let two = one.sibling();
    let (gw1, gw2) = (one.start().await, two.start().await);
    let crypt = crypt();
    for msg_id in 1..=60u64 {
        push_text(if msg_id % 2 == 0 { &gw1 } else { &gw2 }, &crypt, msg_id).await;
    }
    eventually(Duration::from_secs(30), "every message delivered", || async {
        handler.msg_ids().len() == 60 && admin(&gw1, reqwest::Method::GET, "/admin/messages").await.1["total"] == 0
    })
    .await;
    // Every message is settled (removed) and no claim is left to run out: a second delivery
    // could come from nowhere now.
    let seen = handler.seen();
    assert_eq!(check_deliveries(&seen), 0, "no message delivered twice");
    assert_eq!(seen.len(), 60);
    let mut conn = redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::AsyncCommands::del(&mut conn, keys).await.unwrap();
    }
}
