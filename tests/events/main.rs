//! Platform events to the apps, end to end: the real binary, the sandbox playing WeChat over real
//! HTTP (authorizations, revocations, fast registration), the real SQLite file or the real Redis,
//! and a handler written as a platform's backend would write one: WeChat's plaintext-mode
//! signature checked over the route's token, then the XML.

#[path = "../common/mod.rs"]
mod common;
mod handler;

use common::*;
use handler::{xml_field, Handler, Seen, ROUTE_TOKEN};
use std::collections::HashMap;
use std::time::Duration;
use wxgate::AppId;
const SHOP: &str = "wx1111111111111111";
const CAFE: &str = "wx2222222222222222";

fn events_route(name: &str, handler: &Handler, info_types: Option<&str>) -> String {
    let types = info_types.map(|t| format!("info_types = [{t}]\n")).unwrap_or_default();
    format!("\n[[events.routes]]\nname = \"{name}\"\n{types}url = \"{}\"\ntoken = \"{ROUTE_TOKEN}\"\n", handler.url())
}

/// A client that may also call component-scope APIs (fast registration).
fn platform_client() -> String {
    "\n[[clients]]\nname = \"platform\"\nkey = \"platform-key-0123456789\"\nauthorizers = [\"*\"]\ncomponent = true\n"
        .to_owned()
}

async fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    gw.admin_get(path).await.json().await.unwrap()
}

/// Every delivery id names one event, and one seen again is a flagged redelivery.
fn check_deliveries(seen: &[Seen]) {
    let mut by_delivery: HashMap<&str, Vec<&Seen>> = HashMap::new();
    for s in seen {
        assert_eq!(s.delivery.len(), 32, "a delivery id on every request");
        by_delivery.entry(&s.delivery).or_default().push(s);
    }
    for (delivery, requests) in &by_delivery {
        assert!(requests.iter().all(|r| r.body == requests[0].body), "{delivery} names one event");
        for pair in requests.windows(2) {
            assert!(pair[1].attempt > pair[0].attempt, "{delivery}: a redelivery is flagged: {requests:?}");
        }
        assert_eq!(requests.iter().filter(|r| r.taken).count(), 1, "{delivery} taken once: {requests:?}");
    }
}

/// The order in which `appid`'s events were taken.
fn taken_order(handler: &Handler, appid: &str) -> Vec<String> {
    handler.taken().into_iter().filter(|s| s.authorizer.as_deref() == Some(appid)).map(|s| s.info_type).collect()
}

/// Until the gateway holds `appid`: an owner who revokes before the gateway could exchange the
/// authorization's code leaves nothing for an app to use, and that `authorized` is not handed on.
async fn wait_active(gw: &Gateway, appid: &str) {
    eventually(Duration::from_secs(20), "the account is held", || async {
        admin_json(gw, &format!("/admin/authorizers/{appid}")).await["state"] == "active"
    })
    .await;
}

fn unauthorized_xml(appid: &str, create_time: i64) -> String {
    format!(
        "<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><CreateTime>{create_time}</CreateTime>\
         <InfoType><![CDATA[unauthorized]]></InfoType><AuthorizerAppid><![CDATA[{appid}]]></AuthorizerAppid></xml>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_kind_reaches_a_plaintext_handler_once_the_gateway_acted() {
    let handler = Handler::up().await;
    let only_revocations = Handler::up().await;
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    setup.extra_toml = format!(
        "{}{}{}",
        platform_client(),
        events_route("tenants", &handler, None),
        events_route("offboarding", &only_revocations, Some("\"unauthorized\""))
    );
    let gw = setup.start().await;
    handler.call_through(gw.proxy);
    ticket_delivered(&sandbox).await;
    let shop = AppId::parse(SHOP).unwrap();

    sandbox.authorize(&shop).await.unwrap();
    eventually(Duration::from_secs(20), "authorized handed on", || async {
        handler.has_taken("authorized", Some(SHOP))
    })
    .await;
    sandbox.authorize(&shop).await.unwrap();
    eventually(Duration::from_secs(20), "updateauthorized handed on", || async {
        handler.has_taken("updateauthorized", Some(SHOP))
    })
    .await;
    sandbox.unauthorize(&shop).await.unwrap();
    eventually(Duration::from_secs(20), "unauthorized handed on to both routes", || async {
        handler.has_taken("unauthorized", Some(SHOP)) && only_revocations.has_taken("unauthorized", Some(SHOP))
    })
    .await;
    let shop_status = admin_json(&gw, &format!("/admin/authorizers/{SHOP}")).await;
    assert_eq!(shop_status["state"], "revoked", "revoked before it was handed on: {shop_status}");
    assert_eq!(taken_order(&handler, SHOP), ["authorized", "updateauthorized", "unauthorized"]);
    assert!(
        handler
            .taken()
            .iter()
            .filter(|s| s.info_type.ends_with("authorized") && s.info_type != "unauthorized")
            .all(|s| s.call_errcode == Some(0)),
        "the account answered through the gateway the moment its authorization arrived: {:?}",
        handler.taken()
    );
    assert_eq!(only_revocations.taken().len(), 1, "info_types narrows a route: {:?}", only_revocations.seen());

    // Fast registration through the gateway: the sandbox pushes notify_third_fasteregister.
    let created: serde_json::Value = gw
        .http
        .post(gw.proxy_url("/component/cgi-bin/component/fastregisterweapp?action=create"))
        .bearer_auth("platform-key-0123456789")
        .json(&serde_json::json!({
            "name": "Shop Ltd", "code": "91440300MA5X", "code_type": 1,
            "legal_persona_wechat": "boss_wx", "legal_persona_name": "Li", "component_phone": "0755"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["errcode"], 0, "{created}");
    eventually(Duration::from_secs(20), "the fast registration handed on", || async {
        handler.taken().iter().any(|s| s.info_type == "notify_third_fasteregister")
    })
    .await;
    let registered = handler.taken().into_iter().find(|s| s.info_type == "notify_third_fasteregister").unwrap();
    let mini = registered.authorizer.clone().expect("X-Wxgate-Authorizer names the new mini program");
    assert_eq!(xml_field(&registered.body, "appid").as_deref(), Some(mini.as_str()));
    assert_eq!(registered.call_errcode, Some(0), "the new mini program serves calls through the gateway at once");
    let mini_status = admin_json(&gw, &format!("/admin/authorizers/{mini}")).await;
    assert_eq!(mini_status["state"], "active", "{mini_status}");

    // An event about no account, of a kind the gateway does not act on: handed on verbatim,
    // without X-Wxgate-Authorizer.
    let beta = format!(
        "<xml><AppId><![CDATA[{COMPONENT_APPID}]]></AppId><CreateTime>{}</CreateTime>\
         <InfoType><![CDATA[notify_3rd_wxa_auth]]></InfoType><taskid><![CDATA[t-77]]></taskid></xml>",
        unix_now()
    );
    assert_eq!(gw.push(&crypt(), &beta).await.status(), 200);
    eventually(Duration::from_secs(20), "an event about no account handed on", || async {
        handler.has_taken("notify_3rd_wxa_auth", None)
    })
    .await;
    let plain = handler.taken().into_iter().find(|s| s.info_type == "notify_3rd_wxa_auth").unwrap();
    assert_eq!(plain.body, beta, "the XML exactly as WeChat sent it");

    let seen = handler.seen();
    assert!(seen.iter().all(|s| s.info_type != "component_verify_ticket"), "the ticket is never handed on");
    check_deliveries(&seen);
    assert_eq!(admin_json(&gw, "/admin/messages").await["total"], 0);
    assert_eq!(admin_json(&gw, "/admin/events").await["pending"], 0);
    let metrics = gw.metrics().await;
    let counted = |family: &str, result: &str| {
        metrics.lines().any(|l| {
            l.starts_with(&format!("{family}{{"))
                && l.contains("route=\"tenants\"")
                && l.contains(&format!("result=\"{result}\""))
        })
    };
    assert!(counted("wxgate_messages_total", "queued"), "queued, by route");
    assert!(counted("wxgate_outbox_route_attempts_total", "delivered"), "delivered, by route");
    drop(gw);
    assert_no_secrets(&setup.log(), &[ROUTE_TOKEN, "platform-key-0123456789", "queryauthcode@@@"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_down_across_a_kill_9_gets_every_event_once_and_in_order() {
    let mut handler = Handler::down();
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    setup.extra_toml = events_route("tenants", &handler, None);
    let mut gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    for appid in [SHOP, CAFE] {
        let appid = AppId::parse(appid).unwrap();
        sandbox.authorize(&appid).await.unwrap();
        wait_active(&gw, &appid.as_str()).await;
        sandbox.unauthorize(&appid).await.unwrap();
    }
    // Acted on and in the outbox, waiting for a handler that is down; listed without content.
    eventually(Duration::from_secs(20), "four events in the outbox", || async {
        admin_json(&gw, "/admin/messages?state=pending").await["total"] == 4
    })
    .await;
    let listed = gw.admin_get("/admin/messages").await.text().await.unwrap();
    let messages: serde_json::Value = serde_json::from_str(&listed).unwrap();
    for m in messages["messages"].as_array().unwrap() {
        assert_eq!((m["kind"].as_str(), m["route"].as_str()), (Some("platform"), Some("tenants")), "{m}");
        assert!(["authorized", "unauthorized"].contains(&m["info_type"].as_str().unwrap()), "{m}");
    }
    assert!(!listed.contains("queryauthcode") && !listed.contains("<xml>"), "never the content: {listed}");
    gw.signal_and_wait("KILL", Duration::from_secs(5)).expect("killed");

    // Back up with a handler that answers slowly: killed again while deliveries are in flight.
    let mut gw = setup.start().await;
    handler.slow(Duration::from_millis(600));
    handler.start().await;
    eventually(Duration::from_secs(30), "a delivery in flight", || async { !handler.seen().is_empty() }).await;
    gw.signal_and_wait("KILL", Duration::from_secs(5)).expect("killed");
    handler.slow(Duration::ZERO);

    let gw = setup.start().await;
    eventually(Duration::from_secs(30), "every event delivered", || async {
        let delivered: std::collections::HashSet<String> = handler.seen().into_iter().map(|s| s.body).collect();
        delivered.len() == 4 && admin_json(&gw, "/admin/messages").await["total"] == 0
    })
    .await;
    check_deliveries(&handler.seen());
    for appid in [SHOP, CAFE] {
        let order: Vec<String> = taken_order(&handler, appid).into_iter().fold(Vec::new(), |mut seen, t| {
            // One taken by the killed instance and again after it (a flagged redelivery) counts once.
            if seen.last() != Some(&t) {
                seen.push(t);
            }
            seen
        });
        assert_eq!(order, ["authorized", "unauthorized"], "{appid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_event_never_overtakes_an_earlier_one_being_retried() {
    let handler = Handler::up().await;
    handler.refuse("authorized", SHOP, 2);
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    setup.extra_toml = events_route("tenants", &handler, None);
    let gw = setup.start().await;
    ticket_delivered(&sandbox).await;
    let (shop, cafe) = (AppId::parse(SHOP).unwrap(), AppId::parse(CAFE).unwrap());
    sandbox.authorize(&shop).await.unwrap();
    wait_active(&gw, SHOP).await;
    sandbox.unauthorize(&shop).await.unwrap();
    sandbox.authorize(&cafe).await.unwrap();
    eventually(Duration::from_secs(20), "another account is not held up", || async {
        handler.has_taken("authorized", Some(CAFE))
    })
    .await;
    assert!(!handler.has_taken("authorized", Some(SHOP)), "the shop's authorization is still being retried");
    eventually(Duration::from_secs(30), "the shop's events delivered", || async {
        handler.has_taken("unauthorized", Some(SHOP))
    })
    .await;
    let shop_requests: Vec<String> = handler
        .seen()
        .into_iter()
        .filter(|s| s.authorizer.as_deref() == Some(SHOP))
        .map(|s| format!("{}:{}", s.info_type, s.attempt))
        .collect();
    assert_eq!(shop_requests, ["authorized:1", "authorized:2", "authorized:3", "unauthorized:1"]);
    check_deliveries(&handler.seen());
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_registration_whose_code_fails_is_retried_and_shown_never_lost() {
    let handler = Handler::up().await;
    let mut setup = Setup::new();
    let sandbox = setup.sandbox(7200).await;
    setup.extra_toml = events_route("tenants", &handler, None);
    let gw = setup.start().await;
    handler.call_through(gw.proxy);
    ticket_delivered(&sandbox).await;
    sandbox.set_faults(wxgate::sandbox::Faults {
        errcode: Some(-1),
        path_contains: Some("api_query_auth".into()),
        ..Default::default()
    });
    let registration = wxgate::sandbox::Registration {
        name: "Cafe Ltd".into(),
        code: "91440300".into(),
        code_type: 1,
        legal_persona_wechat: "boss".into(),
        legal_persona_name: "Wang".into(),
        component_phone: String::new(),
    };
    let mini = sandbox.fast_register(&registration).await.unwrap();
    eventually(Duration::from_secs(20), "the failed exchange shown", || async {
        let events = admin_json(&gw, "/admin/events").await;
        events["events"][0]["attempts"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let events = admin_json(&gw, "/admin/events").await;
    let pending = &events["events"][0];
    assert_eq!(
        (pending["info_type"].as_str(), pending["authorizer"].as_str()),
        (Some("notify_third_fasteregister"), Some(&*mini.as_str())),
        "{events}"
    );
    assert!(pending["last_error"].as_str().is_some_and(|e| e.contains("-1")), "{events}");
    assert!(handler.seen().is_empty(), "not handed on before the account is held");

    sandbox.set_faults(wxgate::sandbox::Faults::default());
    eventually(Duration::from_secs(30), "adopted and handed on", || async {
        handler.has_taken("notify_third_fasteregister", Some(&mini.as_str()))
    })
    .await;
    assert_eq!(handler.taken()[0].call_errcode, Some(0));
    assert_eq!(admin_json(&gw, "/admin/events").await["pending"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_pushes_reach_no_handler_and_change_nothing() {
    let handler = Handler::up().await;
    let mut setup = Setup::new();
    setup.extra_toml = events_route("tenants", &handler, None);
    let gw = setup.start().await;
    let crypt = crypt();
    let good = unauthorized_xml(SHOP, unix_now());
    let sealed = crypt.seal(&good, "1700000000", "nonce123");
    let query = |sig: &str| format!("timestamp=1700000000&nonce=nonce123&encrypt_type=aes&msg_signature={sig}");
    let forged = gw.post_callback(&query(&"0".repeat(40)), envelope(&sealed.encrypt)).await;
    assert_eq!(forged.status(), 403);
    let mut tampered = sealed.encrypt.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered =
        gw.post_callback(&query(&sealed.msg_signature), envelope(&String::from_utf8(tampered).unwrap())).await;
    assert!(tampered.status().is_client_error());
    let malformed = gw.post_callback(&query(&sealed.msg_signature), "<xml><Encrypt>").await;
    assert_eq!(malformed.status(), 400);
    let oversized = gw.post_callback(&query(&sealed.msg_signature), vec![b'x'; 70 * 1024]).await;
    assert_eq!(oversized.status(), 413);
    let other = wxgate::crypto::MsgCrypt::new(
        &wxgate::Secret::new(MSG_TOKEN),
        &wxgate::Secret::new(AES_KEY),
        "wxffffffffffffffff",
    )
    .unwrap();
    let misaddressed = other.seal(&good.replace(COMPONENT_APPID, "wxffffffffffffffff"), "1700000000", "nonce123");
    let wrong = gw.post_callback(&query(&misaddressed.msg_signature), envelope(&misaddressed.encrypt)).await;
    assert!(wrong.status().is_client_error());
    assert_eq!(admin_json(&gw, "/admin/events").await["pending"], 0, "nothing recorded");
    assert_eq!(admin_json(&gw, "/admin/messages").await["total"], 0, "nothing in the outbox");

    // The real push goes through, once, however often WeChat retries it.
    for _ in 0..3 {
        assert_eq!(gw.push(&crypt, &good).await.status(), 200);
    }
    // Delivered, and nothing left anywhere that could be delivered again.
    eventually(Duration::from_secs(20), "the real push handed on and settled", || async {
        !handler.taken().is_empty()
            && admin_json(&gw, "/admin/messages").await["total"] == 0
            && admin_json(&gw, "/admin/events").await["pending"] == 0
    })
    .await;
    assert_eq!(handler.seen().len(), 1, "{:?}", handler.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_deliver_each_event_once() {
    const URL: &str = "redis://127.0.0.1:6379/0";
    let prefix = format!("wxgate-test-events-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let handler = Handler::up().await;
    let mut one = Setup::new();
    one.store_toml = Some(format!("[store]\nbackend = \"redis\"\nredis_url = \"{URL}\"\nkey_prefix = \"{prefix}\""));
    one.extra_toml = events_route("tenants", &handler, None);
    let two = one.sibling();
    let (gw1, gw2) = (one.start().await, two.start().await);
    let crypt = crypt();
    let now = unix_now();
    let accounts: Vec<String> = (0..10).map(|i| format!("wx{:016x}", 0xa000 + i)).collect();
    // Each account's revocations, two apiece, pushed to either instance in turn.
    for round in 0..2 {
        for (i, appid) in accounts.iter().enumerate() {
            let gw = if (i + round) % 2 == 0 { &gw1 } else { &gw2 };
            assert_eq!(gw.push(&crypt, &unauthorized_xml(appid, now + round as i64)).await.status(), 200);
        }
    }
    eventually(Duration::from_secs(30), "every event delivered", || async {
        handler.taken().len() == 20 && admin_json(&gw1, "/admin/messages").await["total"] == 0
    })
    .await;
    let seen = handler.seen();
    check_deliveries(&seen);
    assert_eq!(seen.len(), 20, "no event delivered twice");
    for appid in &accounts {
        let times: Vec<String> = handler
            .taken()
            .iter()
            .filter(|s| s.authorizer.as_deref() == Some(appid))
            .filter_map(|s| xml_field(&s.body, "CreateTime"))
            .collect();
        assert_eq!(times, [now.to_string(), (now + 1).to_string()], "{appid} in the order pushed");
    }
    let mut conn = redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::AsyncCommands::keys(&mut conn, format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::AsyncCommands::del(&mut conn, keys).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_an_events_route_and_refuses_a_bad_one() {
    let (tenants, audit) = (Handler::up().await, Handler::up().await);
    let mut setup = Setup::new();
    setup.extra_toml = events_route("tenants", &tenants, None);
    let gw = setup.start().await;
    let crypt = crypt();
    assert_eq!(gw.push(&crypt, &unauthorized_xml(SHOP, unix_now())).await.status(), 200);
    eventually(Duration::from_secs(20), "the first route took it", || async { tenants.taken().len() == 1 }).await;

    setup.extra_toml = format!("{}{}", events_route("tenants", &tenants, None), events_route("audit", &audit, None));
    reload(&setup, &gw, "ok").await;
    assert_eq!(gw.push(&crypt, &unauthorized_xml(CAFE, unix_now())).await.status(), 200);
    eventually(Duration::from_secs(20), "both routes took the next", || async {
        tenants.taken().len() == 2 && audit.has_taken("unauthorized", Some(CAFE))
    })
    .await;
    assert_eq!(audit.taken().len(), 1, "an event from before the reload is not handed on again");

    setup.extra_toml = events_route("bad name", &audit, None);
    reload(&setup, &gw, "invalid").await;
    assert!(setup.log().contains("events.routes[0].name"), "the bad key is named");
    assert_eq!(gw.push(&crypt, &unauthorized_xml(SHOP, unix_now() + 1)).await.status(), 200);
    eventually(Duration::from_secs(20), "the running routes stay", || async {
        tenants.taken().len() == 3 && audit.taken().len() == 2
    })
    .await;
}

/// Writes the setup's config and sends SIGHUP; waits until the reload with `result` is counted.
async fn reload(setup: &Setup, gw: &Gateway, result: &str) {
    let sample = format!("wxgate_config_reloads_total{{result=\"{result}\"}}");
    let before = gw.metric(&sample).await.unwrap_or(0.0);
    setup.write_config();
    let sent = std::process::Command::new("kill").arg("-HUP").arg(gw.pid().to_string()).status().unwrap();
    assert!(sent.success());
    eventually(Duration::from_secs(10), &format!("a reload counted as {result}"), || async {
        gw.metric(&sample).await.unwrap_or(0.0) >= before + 1.0
    })
    .await;
}
