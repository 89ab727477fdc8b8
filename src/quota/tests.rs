use super::*;
use crate::config::{AuthorizerScope, ClientConfig, QuotaConfig};
use crate::store::{MemoryStore, RedisOptions, RedisStore};
use crate::Secret;
use std::sync::atomic::AtomicUsize;

/// 2026-12-06 23:59:50 in Beijing.
const TEN_SECONDS_TO_MIDNIGHT: i64 = 1_796_572_790_000;

fn component() -> AppId {
    AppId::parse("wx0000000000000001").unwrap()
}

fn account() -> Account {
    Account::Authorizer(AppId::parse("wx1111111111111111").unwrap())
}

fn client(name: &str, rate: Option<f64>, share: Option<f64>) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        key: Secret::new(format!("{name}-key-0123456789")),
        authorizers: AuthorizerScope::All,
        component: false,
        reveal_tokens: false,
        rate_per_second: rate,
        daily_share: share,
    }
}

/// Every pair's daily limit is `limit`; counts how often it was asked.
struct Fixed {
    limit: Option<u64>,
    asked: AtomicUsize,
}

#[async_trait::async_trait]
impl DailyLimits for Fixed {
    async fn daily_limit(&self, _: Account, _: &str) -> Option<u64> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.limit
    }
}

fn guard_on(store: SharedStore, limit: Option<u64>, clock: Clock) -> (Arc<QuotaGuard>, Arc<Fixed>) {
    let fixed = Arc::new(Fixed { limit, asked: AtomicUsize::new(0) });
    let guard =
        QuotaGuard::with_clock(component(), store, &QuotaConfig { guard: true }, Arc::clone(&fixed) as _, clock);
    (guard, fixed)
}

fn guard(limit: Option<u64>, clock: Clock) -> (Arc<QuotaGuard>, Arc<Fixed>) {
    guard_on(Arc::new(MemoryStore::new()), limit, clock)
}

/// Admits and answers one call as WeChat accepting it; the refusal if there was one.
async fn call(g: &Arc<QuotaGuard>, c: Option<&ClientQuota>, api: &str) -> Result<(), Refusal> {
    let admitted = g.admit("test", c, account(), api).await?;
    g.answered(c, admitted, account(), api, 200, Some(0));
    Ok(())
}

/// Lets the background task that learns a daily limit run.
async fn learnt(fixed: &Fixed, times: usize) {
    for _ in 0..100 {
        if fixed.asked.load(Ordering::SeqCst) >= times {
            tokio::task::yield_now().await;
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the daily limit was never asked for");
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_cut_to_twice_the_rate_then_to_the_rate() {
    let (g, _) = guard(None, Clock::new());
    let c = g.client(&client("shop", Some(5.0), None)).unwrap();
    let mut let_through = 0;
    for _ in 0..30 {
        if call(&g, Some(&c), "/cgi-bin/user/info").await.is_ok() {
            let_through += 1;
        }
    }
    assert_eq!(let_through, 10, "a full bucket holds twice the rate");
    let Err(Refusal::Rate { retry_after, .. }) = call(&g, Some(&c), "/x").await else { panic!("refused for its rate") };
    assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut next_second = 0;
    for _ in 0..30 {
        if call(&g, Some(&c), "/x").await.is_ok() {
            next_second += 1;
        }
    }
    assert_eq!(next_second, 5, "a second later, a second's worth");
    assert!(g.client(&client("other", None, None)).is_none(), "a client without limits has no state");
}

#[tokio::test(start_paused = true)]
async fn a_client_past_its_share_is_refused_while_another_goes_on() {
    let (g, fixed) = guard(Some(10), Clock::new());
    let (shop, crm) =
        (g.client(&client("shop", None, Some(0.5))).unwrap(), g.client(&client("crm", None, Some(0.5))).unwrap());
    call(&g, Some(&shop), "/cgi-bin/user/info").await.unwrap();
    learnt(&fixed, 1).await;
    // The first call was counted before the limit was known: 4 more make the 5 of 10.
    for _ in 0..4 {
        call(&g, Some(&shop), "/cgi-bin/user/info").await.unwrap();
    }
    let refused = call(&g, Some(&shop), "/cgi-bin/user/info").await.unwrap_err();
    assert!(matches!(&refused, Refusal::Share { api, .. } if api == "/cgi-bin/user/info"), "{refused:?}");
    let reply = refused.reply();
    assert_eq!((reply.status, reply.retry_after.is_some()), (429, true));
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(body.contains("-20429") && body.contains("/cgi-bin/user/info") && body.contains("50 %"), "{body}");
    call(&g, Some(&crm), "/cgi-bin/user/info").await.expect("another client has its own share");
    call(&g, Some(&shop), "/cgi-bin/message/custom/send").await.expect("another API has its own limit");
    learnt(&fixed, 2).await;
    assert_eq!(fixed.asked.load(Ordering::SeqCst), 2, "asked once per pair, not per client or call");
}

#[tokio::test(start_paused = true)]
async fn calls_wechat_did_not_accept_do_not_count() {
    let (g, fixed) = guard(Some(2), Clock::new());
    let shop = g.client(&client("shop", None, Some(1.0))).unwrap();
    call(&g, Some(&shop), "/a").await.unwrap();
    learnt(&fixed, 1).await;
    for _ in 0..5 {
        let admitted = g.admit(&shop.name, Some(&shop), account(), "/a").await.unwrap();
        g.answered(Some(&shop), admitted, account(), "/a", 200, Some(40003));
    }
    call(&g, Some(&shop), "/a").await.expect("errors gave their count back");
    assert!(call(&g, Some(&shop), "/a").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_45009_holds_that_pair_only_until_a_clear_quota() {
    let (g, _) = guard(None, Clock::new());
    let admitted = g.admit("ops", None, account(), "/cgi-bin/user/info").await.unwrap();
    g.answered(None, admitted, account(), "/cgi-bin/user/info", 200, Some(QUOTA_REACHED));
    let held = g.admit("ops", None, account(), "/cgi-bin/user/info").await.unwrap_err();
    let reply = held.reply();
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((reply.status, body["errcode"].as_i64()), (200, Some(45009)));
    assert!(body["errmsg"].as_str().unwrap().contains("Beijing time"), "{body}");
    g.admit("ops", None, account(), "/cgi-bin/message/custom/send").await.expect("another API goes on");
    g.admit("ops", None, Account::Component, "/cgi-bin/user/info").await.expect("another account goes on");
    assert_eq!(g.status().held.len(), 1);
    g.lift(account()).await;
    g.admit("ops", None, account(), "/cgi-bin/user/info").await.expect("lifted by a clear-quota");
    assert!(!g.holds_any());
}

#[tokio::test(start_paused = true)]
async fn the_guard_off_holds_nothing() {
    let (g, _) = guard(None, Clock::new());
    g.configure(&QuotaConfig { guard: false });
    g.answered(None, Admitted::Free, account(), "/a", 200, Some(QUOTA_REACHED));
    assert!(!g.holds_any());
}

/// The Beijing day's end, on a clock set ten seconds before it: holds end and shares begin again.
#[tokio::test(start_paused = true)]
async fn holds_and_shares_end_at_beijing_midnight() {
    let (g, fixed) = guard(Some(2), Clock::starting_at(TEN_SECONDS_TO_MIDNIGHT));
    let shop = g.client(&client("shop", None, Some(0.5))).unwrap();
    call(&g, Some(&shop), "/a").await.unwrap();
    learnt(&fixed, 1).await;
    assert!(matches!(call(&g, Some(&shop), "/a").await, Err(Refusal::Share { .. })));
    g.answered(None, Admitted::Free, account(), "/b", 200, Some(QUOTA_REACHED));
    let Err(Refusal::Held { until_ms, .. }) = g.admit("ops", None, account(), "/b").await else { panic!("held") };
    assert_eq!(until_ms, TEN_SECONDS_TO_MIDNIGHT + 10_000);
    assert_eq!(beijing_time(until_ms), "2026-12-07 00:00");

    tokio::time::advance(Duration::from_millis(9_990)).await;
    assert!(g.admit("ops", None, account(), "/b").await.is_err(), "still the old day");
    tokio::time::advance(Duration::from_millis(20)).await;
    g.admit("ops", None, account(), "/b").await.expect("the hold ended at midnight");
    call(&g, Some(&shop), "/a").await.expect("a new day, a new share");
    learnt(&fixed, 2).await;
    assert_eq!(fixed.asked.load(Ordering::SeqCst), 2, "the limit is asked again on the new day");
}

async fn redis_store(prefix: &str) -> SharedStore {
    let url = Secret::new("redis://127.0.0.1:6379/0");
    Arc::new(RedisStore::connect(&url, prefix, &component(), &RedisOptions::default()).await.unwrap())
}

/// Two instances on one Redis: one rate and one share between them.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_redis_hold_one_rate_and_one_share() {
    let prefix = format!("wxgate-quota-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let (one, _) = guard_on(redis_store(&prefix).await, Some(20), Clock::new());
    let (two, _) = guard_on(redis_store(&prefix).await, Some(20), Clock::new());
    let config = client("shop", Some(10.0), Some(0.5));
    let (a, b) = (one.client(&config).unwrap(), two.client(&config).unwrap());

    // The rate: a full shared bucket is 20 calls, however they are spread.
    let mut through = 0;
    for i in 0..60 {
        let (g, c) = if i % 2 == 0 { (&one, &a) } else { (&two, &b) };
        if g.admit(&c.name, Some(c), account(), "/rate").await.is_ok() {
            through += 1;
        }
    }
    assert!((20..=22).contains(&through), "{through} let through of a burst of 20");

    // The share: 10 of 20, across both instances, once both know the limit.
    let unlimited_rate = client("crm", None, Some(0.5));
    let (ca, cb) = (one.client(&unlimited_rate).unwrap(), two.client(&unlimited_rate).unwrap());
    call(&one, Some(&ca), "/share").await.unwrap();
    call(&two, Some(&cb), "/share").await.unwrap();
    let day = beijing_day(Clock::new().now_ms());
    tokio::time::timeout(Duration::from_secs(5), async {
        while one.limits.limit(account(), "/share", day).is_none()
            || two.limits.limit(account(), "/share", day).is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both instances learnt the limit");
    // Each instance reports its counts and reads the totals back once a second (`run`): here,
    // by hand, before each call.
    let mut counted = 2;
    loop {
        one.sync().await;
        two.sync().await;
        if call(&one, Some(&ca), "/share").await.is_err() {
            break;
        }
        counted += 1;
        assert!(counted <= 10, "past the share");
    }
    assert_eq!(counted, 10);
    two.sync().await;
    assert!(call(&two, Some(&cb), "/share").await.is_err(), "the other instance sees the share used");

    // A hold on one is a hold on the other after its next read.
    one.answered(None, Admitted::Free, account(), "/held", 200, Some(QUOTA_REACHED));
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            two.sync().await;
            if two.admit("ops", None, account(), "/held").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the hold reached the other instance");
    one.lift(account()).await;
    two.sync().await;
    two.admit("ops", None, account(), "/held").await.expect("the lift reached the other instance");
}

/// Two instances hammering one client's shared bucket for three seconds take what one bucket
/// gives: a full burst and then the rate, within 10 %.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_rate_holds_for_the_cluster_over_seconds() {
    let prefix = format!("wxgate-quota-{}:", hex::encode(rand::random::<[u8; 6]>()));
    let config = client("shop", Some(50.0), None);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (g, _) = guard_on(redis_store(&prefix).await, None, Clock::new());
        let c = g.client(&config).unwrap();
        instances.push((g, c));
    }
    let window = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let counts = futures_util::future::join_all(instances.iter().map(|(g, c)| async move {
        let mut taken = 0u32;
        while started.elapsed() < window {
            if g.admit(&c.name, Some(c), account(), "/rate").await.is_ok() {
                taken += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        taken
    }))
    .await;
    let taken: u32 = counts.iter().sum();
    let expected = 2.0 * 50.0 + 50.0 * started.elapsed().as_secs_f64();
    let ratio = f64::from(taken) / expected;
    println!(
        "two instances, one bucket of 50/s: {taken} calls taken in {:?}, {ratio:.3} of a burst and the rate",
        started.elapsed()
    );
    assert!((0.9..=1.1).contains(&ratio), "{taken} taken of {expected:.0} ({counts:?})");
    assert!(counts.iter().all(|n| *n > 0), "both instances were served: {counts:?}");
}
