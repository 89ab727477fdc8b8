//! The outbox in the real binary: its admin routes over a SQLite file filled beforehand, and
//! its worker attempting what the file holds.

mod common;

use common::*;
use std::time::Duration;
use wxgate::messages::outbox::{DeliveryId, OutboxMessage, OutboxState};
use wxgate::store::outbox::Outcome;
use wxgate::store::{OutboxStore, SqliteStore};
use wxgate::{AppId, Secret};

const PAYLOAD: &str = "<xml><Content>a very personal message</Content></xml>";

fn message(route: &str, received_at_ms: i64) -> OutboxMessage {
    OutboxMessage {
        id: DeliveryId::generate(),
        authorizer: AppId::parse("wx1111111111111111").unwrap(),
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
    eventually(Duration::from_secs(10), "an attempt recorded", || async {
        let (status, body) = admin(&gw, reqwest::Method::GET, "/admin/messages?state=pending").await;
        assert_eq!(status, 200);
        body["messages"][0]["attempts"].as_u64() >= Some(1)
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
