//! JS-SDK tickets against the sandbox: a crowd of pages costs one `getticket`, the proxied
//! `getticket` is answered from the cache, instances on one Redis share one ticket, and no ticket
//! appears in a log or an admin answer.

mod common;

use common::*;
use sha1::{Digest, Sha1};
use std::time::{Duration, Instant};
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

fn account() -> AppId {
    AppId::parse("wx00000000000000a1").unwrap()
}

const PAGE: &str = "https://shop.example.com/item?id=7&from=menu";

async fn start_ready(setup: &mut Setup, sandbox: Option<&Sandbox>, lifetime: u64) -> (Sandbox, Gateway) {
    let sandbox = match sandbox {
        Some(s) => s.clone(),
        None => setup.sandbox(lifetime).await,
    };
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    eventually(Duration::from_secs(15), "readyz", || async {
        gw.http.get(gw.admin_url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    (sandbox, gw)
}

async fn wait_active(gw: &Gateway) {
    eventually(Duration::from_secs(15), "the account is active", || async {
        let r = gw.admin_get(&format!("/admin/authorizers/{}", account())).await;
        r.status() == 200 && r.json::<serde_json::Value>().await.is_ok_and(|v| v["state"] == "active")
    })
    .await;
}

async fn wx_config(gw: &Gateway) -> serde_json::Value {
    let url = gw.proxy_url(&format!("/wxgate/jssdk/{}/config?url={}", account(), urlencode(PAGE)));
    let r = gw.http.get(url).header("X-Wxgate-Key", CLIENT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The proxied getticket, as an SDK would make it.
async fn proxied_ticket(gw: &Gateway) -> String {
    let url = gw.proxy_url(&format!("/{}/cgi-bin/ticket/getticket?type=jsapi&access_token={CLIENT_KEY}", account()));
    let answer: serde_json::Value = gw.http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["errcode"], 0, "{answer}");
    assert!(answer["expires_in"].as_i64().unwrap() > 0);
    answer["ticket"].as_str().unwrap().to_owned()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The signature a page's `wx.config` needs, computed here from the ticket the sandbox issued.
fn signed_with(ticket: &str, config: &serde_json::Value) -> bool {
    let plain = format!(
        "jsapi_ticket={ticket}&noncestr={}&timestamp={}&url={PAGE}",
        config["nonceStr"].as_str().unwrap(),
        config["timestamp"]
    );
    hex::encode(Sha1::digest(plain.as_bytes())) == config["signature"].as_str().unwrap()
}

fn getticket_calls(sandbox: &Sandbox) -> u64 {
    sandbox.stats().getticket_calls.get(&format!("{}:jsapi", account())).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_pages_cost_one_getticket_and_the_ticket_never_shows() {
    let mut setup = Setup::new();
    let (sandbox, gw) = start_ready(&mut setup, None, 7200).await;
    sandbox.authorize(&account()).await.unwrap();
    wait_active(&gw).await;

    let pages: Vec<_> = (0..200)
        .map(|_| {
            let (http, url) =
                (gw.http.clone(), gw.proxy_url(&format!("/wxgate/jssdk/{}/config?url={}", account(), urlencode(PAGE))));
            tokio::spawn(async move {
                let r = http.get(url).header("X-Wxgate-Key", CLIENT_KEY).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<serde_json::Value>().await.unwrap()
            })
        })
        .collect();
    let ticket = {
        let mut configs = Vec::new();
        for p in pages {
            configs.push(p.await.unwrap());
        }
        let ticket = sandbox.current_js_ticket(&account(), "jsapi").expect("a ticket was issued");
        for c in &configs {
            assert_eq!(c["appId"], &*account().as_str());
            assert!(signed_with(&ticket, c), "{c}");
        }
        ticket
    };
    assert_eq!(getticket_calls(&sandbox), 1, "one getticket for 200 pages");

    // POST works too; the proxied getticket is answered from the cache, never forwarded.
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/wxgate/jssdk/{}/config", account())))
        .bearer_auth(CLIENT_KEY)
        .json(&serde_json::json!({ "url": format!("{PAGE}#section") }))
        .send()
        .await
        .unwrap();
    assert!(signed_with(&ticket, &r.json().await.unwrap()), "the # part is not signed");
    assert_eq!(proxied_ticket(&gw).await, ticket);
    assert_eq!(getticket_calls(&sandbox), 1);
    let bad = gw.http.get(gw.proxy_url(&format!("/wxgate/jssdk/{}/config?url=/relative", account())));
    assert_eq!(bad.header("X-Wxgate-Key", CLIENT_KEY).send().await.unwrap().status(), 400);
    let anonymous = gw.http.get(gw.proxy_url(&format!("/wxgate/jssdk/{}/config?url={PAGE}", account())));
    assert_eq!(anonymous.send().await.unwrap().status(), 401);

    let admin = gw.admin_get(&format!("/admin/authorizers/{}", account())).await.text().await.unwrap();
    assert!(!admin.contains(&ticket));
    let component = gw.admin_get("/admin/component").await.text().await.unwrap();
    assert!(!component.contains(&ticket));
    assert_no_secrets(&setup.log(), &[&ticket]);
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_on_one_redis_share_one_ticket_and_adopt_each_others_rotations() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    let prefix = format!("wxgate-jssdk-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let mut first = Setup::new();
    first.store_toml = Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{URL}\"\nkey_prefix = \"{prefix}\""));
    first.extra_toml = "\n[refresh]\nahead_secs = 60\n".into();
    // Tickets (and tokens) of 8 s: refreshed 2 s before they expire, while pages ask.
    let (sandbox, one) = start_ready(&mut first, None, 8).await;
    let second = first.sibling();
    let two = second.start().await;
    sandbox.authorize(&account()).await.unwrap();
    wait_active(&one).await;
    wait_active(&two).await;

    let fetched = proxied_ticket(&one).await;
    assert_eq!(proxied_ticket(&two).await, fetched, "the second instance took the stored ticket");
    assert_eq!(getticket_calls(&sandbox), 1);

    // Both keep serving pages across rotations; each signs with a ticket that works.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(12) {
        for gw in [&one, &two] {
            // A rotation may fall between any two calls: the page is signed with the ticket held
            // just before it or the one held just after, and either still works at WeChat.
            let before = proxied_ticket(gw).await;
            let config = wx_config(gw).await;
            let after = proxied_ticket(gw).await;
            let signer = [&before, &after].into_iter().find(|t| signed_with(t, &config));
            let signer = signer.unwrap_or_else(|| panic!("signed with neither ticket held around it: {config}"));
            assert!(sandbox.js_ticket_works(&account(), "jsapi", signer), "signed with a retired ticket");
            assert!(sandbox.js_ticket_works(&account(), "jsapi", &after), "a retired ticket was served");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One fetcher: the first fetch and a rotation every 5.5–6 s. Two fetchers would make six.
    let calls = getticket_calls(&sandbox);
    assert!((2..=4).contains(&calls), "{calls} getticket calls in 12 s");
    for s in [&first, &second] {
        assert_no_secrets(&s.log(), &[&fetched]);
    }
    let mut conn = redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::AsyncCommands::del(&mut conn, keys).await.unwrap();
    }
}
