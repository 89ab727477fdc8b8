//! Against the real Redis at 127.0.0.1:6379, each test under a key prefix of its own.
use super::*;
use crate::store::outbox::contract_tests;
use crate::store::redis::tests::{clean, prefix, store};

#[tokio::test]
async fn keeps_the_outbox_contract() {
    for run in [0, 1, 2, 3, 4] {
        let p = prefix();
        let s = store(&p).await;
        match run {
            0 => contract_tests::claims_settle_and_fence(&s).await,
            1 => contract_tests::lists_redelivers_and_deletes(&s).await,
            2 => contract_tests::enqueue_first_takes_each_key_once(&s).await,
            3 => contract_tests::lanes_keep_their_order(&s).await,
            _ => contract_tests::dedupe_keys_expire(&s).await,
        }
        clean(&p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_claim_one_message_twice() {
    let p = prefix();
    let (one, two) = (store(&p).await, store(&p).await);
    let c = crate::store::contract_tests::component();
    let messages: Vec<OutboxMessage> = (0..100).map(|i| contract_tests::message("r", i, 0)).collect();
    for m in &messages {
        one.enqueue(&c, m).await.unwrap();
    }
    let take = |s: RedisStore| async move {
        let mut ids = Vec::new();
        loop {
            let claims = s.claim(&c, "r", 10, 3, Duration::from_secs(60)).await.unwrap();
            if claims.is_empty() {
                return ids;
            }
            ids.extend(claims.into_iter().map(|cl| cl.message.id));
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(take(one.clone())), tokio::spawn(take(two.clone())));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<DeliveryId> = a.iter().chain(&b).cloned().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no message claimed by both");
    assert_eq!(all.len(), 100, "every message claimed");
    clean(&p).await;
}

/// Settles that come together go to Redis in batches: each caller still gets its own answer,
/// a stale claim's outcome is dropped alone, and each outcome lands as it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settles_are_answered_each_for_itself() {
    let p = prefix();
    let s = store(&p).await;
    let c = crate::store::contract_tests::component();
    for i in 0..60 {
        s.enqueue(&c, &contract_tests::message("r", i, 0)).await.unwrap();
    }
    let claims = s.claim(&c, "r", 10, 60, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claims.len(), 60);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, claim) in claims.into_iter().enumerate() {
        let s = s.clone();
        tasks.spawn(async move {
            let (token, outcome) = match i % 3 {
                0 => ("not-the-claim".to_owned(), Outcome::Delivered),
                1 => (claim.token, Outcome::Delivered),
                _ => (claim.token, Outcome::Failed { error: "status 500".into() }),
            };
            (i, s.settle(&c, &claim.message.id, &token, &outcome).await.unwrap())
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, settled) = done.unwrap();
        assert_eq!(settled, i % 3 != 0, "settle {i}");
    }
    assert_eq!(s.counts(&c).await.unwrap(), (20, 20), "stale ones still pending; the rest delivered or failed");
    clean(&p).await;
}
