//! The quota guard against the real binary and the sandbox over HTTP: a burst cut to the
//! client's rate with nothing refused reaching WeChat, a client past its daily share refused
//! while another goes on, a 45009 holding one (account, API) until a clear-quota, the limits
//! changed by a reload, and two instances on one Redis keeping one rate, one share and one hold.
//! (The Beijing day's end is tested in `src/quota/tests.rs`, on a clock set before midnight.)

mod common;

use common::*;
use std::time::Duration;
use wxgate::sandbox::Sandbox;
use wxgate::AppId;

const A: &str = "wx1111111111111111";
const CRM_KEY: &str = "crm-client-key-0123456789";
const OPS_KEY: &str = "ops-client-key-0123456789";
const USER_INFO: &str = "/cgi-bin/user/info";

/// A gateway whose sandbox gives every API `daily_limit` calls a day, with `A` authorized.
/// `extra` follows the default client's `[[clients]]` entry: its first keys are that client's.
async fn gateway(setup: &mut Setup, extra: &str, daily_limit: u64) -> (Sandbox, Gateway) {
    setup.extra_toml = extra.to_owned();
    let sandbox =
        setup.sandbox_from(wxgate::sandbox::SandboxConfig { daily_limit, ..setup.sandbox_config(7200) }).await;
    let gw = setup.start().await;
    authorized(&sandbox, &gw).await;
    (sandbox, gw)
}

async fn authorized(sandbox: &Sandbox, gw: &Gateway) {
    ticket_delivered(sandbox).await;
    sandbox.authorize(&AppId::parse(A).unwrap()).await.unwrap();
    eventually(Duration::from_secs(10), "the account active", || async {
        let a: serde_json::Value = gw.admin_get(&format!("/admin/authorizers/{A}")).await.json().await.unwrap();
        a["state"] == "active"
    })
    .await;
}

fn crm(extra: &str) -> String {
    format!("\n[[clients]]\nname = \"crm\"\nkey = \"{CRM_KEY}\"\nauthorizers = [\"*\"]\n{extra}\n")
}

/// One call to `api` for `A` with `key`: status, errcode, `Retry-After`.
async fn call(gw: &Gateway, key: &str, api: &str) -> (u16, i64, Option<u64>, String) {
    let r = gw.http.get(gw.proxy_url(&format!("/{A}{api}?openid=o1"))).bearer_auth(key).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body: serde_json::Value = r.json().await.unwrap();
    (status, body["errcode"].as_i64().unwrap_or(0), retry, body["errmsg"].as_str().unwrap_or("").to_owned())
}

/// The crm client's (daily limit, calls used) today for its one pair, as `gw` reports them.
async fn crm_use(gw: &Gateway) -> Option<(Option<u64>, u64)> {
    let s: serde_json::Value = gw.admin_get("/admin/quota").await.json().await.unwrap();
    let crm = s["clients"].as_array().unwrap().iter().find(|c| c["name"] == "crm").cloned();
    crm.map(|c| (c["today"][0]["daily_limit"].as_u64(), c["today"][0]["used"].as_u64().unwrap_or(0)))
}

fn calls_to(sandbox: &Sandbox, api: &str) -> usize {
    sandbox.requests().iter().filter(|r| r.path.ends_with(api)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_cut_to_the_rate_and_refused_calls_reach_nothing() {
    let mut setup = Setup::new();
    let (sandbox, gw) = gateway(&mut setup, &format!("rate_per_second = 5\n{}", crm("")), 10_000).await;
    let before = calls_to(&sandbox, USER_INFO);
    let burst = futures_util::future::join_all((0..30).map(|_| call(&gw, CLIENT_KEY, USER_INFO))).await;
    let through = burst.iter().filter(|c| c.0 == 200).count();
    let refused: Vec<_> = burst.iter().filter(|c| c.0 == 429).collect();
    assert!((10..=11).contains(&through), "a full bucket is twice the rate: {through} of 30 went through");
    assert_eq!(through + refused.len(), 30);
    for (_, errcode, retry, errmsg) in &refused {
        assert_eq!(*errcode, -20429);
        assert!(retry.is_some_and(|s| s >= 1), "Retry-After");
        assert!(errmsg.contains("shop-backend") && errmsg.contains("rate"), "{errmsg}");
    }
    assert_eq!(calls_to(&sandbox, USER_INFO) - before, through, "refused calls reach nothing");
    assert_eq!(call(&gw, CRM_KEY, USER_INFO).await.0, 200, "another client is not held back");
    let refused_metric = r#"wxgate_rate_limited_total{client="shop-backend",reason="rate"}"#;
    assert_eq!(gw.metric(refused_metric).await, Some(refused.len() as f64));
    let status: serde_json::Value = gw.admin_get("/admin/quota").await.json().await.unwrap();
    assert_eq!(status["clients"][0]["rate_per_second"], 5.0, "{status}");
    assert_no_secrets(&setup.log(), &[CRM_KEY]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_past_its_share_is_refused_while_another_goes_on() {
    let mut setup = Setup::new();
    let extra = format!("daily_share = 0.5\n{}", crm("daily_share = 0.5"));
    let (sandbox, gw) = gateway(&mut setup, &extra, 10).await;
    assert_eq!(call(&gw, CLIENT_KEY, USER_INFO).await.0, 200);
    eventually(Duration::from_secs(10), "the API's daily limit learnt", || async {
        let s: serde_json::Value = gw.admin_get("/admin/quota").await.json().await.unwrap();
        s["clients"][1]["today"][0]["daily_limit"] == 10
    })
    .await;
    let mut through = 1;
    let refused = loop {
        let c = call(&gw, CLIENT_KEY, USER_INFO).await;
        if c.0 != 200 {
            break c;
        }
        through += 1;
        assert!(through <= 5, "past its share");
    };
    assert_eq!(through, 5, "half of 10");
    let (status, errcode, retry, errmsg) = refused;
    assert_eq!((status, errcode), (429, -20429));
    assert!(retry.is_some_and(|s| s <= 86_400));
    assert!(errmsg.contains(USER_INFO) && errmsg.contains("50 %"), "{errmsg}");
    let seen = calls_to(&sandbox, USER_INFO);
    assert_eq!(call(&gw, CRM_KEY, USER_INFO).await.0, 200, "the other client has its own share");
    assert_eq!(call(&gw, CLIENT_KEY, "/cgi-bin/message/custom/send").await.0, 200, "another API has its own");
    assert_eq!(call(&gw, CLIENT_KEY, USER_INFO).await.0, 429);
    assert_eq!(calls_to(&sandbox, USER_INFO), seen + 1, "only the other client's call reached WeChat");
    let s: serde_json::Value = gw.admin_get("/admin/quota").await.json().await.unwrap();
    let shop = s["clients"].as_array().unwrap().iter().find(|c| c["name"] == "shop-backend").unwrap().clone();
    let pair = shop["today"].as_array().unwrap().iter().find(|p| p["api"] == USER_INFO).unwrap().clone();
    assert_eq!(
        (pair["account"].as_str(), pair["used"].as_u64(), pair["allowed"].as_u64()),
        (Some(A), Some(5), Some(5))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_45009_stops_forwarding_that_pair_until_a_clear_quota() {
    let mut setup = Setup::new();
    let (sandbox, gw) = gateway(&mut setup, "", 3).await;
    for _ in 0..3 {
        assert_eq!(call(&gw, CLIENT_KEY, USER_INFO).await.0, 200);
    }
    let (status, errcode, _, errmsg) = call(&gw, CLIENT_KEY, USER_INFO).await;
    assert_eq!((status, errcode), (200, 45009), "WeChat's own 45009, passed on");
    assert!(!errmsg.starts_with("wxgate"), "{errmsg}");
    let seen = calls_to(&sandbox, USER_INFO);
    let (status, errcode, _, errmsg) = call(&gw, CLIENT_KEY, USER_INFO).await;
    assert_eq!((status, errcode), (200, 45009));
    assert!(errmsg.starts_with("wxgate:") && errmsg.contains("Beijing time"), "{errmsg}");
    assert_eq!(calls_to(&sandbox, USER_INFO), seen, "held at the gateway");
    assert_eq!(call(&gw, CLIENT_KEY, "/cgi-bin/message/custom/send").await.0, 200, "another API goes on");
    let s: serde_json::Value = gw.admin_get("/admin/quota").await.json().await.unwrap();
    assert_eq!((s["held"][0]["account"].as_str(), s["held"][0]["api"].as_str()), (Some(A), Some(USER_INFO)));
    assert_eq!(gw.metric(r#"wxgate_rate_limited_total{client="shop-backend",reason="quota"}"#).await, Some(1.0));

    let cleared = gw
        .http
        .post(gw.admin_url(&format!("/admin/authorizers/{A}/clear-quota")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 200);
    assert_eq!(call(&gw, CLIENT_KEY, USER_INFO).await.0, 200, "lifted by the clear-quota, and WeChat's reset");
    assert_eq!(calls_to(&sandbox, USER_INFO), seen + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_a_clients_limits_at_once() {
    let mut setup = Setup::new();
    let (_sandbox, gw) = gateway(&mut setup, "rate_per_second = 1", 10_000).await;
    let statuses = futures_util::future::join_all((0..6).map(|_| call(&gw, CLIENT_KEY, USER_INFO))).await;
    assert!(statuses.iter().any(|c| c.0 == 429));
    setup.extra_toml = "rate_per_second = 1000".into();
    let sample = r#"wxgate_config_reloads_total{result="ok"}"#;
    let before = gw.metric(sample).await.unwrap_or(0.0);
    std::fs::write(setup.dir.path().join("wxgate.toml"), setup.config_toml()).unwrap();
    assert!(std::process::Command::new("kill").arg("-HUP").arg(gw.pid().to_string()).status().unwrap().success());
    eventually(Duration::from_secs(10), "the reload", || async { gw.metric(sample).await.unwrap_or(0.0) > before })
        .await;
    let statuses = futures_util::future::join_all((0..20).map(|_| call(&gw, CLIENT_KEY, USER_INFO))).await;
    assert!(statuses.iter().all(|c| c.0 == 200), "the new rate holds at once");
}

/// Two instances on one Redis: a burst spread over both is cut to one bucket, a share used on
/// one is refused on the other, and a 45009 on one holds the pair on the other.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_redis_hold_one_rate_one_share_and_one_hold() {
    let prefix = format!("wxgate-quota-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let mut first = Setup::new();
    first.store_toml = Some(format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\nkey_prefix = \"{prefix}\""
    ));
    let ops = format!("\n[[clients]]\nname = \"ops\"\nkey = \"{OPS_KEY}\"\nauthorizers = [\"*\"]\n");
    let extra = format!("rate_per_second = 5\n{}{ops}", crm("daily_share = 0.5"));
    let (sandbox, one) = gateway(&mut first, &extra, 10).await;
    let second = first.sibling();
    let two = second.start().await;
    eventually(Duration::from_secs(10), "the second instance has the account", || async {
        two.admin_get(&format!("/admin/authorizers/{A}")).await.status() == 200
    })
    .await;

    let burst = futures_util::future::join_all((0..40).map(|i| {
        if i % 2 == 0 {
            call(&one, CLIENT_KEY, "/cgi-bin/rate")
        } else {
            call(&two, CLIENT_KEY, "/cgi-bin/rate")
        }
    }))
    .await;
    let through = burst.iter().filter(|c| c.0 == 200).count();
    assert!((10..=12).contains(&through), "one bucket of 10 for both: {through} went through");

    // The share: both instances learn the limit and count a call, then one uses the rest.
    assert_eq!(call(&one, CRM_KEY, USER_INFO).await.0, 200);
    assert_eq!(call(&two, CRM_KEY, USER_INFO).await.0, 200);
    eventually(Duration::from_secs(10), "both learnt the limit and both calls", || async {
        let (a, b) = (crm_use(&one).await, crm_use(&two).await);
        a == Some((Some(10), 2)) && b == Some((Some(10), 2))
    })
    .await;
    while call(&one, CRM_KEY, USER_INFO).await.0 == 200 {
        assert!(calls_to(&sandbox, USER_INFO) <= 5, "past the share of both");
    }
    assert_eq!(calls_to(&sandbox, USER_INFO), 5, "half of 10, between both instances");
    eventually(Duration::from_secs(10), "the other instance hears the share used", || async {
        crm_use(&two).await.is_some_and(|(_, used)| used >= 5)
    })
    .await;
    assert_eq!(call(&two, CRM_KEY, USER_INFO).await.0, 429);
    assert_eq!(calls_to(&sandbox, USER_INFO), 5, "refused on the other instance without asking WeChat");

    for _ in 0..10 {
        assert_eq!(call(&one, OPS_KEY, "/cgi-bin/held").await.1, 0);
    }
    assert_eq!(call(&one, OPS_KEY, "/cgi-bin/held").await.1, 45009, "WeChat's own");
    eventually(Duration::from_secs(10), "the hold reaches the other instance", || async {
        let s: serde_json::Value = two.admin_get("/admin/quota").await.json().await.unwrap();
        s["held"][0]["api"] == "/cgi-bin/held"
    })
    .await;
    let seen = calls_to(&sandbox, "/cgi-bin/held");
    let (_, errcode, _, errmsg) = call(&two, OPS_KEY, "/cgi-bin/held").await;
    assert!(errcode == 45009 && errmsg.starts_with("wxgate:"), "{errmsg}");
    assert_eq!(calls_to(&sandbox, "/cgi-bin/held"), seen, "held on the other instance without asking WeChat");
}
