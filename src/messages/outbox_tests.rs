//! The delivery worker under tokio's paused clock, with a scripted handler.

use super::*;
use crate::store::{MemoryStore, Store};
use crate::Secret;
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::time::Instant;

fn component() -> AppId {
    AppId::parse("wx0123456789abcdef").unwrap()
}

/// A handler whose answers the test decides: routes in `down` fail, each call takes `delay`.
#[derive(Default)]
struct Scripted {
    down: Mutex<HashSet<String>>,
    /// Attempts that fail before a route's handler answers 2xx.
    fail_first: Mutex<HashMap<String, u32>>,
    delay: Duration,
    /// Routes whose handler takes this long instead of `delay`.
    slow: Mutex<HashMap<String, Duration>>,
    calls: Mutex<Vec<(DeliveryId, String, u32, Instant)>>,
    running: Mutex<HashMap<String, usize>>,
    most_running: Mutex<HashMap<String, usize>>,
}

impl Scripted {
    fn calls(&self) -> Vec<(DeliveryId, String, u32, Instant)> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_of(&self, route: &str) -> Vec<(DeliveryId, u32, Instant)> {
        self.calls().into_iter().filter(|c| c.1 == route).map(|(id, _, n, at)| (id, n, at)).collect()
    }
}

#[async_trait]
impl Deliver for Scripted {
    async fn deliver(&self, message: &OutboxMessage, attempt: u32) -> Result<(), String> {
        let route = message.route.clone();
        self.calls.lock().unwrap().push((message.id.clone(), route.clone(), attempt, Instant::now()));
        {
            let mut running = self.running.lock().unwrap();
            let n = running.entry(route.clone()).or_default();
            *n += 1;
            let mut most = self.most_running.lock().unwrap();
            let m = most.entry(route.clone()).or_default();
            *m = (*m).max(*n);
        }
        let delay = self.slow.lock().unwrap().get(&route).copied().unwrap_or(self.delay);
        tokio::time::sleep(delay).await;
        *self.running.lock().unwrap().get_mut(&route).unwrap() -= 1;
        if self.down.lock().unwrap().contains(&route) {
            return Err("connect refused".into());
        }
        let mut fail_first = self.fail_first.lock().unwrap();
        match fail_first.get_mut(&route) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err("status 503".into())
            }
            _ => Ok(()),
        }
    }
}

struct Running {
    outbox: Arc<Outbox>,
    store: Arc<MemoryStore>,
    handler: Arc<Scripted>,
    _shutdown: tokio::sync::watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

fn start_with(store: Arc<MemoryStore>, settings: OutboxSettings, handler: Scripted) -> Running {
    let outbox = Outbox::new(component(), store.clone(), settings);
    let handler = Arc::new(handler);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(Arc::clone(&outbox).run(handler.clone(), rx));
    Running { outbox, store, handler, _shutdown: tx, worker }
}

fn start(settings: OutboxSettings, handler: Scripted) -> Running {
    start_with(Arc::new(MemoryStore::new()), settings, handler)
}

fn new_message(route: &str, received_at_ms: i64) -> OutboxMessage {
    let payload = Secret::new("<xml><Content>hello</Content></xml>");
    OutboxMessage {
        authorizer: Some(AppId::parse("wx1111111111111111").unwrap()),
        ..OutboxMessage::new(route, MessageKind::Account, "text", payload, received_at_ms)
    }
}

/// Waits (in paused time, which runs ahead while everything sleeps) until `cond` holds.
async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn counts(r: &Running) -> (u64, u64) {
    r.outbox.counts().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_with_growing_jittered_backoff_then_delivers() {
    let handler = Scripted::default();
    handler.fail_first.lock().unwrap().insert("shop".into(), 3);
    let r = start(OutboxSettings::default(), handler);
    let m = new_message("shop", r.outbox.clock.now_ms());
    r.outbox.enqueue(m.clone()).await.unwrap();
    until("four attempts", Duration::from_secs(60), || r.handler.calls().len() == 4).await;
    until("delivered and removed", Duration::from_secs(5), || {
        r.store.outbox().counts(&component()).now_or_never().and_then(Result::ok) == Some((0, 0))
    })
    .await;
    let calls = r.handler.calls_of("shop");
    assert!(calls.iter().all(|(id, _, _)| *id == m.id), "one delivery id throughout");
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2, 3, 4], "X-Wxgate-Attempt counts up");
    // retry_base 2 s doubling, each wait 0.5–1.5 times its step.
    for (i, pair) in calls.windows(2).enumerate() {
        let gap = pair[1].2 - pair[0].2;
        let step = Duration::from_secs(2 << i);
        assert!(
            gap >= step / 2 && gap <= step * 3 / 2 + Duration::from_millis(50),
            "wait {i}: {gap:?} for a {step:?} step"
        );
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(r.handler.calls().len(), 4, "delivered once: no attempt after the 2xx");
}

#[tokio::test(start_paused = true)]
async fn kept_as_failed_after_max_age() {
    let handler = Scripted::default();
    handler.down.lock().unwrap().insert("shop".into());
    let settings = OutboxSettings { max_age: Duration::from_secs(120), ..OutboxSettings::default() };
    let r = start(settings, handler);
    let started = Instant::now();
    let m = new_message("shop", r.outbox.clock.now_ms());
    r.outbox.enqueue(m.clone()).await.unwrap();
    let mut failed = (0, 0);
    let deadline = started + Duration::from_secs(3600);
    while failed != (0, 1) {
        assert!(Instant::now() < deadline, "never kept as failed");
        tokio::time::sleep(Duration::from_secs(1)).await;
        failed = counts(&r).await;
    }
    assert!(Instant::now() - started <= Duration::from_secs(125), "gave up once max_age had passed");
    let (total, entries) = r.outbox.list(Some(OutboxState::Failed), 0, 10).await.unwrap();
    assert_eq!(total, 1);
    let e = &entries[0];
    assert_eq!((&e.id, e.state, e.last_error.as_deref()), (&m.id, OutboxState::Failed, Some("connect refused")));
    assert_eq!(e.attempts as usize, r.handler.calls().len());
    assert!(e.attempts >= 4, "retried meanwhile: {} attempts", e.attempts);
    let made = r.handler.calls().len();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.handler.calls().len(), made, "a failed message is not attempted again");

    // An operator's redeliver makes it pending and due at once; the handler is back.
    r.handler.down.lock().unwrap().clear();
    assert!(r.outbox.redeliver(&m.id).await.unwrap());
    until("redelivered", Duration::from_secs(5), || r.handler.calls().len() == made + 1).await;
    until("removed", Duration::from_secs(5), || {
        r.store.outbox().counts(&component()).now_or_never().and_then(Result::ok) == Some((0, 0))
    })
    .await;
    assert_eq!(r.handler.calls().last().unwrap().2 as usize, made + 1, "attempts keep counting");
    assert!(!r.outbox.redeliver(&DeliveryId::generate()).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_is_down_or_slow_does_not_hold_up_other_routes() {
    let handler = Scripted::default();
    handler.down.lock().unwrap().insert("down".into());
    handler.slow.lock().unwrap().insert("down".into(), Duration::from_secs(20));
    let settings = OutboxSettings { per_route_concurrency: 2, ..OutboxSettings::default() };
    let r = start(settings, handler);
    let now = r.outbox.clock.now_ms();
    for _ in 0..10 {
        r.outbox.enqueue(new_message("down", now)).await.unwrap();
    }
    until("down's slots taken", Duration::from_secs(5), || r.handler.calls_of("down").len() == 2).await;
    let started = Instant::now();
    for _ in 0..4 {
        r.outbox.enqueue(new_message("up", now)).await.unwrap();
    }
    until("every up message delivered", Duration::from_secs(60), || r.handler.calls_of("up").len() == 4).await;
    assert!(Instant::now() - started < Duration::from_secs(1), "up waited for down: {:?}", Instant::now() - started);
    assert_eq!(r.handler.calls_of("down").len(), 2, "down still has its two attempts hanging");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(r.handler.most_running.lock().unwrap().get("down"), Some(&2), "down is bounded by its own slots");
    assert_eq!(counts(&r).await, (10, 0), "down's messages wait for their retries");
}

#[tokio::test(start_paused = true)]
async fn attempts_in_flight_per_route_are_bounded() {
    let handler = Scripted { delay: Duration::from_millis(100), ..Scripted::default() };
    let settings = OutboxSettings { per_route_concurrency: 3, ..OutboxSettings::default() };
    let r = start(settings, handler);
    let now = r.outbox.clock.now_ms();
    for i in 0..20 {
        r.outbox.enqueue(new_message(if i % 4 == 0 { "b" } else { "a" }, now)).await.unwrap();
    }
    until("all delivered", Duration::from_secs(30), || r.handler.calls().len() == 20).await;
    let most = r.handler.most_running.lock().unwrap().clone();
    assert_eq!(most.get("a"), Some(&3), "route a used its three slots and no more");
    assert_eq!(most.get("b"), Some(&3));
    let ids: HashSet<DeliveryId> = r.handler.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(ids.len(), 20, "each delivered once");
}

#[tokio::test(start_paused = true)]
async fn a_claim_left_by_a_dead_process_is_redelivered_with_a_higher_attempt() {
    let store = Arc::new(MemoryStore::new());
    let dead = Outbox::new(component(), store.clone(), OutboxSettings::default());
    let m = new_message("shop", dead.clock.now_ms());
    dead.enqueue(m.clone()).await.unwrap();
    // The dead process had claimed it (and maybe called the handler) when it died.
    let now = dead.clock.now_ms();
    let claimed = store.outbox().claim(&component(), "shop", now, 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    drop(dead);
    let r = start_with(store, OutboxSettings::default(), Scripted::default());
    until("redelivered", Duration::from_secs(5), || r.handler.calls().len() == 1).await;
    let (id, _, attempt, _) = r.handler.calls().remove(0);
    assert_eq!((id, attempt), (m.id, 2), "the same delivery id, flagged as attempt 2");
}

#[tokio::test(start_paused = true)]
async fn a_failed_reply_mode_call_counts_as_the_first_attempt() {
    let r = start(OutboxSettings::default(), Scripted::default());
    let started = Instant::now();
    let m = OutboxMessage {
        attempts: 1,
        last_error: Some("timeout".into()),
        ..new_message("shop", r.outbox.clock.now_ms())
    };
    r.outbox.enqueue(m.clone()).await.unwrap();
    let (_, pending) = r.outbox.list(Some(OutboxState::Pending), 0, 10).await.unwrap();
    assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (1, Some("timeout")));
    until("delivered", Duration::from_secs(30), || r.handler.calls().len() == 1).await;
    assert_eq!(r.handler.calls()[0].2, 2);
    assert!(Instant::now() - started >= Duration::from_millis(1000), "after a backoff, not at once");
}

#[tokio::test(start_paused = true)]
async fn returns_on_shutdown() {
    let r = start(OutboxSettings::default(), Scripted::default());
    r._shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), r.worker).await.expect("the worker stopped").unwrap();
}

/// The receiver's two paths when the store refuses the message (a full disk, here a trigger):
/// it answers 503 and WeChat's retry must then be taken, not dropped as a duplicate.
#[tokio::test]
async fn a_message_the_store_refuses_leaves_its_retry_key_untaken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wxgate.sqlite3");
    let store: SharedStore = Arc::new(crate::store::SqliteStore::open(&path).unwrap());
    let outbox = Outbox::new(component(), store, OutboxSettings::default());
    let sql = rusqlite::Connection::open(&path).unwrap();
    let refuse = "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'full'); END;";
    sql.execute_batch(refuse).unwrap();
    let m = new_message("r", 1);
    let authorizer = m.authorizer.unwrap();

    // Deliver mode: the key and the message in one transaction.
    assert!(outbox.enqueue_first(m.clone(), "msgid:1").await.is_err(), "refused: the receiver answers 503");
    // Reply mode: the key recorded first, forgotten when the deferred message is refused.
    assert!(outbox.first_time(&authorizer, "msgid:2").await.unwrap());
    assert!(outbox.enqueue(OutboxMessage { id: DeliveryId::generate(), ..m.clone() }).await.is_err());
    outbox.forget(&authorizer, "msgid:2").await.unwrap();

    sql.execute_batch("DROP TRIGGER refuse").unwrap();
    assert!(outbox.enqueue_first(OutboxMessage { id: DeliveryId::generate(), ..m.clone() }, "msgid:1").await.unwrap());
    assert!(outbox.first_time(&authorizer, "msgid:2").await.unwrap(), "WeChat's retry is taken");
    assert!(!outbox.enqueue_first(OutboxMessage { id: DeliveryId::generate(), ..m }, "msgid:1").await.unwrap());
    assert_eq!(outbox.store.outbox().counts(&component()).await.unwrap(), (1, 0));
}
