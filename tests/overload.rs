//! Pushes past what the store commits in time: refused at once with 503 (WeChat retries them),
//! never held past WeChat's window; every push answered `success` reaches the handler once.

mod common;

use common::redis_server::OwnRedis;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wxgate::callback::admission::MIN_LIMIT;

const SHOP: &str = "wx1111111111111111";

/// A handler that counts each MsgId it is given.
async fn counting_handler() -> (SocketAddr, Arc<Mutex<HashMap<u64, u32>>>) {
    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let counts = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/wechat",
        axum::routing::post(move |body: String| {
            let id = body.split("<MsgId>").nth(1).and_then(|r| r.split("</MsgId>").next());
            if let Some(id) = id.and_then(|i| i.parse().ok()) {
                *counts.lock().unwrap().entry(id).or_default() += 1;
            }
            async { "success" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Message `n` pushed to the message URL as WeChat pushes it: its status, its body, how long
/// it took.
async fn push(http: &reqwest::Client, gw: &Gateway, n: u64) -> (u16, String, Duration) {
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o_user]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content>\
         <MsgId>{n}</MsgId></xml>"
    );
    let nonce = format!("n{n}");
    let sealed = crypt().seal(&xml, "1700000000", &nonce);
    let query = format!(
        "signature=x&timestamp=1700000000&nonce={nonce}&openid=o_user&encrypt_type=aes&msg_signature={}",
        sealed.msg_signature
    );
    let started = Instant::now();
    let r = http
        .post(gw.proxy_url(&format!("/wxgate/callback/{SHOP}?{query}")))
        .body(envelope(&sealed.encrypt))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap(), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_gets_fast_503s_and_every_success_is_delivered() {
    let redis = OwnRedis::start();
    let (handler, seen) = counting_handler().await;
    let mut setup = Setup::new();
    // Commands wait out the whole pause: the pushes admitted hold their places meanwhile.
    setup.store_toml =
        Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 8000", redis.url()));
    setup.extra_toml = format!(
        "\n[[messages.routes]]\nname = \"shop\"\nauthorizers = [\"{SHOP}\"]\nurl = \"http://{handler}/wechat\"\n\
         token = \"handlertoken42\"\nmode = \"deliver\"\n"
    );
    let gw = setup.start().await;
    let (status, body, _) = push(&gw.http, &gw, 0).await;
    assert_eq!((status, body.as_str()), (200, "success"), "a push is taken while the store keeps up");

    // Redis stops taking writes: every push admitted waits on its commit, and what passes the
    // admission limit meanwhile must be refused at once.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(5000).arg("WRITE").query(&mut redis.conn()).unwrap();
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
    let pushes = (1..=(MIN_LIMIT + 64) as u64).map(|n| {
        let (http, gw) = (http.clone(), &gw);
        async move { (n, push(&http, gw, n).await) }
    });
    let answers = futures_util::future::join_all(pushes).await;

    let refused: Vec<_> = answers.iter().filter(|(_, (_, body, _))| body.contains("at capacity")).collect();
    assert!(refused.len() >= 64, "past the limit, pushes are refused: {} of {}", refused.len(), answers.len());
    for (n, (status, _, took)) in &refused {
        assert_eq!(*status, 503, "push {n}");
        assert!(*took < Duration::from_secs(1), "push {n} refused within a second, not held ({took:?})");
    }
    let overloads = gw.metric("wxgate_callback_rejected_total{reason=\"overload\"}").await.unwrap_or(0.0);
    assert_eq!(overloads as usize, refused.len(), "each refusal counted");

    // Each one taken is delivered once; none refused reaches the handler.
    let taken: Vec<u64> =
        answers.iter().filter(|(_, (s, b, _))| *s == 200 && b == "success").map(|(n, _)| *n).chain([0]).collect();
    eventually(Duration::from_secs(30), "every push answered success delivered", || async {
        let seen = seen.lock().unwrap();
        taken.iter().all(|n| seen.contains_key(n))
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.values().all(|c| *c == 1), "none delivered twice");
    for (n, _) in &refused {
        assert!(!seen.contains_key(n), "refused push {n} was not kept");
    }
    assert_no_secrets(&setup.log(), &[]);
}
