//! Against the real Redis at 127.0.0.1:6379 (`.ci/run` starts one), each test under a key
//! prefix of its own, removed at the end.
use super::super::contract_tests;
use super::follower::{parse_change, Follower};
use super::*;
use crate::store::Coordination;

const URL: &str = "redis://127.0.0.1:6379/0";

/// A key prefix of a test's own.
pub(crate) fn prefix() -> String {
    format!("wxgate-test-{}:", hex::encode(rand::random::<[u8; 6]>()))
}

pub(crate) async fn store(prefix: &str) -> RedisStore {
    RedisStore::connect(&Secret::new(URL), prefix, &contract_tests::component(), &RedisOptions::default())
        .await
        .expect("a Redis at 127.0.0.1:6379")
}

/// Removes every key under `prefix`.
pub(crate) async fn clean(prefix: &str) {
    let mut conn = redis::Client::open(URL).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await.unwrap();
    if !keys.is_empty() {
        let _: i64 = conn.del(keys).await.unwrap();
    }
}

#[tokio::test]
async fn keeps_the_store_contract() {
    let p = prefix();
    let s = store(&p).await;
    contract_tests::newer_ticket_wins(&s).await;
    contract_tests::events_are_recorded_once(&s).await;
    // Keys are namespaced by component: another component's store is empty.
    let other = RedisStore::connect(&Secret::new(URL), &p, &contract_tests::component_b(), &RedisOptions::default())
        .await
        .unwrap();
    assert!(other.load_ticket(&contract_tests::component_b()).await.unwrap().is_none());
    clean(&p).await;
    let p = prefix();
    contract_tests::tokens_and_authorizers_round_trip(&store(&p).await).await;
    contract_tests::js_tickets_round_trip(&store(&p).await).await;
    clean(&p).await;
    let p = prefix();
    contract_tests::authorizer_info_round_trips(&store(&p).await).await;
    clean(&p).await;
    let p = prefix();
    contract_tests::release_jobs_round_trip(&store(&p).await).await;
    clean(&p).await;
}

#[tokio::test]
async fn one_instance_holds_a_lease_and_a_passed_lease_writes_nothing() {
    let p = prefix();
    let (one, two) = (store(&p).await, store(&p).await);
    let c = contract_tests::component();
    let record = contract_tests::authorizer("wx1111111111111111", "refresh-1");
    let ttl = Duration::from_millis(300);
    let held = one.lease(&c, "wx1111111111111111", ttl).await.unwrap().expect("free");
    assert!(two.lease(&c, "wx1111111111111111", ttl).await.unwrap().is_none(), "held by one");
    assert!(one.save_authorizer_leased(&c, &record, Fence::Lease(&held)).await.unwrap());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let taken = two.lease(&c, "wx1111111111111111", ttl).await.unwrap().expect("expired, so free");
    let late = AuthorizerRecord { refresh_token: Some(Secret::new("stale")), ..record.clone() };
    assert!(!one.save_authorizer_leased(&c, &late, Fence::Lease(&held)).await.unwrap(), "fenced: the lease passed on");
    assert_eq!(two.load_authorizer(&c, &record.appid).await.unwrap().unwrap(), record);
    two.release(&taken).await.unwrap();
    assert!(one.lease(&c, "wx1111111111111111", ttl).await.unwrap().is_some(), "released");
    clean(&p).await;
}

#[tokio::test]
async fn a_catch_up_reads_only_what_changed_since_the_last_version_heard() {
    let p = prefix();
    let (one, two) = (store(&p).await, store(&p).await);
    let c = contract_tests::component();
    for i in 1..=5u32 {
        one.save_authorizer(&c, &contract_tests::authorizer(&format!("wx{i:016x}"), "r")).await.unwrap();
    }
    let heard: u64 = one.get_u64(&one.key(&c, "version")).await.unwrap().unwrap();
    let changed = contract_tests::authorizer(&format!("wx{:016x}", 2), "r2");
    two.save_authorizer(&c, &changed).await.unwrap();
    let gone = AppId::parse(&format!("wx{:016x}", 4)).unwrap();
    assert!(two.delete_authorizer(&c, &gone).await.unwrap());
    // A JS-SDK ticket written meanwhile is announced again too (issue 25): a catch-up after a
    // reconnect must not leave an instance serving the ticket it had.
    let owner = AppId::parse(&format!("wx{:016x}", 3)).unwrap();
    let ticket = crate::store::JsTicket { value: Secret::new("t2"), expires_at: 9, obtained_at: 1 };
    assert!(two.save_js_ticket(&c, &owner, TicketKind::Jsapi, &ticket, Fence::Unfenced).await.unwrap());
    let follower = Follower::new(&one, c, heard);
    let delta = follower.changed_since().await.unwrap().expect("a delta");
    assert_eq!(delta.version, heard + 3);
    assert_eq!(delta.authorizers.concat(), [changed]);
    assert_eq!(delta.deleted, [gone]);
    assert_eq!(delta.js_tickets, [(owner, TicketKind::Jsapi)]);
    let members: Vec<String> = one
        .link
        .run(|mut c2| {
            let k = one.key(&c, "authorizers");
            async move { c2.smembers(k).await }
        })
        .await
        .unwrap();
    assert!(members.iter().all(|m| AppId::parse(m).is_ok()), "only appids in the set of authorizers: {members:?}");
    let caught_up = Follower::new(&one, c, delta.version);
    let nothing = caught_up.changed_since().await.unwrap().unwrap();
    assert!(nothing.authorizers.concat().is_empty() && nothing.deleted.is_empty() && nothing.js_tickets.is_empty());
    let ahead = Follower::new(&one, c, delta.version + 10);
    assert!(ahead.changed_since().await.unwrap().is_none(), "Redis lost data: reload everything");
    assert_eq!(parse_change(&format!("authorizer:{gone}@7")), Some((Change::Authorizer(gone), Some(7))));
    assert_eq!(parse_change("ticket"), Some((Change::Ticket, None)));
    assert_eq!(parse_change("authorizer:wx@x"), None);
    clean(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_are_announced_to_other_instances() {
    let p = prefix();
    let (one, two) = (store(&p).await, store(&p).await);
    let mut heard = one.changes().unwrap();
    let c = contract_tests::component();
    // Redis drops what is published before the listener subscribes: probe with tickets until
    // one is heard, then forget whatever else the probes and the first catch-up announced.
    for create_time in 1.. {
        two.save_ticket(&c, &contract_tests::ticket("probe", create_time)).await.unwrap();
        if let Ok(Ok(Change::Ticket)) = tokio::time::timeout(Duration::from_millis(100), heard.recv()).await {
            break;
        }
        assert!(create_time < 100, "the listener never subscribed");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while heard.try_recv().is_ok() {}
    two.save_authorizer(&c, &contract_tests::authorizer("wx2222222222222222", "r")).await.unwrap();
    two.save_ticket(&c, &contract_tests::ticket("t", 1_000)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), heard.recv()).await.unwrap().unwrap() {
            Change::Resync => {}
            change => got.push(change),
        }
    }
    assert_eq!(got, [Change::Authorizer(AppId::parse("wx2222222222222222").unwrap()), Change::Ticket]);
    clean(&p).await;
}
