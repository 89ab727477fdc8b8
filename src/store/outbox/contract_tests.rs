//! The outbox behaviour every backend must share; each backend's tests run these.
use super::*;
use crate::store::contract_tests::component;

pub fn message(route: &str, received_at_ms: i64, next_attempt_at_ms: i64) -> OutboxMessage {
    OutboxMessage {
        id: DeliveryId::generate(),
        authorizer: Some(AppId::parse("wx1111111111111111").unwrap()),
        kind: MessageKind::Account,
        seq: None,
        route: route.to_owned(),
        msg_type: "event".into(),
        event: Some("subscribe".into()),
        payload: Secret::new("<xml><Content>personal</Content></xml>"),
        received_at_ms,
        attempts: 0,
        next_attempt_at_ms,
        state: OutboxState::Pending,
        last_error: None,
    }
}

const LEASE: Duration = Duration::from_millis(1000);

/// Unix milliseconds by the wall clock: Redis expires keys by its own.
fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub async fn claims_settle_and_fence(store: &dyn OutboxStore) {
    let c = component();
    let (m1, m2, m3) = (message("a", 10, 100), message("b", 20, 200), message("a", 30, 300));
    for m in [&m1, &m2, &m3] {
        store.enqueue(&c, m).await.unwrap();
    }
    let repeat = OutboxMessage { next_attempt_at_ms: 5, ..m1.clone() };
    store.enqueue(&c, &repeat).await.unwrap();
    assert_eq!(store.counts(&c).await.unwrap(), (3, 0), "a repeated enqueue is not a new message");
    assert_eq!(store.due_routes(&c, 150).await.unwrap(), ["a"]);
    let mut both = store.due_routes(&c, 250).await.unwrap();
    both.sort();
    assert_eq!(both, ["a", "b"]);
    assert_eq!(store.next_due(&c).await.unwrap(), Some(100));

    let first = store.claim(&c, "a", 350, 1, LEASE).await.unwrap();
    assert_eq!(first.len(), 1, "the limit holds");
    let claim1 = &first[0];
    assert_eq!(claim1.message.id, m1.id, "earliest due first");
    assert_eq!(claim1.message.attempts, 1, "the attempt is counted when it is claimed");
    assert_eq!(claim1.message.next_attempt_at_ms, 1350);
    assert_eq!(claim1.message.payload, m1.payload);
    let rest = store.claim(&c, "a", 350, 5, LEASE).await.unwrap();
    assert_eq!(rest.iter().map(|cl| &cl.message.id).collect::<Vec<_>>(), [&m3.id], "a claimed message is held");
    let claim3 = rest[0].clone();
    assert!(store.claim(&c, "a", 350, 5, LEASE).await.unwrap().is_empty());

    assert!(!store.settle(&c, &m1.id, "not-the-token", &Outcome::Delivered).await.unwrap());
    assert!(store.settle(&c, &m1.id, &claim1.token, &Outcome::Delivered).await.unwrap());
    assert!(!store.settle(&c, &m1.id, &claim1.token, &Outcome::Delivered).await.unwrap(), "settled once");
    assert_eq!(store.counts(&c).await.unwrap(), (2, 0), "a delivered message is removed");

    let retry = Outcome::Retry { at_ms: 5000, error: "status 503".into() };
    assert!(store.settle(&c, &m3.id, &claim3.token, &retry).await.unwrap());
    assert_eq!(store.next_due(&c).await.unwrap(), Some(200));
    assert!(store.claim(&c, "a", 4999, 5, LEASE).await.unwrap().is_empty(), "not before its retry time");
    let again = store.claim(&c, "a", 5000, 5, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.attempts, 2);
    assert_eq!(again[0].message.last_error.as_deref(), Some("status 503"));
    let failed = Outcome::Failed { error: "timeout".into() };
    assert!(store.settle(&c, &m3.id, &again[0].token, &failed).await.unwrap());
    assert_eq!(store.counts(&c).await.unwrap(), (1, 1));
    assert_eq!(store.due_routes(&c, i64::MAX / 2).await.unwrap(), ["b"], "a failed message is not due");

    // A lease that runs out lets another claim it; the first holder's outcome is refused.
    let short = Duration::from_millis(100);
    let old = store.claim(&c, "b", 250, 5, short).await.unwrap().remove(0);
    assert!(store.claim(&c, "b", 349, 5, short).await.unwrap().is_empty());
    let new = store.claim(&c, "b", 350, 5, short).await.unwrap().remove(0);
    assert_eq!((new.message.id.clone(), new.message.attempts), (m2.id.clone(), 2));
    assert!(!store.settle(&c, &m2.id, &old.token, &Outcome::Delivered).await.unwrap(), "fenced");
    assert_eq!(store.counts(&c).await.unwrap(), (1, 1));

    // A store no other instance shares releases a dead process's claims at start-up.
    assert_eq!(store.release_claims(&c, 400).await.unwrap(), 1);
    let released = store.claim(&c, "b", 400, 5, LEASE).await.unwrap();
    assert_eq!(released.len(), 1, "due at once");
    assert!(store.settle(&c, &m2.id, &released[0].token, &Outcome::Delivered).await.unwrap());
    assert_eq!(store.counts(&c).await.unwrap(), (0, 1));
    assert_eq!(store.counts(&crate::store::contract_tests::component_b()).await.unwrap(), (0, 0), "per component");
}

pub async fn lists_redelivers_and_deletes(store: &dyn OutboxStore) {
    let c = component();
    let msgs: Vec<OutboxMessage> = (0..5).map(|i| message(if i % 2 == 0 { "a" } else { "b" }, 100 + i, i)).collect();
    for m in msgs.iter().rev() {
        store.enqueue(&c, m).await.unwrap();
    }
    let claimed = store.claim(&c, "a", 10, 1, LEASE).await.unwrap().remove(0);
    let failed = Outcome::Failed { error: "status 500".into() };
    assert!(store.settle(&c, &claimed.message.id, &claimed.token, &failed).await.unwrap());
    assert_eq!(claimed.message.id, msgs[0].id);

    let (total, all) = store.list(&c, None, 0, 10).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(
        all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        msgs.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        "oldest first"
    );
    assert_eq!(all[0].state, OutboxState::Failed);
    assert_eq!(all[0].last_error.as_deref(), Some("status 500"));
    assert_eq!(all[0].attempts, 1);
    assert_eq!(all[1], msgs[1].entry());
    let (total, page) = store.list(&c, None, 1, 2).await.unwrap();
    assert_eq!(
        (total, page.iter().map(|e| e.id.clone()).collect::<Vec<_>>()),
        (5, vec![msgs[1].id.clone(), msgs[2].id.clone()])
    );
    let (total, pending) = store.list(&c, Some(OutboxState::Pending), 1, 10).await.unwrap();
    assert_eq!(total, 4);
    assert_eq!(
        pending.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        msgs[2..].iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    );
    let (total, failed) = store.list(&c, Some(OutboxState::Failed), 0, 10).await.unwrap();
    assert_eq!((total, failed.len()), (1, 1));
    assert_eq!(store.list(&c, Some(OutboxState::Failed), 0, 0).await.unwrap(), (1, vec![]));

    assert!(store.redeliver(&c, &msgs[0].id, 1).await.unwrap());
    assert_eq!(store.counts(&c).await.unwrap(), (5, 0));
    let again = store.claim(&c, "a", 1, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(
        (again.message.id.clone(), again.message.attempts),
        (msgs[0].id.clone(), 2),
        "due at once, attempts kept"
    );
    // Redelivering a message in flight voids the claim: its outcome is dropped.
    assert!(store.redeliver(&c, &msgs[0].id, 60).await.unwrap());
    assert!(!store.settle(&c, &msgs[0].id, &again.token, &Outcome::Delivered).await.unwrap());
    assert!(!store.redeliver(&c, &DeliveryId::generate(), 60).await.unwrap(), "unknown id");

    assert!(store.delete(&c, &msgs[0].id).await.unwrap());
    assert!(!store.delete(&c, &msgs[0].id).await.unwrap());
    assert_eq!(store.counts(&c).await.unwrap(), (4, 0));
    assert!(store.claim(&c, "a", 100, 10, LEASE).await.unwrap().iter().all(|cl| cl.message.id != msgs[0].id));
}

/// A lane's messages go out in `seq` order: a later one waits while an earlier one is
/// pending (retried) or failed, and other lanes and unordered messages are not held up.
pub async fn lanes_keep_their_order(store: &dyn OutboxStore) {
    let c = component();
    let other = AppId::parse("wx2222222222222222").unwrap();
    let laned = |seq: i64, authorizer: Option<AppId>, due: i64| OutboxMessage {
        kind: MessageKind::Platform,
        seq: Some(seq),
        authorizer,
        ..message("events", 10 + seq, due)
    };
    let first = laned(1, Some(AppId::parse("wx1111111111111111").unwrap()), 100);
    let second = laned(2, first.authorizer, 50);
    let third = laned(3, first.authorizer, 60);
    let elsewhere = laned(4, Some(other), 70);
    let platform = laned(5, None, 80);
    let unordered = message("events", 1, 90);
    for m in [&third, &second, &first, &elsewhere, &platform, &unordered] {
        store.enqueue(&c, m).await.unwrap();
    }
    let ids = |claims: &[Claim]| claims.iter().map(|cl| cl.message.id.clone()).collect::<Vec<_>>();
    let taken = store.claim(&c, "events", 200, 10, LEASE).await.unwrap();
    let mut got = ids(&taken);
    got.sort();
    let mut want = vec![first.id.clone(), elsewhere.id.clone(), platform.id.clone(), unordered.id.clone()];
    want.sort();
    assert_eq!(got, want, "only each lane's first, and what has no lane");
    assert_eq!(taken.iter().find(|cl| cl.message.id == platform.id).unwrap().message.authorizer, None);
    for other in taken.iter().filter(|cl| cl.message.id != first.id) {
        assert!(store.settle(&c, &other.message.id, &other.token, &Outcome::Delivered).await.unwrap());
    }
    let head = taken.iter().find(|cl| cl.message.id == first.id).unwrap();
    let retry = Outcome::Retry { at_ms: 5000, error: "status 503".into() };
    assert!(store.settle(&c, &first.id, &head.token, &retry).await.unwrap());
    assert!(store.claim(&c, "events", 4999, 10, LEASE).await.unwrap().is_empty(), "held behind the retried one");
    let again = store.claim(&c, "events", 5000, 10, LEASE).await.unwrap();
    assert_eq!(ids(&again), std::slice::from_ref(&first.id), "the lane's head comes first again");
    let failed = Outcome::Failed { error: "status 500".into() };
    assert!(store.settle(&c, &first.id, &again[0].token, &failed).await.unwrap());
    assert!(store.claim(&c, "events", 9000, 10, LEASE).await.unwrap().is_empty(), "a failed head holds its lane");
    assert!(store.delete(&c, &first.id).await.unwrap());
    let next = store.claim(&c, "events", 9000, 10, LEASE).await.unwrap();
    assert_eq!(ids(&next), std::slice::from_ref(&second.id), "then the next in order");
    assert!(store.settle(&c, &second.id, &next[0].token, &Outcome::Delivered).await.unwrap());
    let last = store.claim(&c, "events", 9000, 10, LEASE).await.unwrap();
    assert_eq!(ids(&last), std::slice::from_ref(&third.id));
    let (_, listed) = store.list(&c, None, 0, 10).await.unwrap();
    let entry = listed.iter().find(|e| e.id == third.id).unwrap();
    assert_eq!((entry.kind, entry.authorizer), (MessageKind::Platform, first.authorizer));
}

/// A deliver-mode message and its retry key go in together; a forgotten key is new again.
pub async fn enqueue_first_takes_each_key_once(store: &dyn OutboxStore) {
    let c = component();
    let now = wall_ms;
    let day = Duration::from_secs(86_400);
    let first = message("r", 1, 1);
    assert!(store.enqueue_first(&c, &first, "msgid:9", now(), day).await.unwrap());
    let retry = OutboxMessage { id: DeliveryId::generate(), ..first.clone() };
    assert!(!store.enqueue_first(&c, &retry, "msgid:9", now(), day).await.unwrap(), "WeChat's retry");
    assert_eq!(store.counts(&c).await.unwrap(), (1, 0), "the retry enqueued nothing");
    assert!(!store.first_time(&c, &first.authorizer.unwrap(), "msgid:9", now(), day).await.unwrap(), "the key is kept");

    assert!(store.first_time(&c, &first.authorizer.unwrap(), "msgid:10", now(), day).await.unwrap());
    store.forget(&c, &first.authorizer.unwrap(), "msgid:10").await.unwrap();
    assert!(store.first_time(&c, &first.authorizer.unwrap(), "msgid:10", now(), day).await.unwrap(), "forgotten");
    store.prune_seen(&c, now() + 1).await.unwrap();
}

pub async fn dedupe_keys_expire(store: &dyn OutboxStore) {
    let c = component();
    let (a, b) = (AppId::parse("wx1111111111111111").unwrap(), AppId::parse("wx2222222222222222").unwrap());
    let now = wall_ms;
    let day = Duration::from_secs(86_400);
    assert!(store.first_time(&c, &a, "msgid:1", now(), day).await.unwrap());
    assert!(!store.first_time(&c, &a, "msgid:1", now(), day).await.unwrap(), "a retry");
    assert!(store.first_time(&c, &b, "msgid:1", now(), day).await.unwrap(), "per authorizer");
    assert!(store.first_time(&c, &a, "msgid:2", now(), day).await.unwrap());

    let short = Duration::from_millis(200);
    assert!(store.first_time(&c, &a, "short", now(), short).await.unwrap());
    assert!(!store.first_time(&c, &a, "short", now(), short).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.first_time(&c, &a, "short", now(), short).await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "a dedupe key outlived its ttl");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.prune_seen(&c, now() + 1).await.unwrap();
}
